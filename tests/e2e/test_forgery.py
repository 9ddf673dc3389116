"""Issue 5: forged attestation tokens and release JWSs are rejected — tokens BEFORE they are used.

MAA tokens: the MAA emulator's semantic faults (bad signature, expired, unknown kid) and an impostor
MAA instance on 127.0.0.1 (HTTPS with the stack's test CA) that forwards our evidence to the real MAA
emulator, takes the genuine token and answers with a forgery of it, while serving the genuine key
set at ``/certs``. A control forgery that is well formed except for its origin proves the impostor
is otherwise convincing: that token passes skr's checks and reaches Key Vault (which refuses the
untrusted issuer). Every real forgery must end in ``invalid_upstream_response`` with NO release
request at the vault (counted from the vault emulator's request log).

Release JWSs: a flipped signature bit, a chain to a root skr does not trust (the x5c carries the
vault's own root — which must not count), and a leaf naming another host.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
import pytest
import pytest_asyncio
from aiohttp import web
from azure.core.pipeline.transport import AioHttpTransport
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from skr.core.crypto import generate_wrapping_key
from skr.core.endpoints import Endpoint
from skr.core.keyvault import KeyName, VaultClient
from skr.errors import InvalidUpstreamResponseError, ReleaseDeniedError
from skr.shell.wiring import Runtime
from skr_dev.emulators.faults import Fault, FaultKind
from skr_dev.emulators.stack import EmulatorStack
from skr_dev.emulators.tls import TestCertificateAuthority
from tests.e2e.conftest import netloc, release_requests, start_runtime

pytestmark = pytest.mark.asyncio(loop_scope="module")

Forge = Callable[[Mapping[str, Any], dict[str, Any], str], str]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _compact(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes) -> str:
    head = _b64url(json.dumps(header, separators=(",", ":")).encode())
    body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{head}.{body}.{_b64url(signature)}"


class ImpostorMaa:
    """An HTTPS "MAA instance" that forwards evidence to the real emulator and forges its answer."""

    def __init__(self, stack: EmulatorStack) -> None:
        self.stack = stack
        self.forge: Forge | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/attest/{kind}", self._attest)
        app.router.add_get("/certs", self._certs)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.stack.ca.server_ssl_context())
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"https://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.stack.ca.client_ssl_context()))

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _attest(self, request: web.Request) -> web.Response:
        body = await request.read()
        target = f"{self.stack.maa.url}{request.path}?{request.query_string}"
        assert self._session is not None and self.forge is not None
        async with self._session.post(target, data=body, headers={"Content-Type": "application/json"}) as genuine:
            assert genuine.status == 200, await genuine.text()
            token = (await genuine.json())["token"]
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
        return web.json_response({"token": self.forge(header, claims, token)})

    async def _certs(self, request: web.Request) -> web.Response:
        return web.json_response(self.stack.maa.jwks())  # the genuine key set: only the token is forged


def _maa_private_key(stack: EmulatorStack) -> rsa.RSAPrivateKey:
    return stack.maa.signing_key.private_key


def forge_control(stack: EmulatorStack, impostor: ImpostorMaa) -> Forge:
    """Genuine key, genuine claims, issuer = the impostor: passes skr's checks (only KV can refuse it)."""

    def forge(header: Mapping[str, Any], claims: dict[str, Any], genuine: str) -> str:
        return jwt.encode(
            {**claims, "iss": impostor.url}, _maa_private_key(stack), algorithm="RS256", headers=dict(header)
        )

    return forge


