"""Issue 5: the release core end to end — simulated SEV-SNP report → collateral → MAA emulator →
Key Vault / Managed HSM emulator → verified JWS → unwrapped JWK — through the library API
(:func:`skr.shell.wiring.build_runtime` → :class:`skr.core.release.KeyReleaser`), no mocks.

What "correct" means here is checked against the vault itself: the public key is read back with the
real azure-keyvault-keys ``KeyClient.get_key`` and must match the released private key (which must
also be a valid key, i.e. derive that public key); imported key material must come back bit for bit.
Identity is exercised on all three paths (workload identity, managed identity through IMDS, a token
in the request), and caching / single flight is counted from the emulators' request logs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import pytest_asyncio
from azure.keyvault.keys import JsonWebKey, KeyReleasePolicy, KeyType, KeyVaultKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from skr.core.keyvault import ReleasedJwk
from skr.errors import IdentityUnavailableError
from skr.shell.wiring import Runtime
from skr_dev.emulators.stack import EmulatorStack
from tests.e2e.conftest import (
    VaultAdmin,
    attest_requests,
    netloc,
    release_requests,
    stack_environ,
    start_runtime,
    vault_credential,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENCS = ("CKM_RSA_AES_KEY_WRAP", "RSA_AES_KEY_WRAP_256", "RSA_AES_KEY_WRAP_384")
ASYMMETRIC_KEYS = (
    ("kv-rsa", "keyvault"),
    ("kv-rsa3072", "keyvault"),
    ("kv-ec256", "keyvault"),
    ("kv-ec384", "keyvault"),
    ("hsm-rsa", "managedhsm"),
    ("hsm-ec384", "managedhsm"),
)
CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
IDENTITY_VARIABLES = (
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IMDS_ENDPOINT",
)


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int(text: str) -> int:
    return int.from_bytes(_b64url(text), "big")


def _vault_url(stack: EmulatorStack, vault: str) -> str:
    url = stack.state()[f"{vault}_url"]
    assert isinstance(url, str)
    return url


def assert_matches_vault_key(released: ReleasedJwk, vault_key: KeyVaultKey) -> None:
    """The released private JWK is a valid key whose public half is the vault's public key."""
    jwk: dict[str, Any] = released.jwk.reveal()
    public: Any = vault_key.key  # JsonWebKey sets its members dynamically
    assert released.kid == vault_key.id
    assert jwk["kid"] == vault_key.id
    if jwk["kty"] == "RSA":
        assert public.n is not None and public.e is not None
        n, e = int.from_bytes(public.n, "big"), int.from_bytes(public.e, "big")
        assert (_int(jwk["n"]), _int(jwk["e"])) == (n, e)
        numbers = rsa.RSAPrivateNumbers(
            p=_int(jwk["p"]),
            q=_int(jwk["q"]),
            d=_int(jwk["d"]),
            dmp1=_int(jwk["dp"]),
            dmq1=_int(jwk["dq"]),
            iqmp=_int(jwk["qi"]),
            public_numbers=rsa.RSAPublicNumbers(e, n),
        )
        private_rsa = numbers.private_key()  # cryptography checks the CRT parts are consistent
        signature = private_rsa.sign(b"skr e2e", padding.PKCS1v15(), hashes.SHA256())
        rsa.RSAPublicNumbers(e, n).public_key().verify(signature, b"skr e2e", padding.PKCS1v15(), hashes.SHA256())
    elif jwk["kty"] == "EC":
        assert public.crv is not None and public.x is not None and public.y is not None
        assert jwk["crv"] == str(public.crv.value if hasattr(public.crv, "value") else public.crv)
        x, y = int.from_bytes(public.x, "big"), int.from_bytes(public.y, "big")
        assert (_int(jwk["x"]), _int(jwk["y"])) == (x, y)
        derived = ec.derive_private_key(_int(jwk["d"]), CURVES[jwk["crv"]]).public_key().public_numbers()
        assert (derived.x, derived.y) == (x, y)
    else:  # pragma: no cover - the parametrisation only names RSA and EC keys
        raise AssertionError(f"unexpected kty {jwk['kty']!r}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_runtime(stack: EmulatorStack) -> AsyncIterator[Runtime]:
    """One release core for the many key-type × enc cases (caches do not matter for correctness)."""
    core = await start_runtime(stack)
    try:
        yield core
    finally:
        await core.close()


# --- every key type, every enc, both vault flavours --------------------------------------------------


@pytest.mark.parametrize("enc", ENCS)
@pytest.mark.parametrize(("name", "vault"), ASYMMETRIC_KEYS)
async def test_released_asymmetric_key_is_the_vaults_key(
    stack: EmulatorStack, shared_runtime: Runtime, vault_admin: VaultAdmin, name: str, vault: str, enc: str
) -> None:
    released = await shared_runtime.releaser.release(kid=name, akv=netloc(_vault_url(stack, vault)), enc=enc)
    vault_key = await vault_admin.client(vault).get_key(name)
    assert released.enc == enc
    assert released.kty == vault_key.key_type
    assert_matches_vault_key(released, vault_key)


@pytest.mark.parametrize("enc", ENCS)
async def test_oct_hsm_on_managed_hsm_returns_the_imported_bytes(
    stack: EmulatorStack, shared_runtime: Runtime, vault_admin: VaultAdmin, enc: str
) -> None:
    material = os.urandom(32)
    name = f"imported-oct-{enc.lower().replace('_', '-')}"
    policy = KeyReleasePolicy(json.dumps(stack.default_release_policy()).encode())
    imported = await vault_admin.managedhsm.import_key(
        name,
        JsonWebKey(kty=KeyType.oct_hsm, k=material),
        hardware_protected=True,
        exportable=True,
        release_policy=policy,
    )
    released = await shared_runtime.releaser.release(kid=name, akv=netloc(_vault_url(stack, "managedhsm")), enc=enc)
    jwk = released.jwk.reveal()
    assert jwk["kty"] == "oct"
    assert _b64url(jwk["k"]) == material
    assert released.kid == imported.id
    assert released.enc == enc


@pytest.mark.parametrize("bits", [128, 192])
async def test_oct_hsm_of_every_size(
    stack: EmulatorStack, shared_runtime: Runtime, vault_admin: VaultAdmin, bits: int
) -> None:
    material = os.urandom(bits // 8)
    name = f"imported-oct-{bits}"
    await vault_admin.managedhsm.import_key(
        name,
        JsonWebKey(kty=KeyType.oct_hsm, k=material),
        hardware_protected=True,
        exportable=True,
        release_policy=KeyReleasePolicy(json.dumps(stack.default_release_policy()).encode()),
    )
    released = await shared_runtime.releaser.release(kid=name, akv=netloc(_vault_url(stack, "managedhsm")))
    assert _b64url(released.jwk.reveal()["k"]) == material


async def test_seeded_oct_hsm_is_released_from_managed_hsm(stack: EmulatorStack, shared_runtime: Runtime) -> None:
    released = await shared_runtime.releaser.release(kid="hsm-oct", akv=netloc(_vault_url(stack, "managedhsm")))
    jwk = released.jwk.reveal()
    assert (jwk["kty"], len(_b64url(jwk["k"]))) == ("oct", 32)
    assert released.kid.startswith(f"{_vault_url(stack, 'managedhsm')}/keys/hsm-oct/")


async def test_imported_ec_private_key_comes_back_exactly(
    stack: EmulatorStack, shared_runtime: Runtime, vault_admin: VaultAdmin
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    numbers = private.private_numbers()
    size = 32
    imported = await vault_admin.keyvault.import_key(
        "imported-ec",
        JsonWebKey(
            kty=KeyType.ec_hsm,
            crv="P-256",
            d=numbers.private_value.to_bytes(size, "big"),
            x=numbers.public_numbers.x.to_bytes(size, "big"),
            y=numbers.public_numbers.y.to_bytes(size, "big"),
        ),
        hardware_protected=True,
        exportable=True,
        release_policy=KeyReleasePolicy(json.dumps(stack.default_release_policy()).encode()),
    )
    released = await shared_runtime.releaser.release(kid="imported-ec", enc="RSA_AES_KEY_WRAP_256")
    assert _int(released.jwk.reveal()["d"]) == numbers.private_value
    assert_matches_vault_key(released, imported)


async def test_versioned_kid_releases_that_version(
    stack: EmulatorStack, shared_runtime: Runtime, vault_admin: VaultAdmin
) -> None:
    vault_key = await vault_admin.keyvault.get_key("kv-rsa")
    assert vault_key.properties.version is not None
    released = await shared_runtime.releaser.release(kid=f"kv-rsa/{vault_key.properties.version}")
    assert_matches_vault_key(released, vault_key)


# --- identity paths ----------------------------------------------------------------------------------


async def test_workload_identity_is_the_default_path(stack: EmulatorStack, runtime: Runtime) -> None:
    entra_before, imds_before = len(stack.entra.requests), len(stack.imds.requests)
    assert runtime.identity.kind == "workload identity"
    released = await runtime.releaser.release(kid="kv-rsa")
    assert released.kty == "RSA-HSM"
    token_calls = [r for r in stack.entra.requests[entra_before:] if r.route == "entra.token"]
    assert len(token_calls) == 1
    assert not [r for r in stack.imds.requests[imds_before:] if r.route == "imds.token"]


@pytest.mark.parametrize("client_id", [False, True], ids=["system-default", "user-assigned-client-id"])
async def test_managed_identity_through_imds(
    stack: EmulatorStack, vault_admin: VaultAdmin, monkeypatch: pytest.MonkeyPatch, client_id: bool
) -> None:
    for name in IDENTITY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", stack.imds.url)  # azure-identity reads os.environ
    environ = stack_environ(stack, drop=IDENTITY_VARIABLES)
    environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = stack.imds.url
    overrides: dict[str, Any] = {"identity_client_id": stack.config.managed_identity_client_id} if client_id else {}
    entra_before, imds_before = len(stack.entra.requests), len(stack.imds.requests)
    core = await start_runtime(stack, environ=environ, **overrides)
    try:
        assert core.identity.kind == "managed identity"
        kv_key = await core.releaser.release(kid="kv-rsa")
        hsm_key = await core.releaser.release(kid="hsm-rsa", akv=netloc(_vault_url(stack, "managedhsm")))
    finally:
        await core.close()
    assert_matches_vault_key(kv_key, await vault_admin.keyvault.get_key("kv-rsa"))
    assert_matches_vault_key(hsm_key, await vault_admin.managedhsm.get_key("hsm-rsa"))
    imds_calls = [r for r in stack.imds.requests[imds_before:] if r.route == "imds.token"]
    resources = sorted(r.query for r in imds_calls)
    assert any("resource=https://vault.azure.net" in q for q in resources)
    assert any("resource=https://managedhsm.azure.net" in q for q in resources)
    assert all(("client_id=" in q) is client_id for q in resources)
    assert not [r for r in stack.entra.requests[entra_before:] if r.route == "entra.token"]


@pytest.fixture
def no_own_identity(stack: EmulatorStack, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment where the sidecar's own identity cannot work (managed identity → a closed port)."""
    for name in IDENTITY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9")
    environ = stack_environ(stack, drop=IDENTITY_VARIABLES)
    environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = "http://127.0.0.1:9"
    return environ


@pytest.mark.parametrize(
    ("kid", "vault", "scope"),
    [
        ("kv-rsa", "keyvault", "https://vault.azure.net/.default"),
        ("hsm-ec384", "managedhsm", "https://managedhsm.azure.net/.default"),
    ],
)
async def test_access_token_in_the_request_is_used(
    stack: EmulatorStack,
    vault_admin: VaultAdmin,
    no_own_identity: dict[str, str],
    kid: str,
    vault: str,
    scope: str,
) -> None:
    async with vault_credential(stack) as credential:
        token = (await credential.get_token(scope)).token
    entra_before, imds_before = len(stack.entra.requests), len(stack.imds.requests)
    core = await start_runtime(stack, environ=no_own_identity)
    try:
        released = await core.releaser.release(kid=kid, akv=netloc(_vault_url(stack, vault)), access_token=token)
    finally:
        await core.close()
    assert_matches_vault_key(released, await vault_admin.client(vault).get_key(kid))
    # The sidecar fetched no token of its own: the request's token was the only credential.
    assert len(stack.entra.requests) == entra_before
    assert len(stack.imds.requests) == imds_before


def _bad_tokens(stack: EmulatorStack) -> dict[str, str]:
    client_id = stack.workload_identity.client_id
    wrong_audience = stack.entra.issue_access_token(client_id, "https://managedhsm.azure.net").access_token
    expired = stack.entra.issue_access_token(client_id, "https://vault.azure.net", lifetime=-600).access_token
    genuine = stack.entra.issue_access_token(client_id, "https://vault.azure.net").access_token.reveal()
    claims = jwt.decode(genuine, options={"verify_signature": False})
    header = jwt.get_unverified_header(genuine)
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_key = jwt.encode(claims, impostor, algorithm="RS256", headers={"kid": header["kid"]})
    return {
        "opaque-garbage": "not-a-token",
        "wrong-audience": wrong_audience.reveal(),
        "expired": expired.reveal(),
        "signed-by-another-key": other_key,
    }


@pytest.mark.parametrize("which", ["opaque-garbage", "wrong-audience", "expired", "signed-by-another-key"])
async def test_bad_access_token_is_identity_unavailable(
    stack: EmulatorStack, no_own_identity: dict[str, str], which: str
) -> None:
    token = _bad_tokens(stack)[which]
    core = await start_runtime(stack, environ=no_own_identity)
    try:
        with pytest.raises(IdentityUnavailableError) as caught:
            await core.releaser.release(kid="kv-rsa", access_token=token)
    finally:
        await core.close()
    assert caught.value.code == "identity_unavailable"
    assert "did not accept the access token" in caught.value.message
    assert token not in caught.value.message and token not in repr(caught.value)


# --- caching and single flight -------------------------------------------------------------------------


async def test_second_release_reuses_the_attestation_token(stack: EmulatorStack, runtime: Runtime) -> None:
    attest_before, release_before = len(attest_requests(stack.maa)), len(release_requests(stack.keyvault))
    first = await runtime.releaser.release(kid="kv-rsa")
    assert len(attest_requests(stack.maa)) == attest_before + 1
    second = await runtime.releaser.release(kid="kv-rsa")
    other_key = await runtime.releaser.release(kid="kv-ec256")
    # One MAA call in all: the token is cached per (MAA instance, wrapping key), not per vault key.
    assert len(attest_requests(stack.maa)) == attest_before + 1
    assert len(release_requests(stack.keyvault)) == release_before + 3
    assert first.jwk.reveal() == second.jwk.reveal()
    assert other_key.kty == "EC-HSM"


async def test_hundred_concurrent_identical_releases_share_one_flight(stack: EmulatorStack, runtime: Runtime) -> None:
    attest_before = len(attest_requests(stack.maa))
    release_before = len(release_requests(stack.keyvault))
    entra_before = len([r for r in stack.entra.requests if r.route == "entra.token"])
    results = await asyncio.gather(*(runtime.releaser.release(kid="kv-rsa") for _ in range(100)))
    assert len(attest_requests(stack.maa)) - attest_before == 1
    assert len(release_requests(stack.keyvault)) - release_before == 1
    assert len([r for r in stack.entra.requests if r.route == "entra.token"]) - entra_before <= 1
    assert len({json.dumps(r.jwk.reveal(), sort_keys=True) for r in results}) == 1


async def test_concurrent_releases_of_different_keys_share_one_attestation(
    stack: EmulatorStack, runtime: Runtime
) -> None:
    attest_before, release_before = len(attest_requests(stack.maa)), len(release_requests(stack.keyvault))
    names = ["kv-rsa", "kv-ec256", "kv-ec384"] * 10
    results = await asyncio.gather(*(runtime.releaser.release(kid=name) for name in names))
    assert len(attest_requests(stack.maa)) - attest_before == 1
    assert len(release_requests(stack.keyvault)) - release_before == 3
    assert {r.kty for r in results} == {"RSA-HSM", "EC-HSM"}
