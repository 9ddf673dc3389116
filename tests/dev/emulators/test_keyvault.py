"""Key Vault / Managed HSM emulator over real HTTPS: challenge auth, keys, release, policy, faults.

These tests speak the wire protocol with a plain aiohttp client (so every status, header and body
byte can be asserted); tests/dev/emulators/test_keyvault_sdk.py drives the same emulator with the real
azure-keyvault-keys and azure-identity SDKs.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from skr.core import jose
from skr.errors import BadRequestError, VerificationError
from skr_dev.emulators.faults import Fault, FaultKind
from skr_dev.emulators.keyvault import Flavour, KeyVaultEmulator, SeedKey, seed_keys_from_json
from tests.dev.emulators.vault_fixtures import *  # noqa: F403  (pytest fixtures)
from tests.dev.emulators.vault_fixtures import (
    ENTRA_ISSUER,
    TENANT_ID,
    LocalIssuer,
    RuntimeKey,
    VaultFactory,
    access_token,
    aci_policy,
    assert_released_key_matches,
    b64url,
    new_runtime_key,
    sevsnp_claims,
    thumbprint_s256,
)

API = "7.6"


@dataclass
class Reply:
    status: int
    headers: Any
    text: str

    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def error(self) -> dict[str, str]:
        error = self.json()["error"]
        assert set(error) >= {"code", "message"}
        return error


async def call(
    session: aiohttp.ClientSession,
    vault: KeyVaultEmulator,
    method: str,
    path: str,
    *,
    token: str | None,
    body: Any = None,
    data: bytes | None = None,
    api: str | None = API,
) -> Reply:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    query = f"?api-version={api}" if api is not None else ""
    payload = data if data is not None else (json.dumps(body).encode() if body is not None else None)
    async with session.request(method, f"{vault.url}{path}{query}", data=payload, headers=headers) as response:
        return Reply(response.status, response.headers, await response.text())


def policy_data(policy: dict[str, Any]) -> str:
    return b64url(json.dumps(policy).encode())


async def create(
    session: aiohttp.ClientSession, vault: KeyVaultEmulator, token: str, name: str, **fields: Any
) -> Reply:
    return await call(session, vault, "POST", f"/keys/{name}/create", token=token, body=fields)


def release_jws(vault: KeyVaultEmulator, reply: Reply, *, host: str = "127.0.0.1") -> jose.ReleasePayload:
    assert reply.status == 200, reply.text
    return jose.verify_release_jws(
        reply.json()["value"], trusted_roots=[vault.ca.root_certificate], vault_host=host, now=datetime.now(UTC)
    )


def jws_header(jws: str) -> dict[str, Any]:
    return json.loads(jose.b64url_decode(jws.split(".", 1)[0], what="header"))


# --- challenge auth --------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", [Flavour.KEY_VAULT, Flavour.MANAGED_HSM])
@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("POST", "/keys/k//release", b""),  # the SDK's body-less challenge request
        ("GET", "/does/not/exist", None),  # decided before routing: 401, not 404
        ("POST", "/keys/k/create", b"{not json"),  # decided before the body is parsed
        ("PUT", "/keys/k", b"\xff" * 100),
    ],
)
async def test_missing_token_gets_the_exact_challenge(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    flavour: Flavour,
    method: str,
    path: str,
    data: bytes | None,
) -> None:
    vault = await make_vault(flavour)
    reply = await call(vault_http, vault, method, path, token=None, data=data)
    assert reply.status == 401
    resource = "https://vault.azure.net" if flavour is Flavour.KEY_VAULT else "https://managedhsm.azure.net"
    assert reply.headers["WWW-Authenticate"] == (
        f'Bearer authorization="https://login.microsoftonline.com/{TENANT_ID}", resource="{resource}"'
    )
    if flavour is Flavour.KEY_VAULT:
        assert reply.json() == {
            "error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}
        }
    else:
        assert reply.text == "" and reply.headers["Content-Length"] == "0"
    assert vault.requests[-1].status == 401
    assert vault.requests[-1].path == path


@pytest.mark.parametrize(
    "bad",
    ["wrong_audience", "expired", "wrong_key", "wrong_tenant", "wrong_issuer", "not_bearer", "garbage"],
)
async def test_invalid_bearer_tokens_are_401(
    make_vault: VaultFactory, vault_http: aiohttp.ClientSession, access_issuer: LocalIssuer, bad: str
) -> None:
    vault = await make_vault(Flavour.KEY_VAULT)
    token: str = access_token(access_issuer)
    if bad == "wrong_audience":
        token = access_token(access_issuer, Flavour.MANAGED_HSM)
    elif bad == "expired":
        token = access_issuer.mint({"aud": "https://vault.azure.net"}, issued_at=1_700_000_000, lifetime=60)
    elif bad == "wrong_key":
        token = access_issuer.mint(
            {"aud": "https://vault.azure.net"}, key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
    elif bad == "wrong_tenant":
        token = access_token(access_issuer, tid="00000000-0000-0000-0000-000000000000")
    elif bad == "wrong_issuer":
        token = access_token(access_issuer, iss="https://sts.windows.net/other/")
    elif bad == "garbage":
        token = "not-a-jwt"
    headers = {"Authorization": f"Basic {token}" if bad == "not_bearer" else f"Bearer {token}"}
    async with vault_http.get(f"{vault.url}/keys/k/?api-version={API}", headers=headers) as response:
        assert response.status == 401
        assert "WWW-Authenticate" in response.headers
        body = await response.json()
        assert body["error"]["code"] == "Unauthorized"
        assert token not in body["error"]["message"]


async def test_valid_token_reaches_routing(
    make_vault: VaultFactory, vault_http: aiohttp.ClientSession, access_issuer: LocalIssuer
) -> None:
    vault = await make_vault(Flavour.MANAGED_HSM)
    token = access_token(access_issuer, Flavour.MANAGED_HSM)
    missing = await call(vault_http, vault, "GET", "/keys/nope/", token=token)
    assert missing.status == 404
    assert missing.error["code"] == "KeyNotFound"
    assert "nope" in missing.error["message"]
    unknown = await call(vault_http, vault, "GET", "/secrets/x", token=token)
    assert unknown.status == 404 and unknown.error["code"] == "NotFound"
    authorization = vault.requests[-1].headers["Authorization"]
    assert authorization == "Bearer <redacted>"


@pytest.mark.parametrize(
    ("api", "message"), [(None, "missing"), ("7.7", "not recognized"), ("2016-10-02", "not recognized")]
)
async def test_api_version_is_required_and_checked(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    api: str | None,
    message: str,
) -> None:
    vault = await make_vault()
    reply = await call(vault_http, vault, "GET", "/keys/k/", token=access_token(access_issuer), api=api)
    assert reply.status == 400 and message in reply.error["message"]


@pytest.mark.parametrize("api", ["7.3-preview", "7.3", "7.4", "7.5", "7.6", "2025-07-01"])
async def test_every_release_api_version_is_accepted(
    make_vault: VaultFactory, vault_http: aiohttp.ClientSession, access_issuer: LocalIssuer, api: str
) -> None:
    vault = await make_vault()
    await vault.seed([SeedKey("k", "EC-HSM", crv="P-256", exportable=False)])
    reply = await call(vault_http, vault, "GET", "/keys/k", token=access_token(access_issuer), api=api)
    assert reply.status == 200


@pytest.mark.parametrize("api", ["7.2", "7.0", "2016-10-01"])
async def test_release_under_a_version_without_it_is_refused(
    make_vault: VaultFactory, vault_http: aiohttp.ClientSession, access_issuer: LocalIssuer, api: str
) -> None:
    """Published versions older than 7.3-preview have no release operation (UNCONFIRMED: the real answer)."""
    vault = await make_vault()
    token = access_token(access_issuer)
    assert (await call(vault_http, vault, "GET", "/keys/k/", token=token, api=api)).status == 404  # accepted
    reply = await call(vault_http, vault, "POST", "/keys/k//release", token=token, body={"target": "t"}, api=api)
    assert reply.status == 400 and reply.error["code"] == "BadParameter"
    assert f"({api}) is not recognized" in reply.error["message"]


# --- create / import / get ---------------------------------------------------------------------------


async def test_create_rsa_hsm_with_policy_and_get_it_back(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
) -> None:
    vault = await make_vault(Flavour.KEY_VAULT)
    token = access_token(access_issuer)
    pretty = json.dumps(aci_policy(attestation_issuer.issuer), indent=2).encode()
    # STANDARD padded base64 (GO-REF's Python helper) is accepted; the echo is compact b64url.
    created = await create(
        vault_http,
        vault,
        token,
        "rsa-key",
        kty="RSA-HSM",
        key_size=3072,
        attributes={"exportable": True},
        release_policy={"data": base64.b64encode(pretty).decode()},
        tags={"purpose": "test"},
    )
    assert created.status == 200, created.text
    bundle = created.json()
    key = bundle["key"]
    assert key["kty"] == "RSA-HSM"
    assert key["kid"].startswith(f"{vault.url}/keys/rsa-key/")
    version = key["kid"].rsplit("/", 1)[1]
    assert len(jose.b64url_decode(key["n"], what="n")) == 384 and key["e"] == "AQAB"
    assert set(key["key_ops"]) >= {"encrypt", "decrypt", "wrapKey", "unwrapKey", "sign", "verify"}
    attributes = bundle["attributes"]
    assert attributes["exportable"] is True and attributes["enabled"] is True
    assert attributes["recoveryLevel"] == "Recoverable+Purgeable" and attributes["recoverableDays"] == 90
    assert isinstance(attributes["created"], int) and attributes["created"] == attributes["updated"]
    policy = bundle["release_policy"]
    assert policy["contentType"] == "application/json; charset=utf-8" and policy["immutable"] is False
    assert "=" not in policy["data"]
    assert (
        jose.b64url_decode(policy["data"], what="data")
        == json.dumps(aci_policy(attestation_issuer.issuer), separators=(",", ":")).encode()
    )
    assert bundle["tags"] == {"purpose": "test"}
    for path in ("/keys/rsa-key/", "/keys/rsa-key", f"/keys/rsa-key/{version}", "/keys/RSA-KEY/"):
        fetched = await call(vault_http, vault, "GET", path, token=token)
        assert fetched.status == 200 and fetched.json()["key"]["kid"] == key["kid"], path
    assert [r.route for r in vault.requests] == ["keyvault.create"] + ["keyvault.get"] * 4


async def test_new_version_becomes_latest(
    make_vault: VaultFactory, vault_http: aiohttp.ClientSession, access_issuer: LocalIssuer
) -> None:
    vault = await make_vault()
    token = access_token(access_issuer)
    first = (await create(vault_http, vault, token, "k", kty="EC-HSM", crv="P-384")).json()
    second = (await create(vault_http, vault, token, "k", kty="EC-HSM", crv="P-521")).json()
    latest = (await call(vault_http, vault, "GET", "/keys/k/", token=token)).json()
    assert latest["key"]["kid"] == second["key"]["kid"] != first["key"]["kid"]
    assert latest["key"]["crv"] == "P-521" and len(jose.b64url_decode(latest["key"]["x"], what="x")) == 66
    old = await call(vault_http, vault, "GET", "/keys/k/" + first["key"]["kid"].rsplit("/", 1)[1], token=token)
    assert old.json()["key"]["crv"] == "P-384"
    missing = await call(vault_http, vault, "GET", "/keys/k/0123456789abcdef", token=token)
    assert missing.status == 404 and missing.error["code"] == "KeyNotFound"


# Codes AKV.SKR.1004/1005 and their texts are documented (azure-facts §2.6); the AKV.SKR.1006 text, the
# oct-HSM-on-KV text and the size/curve texts are the emulator's own (UNCONFIRMED).
@pytest.mark.parametrize(
    ("flavour", "fields", "status", "text"),
    [
        (Flavour.KEY_VAULT, {"kty": "RSA-HSM", "attributes": {"exportable": True}}, 400, "AKV.SKR.1004"),
        (Flavour.KEY_VAULT, {"kty": "RSA-HSM", "release_policy": "POLICY"}, 400, "AKV.SKR.1005"),
        (
            Flavour.KEY_VAULT,
            {"kty": "RSA-HSM", "attributes": {"exportable": False}, "release_policy": "POLICY"},
            400,
            "AKV.SKR.1005",
        ),
        (
            Flavour.KEY_VAULT,
            {"kty": "RSA", "attributes": {"exportable": True}, "release_policy": "POLICY"},
            400,
            "AKV.SKR.1006",
        ),
        (
            Flavour.KEY_VAULT,
            {"kty": "EC", "attributes": {"exportable": True}, "release_policy": "POLICY"},
            400,
            "AKV.SKR.1006",
        ),
        (Flavour.KEY_VAULT, {"kty": "oct-HSM", "key_size": 256}, 400, "only supported by Managed HSM"),
        (Flavour.MANAGED_HSM, {"kty": "RSA"}, 400, "not supported here"),
        (Flavour.KEY_VAULT, {"kty": "RSA-HSM", "key_size": 1024}, 400, "RSA key size"),
        (Flavour.MANAGED_HSM, {"kty": "oct-HSM", "key_size": 512}, 400, "oct-HSM key size"),
        (Flavour.KEY_VAULT, {"kty": "EC-HSM", "crv": "P-224"}, 400, "EC curve"),
        (Flavour.KEY_VAULT, {"key_size": 2048}, 400, "'kty'"),
        (Flavour.KEY_VAULT, {"kty": "RSA-HSM", "key_size": "2048"}, 400, "key_size"),
        (Flavour.KEY_VAULT, {"kty": "RSA-HSM", "key_ops": ["fly"]}, 400, "key_ops"),
        (Flavour.KEY_VAULT, {"kty": "RSA-HSM", "attributes": {"exportable": "yes"}}, 400, "booleans"),
        (Flavour.KEY_VAULT, {"kty": "RSA-HSM", "tags": {"a": 1}}, 400, "tags"),
        (
            Flavour.KEY_VAULT,
            {"kty": "RSA-HSM", "attributes": {"exportable": True}, "release_policy": {"data": "!!"}},
            400,
            "not valid base64",
        ),
        (
            Flavour.KEY_VAULT,
            {"kty": "RSA-HSM", "attributes": {"exportable": True}, "release_policy": {"data": b64url(b'{"anyOf":[]}')}},
            400,
            "Key Release Policy",
        ),
        (
            Flavour.KEY_VAULT,
            {
                "kty": "RSA-HSM",
                "attributes": {"exportable": True},
                "release_policy": {
                    "data": b64url(b'{"anyOf":[{"authority":"https://a","allOf":[{"claim":"c","greater":1}]}]}')
                },
            },
            400,
            "operator 'greater' is not supported",
        ),
    ],
)
async def test_create_rules(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    flavour: Flavour,
    fields: dict[str, Any],
    status: int,
    text: str,
) -> None:
    vault = await make_vault(flavour)
    if fields.get("release_policy") == "POLICY":
        fields = {**fields, "release_policy": {"data": policy_data(aci_policy("https://maa.example"))}}
    reply = await create(vault_http, vault, access_token(access_issuer, flavour), "k", **fields)
    assert reply.status == status
    assert reply.error["code"] == "BadParameter"
    assert text in reply.error["message"]


async def test_bad_request_bodies(
    make_vault: VaultFactory, vault_http: aiohttp.ClientSession, access_issuer: LocalIssuer
) -> None:
    vault = await make_vault()
    token = access_token(access_issuer)
    for data in (b"{not json", b"[]", b'{"a":1,"a":2}', b""):
        reply = await call(vault_http, vault, "POST", "/keys/k/create", token=token, data=data)
        assert reply.status == 400 and reply.error["code"] == "BadParameter", data
    bad_name = await create(vault_http, vault, token, "bad_name", kty="RSA-HSM")
    assert bad_name.status == 400 and "key name" in bad_name.error["message"]
    huge = await call(vault_http, vault, "POST", "/keys/k/create", token=token, data=b" " * (1024 * 1024 + 10))
    assert huge.status == 413


async def test_immutable_policy_cannot_be_modified(
    make_vault: VaultFactory, vault_http: aiohttp.ClientSession, access_issuer: LocalIssuer
) -> None:
    vault = await make_vault(Flavour.MANAGED_HSM)
    token = access_token(access_issuer, Flavour.MANAGED_HSM)
    policy = {"data": policy_data(aci_policy("https://maa.example")), "immutable": True}
    first = await create(
        vault_http, vault, token, "k", kty="oct-HSM", attributes={"exportable": True}, release_policy=policy
    )
    assert first.status == 200 and first.json()["release_policy"]["immutable"] is True
    changed = {"data": policy_data(aci_policy("https://other.example")), "immutable": True}
    reply = await create(
        vault_http, vault, token, "k", kty="oct-HSM", attributes={"exportable": True}, release_policy=changed
    )
    assert reply.status == 400 and reply.error["message"].startswith("AKV.SKR.1020")
    same = await create(
        vault_http, vault, token, "k", kty="oct-HSM", attributes={"exportable": True}, release_policy=policy
    )
    assert same.status == 200


def _rsa_jwk(key: rsa.RSAPrivateKey, *, crt: bool = True, padded: bool = False) -> dict[str, Any]:
    numbers = key.private_numbers()

    def enc(value: int) -> str:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).decode() if padded else b64url(raw)

    jwk = {"kty": "RSA", "n": enc(numbers.public_numbers.n), "e": enc(numbers.public_numbers.e), "d": enc(numbers.d)}
    if crt:
        jwk.update(p=enc(numbers.p), q=enc(numbers.q), dp=enc(numbers.dmp1), dq=enc(numbers.dmq1), qi=enc(numbers.iqmp))
    return jwk


def _ec_jwk(key: ec.EllipticCurvePrivateKey, crv: str) -> dict[str, Any]:
    numbers = key.private_numbers()
    size = (key.curve.key_size + 7) // 8
    return {
        "kty": "EC-HSM",
        "crv": crv,
        "x": b64url(numbers.public_numbers.x.to_bytes(size, "big")),
        "y": b64url(numbers.public_numbers.y.to_bytes(size, "big")),
        "d": b64url(numbers.private_value.to_bytes(size, "big")),
    }


@pytest.mark.parametrize(
    ("flavour", "hsm_field", "jwk_factory", "reported_kty"),
    [
        (Flavour.KEY_VAULT, "Hsm", lambda: _rsa_jwk(rsa.generate_private_key(65537, 2048)), "RSA-HSM"),
        (
            Flavour.KEY_VAULT,
            "hsm",
            lambda: _rsa_jwk(rsa.generate_private_key(65537, 2048), crt=False, padded=True),
            "RSA-HSM",
        ),
        (Flavour.MANAGED_HSM, "Hsm", lambda: _rsa_jwk(rsa.generate_private_key(65537, 2048)), "RSA"),
        (Flavour.KEY_VAULT, "HSM", lambda: _ec_jwk(ec.generate_private_key(ec.SECP256K1()), "P-256K"), "EC-HSM"),
        (Flavour.MANAGED_HSM, "Hsm", lambda: {"kty": "oct-HSM", "k": b64url(bytes(range(32)))}, "oct-HSM"),
    ],
)
async def test_import_variants(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    flavour: Flavour,
    hsm_field: str,
    jwk_factory: Any,
    reported_kty: str,
) -> None:
    vault = await make_vault(flavour)
    jwk = jwk_factory()
    body = {
        "key": jwk,
        hsm_field: True,
        "attributes": {"exportable": True},
        "release_policy": {
            "data": policy_data(aci_policy("https://maa.example")),
            "contentType": "application/json; charset=utf-8",
        },
    }
    reply = await call(
        vault_http, vault, "PUT", "/keys/imported", token=access_token(access_issuer, flavour), body=body
    )
    assert reply.status == 200, reply.text
    key = reply.json()["key"]
    assert key["kty"] == reported_kty
    if "n" in jwk:
        assert jose.b64url_decode(key["n"], what="n") == jose.b64url_decode(jwk["n"].rstrip("="), what="n")
    if "x" in jwk:
        assert (key["crv"], key["x"], key["y"]) == (jwk["crv"], jwk["x"], jwk["y"])
    if "k" in jwk:
        assert "k" not in key  # symmetric material is never echoed
    assert vault.requests[-1].route == f"{flavour.value}.import_key"


@pytest.mark.parametrize(
    ("flavour", "jwk", "text"),
    [
        (Flavour.KEY_VAULT, {"kty": "oct-HSM", "k": b64url(bytes(32))}, "only supported by Managed HSM"),
        (Flavour.MANAGED_HSM, {"kty": "oct-HSM", "k": b64url(bytes(65))}, "128, 192 or 256"),
        (Flavour.MANAGED_HSM, {"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB"}, "not a valid key"),
        (
            Flavour.KEY_VAULT,
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": b64url(b"\x01" * 32)},
            "x/y do not match",
        ),
        (Flavour.KEY_VAULT, {"kty": "EC", "crv": "X25519", "x": "AA", "d": "AA"}, "'crv'"),
        (Flavour.KEY_VAULT, {"kty": "OKP"}, "'kty'"),
    ],
)
async def test_import_rejections(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    flavour: Flavour,
    jwk: dict[str, Any],
    text: str,
) -> None:
    vault = await make_vault(flavour)
    body = {
        "key": jwk,
        "Hsm": True,
        "attributes": {"exportable": True},
        "release_policy": {"data": policy_data(aci_policy("https://m.example"))},
    }
    reply = await call(
        vault_http, vault, "PUT", "/keys/imported", token=access_token(access_issuer, flavour), body=body
    )
    assert reply.status == 400 and text in reply.error["message"], reply.text


# --- release -----------------------------------------------------------------------------------------


async def _seeded(
    make_vault: VaultFactory, issuer: LocalIssuer, flavour: Flavour, kty: str, **seed: Any
) -> KeyVaultEmulator:
    vault = await make_vault(flavour)
    await vault.seed([SeedKey("release-me", kty, release_policy=aci_policy(issuer.issuer), **seed)])
    return vault


@pytest.mark.parametrize(
    ("flavour", "kty", "seed"),
    [
        (Flavour.KEY_VAULT, "RSA-HSM", {"size": 2048}),
        (Flavour.KEY_VAULT, "EC-HSM", {"crv": "P-384"}),
        (Flavour.MANAGED_HSM, "RSA-HSM", {"size": 4096}),
        (Flavour.MANAGED_HSM, "EC-HSM", {"crv": "P-256K"}),
        (Flavour.MANAGED_HSM, "oct-HSM", {"private_key": bytes(range(16))}),
    ],
)
@pytest.mark.parametrize("enc", [None, "CKM_RSA_AES_KEY_WRAP", "RSA_AES_KEY_WRAP_256", "RSA_AES_KEY_WRAP_384"])
async def test_release_verifies_and_unwraps(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
    runtime_key: RuntimeKey,
    flavour: Flavour,
    kty: str,
    seed: dict[str, Any],
    enc: str | None,
) -> None:
    vault = await _seeded(make_vault, attestation_issuer, flavour, kty, **seed)
    body: dict[str, Any] = {"target": attestation_issuer.mint(sevsnp_claims(runtime_key))}
    if enc is not None:
        body["enc"] = enc
    reply = await call(
        vault_http, vault, "POST", "/keys/release-me//release", token=access_token(access_issuer, flavour), body=body
    )
    payload = release_jws(vault, reply)
    expected_enc = enc or "CKM_RSA_AES_KEY_WRAP"
    assert payload.request.enc == expected_enc and payload.key.key_hsm.enc == expected_enc
    assert payload.request.api_version == API
    assert payload.request.kid == f"{vault.url}/keys/release-me"
    assert payload.key.kid.startswith(f"{vault.url}/keys/release-me/")
    assert payload.key.key_hsm.kid == runtime_key.kid and payload.key.key_hsm.schema_version == "1.0"
    assert payload.key.kty == kty
    assert payload.exportable
    assert payload.release_policy is not None
    assert json.loads(payload.release_policy.data) == aci_policy(attestation_issuer.issuer)
    assert_released_key_matches(payload, runtime_key.private_key, oct_bytes=seed.get("private_key"))
    assert vault.requests[-1].route == f"{flavour.value}.release"


@pytest.mark.parametrize("form", ["versioned", "empty", "none"])
async def test_release_path_forms(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
    runtime_key: RuntimeKey,
    form: str,
) -> None:
    vault = await _seeded(make_vault, attestation_issuer, Flavour.KEY_VAULT, "EC-HSM")
    token = access_token(access_issuer)
    version = (
        (await call(vault_http, vault, "GET", "/keys/release-me/", token=token)).json()["key"]["kid"].rsplit("/", 1)[1]
    )
    path = {
        "versioned": f"/keys/release-me/{version}/release",
        "empty": "/keys/release-me//release",
        "none": "/keys/release-me/release",
    }[form]
    body = {"target": attestation_issuer.mint(sevsnp_claims(runtime_key)), "nonce": "n0nce"}
    payload = release_jws(vault, await call(vault_http, vault, "POST", path, token=token, body=body))
    suffix = f"/{version}" if form == "versioned" else ""
    assert payload.request.kid == f"{vault.url}/keys/release-me{suffix}"
    assert payload.request.nonce == "n0nce"
    assert payload.key.kid == f"{vault.url}/keys/release-me/{version}"


@pytest.mark.parametrize("flavour", [Flavour.KEY_VAULT, Flavour.MANAGED_HSM])
async def test_release_jws_wire_format(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
    runtime_key: RuntimeKey,
    flavour: Flavour,
) -> None:
    vault = await _seeded(make_vault, attestation_issuer, flavour, "RSA-HSM")
    body = {"target": attestation_issuer.mint(sevsnp_claims(runtime_key))}
    reply = await call(
        vault_http, vault, "POST", "/keys/release-me/release", token=access_token(access_issuer, flavour), body=body
    )
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    jws = reply.json()["value"]
    assert "=" not in jws and jws.count(".") == 2
    header = jws_header(jws)
    leaf = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0], validate=True))
    chain = [x509.load_der_x509_certificate(base64.b64decode(item)) for item in header["x5c"]]
    assert chain == list(vault.signing_chain) and chain[2] == vault.ca.root_certificate
    s256 = thumbprint_s256(leaf)
    if flavour is Flavour.KEY_VAULT:
        import hashlib

        sha1 = hashlib.sha1(leaf.public_bytes(serialization.Encoding.DER)).digest()
        assert list(header) == ["alg", "kid", "x5t", "typ", "x5t#S256", "x5c"]
        assert header["kid"] == sha1.hex().upper() and header["x5t"] == b64url(sha1)
        assert header["typ"] == "JWT"
    else:
        assert list(header) == ["alg", "kid", "x5c", "x5t#S256"]
        assert header["kid"] == s256
    assert header["alg"] == "RS256" and header["x5t#S256"] == s256
    payload_json = jose.b64url_decode(jws.split(".")[1], what="payload")
    key_hsm_text = json.loads(payload_json)["response"]["key"]["key"]["key_hsm"]
    assert "=" not in key_hsm_text
    key_hsm = json.loads(jose.b64url_decode(key_hsm_text, what="key_hsm"))
    assert key_hsm["header"] == {"kid": runtime_key.kid, "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"}
    assert "=" not in key_hsm["ciphertext"]
    # RSA-2048 PKCS#8 (1216..1219 bytes) under an RSA-2048 runtime key: 256 + KWP(8 + padded) bytes —
    # 1480 as in the KV recording, or 1488 as in the real MHSM response (azure-facts §2.3).
    assert len(jose.b64url_decode(key_hsm["ciphertext"], what="c")) in (1480, 1488)
    # the leaf names the vault host (IP SAN 127.0.0.1 and DNS localhost)
    for host in ("127.0.0.1", "localhost"):
        assert jose.verify_release_jws(
            jws, trusted_roots=[vault.ca.root_certificate], vault_host=host, now=datetime.now(UTC)
        )
    with pytest.raises(VerificationError, match="subjectAltName"):
        jose.verify_release_jws(
            jws, trusted_roots=[vault.ca.root_certificate], vault_host="vault.azure.net", now=datetime.now(UTC)
        )


async def test_release_cert_names_configured_dns_name(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
    runtime_key: RuntimeKey,
) -> None:
    vault = await make_vault(Flavour.MANAGED_HSM, hostnames=("127.0.0.1", "demo.managedhsm.localtest"))
    await vault.seed([SeedKey("k", "oct-HSM", release_policy=aci_policy(attestation_issuer.issuer))])
    body = {"target": attestation_issuer.mint(sevsnp_claims(runtime_key))}
    reply = await call(
        vault_http, vault, "POST", "/keys/k//release", token=access_token(access_issuer, Flavour.MANAGED_HSM), body=body
    )
    assert release_jws(vault, reply, host="demo.managedhsm.localtest").key.kty == "oct-HSM"


# --- release refusals: the policy table through the HTTP path -----------------------------------------

POLICY_REFUSALS = [
    ("hostdata", {"x-ms-sevsnpvm-hostdata": "00" * 32}, "x-ms-sevsnpvm-hostdata"),
    ("compliance", {"x-ms-compliance-status": "azure-signed-katacc-uvm"}, "x-ms-compliance-status"),
    ("debuggable bool", {"x-ms-sevsnpvm-is-debuggable": True}, "x-ms-sevsnpvm-is-debuggable"),
    ("vmpl int", {"x-ms-sevsnpvm-vmpl": 2}, "x-ms-sevsnpvm-vmpl"),
    ("missing claim", {"x-ms-sevsnpvm-vmpl": None}, "x-ms-sevsnpvm-vmpl"),
]


@pytest.mark.parametrize(("case", "overrides", "claim"), POLICY_REFUSALS, ids=[c[0] for c in POLICY_REFUSALS])
async def test_policy_mismatch_is_403_naming_the_claim(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
    runtime_key: RuntimeKey,
    case: str,
    overrides: dict[str, Any],
    claim: str,
) -> None:
    vault = await _seeded(make_vault, attestation_issuer, Flavour.KEY_VAULT, "RSA-HSM")
    claims = sevsnp_claims(runtime_key, **overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    reply = await call(
        vault_http,
        vault,
        "POST",
        "/keys/release-me//release",
        token=access_token(access_issuer),
        body={"target": attestation_issuer.mint(claims)},
    )
    assert reply.status == 403
    assert reply.error["code"] == "Forbidden"
    message = reply.error["message"]
    assert message.startswith("Target environment attestation does not meet key release policy requirements")
    assert f"claim '{claim}'" in message


@pytest.mark.parametrize("slash", ["", "/"])
async def test_policy_authority_trailing_slash_and_legacy_form_release(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
    runtime_key: RuntimeKey,
    slash: str,
) -> None:
    vault = await make_vault(Flavour.MANAGED_HSM)
    legacy = {
        "version": "0.2",
        "anyOf": [
            {
                "authority": attestation_issuer.issuer + slash,
                "allOf": [
                    {"claim": "x-ms-sevsnpvm-is-debuggable", "condition": "equals", "value": "false"},
                    {
                        "anyOf": [
                            {"claim": "x-ms-attestation-type", "equals": "tdxvm"},
                            {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
                        ]
                    },
                ],
            }
        ],
    }
    await vault.seed([SeedKey("k", "EC-HSM", release_policy=legacy)])
    token = access_token(access_issuer, Flavour.MANAGED_HSM)
    allowed = await call(
        vault_http,
        vault,
        "POST",
        "/keys/k//release",
        token=token,
        body={"target": attestation_issuer.mint(sevsnp_claims(runtime_key))},
    )
    assert release_jws(vault, allowed).key.kty == "EC-HSM"
    refused = await call(
        vault_http,
        vault,
        "POST",
        "/keys/k//release",
        token=token,
        body={"target": attestation_issuer.mint(sevsnp_claims(runtime_key, **{"x-ms-attestation-type": "sgx"}))},
    )
    assert refused.status == 403 and "claim 'x-ms-attestation-type'" in refused.error["message"]


@pytest.mark.parametrize(
    "case", ["untrusted_issuer", "bad_signature", "expired", "alg_none", "unknown_kid", "not_a_jwt", "issuer_down"]
)
async def test_unverifiable_attestation_is_403(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
    runtime_key: RuntimeKey,
    case: str,
) -> None:
    vault = await _seeded(make_vault, attestation_issuer, Flavour.KEY_VAULT, "RSA-HSM")
    claims = sevsnp_claims(runtime_key)
    target = attestation_issuer.mint(claims)
    if case == "untrusted_issuer":
        rogue = LocalIssuer()
        await rogue.serve(vault.ca)
        target = rogue.mint(claims)
        await rogue.stop()
    elif case == "bad_signature":
        head, body, signature = target.split(".")
        raw = bytearray(jose.b64url_decode(signature, what="s"))
        raw[0] ^= 0xFF
        target = f"{head}.{body}.{b64url(bytes(raw))}"
    elif case == "expired":
        target = attestation_issuer.mint(claims, issued_at=1_700_000_000)
    elif case == "alg_none":
        head = b64url(json.dumps({"alg": "none", "kid": attestation_issuer.kid}).encode())
        target = f"{head}.{target.split('.')[1]}."
    elif case == "unknown_kid":
        target = attestation_issuer.mint(claims, kid="rotated-away")
    elif case == "not_a_jwt":
        target = "x" * 100
    elif case == "issuer_down":
        assert attestation_issuer.server is not None and attestation_issuer.server.faults is not None
        attestation_issuer.server.faults.add(Fault(FaultKind.ERROR_503, endpoint="issuer.openid"))
    reply = await call(
        vault_http,
        vault,
        "POST",
        "/keys/release-me//release",
        token=access_token(access_issuer),
        body={"target": target},
    )
    assert reply.status == 403
    assert reply.error["code"] == "Forbidden"
    assert reply.error["message"].startswith("Target environment attestation statement cannot be verified.")
    assert target[-20:] not in reply.error["message"]


async def test_issuer_keys_are_cached_and_refetched_on_rotation(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
    runtime_key: RuntimeKey,
) -> None:
    vault = await _seeded(make_vault, attestation_issuer, Flavour.KEY_VAULT, "EC-HSM")
    token = access_token(access_issuer)
    for _ in range(2):
        reply = await call(
            vault_http,
            vault,
            "POST",
            "/keys/release-me//release",
            token=token,
            body={"target": attestation_issuer.mint(sevsnp_claims(runtime_key))},
        )
        assert reply.status == 200
    assert attestation_issuer.server is not None
    fetched = [r.route for r in attestation_issuer.server.requests]
    assert fetched == ["issuer.openid", "issuer.certs"]  # the second release used the cache
    attestation_issuer.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attestation_issuer.kid = "rotated"
    # the served JWKS is built once per app; restart the issuer app on the same URL is not needed:
    # unknown kid triggers one refetch, which still serves the old key -> refused.
    reply = await call(
        vault_http,
        vault,
        "POST",
        "/keys/release-me//release",
        token=token,
        body={"target": attestation_issuer.mint(sevsnp_claims(runtime_key))},
    )
    assert reply.status == 403
    assert [r.route for r in attestation_issuer.server.requests][2:] == ["issuer.openid", "issuer.certs"]


@pytest.mark.parametrize(
    ("case", "status", "text"),
    [
        ("non_exportable", 403, "not exportable"),
        ("disabled", 403, "disabled"),
        ("missing_key", 404, "was not found"),
        ("no_runtime_key", 403, "x-ms-runtime.keys"),
        ("sign_only_runtime_key", 403, "x-ms-runtime.keys"),
        ("small_runtime_key", 403, "x-ms-runtime.keys"),
        ("bad_enc", 400, "'enc'"),
        ("no_target", 400, "'target'"),
        ("huge_target", 400, "larger than"),
        ("bad_nonce", 400, "'nonce'"),
    ],
)
async def test_release_refusals(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
    runtime_key: RuntimeKey,
    case: str,
    status: int,
    text: str,
) -> None:
    vault = await make_vault(Flavour.KEY_VAULT)
    token = access_token(access_issuer)
    policy = {"data": policy_data(aci_policy(attestation_issuer.issuer))}
    if case == "non_exportable":
        await vault.seed([SeedKey("release-me", "RSA-HSM", exportable=False)])
    else:
        attributes = {"exportable": True, "enabled": case != "disabled"}
        created = await create(
            vault_http, vault, token, "release-me", kty="EC-HSM", attributes=attributes, release_policy=policy
        )
        assert created.status == 200
    claims = sevsnp_claims(runtime_key)
    if case == "no_runtime_key":
        claims = sevsnp_claims(None)
    elif case == "sign_only_runtime_key":
        claims["x-ms-runtime"]["keys"][0]["key_ops"] = ["verify"]
    elif case == "small_runtime_key":
        claims = sevsnp_claims(new_runtime_key(key_size=1024))
    body: dict[str, Any] = {"target": attestation_issuer.mint(claims)}
    if case == "bad_enc":
        body["enc"] = "A256KW"
    elif case == "no_target":
        body = {"nonce": "x"}
    elif case == "huge_target":
        body["target"] = "a" * (64 * 1024 + 1)
    elif case == "bad_nonce":
        body["nonce"] = 5
    name = "other" if case == "missing_key" else "release-me"
    reply = await call(vault_http, vault, "POST", f"/keys/{name}//release", token=token, body=body)
    assert reply.status == status, reply.text
    assert text in reply.error["message"]


async def test_runtime_key_selection_uses_first_encryption_rsa_key(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
) -> None:
    vault = await _seeded(make_vault, attestation_issuer, Flavour.KEY_VAULT, "EC-HSM")
    signing = new_runtime_key("signing-only")
    via_use = new_runtime_key("via-use")
    ec_jwk = {"kty": "EC", "crv": "P-256", "key_ops": ["encrypt"], "kid": "ec", "x": "AA", "y": "AA"}
    use_jwk = {k: v for k, v in via_use.jwk.items() if k != "key_ops"} | {"use": "enc"}
    keys = [ec_jwk, signing.jwk | {"key_ops": ["sign"]}, use_jwk, new_runtime_key("later").jwk]
    claims = sevsnp_claims(None, **{"x-ms-runtime": {"keys": keys}})
    reply = await call(
        vault_http,
        vault,
        "POST",
        "/keys/release-me//release",
        token=access_token(access_issuer),
        body={"target": attestation_issuer.mint(claims)},
    )
    payload = release_jws(vault, reply)
    assert payload.key.key_hsm.kid == "via-use"
    assert_released_key_matches(payload, via_use.private_key)


# --- faults ------------------------------------------------------------------------------------------

ROUTES = ["create", "import_key", "get", "release"]


async def _exercise(
    vault: KeyVaultEmulator,
    session: aiohttp.ClientSession,
    issuer: LocalIssuer,
    attestation: LocalIssuer,
    route: str,
    runtime: RuntimeKey,
) -> Reply:
    token = access_token(issuer, vault.flavour)
    if route == "create":
        return await create(session, vault, token, "fresh", kty="EC-HSM")
    if route == "import_key":
        jwk = _ec_jwk(ec.generate_private_key(ec.SECP256R1()), "P-256")
        return await call(session, vault, "PUT", "/keys/imp", token=token, body={"key": jwk})
    if route == "get":
        return await call(session, vault, "GET", "/keys/release-me/", token=token)
    return await call(
        session,
        vault,
        "POST",
        "/keys/release-me//release",
        token=token,
        body={"target": attestation.mint(sevsnp_claims(runtime))},
    )


@pytest.mark.parametrize("flavour", [Flavour.KEY_VAULT, Flavour.MANAGED_HSM])
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("kind", "check"),
    [
        (FaultKind.ERROR_500, lambda r: r.status == 500),
        (FaultKind.ERROR_503, lambda r: r.status == 503 and r.headers["Retry-After"] == "1"),
        (FaultKind.RATE_LIMIT, lambda r: r.status == 429 and r.headers["Retry-After"] == "1"),
        (FaultKind.MALFORMED_JSON, lambda r: r.status == 200 and _not_json(r.text)),
    ],
)
async def test_transport_faults_per_route(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
    runtime_key: RuntimeKey,
    flavour: Flavour,
    route: str,
    kind: FaultKind,
    check: Any,
) -> None:
    vault = await _seeded(make_vault, attestation_issuer, flavour, "EC-HSM")
    vault.faults.add(Fault(kind, endpoint=f"{flavour.value}.{route}", times=1))
    # The unauthenticated challenge never consumes a fault.
    challenge = await call(vault_http, vault, "GET", "/keys/release-me/", token=None)
    assert challenge.status == 401
    other_route = "get" if route != "get" else "create"
    assert (
        await _exercise(vault, vault_http, access_issuer, attestation_issuer, other_route, runtime_key)
    ).status == 200
    faulted = await _exercise(vault, vault_http, access_issuer, attestation_issuer, route, runtime_key)
    assert check(faulted), (faulted.status, faulted.text[:200])
    recovered = await _exercise(vault, vault_http, access_issuer, attestation_issuer, route, runtime_key)
    assert recovered.status == 200, recovered.text


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


async def test_truncated_latency_and_hang_faults(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
    runtime_key: RuntimeKey,
) -> None:
    vault = await _seeded(make_vault, attestation_issuer, Flavour.KEY_VAULT, "EC-HSM")
    vault.faults.add(Fault(FaultKind.TRUNCATED_BODY, endpoint="keyvault.release", times=1))
    with pytest.raises(aiohttp.ClientPayloadError):
        await _exercise(vault, vault_http, access_issuer, attestation_issuer, "release", runtime_key)
    vault.faults.add(Fault(FaultKind.LATENCY, endpoint="keyvault.get", delay=0.05, times=1))
    assert (await _exercise(vault, vault_http, access_issuer, attestation_issuer, "get", runtime_key)).status == 200
    assert not vault.faults.active()
    vault.faults.add(Fault(FaultKind.HANG, endpoint="keyvault.create", times=1))
    with pytest.raises(TimeoutError):
        async with vault_http.post(
            f"{vault.url}/keys/x/create?api-version={API}",
            json={"kty": "EC-HSM"},
            headers={"Authorization": f"Bearer {access_token(access_issuer)}"},
            timeout=aiohttp.ClientTimeout(total=0.3),
        ):
            pass
    # over the admin API too (no bearer token needed there)
    async with vault_http.post(
        f"{vault.url}/_emulator/faults", json={"kind": "error_500", "endpoint": "keyvault.get", "times": 1}
    ) as response:
        assert response.status == 201
    assert (await _exercise(vault, vault_http, access_issuer, attestation_issuer, "get", runtime_key)).status == 500


@pytest.mark.parametrize("flavour", [Flavour.KEY_VAULT, Flavour.MANAGED_HSM])
async def test_semantic_faults_on_release(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
    runtime_key: RuntimeKey,
    flavour: Flavour,
) -> None:
    vault = await _seeded(make_vault, attestation_issuer, flavour, "EC-HSM")
    vault.faults.add(Fault(FaultKind.BAD_SIGNATURE, endpoint=f"{flavour.value}.release", times=1))
    vault.faults.add(Fault(FaultKind.UNKNOWN_KID, endpoint=f"{flavour.value}.*", times=1))
    bad_signature = await _exercise(vault, vault_http, access_issuer, attestation_issuer, "release", runtime_key)
    with pytest.raises(VerificationError, match="signature is invalid"):
        release_jws(vault, bad_signature)
    wrong_host = await _exercise(vault, vault_http, access_issuer, attestation_issuer, "release", runtime_key)
    with pytest.raises(VerificationError, match="subjectAltName"):
        release_jws(vault, wrong_host)
    # the wrong-host leaf is still a well-formed chain to the same CA: only the name is wrong
    assert jose.verify_release_jws(
        wrong_host.json()["value"],
        trusted_roots=[vault.ca.root_certificate],
        vault_host="wrong-host.invalid",
        now=datetime.now(UTC),
    )
    healthy = await _exercise(vault, vault_http, access_issuer, attestation_issuer, "release", runtime_key)
    assert release_jws(vault, healthy).key.kty == "EC-HSM"


# --- seeding and clock ----------------------------------------------------------------------------------


async def test_seed_from_json_document(
    make_vault: VaultFactory, vault_http: aiohttp.ClientSession, access_issuer: LocalIssuer
) -> None:
    vault = await make_vault(Flavour.MANAGED_HSM)
    document = {
        "keys": [
            {"name": "demo-rsa", "kty": "RSA-HSM", "size": 3072, "release_policy": aci_policy("https://maa.example")},
            {
                "name": "demo-oct",
                "kty": "oct-HSM",
                "key_size": 128,
                "release_policy": aci_policy("https://maa.example"),
            },
            {"name": "plain-ec", "kty": "EC-HSM", "crv": "P-521"},
        ]
    }
    seeds = seed_keys_from_json(json.dumps(document))
    assert [s.exportable for s in seeds] == [True, True, False]
    versions = await vault.seed(seeds)
    assert len(versions) == 3 and all(len(v) == 32 for v in versions)
    token = access_token(access_issuer, Flavour.MANAGED_HSM)
    rsa_bundle = (await call(vault_http, vault, "GET", "/keys/demo-rsa/", token=token)).json()
    assert len(jose.b64url_decode(rsa_bundle["key"]["n"], what="n")) == 384
    assert rsa_bundle["attributes"]["recoveryLevel"] == "CustomizedRecoverable+Purgeable"
    assert rsa_bundle["attributes"]["recoverableDays"] == 7
    oct_bundle = (await call(vault_http, vault, "GET", "/keys/demo-oct/", token=token)).json()
    assert oct_bundle["key"]["kty"] == "oct-HSM" and oct_bundle["attributes"]["exportable"] is True
    assert "release_policy" not in (await call(vault_http, vault, "GET", "/keys/plain-ec", token=token)).json()
    with pytest.raises(BadRequestError):
        seed_keys_from_json({"keys": [{"kty": "RSA-HSM"}]})


async def test_injected_clock_drives_token_checks(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
    runtime_key: RuntimeKey,
) -> None:
    future = datetime.now(UTC) + timedelta(days=2)
    vault = await make_vault(Flavour.KEY_VAULT, clock=lambda: future)
    await vault.seed([SeedKey("k", "EC-HSM", release_policy=aci_policy(attestation_issuer.issuer))])
    fresh_access = access_issuer.mint(
        {"aud": "https://vault.azure.net", "tid": TENANT_ID}, issued_at=int(future.timestamp())
    )
    old_attestation = attestation_issuer.mint(sevsnp_claims(runtime_key))  # 8 h lifetime, 2 days ago
    reply = await call(
        vault_http, vault, "POST", "/keys/k//release", token=fresh_access, body={"target": old_attestation}
    )
    assert reply.status == 403 and "expired" in reply.error["message"]
    stale_access = access_token(access_issuer)
    assert (await call(vault_http, vault, "GET", "/keys/k/", token=stale_access)).status == 401


def test_repr_hides_key_material() -> None:
    seed = SeedKey("k", "oct-HSM", private_key=b"\x13\x37" * 16)
    assert "1337" not in repr(seed) and "\\x13" not in repr(seed)
    assert isinstance(ENTRA_ISSUER, str)


@pytest.mark.parametrize(
    ("flavour", "exponent", "policy_fields"),
    [
        (Flavour.KEY_VAULT, "AAEAAQ", {"data", "immutable"}),
        (Flavour.MANAGED_HSM, "AQAB", {"contentType", "data", "immutable"}),
    ],
)
async def test_release_payload_shape_per_flavour(
    make_vault: VaultFactory,
    vault_http: aiohttp.ClientSession,
    access_issuer: LocalIssuer,
    attestation_issuer: LocalIssuer,
    runtime_key: RuntimeKey,
    flavour: Flavour,
    exponent: str,
    policy_fields: set[str],
) -> None:
    """KV's release payload carries a 4-byte ``e`` and ``release_policy`` {data, immutable} (REC)."""
    vault = await _seeded(make_vault, attestation_issuer, flavour, "RSA-HSM")
    body = {"target": attestation_issuer.mint(sevsnp_claims(runtime_key))}
    reply = await call(
        vault_http, vault, "POST", "/keys/release-me//release", token=access_token(access_issuer, flavour), body=body
    )
    release_jws(vault, reply)  # verifies
    raw = json.loads(jose.b64url_decode(reply.json()["value"].split(".")[1], what="payload"))
    assert raw["response"]["key"]["key"]["e"] == exponent
    assert set(raw["response"]["key"]["release_policy"]) == policy_fields
    got = await call(vault_http, vault, "GET", "/keys/release-me", token=access_token(access_issuer, flavour))
    assert got.json()["key"]["e"] == "AQAB" and "contentType" in got.json()["release_policy"]
