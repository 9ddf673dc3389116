"""End-to-end helpers: the release core built by :func:`skr.shell.wiring.build_runtime` (or a running
sidecar from :func:`skr.shell.serve.start_sidecar`) wired to a live :class:`EmulatorStack`.

Why here and not DevStack alone: several suites need many short-lived release cores (fresh token,
identity and collateral caches) against ONE set of emulators, and some need wiring DevStack does
not offer (no certificate table, no security context, a forging MAA). The wiring below is the same
as ``skr dev``'s (devstack/skr_dev/devstack.py) so what is tested is what ships.

Nothing here mocks a collaborator of skr: every call crosses a real loopback socket to an emulator
speaking the Azure protocol, and Key Vault public keys are read back with the real
azure-keyvault-keys SDK.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from azure.identity.aio import WorkloadIdentityCredential
from azure.keyvault.keys.aio import KeyClient

from skr.core.endpoints import Endpoint
from skr.shell.config import Settings
from skr.shell.serve import RunningSidecar, start_sidecar
from skr.shell.wiring import Runtime, build_runtime
from skr.snp.device import ReportProvider
from skr_dev import SIMULATED_BANNER
from skr_dev.emulators.server import HostedEmulator
from skr_dev.emulators.stack import EmulatorStack
from skr_dev.simulated.platform import SimulatedPlatform

# Short deadlines so fault cases end quickly; every elapsed-time bound below is derived from these.
E2E_TIMEOUTS: dict[str, float] = {"maa_timeout": 2.0, "akv_timeout": 3.0, "collateral_timeout": 2.0}
# Headroom for the work around one bounded call (report signing, RSA unwrap, a loaded CI machine).
MARGIN = 2.5

# Every key the issue-5 suites release. Policies are the stack's default (its MAA, HOST_DATA and
# compliance status) unless a test needs another.
E2E_KEYS: tuple[dict[str, Any], ...] = (
    {"name": "kv-rsa", "vault": "keyvault", "kty": "RSA-HSM", "size": 2048},
    {"name": "kv-rsa3072", "vault": "keyvault", "kty": "RSA-HSM", "size": 3072},
    {"name": "kv-ec256", "vault": "keyvault", "kty": "EC-HSM", "crv": "P-256"},
    {"name": "kv-ec384", "vault": "keyvault", "kty": "EC-HSM", "crv": "P-384"},
    {"name": "hsm-rsa", "vault": "managedhsm", "kty": "RSA-HSM", "size": 2048},
    {"name": "hsm-ec384", "vault": "managedhsm", "kty": "EC-HSM", "crv": "P-384"},
    {"name": "hsm-oct", "vault": "managedhsm", "kty": "oct-HSM", "size": 256},
)


def netloc(url: str) -> str:
    return Endpoint.parse(url).netloc


def stack_settings(stack: EmulatorStack, **overrides: Any) -> Settings:
    """Settings wired to ``stack`` exactly like ``skr dev`` does (short timeouts; port 0)."""
    state = stack.state()
    values: dict[str, Any] = {
        "port": 0,
        "maa_endpoint": netloc(state["maa_url"]),
        "akv_endpoint": netloc(state["keyvault_url"]),
        "allowed_maa_endpoints": (netloc(state["maa_url"]),),
        "allowed_akv_endpoints": (netloc(state["keyvault_url"]), netloc(state["managedhsm_url"])),
        "managed_hsm_hosts": (netloc(state["managedhsm_url"]),),
        "ca_file": state["ca_file"],
        "thim_url": state["imds_url"],
        "azcache_url": state["certcache_url"],
        "kds_url": state["kds_url"],
        **E2E_TIMEOUTS,
    }
    values.update(overrides)
    return Settings(**values)


def stack_environ(stack: EmulatorStack, *, drop: Iterable[str] = ()) -> dict[str, str]:
    """The process environment plus the stack's identity variables (workload identity by default)."""
    environ = {**os.environ, **stack.environment()}
    for name in drop:
        environ.pop(name, None)
    return environ


