"""Issue 5: a release policy that does not match the attested environment is refused, and the refusal
names the claim that failed, so an operator knows what to fix.

The stack here plays an AKS kata-cc MAA (``x-ms-compliance-status: azure-signed-katacc-uvm``); every
key's policy is the stack's default (its MAA, its HOST_DATA, not debuggable, AKS compliance) except
``aci-key``, which demands the Confidential ACI status. Each test changes exactly one thing against
the control release, which succeeds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from skr.errors import ReleaseDeniedError
from skr_dev.emulators.maa import COMPLIANCE_ACI, COMPLIANCE_AKS
from skr_dev.emulators.stack import EmulatorStack, default_release_policy
from skr_dev.simulated.platform import SimulatedPlatform
from tests.e2e.conftest import release_requests, simulated_platform, start_runtime, start_stack_sidecar

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEBUG_POLICY_BIT = 1 << 19  # SEV-SNP guest policy DEBUG (AMD ABI; the claim mapping is UNCONFIRMED, azure-facts §1.4)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(e2e_state_dir: Path) -> AsyncIterator[EmulatorStack]:
    config = {
        "compliance_status": COMPLIANCE_AKS,
        "keys": [{"name": "aks-key", "vault": "keyvault", "kty": "RSA-HSM"}],
    }
    async with EmulatorStack(config, state_dir=e2e_state_dir) as emulators:
        await emulators.seed(
            [
                {
                    "name": "aci-key",
                    "vault": "keyvault",
                    "kty": "RSA-HSM",
                    "release_policy": default_release_policy(emulators.maa.url, emulators.host_data, COMPLIANCE_ACI),
                }
            ]
        )
        yield emulators


async def _release(stack: EmulatorStack, platform: SimulatedPlatform, kid: str) -> Any:
    core = await start_runtime(stack, platform=platform)
    try:
        return await core.releaser.release(kid=kid)
    finally:
        await core.close()


async def _denied(stack: EmulatorStack, platform: SimulatedPlatform, kid: str) -> ReleaseDeniedError:
    before = len(release_requests(stack.keyvault))
    with pytest.raises(ReleaseDeniedError) as caught:
        await _release(stack, platform, kid)
    # A policy refusal is final: exactly one release request, no retry.
    assert len(release_requests(stack.keyvault)) == before + 1
    assert caught.value.code == "release_denied"
    return caught.value


async def test_control_release_with_the_expected_environment_succeeds(stack: EmulatorStack) -> None:
    released = await _release(stack, simulated_platform(stack), "aks-key")
    assert released.kty == "RSA-HSM"


async def test_wrong_host_data_is_denied_naming_hostdata(stack: EmulatorStack) -> None:
    other_policy_hash = bytes.fromhex("ab" * 32)
    error = await _denied(stack, simulated_platform(stack, host_data=other_policy_hash), "aks-key")
    assert "x-ms-sevsnpvm-hostdata" in error.message
    assert "x-ms-sevsnpvm-hostdata" in error.reason
    assert other_policy_hash.hex() in error.message  # what the environment actually has
    assert stack.host_data.hex() in error.message  # what the policy wants


async def test_debug_policy_is_denied_naming_is_debuggable(stack: EmulatorStack) -> None:
    platform = simulated_platform(stack, policy=0x30000 | DEBUG_POLICY_BIT)
    error = await _denied(stack, platform, "aks-key")
    assert "x-ms-sevsnpvm-is-debuggable" in error.message
    assert "x-ms-sevsnpvm-is-debuggable" in error.reason


async def test_wrong_compliance_status_is_denied_naming_compliance_status(stack: EmulatorStack) -> None:
    assert stack.config.compliance_status == COMPLIANCE_AKS
    error = await _denied(stack, simulated_platform(stack), "aci-key")
    assert "x-ms-compliance-status" in error.message
    assert COMPLIANCE_AKS in error.message and COMPLIANCE_ACI in error.message


async def test_denial_over_http_is_403_release_denied_naming_the_claim(stack: EmulatorStack) -> None:
    sidecar = await start_stack_sidecar(stack, platform=simulated_platform(stack, host_data=bytes(32)))
    try:
        url = f"http://127.0.0.1:{sidecar.port}"
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/key/release", json={"kid": "aks-key"}) as response:
                body = await response.json()
            assert response.status == 403
            assert body["code"] == "release_denied"
            assert "x-ms-sevsnpvm-hostdata" in body["error"]
            assert "key" not in body
            async with session.get(f"{url}/status") as status:
                assert status.status == 200
    finally:
        await sidecar.stop()