def forgeries(stack: EmulatorStack, impostor: ImpostorMaa) -> dict[str, Forge]:
    impostor_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    maa_public_pem = (
        _maa_private_key(stack)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    def other_key(header: Mapping[str, Any], claims: dict[str, Any], genuine: str) -> str:
        return jwt.encode({**claims, "iss": impostor.url}, impostor_key, algorithm="RS256", headers=dict(header))

    def alg_none(header: Mapping[str, Any], claims: dict[str, Any], genuine: str) -> str:
        return _compact({**header, "alg": "none"}, {**claims, "iss": impostor.url}, b"")

    def hs256_with_public_key(header: Mapping[str, Any], claims: dict[str, Any], genuine: str) -> str:
        # The classic algorithm confusion: HMAC keyed with the issuer's PUBLIC key (which anyone has).
        head = _b64url(json.dumps({**header, "alg": "HS256"}, separators=(",", ":")).encode())
        body = _b64url(json.dumps({**claims, "iss": impostor.url}, separators=(",", ":")).encode())
        mac = hmac.new(maa_public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64url(mac)}"

    def expired(header: Mapping[str, Any], claims: dict[str, Any], genuine: str) -> str:
        now = int(time.time())
        stale = {**claims, "iss": impostor.url, "iat": now - 9 * 3600, "nbf": now - 9 * 3600, "exp": now - 3600}
        return jwt.encode(stale, _maa_private_key(stack), algorithm="RS256", headers=dict(header))

    def wrong_issuer(header: Mapping[str, Any], claims: dict[str, Any], genuine: str) -> str:
        return genuine  # a genuine token of ANOTHER instance (iss = the real MAA), replayed by the impostor

    return {
        "signed-by-another-key": other_key,
        "alg-none": alg_none,
        "hs256-keyed-with-maa-public-key": hs256_with_public_key,
        "expired": expired,
        "wrong-issuer": wrong_issuer,
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def impostor(stack: EmulatorStack) -> AsyncIterator[ImpostorMaa]:
    server = ImpostorMaa(stack)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _impostor_runtime(stack: EmulatorStack, impostor: ImpostorMaa) -> Runtime:
    host = netloc(impostor.url)
    return await start_runtime(stack, maa_endpoint=host, allowed_maa_endpoints=(host,))


async def test_control_forgery_is_accepted_by_skr_and_refused_by_the_vault(
    stack: EmulatorStack, impostor: ImpostorMaa
) -> None:
    impostor.forge = forge_control(stack, impostor)
    before = len(release_requests(stack.keyvault))
    core = await _impostor_runtime(stack, impostor)
    try:
        with pytest.raises(ReleaseDeniedError) as caught:
            await core.releaser.release(kid="kv-rsa")
    finally:
        await core.close()
    # The token reached the vault: so the impostor's tokens are convincing apart from what each
    # forgery below changes, and "no release request" there means skr stopped the token itself.
    assert len(release_requests(stack.keyvault)) == before + 1
    assert "cannot be verified" in caught.value.message


@pytest.mark.parametrize(
    ("forgery", "why"),
    [
        ("signed-by-another-key", "signature is invalid"),
        ("alg-none", "algorithm 'none' is not allowed"),
        ("hs256-keyed-with-maa-public-key", "algorithm 'HS256' is not allowed"),
        ("expired", "has expired"),
        ("wrong-issuer", "is not the expected issuer"),
    ],
)
async def test_forged_maa_token_is_rejected_before_use(
    stack: EmulatorStack, impostor: ImpostorMaa, forgery: str, why: str
) -> None:
    impostor.forge = forgeries(stack, impostor)[forgery]
    before = len(release_requests(stack.keyvault, authenticated=False))
    core = await _impostor_runtime(stack, impostor)
    try:
        with pytest.raises(InvalidUpstreamResponseError) as caught:
            await core.releaser.release(kid="kv-rsa")
    finally:
        await core.close()
    assert caught.value.code == "invalid_upstream_response"
    assert caught.value.message.startswith("MAA token rejected")
    assert why in caught.value.message
    assert len(release_requests(stack.keyvault, authenticated=False)) == before


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        (FaultKind.BAD_SIGNATURE, "signature is invalid"),
        (FaultKind.EXPIRED_TOKEN, "has expired"),
        (FaultKind.UNKNOWN_KID, "not in the issuer's key set"),
    ],
)
async def test_maa_emulator_token_faults_are_rejected_before_use(
    stack: EmulatorStack, runtime: Runtime, kind: FaultKind, why: str
) -> None:
    before = len(release_requests(stack.keyvault, authenticated=False))
    certs_before = len([r for r in stack.maa.requests if r.route == "maa.certs"])
    stack.faults.add(Fault(kind, endpoint="maa.attest", times=1))
    try:
        with pytest.raises(InvalidUpstreamResponseError) as caught:
            await runtime.releaser.release(kid="kv-rsa")
    finally:
        stack.faults.clear()
    assert caught.value.code == "invalid_upstream_response"
    assert why in caught.value.message
    assert len(release_requests(stack.keyvault, authenticated=False)) == before
    certs_fetched = len([r for r in stack.maa.requests if r.route == "maa.certs"]) - certs_before
    # An unknown kid makes skr refetch /certs once (key rotation) before giving up.
    assert certs_fetched == (2 if kind is FaultKind.UNKNOWN_KID else 1)
    # The same release core recovers once MAA behaves.
    assert (await runtime.releaser.release(kid="kv-rsa")).kty == "RSA-HSM"


