"""Every published api-version through the real azure-keyvault-keys client, and the tables against the specs.

The Azure CLI sends ``7.6-preview.2`` and newer SDKs ``2026-01-01-preview``; both must work, as must
every other version the data plane publishes, and an unpublished one must be refused with the
service's BadParameter shape.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from urllib.parse import parse_qs

import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity import WorkloadIdentityCredential
from azure.keyvault.keys import KeyClient, KeyReleasePolicy

from skr.core import jose
from skr_dev.emulators.api_versions import KEYVAULT_API_VERSIONS, KEYVAULT_RELEASE_API_VERSIONS, MAA_SEVSNP_API_VERSIONS
from skr_dev.emulators.keyvault import Flavour
from tests.conftest import specs_dir
from tests.dev.emulators.vault_fixtures import *  # noqa: F403  (pytest fixtures)
from tests.dev.emulators.vault_fixtures import SdkStack, aci_policy, assert_released_key_matches, new_runtime_key


def _published(service: str) -> dict[str, object]:
    path = specs_dir() / service / "api-versions.json"
    if not path.is_file():
        pytest.fail(
            f"published api-version list not found at {path}; place ../shared beside the clone or set SKR_SPECS"
        )
    document = json.loads(path.read_text())
    assert isinstance(document, dict)
    return document


def test_keyvault_table_is_the_published_list() -> None:
    published = _published("keyvault")
    assert set(published["stable"]) | set(published["preview"]) == KEYVAULT_API_VERSIONS  # type: ignore[arg-type]
    assert set(published["with_release"]) == KEYVAULT_RELEASE_API_VERSIONS  # type: ignore[arg-type]
    assert {"7.6-preview.2", "2026-01-01-preview", "7.2", "7.5-preview.1"} <= KEYVAULT_API_VERSIONS


def test_maa_table_is_the_published_list() -> None:
    assert set(_published("attestation")["with_AttestSevSnpVm"]) == MAA_SEVSNP_API_VERSIONS  # type: ignore[arg-type]


def _client(stack: SdkStack, flavour: Flavour, api_version: str) -> KeyClient:
    credential = WorkloadIdentityCredential(connection_verify=str(stack.ca_file))
    return KeyClient(
        stack.vault(flavour).url,
        credential,
        api_version=api_version,
        verify_challenge_resource=False,
        connection_verify=str(stack.ca_file),
    )


def _exercise(stack: SdkStack, flavour: Flavour, api_version: str) -> None:
    """Create with a release policy, get, and (where the version has it) release, all under ``api_version``."""
    client = _client(stack, flavour, api_version)
    name = "v-" + api_version.replace(".", "-")
    policy = KeyReleasePolicy(json.dumps(aci_policy(stack.maa.issuer)).encode())
    try:
        created = client.create_rsa_key(
            name, size=2048, hardware_protected=True, exportable=True, release_policy=policy
        )
        assert client.get_key(name).key.n == created.key.n
        if api_version in KEYVAULT_RELEASE_API_VERSIONS:
            runtime = new_runtime_key()
            result = client.release_key(name, stack.attestation_token(runtime))
            payload = jose.verify_release_jws(
                result.value,
                trusted_roots=[stack.vault(flavour).ca.root_certificate],
                vault_host="127.0.0.1",
                now=datetime.now(UTC),
            )
            assert_released_key_matches(payload, runtime.private_key)
    finally:
        client.close()


@pytest.mark.parametrize("flavour", [Flavour.KEY_VAULT, Flavour.MANAGED_HSM], ids=["keyvault", "managedhsm"])
async def test_every_published_version_creates_gets_and_releases(sdk_stack: SdkStack, flavour: Flavour) -> None:
    for api_version in sorted(KEYVAULT_API_VERSIONS):
        await asyncio.to_thread(_exercise, sdk_stack, flavour, api_version)
    seen = {v for record in sdk_stack.vault(flavour).requests for v in parse_qs(record.query).get("api-version", [])}
    assert seen >= KEYVAULT_API_VERSIONS


@pytest.mark.parametrize("api_version", ["7.7", "2024-13-01", "7.6-preview.9"])
async def test_an_unpublished_version_is_refused_with_the_service_shape(sdk_stack: SdkStack, api_version: str) -> None:
    client = _client(sdk_stack, Flavour.KEY_VAULT, api_version)
    with pytest.raises(HttpResponseError) as caught:
        await asyncio.to_thread(client.get_key, "anything")
    await asyncio.to_thread(client.close)
    assert caught.value.status_code == 400
    assert caught.value.error is not None and caught.value.error.code == "BadParameter"
    assert f"The specified version ({api_version}) is not recognized" in caught.value.message