def simulated_platform(stack: EmulatorStack, **fields: Any) -> SimulatedPlatform:
    """The stack's simulated chip with its HOST_DATA and MEASUREMENT unless ``fields`` say otherwise."""
    fields.setdefault("host_data", stack.host_data)
    fields.setdefault("measurement", stack.measurement)
    return SimulatedPlatform(stack.platform, **fields)


async def start_runtime(
    stack: EmulatorStack,
    *,
    platform: ReportProvider | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Runtime:
    """A release core (library API) on ``stack``; the caller closes it."""
    runtime = await build_runtime(
        stack_settings(stack, **overrides),
        platform=platform or simulated_platform(stack),
        environ=stack_environ(stack) if environ is None else environ,
        amd_roots=stack.platform.trusted_roots(),
    )
    return runtime


async def start_stack_sidecar(
    stack: EmulatorStack,
    *,
    platform: ReportProvider | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> RunningSidecar:
    """A running sidecar (skr serve's code, HTTP on 127.0.0.1) on ``stack``; the caller stops it."""
    return await start_sidecar(
        stack_settings(stack, **overrides),
        platform=platform or simulated_platform(stack),
        environ=stack_environ(stack) if environ is None else environ,
        amd_roots=stack.platform.trusted_roots(),
        simulated_banner=SIMULATED_BANNER,
    )


async def wait_until_ready(session: aiohttp.ClientSession, base_url: str, *, timeout: float = 15.0) -> None:
    """Poll GET /status until 200 (the sidecar warms up in the background)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        async with session.get(f"{base_url}/status") as response:
            if response.status == 200:
                return
            body = await response.text()
        if loop.time() > deadline:
            raise AssertionError(f"sidecar not ready after {timeout} s: {body}")
        await asyncio.sleep(0.02)


def vault_credential(stack: EmulatorStack) -> WorkloadIdentityCredential:
    """The real azure-identity workload identity credential, pointed at the Entra emulator."""
    state = stack.state()
    return WorkloadIdentityCredential(
        tenant_id=state["tenant_id"],
        client_id=state["client_id"],
        token_file_path=state["federated_token_file"],
        authority=state["entra_authority"],
        connection_verify=state["ca_file"],
    )


@dataclass
class VaultAdmin:
    """The real azure-keyvault-keys async KeyClient for each emulated vault (what an operator uses)."""

    keyvault: KeyClient
    managedhsm: KeyClient

    def client(self, vault: str) -> KeyClient:
        return self.keyvault if vault == "keyvault" else self.managedhsm


def release_requests(emulator: HostedEmulator | None, *, authenticated: bool = True) -> list[Any]:
    """``/release`` requests the vault received; by default only authenticated ones (the SDK's
    unauthenticated 401 challenge probe excluded)."""
    assert emulator is not None
    return [
        r
        for r in emulator.requests
        if r.path.endswith("/release") and ("Authorization" in r.headers or not authenticated)
    ]


def attest_requests(emulator: HostedEmulator) -> list[Any]:
    return [r for r in emulator.requests if r.path.lower().startswith("/attest/")]


@pytest.fixture(scope="module")
def e2e_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-stack")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(e2e_state_dir: Path) -> AsyncIterator[EmulatorStack]:
    """Every emulator running with :data:`E2E_KEYS` seeded (one per module)."""
    emulators = EmulatorStack({"keys": list(E2E_KEYS)}, state_dir=e2e_state_dir)
    async with emulators:
        yield emulators


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vault_admin(stack: EmulatorStack) -> AsyncIterator[VaultAdmin]:
    state = stack.state()
    credential = vault_credential(stack)
    clients = [
        KeyClient(state[f"{name}_url"], credential, verify_challenge_resource=False, connection_verify=state["ca_file"])
        for name in ("keyvault", "managedhsm")
    ]
    try:
        yield VaultAdmin(*clients)
    finally:
        for client in clients:
            await client.close()
        await credential.close()


@pytest_asyncio.fixture(loop_scope="module")
async def runtime(stack: EmulatorStack) -> AsyncIterator[Runtime]:
    """A fresh release core per test (empty caches), workload identity."""
    core = await start_runtime(stack)
    try:
        yield core
    finally:
        await core.close()
