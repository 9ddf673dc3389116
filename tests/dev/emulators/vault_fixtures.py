"""Fixtures and helpers for the Key Vault / Managed HSM emulator tests.

Imported explicitly by the vault test modules (emu-core owns tests/dev/emulators/conftest.py, if any).

``LocalIssuer`` is a tiny RS256 token issuer served over HTTPS on loopback with the same OpenID
metadata + x5c-only JWKS shape MAA uses (azure-facts §1.6). The HTTP-level tests use it to mint
tokens with exactly the claims a policy table needs; the SDK tests use emu-core's MAA emulator.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

from skr.core import jose
from skr_dev.emulators.keyvault import AccessTokenTrust, Flavour, KeyVaultConfig, KeyVaultEmulator
from skr_dev.emulators.server import EmulatorServer, create_emulator_app, json_response
from skr_dev.emulators.tls import TestCertificateAuthority, self_signed_certificate

TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
ENTRA_ISSUER = f"https://login.microsoftonline.com/{TENANT_ID}/v2.0"
HOSTDATA = "cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c"
OAEP_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "CKM_RSA_AES_KEY_WRAP": hashes.SHA1,
    "RSA_AES_KEY_WRAP_256": hashes.SHA256,
    "RSA_AES_KEY_WRAP_384": hashes.SHA384,
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_rs256(key: rsa.RSAPrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


@dataclass
class LocalIssuer:
    """An RS256 issuer with a signing key and (once served) an OpenID metadata + JWKS endpoint."""

    issuer: str = ""
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    kid: str = field(default_factory=lambda: base64.b64encode(os.urandom(32)).decode())
    server: EmulatorServer | None = None

    def public_keys(self) -> dict[str, rsa.RSAPublicKey]:
        return {self.kid: self.key.public_key()}

    def mint(
        self,
        claims: dict[str, Any],
        *,
        lifetime: int = 8 * 3600,
        issued_at: int | None = None,
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = None,
    ) -> str:
        now = issued_at if issued_at is not None else int(time.time())
        body = {"iss": self.issuer, "iat": now, "nbf": now, "exp": now + lifetime, **claims}
        header = {"alg": "RS256", "jku": f"{self.issuer}/certs", "kid": kid or self.kid, "typ": "JWT"}
        return sign_rs256(key or self.key, header, body)

    def build_app(self) -> web.Application:
        app = create_emulator_app()
        certificate = self_signed_certificate(self.issuer or "local issuer", self.key)
        x5c = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()

        async def openid(_request: web.Request) -> web.Response:
            return json_response(
                {"jwks_uri": f"{self.issuer}/certs", "id_token_signing_alg_values_supported": ["RS256"]}
            )

        async def certs(_request: web.Request) -> web.Response:
            return json_response({"keys": [{"x5c": [x5c], "kid": self.kid, "kty": "RSA"}]})

        app.router.add_get("/.well-known/openid-configuration", openid, name="issuer.openid")
        app.router.add_get("/certs", certs, name="issuer.certs")
        return app

    async def serve(self, ca: TestCertificateAuthority) -> str:
        self.server = EmulatorServer("local-issuer")
        await self.server.start(self.build_app(), ssl_context=ca.server_ssl_context())
        self.issuer = self.server.url
        return self.issuer

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()


@dataclass
class RuntimeKey:
    """The workload's wrapping key and the JWK MAA would carry in x-ms-runtime.keys."""

    private_key: rsa.RSAPrivateKey
    kid: str

    @property
    def jwk(self) -> dict[str, Any]:
        numbers = self.private_key.public_key().public_numbers()
        return {
            "e": b64url(numbers.e.to_bytes(3, "big")),
            "key_ops": ["encrypt"],
            "kid": self.kid,
            "kty": "RSA",
            "n": b64url(numbers.n.to_bytes(self.private_key.key_size // 8, "big")),
        }


def new_runtime_key(kid: str = "wrapping-key-1", key_size: int = 2048) -> RuntimeKey:
    return RuntimeKey(rsa.generate_private_key(public_exponent=65537, key_size=key_size), kid)


def sevsnp_claims(runtime: RuntimeKey | None, **overrides: Any) -> dict[str, Any]:
    """A Confidential-ACI-like MAA claim set (azure-facts §1.5) carrying ``runtime`` as the wrapping key."""
    claims: dict[str, Any] = {
        "x-ms-ver": "1.0",
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-compliance-status": "azure-compliant-uvm",
        "x-ms-sevsnpvm-hostdata": HOSTDATA,
        "x-ms-sevsnpvm-is-debuggable": False,
        "x-ms-sevsnpvm-vmpl": 0,
        "x-ms-sevsnpvm-guestsvn": 2,
        "x-ms-runtime": {"keys": [runtime.jwk] if runtime is not None else []},
    }
    claims.update(overrides)
    return claims


def aci_policy(authority: str, **claim_overrides: str) -> dict[str, Any]:
    """The GO-REF/ACI policy shape (azure-facts §3.4 example 1)."""
    required = {
        "x-ms-sevsnpvm-hostdata": HOSTDATA,
        "x-ms-compliance-status": "azure-compliant-uvm",
        "x-ms-sevsnpvm-is-debuggable": "false",
        "x-ms-sevsnpvm-vmpl": "0",
    }
    required.update(claim_overrides)
    return {
        "version": "1.0.0",
        "anyOf": [{"authority": authority, "allOf": [{"claim": c, "equals": v} for c, v in required.items()]}],
    }


def unwrap_key_hsm(key_hsm: jose.KeyHsm, wrapping: rsa.RSAPrivateKey) -> bytes:
    """RSA-OAEP (hash per enc, MGF1 same hash) then AES-KWP unwrap — the client side of §2.3."""
    algorithm = OAEP_HASHES[key_hsm.enc]()
    split = wrapping.key_size // 8
    aes_key = wrapping.decrypt(
        key_hsm.ciphertext[:split], padding.OAEP(mgf=padding.MGF1(algorithm=algorithm), algorithm=algorithm, label=None)
    )
    return aes_key_unwrap_with_padding(aes_key, key_hsm.ciphertext[split:])


def assert_released_key_matches(
    payload: jose.ReleasePayload, wrapping: rsa.RSAPrivateKey, *, oct_bytes: bytes | None = None
) -> bytes:
    """Unwrap and check the private key against the public half the vault published in the payload."""
    target = unwrap_key_hsm(payload.key.key_hsm, wrapping)
    base = payload.key.kty.removesuffix("-HSM")
    if base == "oct":
        assert oct_bytes is None or target == oct_bytes
        assert len(target) in (16, 24, 32)
        return target
    private = serialization.load_der_private_key(target, password=None)
    if base == "RSA":
        assert isinstance(private, rsa.RSAPrivateKey)
        numbers = private.public_key().public_numbers()
        assert payload.key.n is not None and payload.key.e is not None
        assert numbers.n == int.from_bytes(payload.key.n, "big")
        assert numbers.e == int.from_bytes(payload.key.e, "big")
    else:
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        ec_numbers = private.public_key().public_numbers()
        assert payload.key.x is not None and payload.key.y is not None
        assert ec_numbers.x == int.from_bytes(payload.key.x, "big")
        assert ec_numbers.y == int.from_bytes(payload.key.y, "big")
    return target


def thumbprint_s256(cert: x509.Certificate) -> str:
    return b64url(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def vault_ca() -> TestCertificateAuthority:
    return TestCertificateAuthority.create("skr vault tests")


@pytest.fixture
def vault_ca_file(vault_ca: TestCertificateAuthority, tmp_path: Path) -> Path:
    return vault_ca.write_ca_file(tmp_path / "ca")


@pytest.fixture(scope="session")
def access_issuer() -> LocalIssuer:
    """Stands in for Entra in the HTTP-level tests (the SDK tests use emu-core's Entra emulator)."""
    return LocalIssuer(issuer=ENTRA_ISSUER)


@pytest.fixture
async def attestation_issuer(vault_ca: TestCertificateAuthority) -> AsyncIterator[LocalIssuer]:
    issuer = LocalIssuer()
    await issuer.serve(vault_ca)
    yield issuer
    await issuer.stop()


@pytest.fixture(scope="session")
def runtime_key() -> RuntimeKey:
    return new_runtime_key()


VaultFactory = Callable[..., Awaitable[KeyVaultEmulator]]


@pytest.fixture
async def make_vault(
    vault_ca: TestCertificateAuthority, access_issuer: LocalIssuer, attestation_issuer: LocalIssuer
) -> AsyncIterator[VaultFactory]:
    """Start vault emulators trusting ``attestation_issuer`` and ``access_issuer``'s tokens."""
    started: list[KeyVaultEmulator] = []

    async def factory(
        flavour: Flavour = Flavour.KEY_VAULT,
        *,
        trusted: tuple[str, ...] | None = None,
        clock: Callable[[], datetime] | None = None,
        hostnames: tuple[str, ...] = ("127.0.0.1", "localhost"),
    ) -> KeyVaultEmulator:
        config = KeyVaultConfig(
            flavour=flavour,
            tenant_id=TENANT_ID,
            access_tokens=AccessTokenTrust(issuers=(ENTRA_ISSUER,), keys=access_issuer.public_keys),
            trusted_attestation_issuers=trusted if trusted is not None else (attestation_issuer.issuer,),
            hostnames=hostnames,
        )
        vault = KeyVaultEmulator(config, ca=vault_ca, clock=clock or (lambda: datetime.now(UTC)))
        await vault.start()
        started.append(vault)
        return vault

    yield factory
    for vault in started:
        await vault.stop()


def access_token(issuer: LocalIssuer, flavour: Flavour = Flavour.KEY_VAULT, **claims: Any) -> str:
    body = {"aud": flavour.resource, "tid": TENANT_ID, "sub": "test-workload", **claims}
    return issuer.mint(body, lifetime=3600)


@pytest.fixture
async def vault_http(vault_ca: TestCertificateAuthority) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTPS client trusting only the test CA (for wire-level assertions)."""
    connector = aiohttp.TCPConnector(ssl=vault_ca.client_ssl_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


# --- the SDK stack: emu-core's Entra and MAA emulators + both vault flavours ------------------------


@dataclass
class SdkStack:
    """Everything the real azure-identity / azure-keyvault-keys clients need, on loopback."""

    ca: TestCertificateAuthority
    ca_file: Path
    entra: Any  # skr_dev.emulators.entra.EntraEmulator
    maa: Any  # skr_dev.emulators.maa.MaaEmulator
    keyvault: KeyVaultEmulator
    managedhsm: KeyVaultEmulator
    client_id: str

    def vault(self, flavour: Flavour) -> KeyVaultEmulator:
        return self.keyvault if flavour is Flavour.KEY_VAULT else self.managedhsm

    def attestation_token(self, runtime: RuntimeKey | None, **claims: Any) -> str:
        """An MAA-emulator token with ACI-like claims and ``runtime`` as the x-ms-runtime wrapping key."""
        return str(self.maa.issue_token(sevsnp_claims(runtime, **claims)))


@pytest.fixture
async def sdk_stack(
    vault_ca: TestCertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SdkStack]:
    from skr_dev.emulators.entra import EntraEmulator
    from skr_dev.emulators.maa import MaaEmulator

    ca_file = vault_ca.write_ca_file(tmp_path / "ca")
    entra = EntraEmulator()
    identity = entra.add_workload_identity()
    maa = MaaEmulator()
    await entra.start(ca=vault_ca)
    await maa.start(ca=vault_ca)
    vaults = [
        KeyVaultEmulator(
            KeyVaultConfig(
                flavour=flavour,
                tenant_id=entra.tenant_id,
                access_tokens=AccessTokenTrust.from_entra(entra),
                trusted_attestation_issuers=(maa.issuer,),
            ),
            ca=vault_ca,
        )
        for flavour in (Flavour.KEY_VAULT, Flavour.MANAGED_HSM)
    ]
    for vault in vaults:
        await vault.start()
    token_file = entra.write_federated_token_file(tmp_path / "azure-identity-token", identity.client_id)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", entra.url)
    monkeypatch.setenv("AZURE_TENANT_ID", entra.tenant_id)
    monkeypatch.setenv("AZURE_CLIENT_ID", identity.client_id)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    try:
        yield SdkStack(vault_ca, ca_file, entra, maa, vaults[0], vaults[1], identity.client_id)
    finally:
        for vault in vaults:
            await vault.stop()
        await maa.stop()
        await entra.stop()
