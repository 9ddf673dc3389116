"""Entra ID emulator: the real azure-identity credentials get tokens; Entra's checks and error shapes."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientSecretCredential, WorkloadIdentityCredential
from azure.identity.aio import ClientSecretCredential as AsyncClientSecretCredential
from azure.identity.aio import WorkloadIdentityCredential as AsyncWorkloadIdentityCredential
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from skr.errors import VerificationError
from skr_dev.emulators.entra import (
    CLIENT_ASSERTION_TYPE,
    DEFAULT_CLIENT_ID,
    FEDERATED_AUDIENCE,
    EntraEmulator,
    FederatedCredential,
    ServiceAccountIssuer,
    _EntraError,
)
from skr_dev.emulators.faults import Fault, FaultKind
from skr_dev.pytest_plugin import SECRET_CLIENT_ID, SECRET_CLIENT_SECRET

from .conftest import b64url_json

VAULT = "https://vault.azure.net"
VAULT_SCOPE = "https://vault.azure.net/.default"
ERROR_KEYS = ["error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id", "error_uri"]


async def _token_request(
    session: aiohttp.ClientSession, entra: EntraEmulator, form: dict[str, str], tenant: str | None = None
) -> tuple[int, dict[str, Any]]:
    url = f"{entra.url}/{tenant or entra.tenant_id}/oauth2/v2.0/token"
    async with session.post(url, data=form) as response:
        return response.status, await response.json()


def _assertion_form(assertion: str, client_id: str = DEFAULT_CLIENT_ID) -> dict[str, str]:
    return {
        "client_assertion": assertion,
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_id": client_id,
        "grant_type": "client_credentials",
        "scope": VAULT_SCOPE,
    }


def _assert_entra_error(status: int, body: dict[str, Any], *, expected_status: int, error: str, code: int) -> None:
    assert status == expected_status
    assert list(body) == ERROR_KEYS
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", body["timestamp"])
    assert re.fullmatch(r"[0-9a-f-]{36}", body["trace_id"])


# --- the real credentials ---------------------------------------------------------------------------


async def test_workload_identity_credential_sync(
    entra_emulator: EntraEmulator, workload_identity_env: dict[str, str], emulator_ca_file: Path
) -> None:
    def fetch() -> str:
        credential = WorkloadIdentityCredential(connection_verify=str(emulator_ca_file))
        return credential.get_token(VAULT_SCOPE, enable_cae=True).token

    token = await asyncio.to_thread(fetch)
    claims = entra_emulator.validate_access_token(token, VAULT)
    assert claims["aud"] == VAULT
    assert claims["appid"] == claims["azp"] == DEFAULT_CLIENT_ID
    assert claims["tid"] == entra_emulator.tenant_id
    assert claims["iss"] == f"https://login.microsoftonline.com/{entra_emulator.tenant_id}/v2.0"
    assert claims["xms_cc"] == ["CP1"]  # the SDK's CAE claims request was honoured
    assert claims["exp"] - claims["iat"] == 3599
    (record,) = entra_emulator.requests
    assert (record.method, record.route, record.status) == ("POST", "entra.token", 200)


async def test_workload_identity_credential_async(
    entra_emulator: EntraEmulator, workload_identity_env: dict[str, str], emulator_ca_file: Path
) -> None:
    credential = AsyncWorkloadIdentityCredential(connection_verify=str(emulator_ca_file))
    try:
        token = await credential.get_token("https://managedhsm.azure.net/.default")
    finally:
        await credential.close()
    claims = entra_emulator.validate_access_token(token.token, "https://managedhsm.azure.net")
    assert claims["azp"] == DEFAULT_CLIENT_ID
    assert "xms_cc" not in claims


async def test_workload_identity_survives_a_rate_limit(
    entra_emulator: EntraEmulator, workload_identity_env: dict[str, str], emulator_ca_file: Path
) -> None:
    entra_emulator.faults.add(Fault(FaultKind.RATE_LIMIT, "entra.token", retry_after=0, times=1))
    credential = AsyncWorkloadIdentityCredential(connection_verify=str(emulator_ca_file))
    try:
        token = await credential.get_token(VAULT_SCOPE)
    finally:
        await credential.close()
    assert entra_emulator.validate_access_token(token.token, VAULT)["azp"] == DEFAULT_CLIENT_ID
    assert [r.status for r in entra_emulator.requests] == [429, 200]


async def test_client_secret_credential_msal_sync_and_async(
    entra_emulator: EntraEmulator, emulator_ca_file: Path
) -> None:
    def fetch(secret: str) -> str:
        credential = ClientSecretCredential(
            entra_emulator.tenant_id,
            SECRET_CLIENT_ID,
            secret,
            authority=entra_emulator.url,
            disable_instance_discovery=True,
            connection_verify=str(emulator_ca_file),
        )
        return credential.get_token(VAULT_SCOPE).token

    token = await asyncio.to_thread(fetch, SECRET_CLIENT_SECRET)
    claims = entra_emulator.validate_access_token(token, VAULT)
    assert (claims["appid"], claims["appidacr"]) == (SECRET_CLIENT_ID, "1")
    assert any(r.route == "entra.openid" for r in entra_emulator.requests)  # MSAL read the metadata
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        await asyncio.to_thread(fetch, "wrong-secret")

    credential = AsyncClientSecretCredential(
        entra_emulator.tenant_id,
        SECRET_CLIENT_ID,
        SECRET_CLIENT_SECRET,
        authority=entra_emulator.url,
        disable_instance_discovery=True,
        connection_verify=str(emulator_ca_file),
    )
    try:
        token_async = await credential.get_token(VAULT_SCOPE)
    finally:
        await credential.close()
    assert entra_emulator.validate_access_token(token_async.token, VAULT)["appid"] == SECRET_CLIENT_ID


async def test_unknown_client_is_refused_through_the_sdk(
    entra_emulator: EntraEmulator, workload_identity_env: dict[str, str], emulator_ca_file: Path
) -> None:
    credential = WorkloadIdentityCredential(
        client_id="00000000-dead-4000-8000-000000000000", connection_verify=str(emulator_ca_file)
    )
    with pytest.raises(ClientAuthenticationError, match=r"\(invalid_client\) AADSTS700016"):
        await asyncio.to_thread(credential.get_token, VAULT_SCOPE)


# --- wire format ------------------------------------------------------------------------------------


async def test_token_response_shape(entra_emulator: EntraEmulator, https_session: aiohttp.ClientSession) -> None:
    status, body = await _token_request(
        https_session, entra_emulator, _assertion_form(entra_emulator.federated_token(DEFAULT_CLIENT_ID))
    )
    assert status == 200
    assert list(body) == ["token_type", "expires_in", "ext_expires_in", "access_token"]
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == body["ext_expires_in"] == 3599
    assert isinstance(body["expires_in"], int)
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "RS256"
    assert header["kid"] in entra_emulator.public_keys


async def test_unknown_client_error_shape(entra_emulator: EntraEmulator, https_session: aiohttp.ClientSession) -> None:
    form = _assertion_form(entra_emulator.federated_token(DEFAULT_CLIENT_ID), client_id="not-registered")
    status, body = await _token_request(https_session, entra_emulator, form)
    _assert_entra_error(status, body, expected_status=400, error="invalid_client", code=700016)
    assert "not-registered" in body["error_description"]


async def test_correlation_id_is_echoed(entra_emulator: EntraEmulator, https_session: aiohttp.ClientSession) -> None:
    async with https_session.post(
        f"{entra_emulator.url}/{entra_emulator.tenant_id}/oauth2/v2.0/token",
        data={"grant_type": "password"},
        headers={"client-request-id": "11111111-2222-3333-4444-555555555555"},
    ) as response:
        body = await response.json()
    assert body["correlation_id"] == "11111111-2222-3333-4444-555555555555"
    assert body["error"] == "unsupported_grant_type"


@pytest.mark.parametrize(
    ("form", "status", "error", "code"),
    [
        ({}, 400, "invalid_request", 900144),
        ({"grant_type": "authorization_code"}, 400, "unsupported_grant_type", 70003),
        ({"grant_type": "client_credentials"}, 400, "invalid_request", 900144),
        (
            {"grant_type": "client_credentials", "client_id": DEFAULT_CLIENT_ID, "scope": "https://vault.azure.net"},
            400,
            "invalid_scope",
            1002012,
        ),
        (
            {"grant_type": "client_credentials", "client_id": DEFAULT_CLIENT_ID, "scope": f"{VAULT_SCOPE} x/.default"},
            400,
            "invalid_scope",
            1002012,
        ),
        (
            {"grant_type": "client_credentials", "client_id": DEFAULT_CLIENT_ID, "scope": VAULT_SCOPE},
            401,
            "invalid_client",
            7000218,
        ),
        (
            {
                "grant_type": "client_credentials",
                "client_id": DEFAULT_CLIENT_ID,
                "scope": VAULT_SCOPE,
                "claims": "{not json",
            },
            400,
            "invalid_request",
            90023,
        ),
    ],
)
async def test_malformed_requests(
    entra_emulator: EntraEmulator,
    https_session: aiohttp.ClientSession,
    form: dict[str, str],
    status: int,
    error: str,
    code: int,
) -> None:
    got_status, body = await _token_request(https_session, entra_emulator, form)
    _assert_entra_error(got_status, body, expected_status=status, error=error, code=code)


async def test_wrong_tenant(entra_emulator: EntraEmulator, https_session: aiohttp.ClientSession) -> None:
    form = _assertion_form(entra_emulator.federated_token(DEFAULT_CLIENT_ID))
    status, body = await _token_request(https_session, entra_emulator, form, tenant="other-tenant")
    _assert_entra_error(status, body, expected_status=400, error="invalid_request", code=90002)


async def test_non_form_body_is_refused(entra_emulator: EntraEmulator, https_session: aiohttp.ClientSession) -> None:
    async with https_session.post(
        f"{entra_emulator.url}/{entra_emulator.tenant_id}/oauth2/v2.0/token", json={"grant_type": "x"}
    ) as response:
        assert response.status == 400
        assert (await response.json())["error_codes"] == [900144]


# --- federated assertions ---------------------------------------------------------------------------


async def test_assertion_from_untrusted_issuer(
    entra_emulator: EntraEmulator, https_session: aiohttp.ClientSession
) -> None:
    rogue = ServiceAccountIssuer("https://rogue.example/")
    assertion = rogue.sign("system:serviceaccount:default:workload")
    status, body = await _token_request(https_session, entra_emulator, _assertion_form(assertion))
    _assert_entra_error(status, body, expected_status=400, error="invalid_client", code=700211)


async def test_assertion_signed_by_another_key_with_the_trusted_kid(
    entra_emulator: EntraEmulator, https_session: aiohttp.ClientSession
) -> None:
    issuer = entra_emulator.service_account_issuer
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        {
            "iss": issuer.issuer,
            "sub": "system:serviceaccount:default:workload",
            "aud": [FEDERATED_AUDIENCE],
            "exp": 4_000_000_000,
            "iat": 1,
        },
        other_key,
        algorithm="RS256",
        headers={"kid": issuer.kid},
    )
    status, body = await _token_request(https_session, entra_emulator, _assertion_form(forged))
    _assert_entra_error(status, body, expected_status=401, error="invalid_client", code=700027)


async def test_assertion_with_hs256_is_refused(
    entra_emulator: EntraEmulator, https_session: aiohttp.ClientSession
) -> None:
    issuer = entra_emulator.service_account_issuer
    forged = jwt.encode(
        {"iss": issuer.issuer, "sub": "system:serviceaccount:default:workload", "aud": FEDERATED_AUDIENCE, "exp": 4e9},
        "a-shared-secret-guess-long-enough-for-hmac",
        algorithm="HS256",
        headers={"kid": issuer.kid},
    )
    status, body = await _token_request(https_session, entra_emulator, _assertion_form(forged))
    assert status in (400, 401)
    assert body["error"] in ("invalid_client", "invalid_request")
    assert "access_token" not in body


async def test_expired_assertion(entra_emulator: EntraEmulator, https_session: aiohttp.ClientSession) -> None:
    assertion = entra_emulator.service_account_issuer.sign(
        "system:serviceaccount:default:workload", lifetime=60, now=1_000_000
    )
    status, body = await _token_request(https_session, entra_emulator, _assertion_form(assertion))
    _assert_entra_error(status, body, expected_status=400, error="invalid_client", code=700024)


@pytest.mark.parametrize(
    ("subject", "audience"),
    [("system:serviceaccount:other:workload", FEDERATED_AUDIENCE), ("system:serviceaccount:default:workload", "x")],
)
async def test_assertion_without_matching_federated_credential(
    entra_emulator: EntraEmulator, https_session: aiohttp.ClientSession, subject: str, audience: str
) -> None:
    assertion = entra_emulator.service_account_issuer.sign(subject, audience=audience)
    status, body = await _token_request(https_session, entra_emulator, _assertion_form(assertion))
    _assert_entra_error(status, body, expected_status=400, error="invalid_client", code=70021)
    assert subject in body["error_description"]


async def test_assertion_with_trailing_newline_and_wrong_type(
    entra_emulator: EntraEmulator, https_session: aiohttp.ClientSession
) -> None:
    assertion = entra_emulator.federated_token(DEFAULT_CLIENT_ID) + "\n"  # file contents verbatim
    status, _ = await _token_request(https_session, entra_emulator, _assertion_form(assertion))
    assert status == 200
    form = _assertion_form(assertion)
    form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
    status, body = await _token_request(https_session, entra_emulator, form)
    _assert_entra_error(status, body, expected_status=400, error="invalid_request", code=50027)
    status, body = await _token_request(https_session, entra_emulator, _assertion_form("not.a.jwt"))
    _assert_entra_error(status, body, expected_status=400, error="invalid_request", code=50027)


async def test_explicit_federated_credential_for_an_external_issuer(
    entra_emulator: EntraEmulator, https_session: aiohttp.ClientSession
) -> None:
    external = ServiceAccountIssuer("https://oidc.example/cluster-2/")
    entra_emulator.trust_service_account_issuer(external)
    entra_emulator.add_federated_credential(
        "abcdef00-0000-4000-8000-000000000001",
        FederatedCredential(issuer=external.issuer, subject="system:serviceaccount:apps:api"),
    )
    assertion = external.sign("system:serviceaccount:apps:api")
    status, body = await _token_request(
        https_session, entra_emulator, _assertion_form(assertion, client_id="abcdef00-0000-4000-8000-000000000001")
    )
    assert status == 200
    assert entra_emulator.validate_access_token(body["access_token"], VAULT)["azp"] == (
        "abcdef00-0000-4000-8000-000000000001"
    )
    with pytest.raises(TypeError):
        entra_emulator.trust_service_account_issuer("https://x/", keys={"not": "callable"})


# --- metadata, keys, validation, faults -------------------------------------------------------------


async def test_openid_configuration_and_jwks(
    entra_emulator: EntraEmulator, https_session: aiohttp.ClientSession
) -> None:
    base = f"{entra_emulator.url}/{entra_emulator.tenant_id}"
    async with https_session.get(f"{base}/v2.0/.well-known/openid-configuration") as response:
        config = await response.json()
    assert config["token_endpoint"] == f"{base}/oauth2/v2.0/token"
    assert config["authorization_endpoint"] == f"{base}/oauth2/v2.0/authorize"
    assert config["issuer"] == entra_emulator.issuer
    async with https_session.get(config["jwks_uri"]) as response:
        jwks = await response.json()
    (key,) = jwks["keys"]
    assert key["kid"] == key["x5t"]
    assert {"kty", "use", "n", "e", "x5c", "issuer"} <= set(key)
    async with https_session.get(f"{entra_emulator.url}/other-tenant/v2.0/.well-known/openid-configuration") as r:
        assert r.status == 400

    status, body = await _token_request(
        https_session, entra_emulator, _assertion_form(entra_emulator.federated_token(DEFAULT_CLIENT_ID))
    )
    assert status == 200
    public = jwt.PyJWK(key).key
    claims = jwt.decode(body["access_token"], public, algorithms=["RS256"], audience=VAULT, issuer=config["issuer"])
    assert claims["tid"] == entra_emulator.tenant_id


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (FaultKind.BAD_SIGNATURE, "signature"),
        (FaultKind.EXPIRED_TOKEN, "expired"),
        (FaultKind.UNKNOWN_KID, "kid"),
    ],
)
async def test_semantic_faults_on_tokens(
    entra_emulator: EntraEmulator, https_session: aiohttp.ClientSession, kind: FaultKind, message: str
) -> None:
    entra_emulator.faults.add(Fault(kind, "entra.token", times=1))
    status, body = await _token_request(
        https_session, entra_emulator, _assertion_form(entra_emulator.federated_token(DEFAULT_CLIENT_ID))
    )
    assert status == 200
    token = body["access_token"]
    with pytest.raises(VerificationError, match=message):
        entra_emulator.validate_access_token(token, VAULT)
    if kind is FaultKind.UNKNOWN_KID:
        assert jwt.get_unverified_header(token)["kid"] not in entra_emulator.public_keys
    if kind is FaultKind.EXPIRED_TOKEN:
        assert b64url_json(token.split(".")[1])["exp"] < time.time()
    # the fault was used up: the next token is good
    status, body = await _token_request(
        https_session, entra_emulator, _assertion_form(entra_emulator.federated_token(DEFAULT_CLIENT_ID))
    )
    assert entra_emulator.validate_access_token(body["access_token"], VAULT)["aud"] == VAULT


def test_validate_access_token_checks() -> None:
    entra = EntraEmulator()
    token = entra.issue_access_token("app", VAULT).access_token.reveal()
    assert entra.validate_access_token(token, [VAULT + "/", "other"])["aud"] == VAULT
    with pytest.raises(VerificationError, match="audience"):
        entra.validate_access_token(token, "https://managedhsm.azure.net")
    with pytest.raises(VerificationError, match="expired"):
        entra.validate_access_token(token, VAULT, now=4_000_000_000)
    other = EntraEmulator(tenant_id="00000000-0000-4000-8000-000000000abc")
    with pytest.raises(VerificationError, match="kid"):
        other.validate_access_token(token, VAULT)
    with pytest.raises(VerificationError, match="not a JWT"):
        entra.validate_access_token("garbage", VAULT)
    with pytest.raises(VerificationError, match="too large"):
        entra.validate_access_token("a" * 20000, VAULT)
    none_token = jwt.encode({"aud": VAULT}, None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(VerificationError, match="RS256"):
        entra.validate_access_token(none_token, VAULT)
    assert token not in repr(entra.issue_access_token("app", VAULT))


def test_rotation_keeps_the_previous_key_published() -> None:
    entra = EntraEmulator()
    old = entra.issue_access_token("app", VAULT).access_token.reveal()
    new_kid = entra.rotate_signing_key()
    assert next(iter(entra.public_keys)) == new_kid
    assert entra.validate_access_token(old, VAULT)["azp"] == "app"
    entra.rotate_signing_key(keep_previous=False)
    with pytest.raises(VerificationError):
        entra.validate_access_token(old, VAULT)


def test_federated_token_file(tmp_path: Path) -> None:
    entra = EntraEmulator()
    identity = entra.add_workload_identity(namespace="apps", service_account="sidecar")
    path = entra.write_federated_token_file(tmp_path / "tokens" / "azure-identity-token", identity.client_id)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    token = path.read_text()
    issuer = entra.service_account_issuer
    claims = jwt.decode(
        token,
        issuer.public_keys[issuer.kid],
        algorithms=["RS256"],
        audience=FEDERATED_AUDIENCE,
        issuer=issuer.issuer,
    )
    assert claims["sub"] == "system:serviceaccount:apps:sidecar"
    assert claims["aud"] == [FEDERATED_AUDIENCE]
    assert claims["kubernetes.io"]["namespace"] == "apps"
    assert issuer.jwks()["keys"][0]["kid"] == issuer.kid
    with pytest.raises(KeyError):
        entra.write_federated_token_file(tmp_path / "x", "not-a-workload-identity")


def test_secrets_do_not_leak_into_reprs() -> None:
    entra = EntraEmulator()
    entra.add_client_secret("app", "super-secret-value")
    assert "super-secret-value" not in repr(entra)
    assert "super-secret-value" not in repr(entra._clients)
    with pytest.raises(ValueError):
        entra.add_client_secret("app", "")


_form_fields = st.sampled_from(
    ["grant_type", "client_id", "scope", "client_secret", "client_assertion", "client_assertion_type", "claims", "x"]
)
_form_values = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["client_credentials", DEFAULT_CLIENT_ID, VAULT_SCOPE, CLIENT_ASSERTION_TYPE, "{}", "[]"]),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_form_fields, _form_values, max_size=7))
def test_token_grant_fuzz_answers_or_refuses_cleanly(form: dict[str, str]) -> None:
    entra = _FUZZ_ENTRA
    try:
        response = entra._grant(form)
    except _EntraError as exc:
        assert exc.status in (400, 401)
        assert exc.description
    else:
        assert response.status == 200


_FUZZ_ENTRA = EntraEmulator()
_FUZZ_ENTRA.add_workload_identity(DEFAULT_CLIENT_ID)
