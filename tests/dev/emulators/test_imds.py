"""IMDS emulator: the real ManagedIdentityCredential (sync MSAL path and async path), IMDS's
string-typed token JSON and error shapes, THIM collateral."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ManagedIdentityCredential
from azure.identity.aio import ManagedIdentityCredential as AsyncManagedIdentityCredential

from skr.errors import VerificationError
from skr_dev.emulators.entra import EntraEmulator
from skr_dev.emulators.faults import Fault, FaultKind
from skr_dev.emulators.imds import DEFAULT_MANAGED_IDENTITY_CLIENT_ID, ImdsEmulator, ManagedIdentity
from skr_dev.simulated.amd import SimulatedAmd

VAULT = "https://vault.azure.net"
TOKEN_FIELDS = [
    "access_token",
    "client_id",
    "expires_in",
    "expires_on",
    "ext_expires_in",
    "not_before",
    "resource",
    "token_type",
]
_OTHER_IDENTITY_ENV = (
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_CLIENT_ID",
    "AZURE_AUTHORITY_HOST",
)


@pytest.fixture
def imds_env(imds_emulator: ImdsEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in _OTHER_IDENTITY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds_emulator.url)
    return imds_emulator.url


async def _get(url: str, *, metadata: bool = True, params: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Metadata": "true"} if metadata else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers, params=params) as response:
        return response.status, json.loads(await response.read())


def _token_url(imds: ImdsEmulator) -> str:
    return f"{imds.url}/metadata/identity/oauth2/token"


async def test_managed_identity_credential_sync_msal_path(
    imds_emulator: ImdsEmulator, entra_emulator: EntraEmulator, imds_env: str
) -> None:
    def fetch() -> str:
        credential = ManagedIdentityCredential(client_id=DEFAULT_MANAGED_IDENTITY_CLIENT_ID)
        token: str = credential.get_token(f"{VAULT}/.default").token
        return token

    token = await asyncio.to_thread(fetch)
    claims = entra_emulator.validate_access_token(token, VAULT)
    assert claims["appid"] == DEFAULT_MANAGED_IDENTITY_CLIENT_ID
    assert claims["exp"] - claims["iat"] == 86399
    (record,) = imds_emulator.requests
    assert record.route == "imds.token"
    assert record.headers["Metadata"] == "true"
    assert "api-version=2018-02-01" in record.query
    assert "resource=https://vault.azure.net" in record.query  # unencoded, as MSAL sends it


async def test_managed_identity_credential_async_path(
    imds_emulator: ImdsEmulator, entra_emulator: EntraEmulator, imds_env: str
) -> None:
    credential = AsyncManagedIdentityCredential(client_id=DEFAULT_MANAGED_IDENTITY_CLIENT_ID)
    try:
        token = await credential.get_token("https://managedhsm.azure.net/.default")
    finally:
        await credential.close()
    claims = entra_emulator.validate_access_token(token.token, "https://managedhsm.azure.net")
    assert claims["azp"] == DEFAULT_MANAGED_IDENTITY_CLIENT_ID
    assert token.expires_on > claims["iat"]


async def test_unknown_identity_is_400_and_not_retried(imds_emulator: ImdsEmulator, imds_env: str) -> None:
    credential = AsyncManagedIdentityCredential(client_id="00000000-0000-4000-8000-00000000beef")
    try:
        with pytest.raises(ClientAuthenticationError):
            await credential.get_token(f"{VAULT}/.default")
    finally:
        await credential.close()
    assert [r.status for r in imds_emulator.requests] == [400]  # never 404 (retried by the SDK)

    def fetch_sync() -> None:
        ManagedIdentityCredential(client_id="00000000-0000-4000-8000-00000000beef").get_token(f"{VAULT}/.default")

    with pytest.raises(ClientAuthenticationError):
        await asyncio.to_thread(fetch_sync)


async def test_token_json_fields_are_all_strings(imds_emulator: ImdsEmulator) -> None:
    status, body = await _get(
        _token_url(imds_emulator),
        params={"api-version": "2018-02-01", "resource": VAULT, "client_id": DEFAULT_MANAGED_IDENTITY_CLIENT_ID},
    )
    assert status == 200
    assert sorted(body) == TOKEN_FIELDS
    assert all(isinstance(value, str) for value in body.values())
    assert body["resource"] == VAULT
    assert body["token_type"] == "Bearer"
    assert body["client_id"] == DEFAULT_MANAGED_IDENTITY_CLIENT_ID
    assert int(body["expires_on"]) - int(body["not_before"]) == int(body["expires_in"]) == 86399


@pytest.mark.parametrize(
    ("params", "metadata", "description"),
    [
        ({"api-version": "2018-02-01", "resource": VAULT}, False, "Required metadata header not specified"),
        ({"resource": VAULT}, True, "Required query variable 'api-version' is missing"),
        ({"api-version": "2099-01-01", "resource": VAULT}, True, "Invalid or unsupported api-version"),
        ({"api-version": "2018-02-01"}, True, "Required query variable 'resource' is missing"),
        ({"api-version": "2018-02-01", "resource": VAULT, "client_id": "nope"}, True, "Identity not found"),
        ({"api-version": "2018-02-01", "resource": VAULT, "object_id": "nope"}, True, "Identity not found"),
        (
            {"api-version": "2018-02-01", "resource": VAULT, "client_id": "a", "object_id": "b"},
            True,
            "Only one of client_id, object_id or msi_res_id may be specified",
        ),
    ],
)
async def test_errors(imds_emulator: ImdsEmulator, params: dict[str, str], metadata: bool, description: str) -> None:
    status, body = await _get(_token_url(imds_emulator), metadata=metadata, params=params)
    assert status == 400
    assert body == {"error": "invalid_request", "error_description": description}


async def test_identity_selection(emulator_platform: SimulatedAmd) -> None:
    entra = EntraEmulator()
    resource_id = "/subscriptions/0000/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a"
    imds = ImdsEmulator(
        entra,
        identities=[
            ManagedIdentity("aaaaaaaa-0000-4000-8000-000000000001", resource_id=resource_id),
            ManagedIdentity("aaaaaaaa-0000-4000-8000-000000000002", object_id="bbbbbbbb-0000-4000-8000-000000000002"),
        ],
    )
    async with imds.running():
        base = {"api-version": "2018-02-01", "resource": VAULT}
        status, body = await _get(_token_url(imds), params=base)
        assert status == 400
        assert body["error_description"].startswith("Multiple user assigned identities exist")
        status, body = await _get(_token_url(imds), params={**base, "msi_res_id": resource_id})
        assert body["client_id"] == "aaaaaaaa-0000-4000-8000-000000000001"
        claims = entra.validate_access_token(body["access_token"], VAULT)
        assert claims["xms_mirid"] == claims["xms_az_rid"] == resource_id
        status, body = await _get(
            _token_url(imds), params={**base, "object_id": "bbbbbbbb-0000-4000-8000-000000000002"}
        )
        assert body["client_id"] == "aaaaaaaa-0000-4000-8000-000000000002"
        assert entra.validate_access_token(body["access_token"], VAULT)["oid"] == (
            "bbbbbbbb-0000-4000-8000-000000000002"
        )
        imds.add_identity(ManagedIdentity("cccccccc-0000-4000-8000-000000000003", system_assigned=True))
        status, body = await _get(_token_url(imds), params=base)
        assert body["client_id"] == "cccccccc-0000-4000-8000-000000000003"
        with pytest.raises(ValueError, match="system-assigned"):
            imds.add_identity(ManagedIdentity("d", system_assigned=True))


async def test_no_identity_at_all() -> None:
    imds = ImdsEmulator(EntraEmulator())
    async with imds.running():
        status, body = await _get(_token_url(imds), params={"api-version": "2018-02-01", "resource": VAULT})
    assert (status, body["error_description"]) == (400, "Identity not found")


@pytest.mark.parametrize(
    ("kind", "message"),
    [(FaultKind.EXPIRED_TOKEN, "expired"), (FaultKind.BAD_SIGNATURE, "signature"), (FaultKind.UNKNOWN_KID, "kid")],
)
async def test_semantic_faults(
    imds_emulator: ImdsEmulator, entra_emulator: EntraEmulator, kind: FaultKind, message: str
) -> None:
    imds_emulator.faults.add(Fault(kind, "imds.token", times=1))
    params = {"api-version": "2018-02-01", "resource": VAULT}
    _, body = await _get(_token_url(imds_emulator), params=params)
    with pytest.raises(VerificationError, match=message):
        entra_emulator.validate_access_token(body["access_token"], VAULT)
    _, body = await _get(_token_url(imds_emulator), params=params)
    assert entra_emulator.validate_access_token(body["access_token"], VAULT)["aud"] == VAULT


async def test_rate_limit_is_retried_by_the_async_credential(imds_emulator: ImdsEmulator, imds_env: str) -> None:
    imds_emulator.faults.add(Fault(FaultKind.ERROR_503, "imds.token", retry_after=0, times=1))
    credential = AsyncManagedIdentityCredential(client_id=DEFAULT_MANAGED_IDENTITY_CLIENT_ID, retry_backoff_factor=0.01)
    try:
        token = await credential.get_token(f"{VAULT}/.default")
    finally:
        await credential.close()
    assert token.token
    assert [r.status for r in imds_emulator.requests] == [503, 200]


async def test_thim(imds_emulator: ImdsEmulator, emulator_platform: SimulatedAmd) -> None:
    url = f"{imds_emulator.url}/metadata/THIM/amd/certification"
    status, body = await _get(url)
    assert status == 200
    assert list(body) == ["vcekCert", "tcbm", "certificateChain", "cacheControl"]
    assert all(isinstance(value, str) for value in body.values())
    assert body == emulator_platform.thim_json()
    assert body["tcbm"] == emulator_platform.reported_tcb.tcbm()
    status, body = await _get(url, metadata=False)
    assert (status, body["error"]) == (400, "invalid_request")
    imds_emulator.set_thim_source(None)
    status, _ = await _get(url)
    assert status == 404