# --- the release JWS ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("vault", "kid"), [("keyvault", "kv-rsa"), ("managedhsm", "hsm-rsa")])
@pytest.mark.parametrize(
    ("kind", "why"),
    [(FaultKind.BAD_SIGNATURE, "signature is invalid"), (FaultKind.UNKNOWN_KID, "subjectAltName")],
    ids=["bad-signature", "leaf-for-another-host"],
)
async def test_forged_release_jws_is_rejected(
    stack: EmulatorStack, runtime: Runtime, vault: str, kid: str, kind: FaultKind, why: str
) -> None:
    stack.faults.add(Fault(kind, endpoint=f"{vault}.release", times=1))
    try:
        with pytest.raises(InvalidUpstreamResponseError) as caught:
            await runtime.releaser.release(kid=kid, akv=netloc(stack.state()[f"{vault}_url"]))
    finally:
        stack.faults.clear()
    assert caught.value.code == "invalid_upstream_response"
    assert why in caught.value.message
    assert "key release response rejected" in caught.value.message


@pytest.mark.parametrize("trust", ["stack-root", "other-root"])
async def test_release_jws_must_chain_to_a_trusted_root(stack: EmulatorStack, runtime: Runtime, trust: str) -> None:
    """The x5c carries the vault's whole chain, root included; only skr's own trust store counts."""
    roots = [stack.ca.root_certificate] if trust == "stack-root" else [_other_ca().root_certificate]
    vault = VaultClient(
        # TLS still trusts the stack CA (the runtime's session): only the JWS trust anchors differ.
        transport_factory=lambda: AioHttpTransport(session=runtime.session, session_owner=False),
        trusted_roots=roots,
        clock=lambda: datetime.now(UTC),
        timeout=10.0,
    )
    wrapping = generate_wrapping_key(2048)
    token = await runtime.releaser.attestation_token(Endpoint.parse(netloc(stack.maa.url)), wrapping)
    release = vault.release(
        Endpoint.parse(netloc(stack.state()["keyvault_url"])),
        KeyName.parse("kv-rsa"),
        attestation_token=token.raw,
        credential=runtime.identity,
        wrapping_key=wrapping,
    )
    if trust == "stack-root":
        assert (await release).kty == "RSA-HSM"
        return
    with pytest.raises(InvalidUpstreamResponseError) as caught:
        await release
    assert caught.value.code == "invalid_upstream_response"
    assert "certificate chain is not trusted" in caught.value.message


_OTHER_CA: list[TestCertificateAuthority] = []


def _other_ca() -> TestCertificateAuthority:
    if not _OTHER_CA:
        _OTHER_CA.append(TestCertificateAuthority.create("an unrelated CA"))
    return _OTHER_CA[0]
