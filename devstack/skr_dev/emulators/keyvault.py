"""Key Vault (Premium) and Managed HSM emulator: challenge auth, keys with release policies, SKR.

Why: skr's release path and the real ``azure-keyvault-keys`` SDK must be exercised against a
service that behaves like Azure on the wire (azure-facts §2, §3, §4.2, §7) — including the
challenge dance, the ``//release`` path form, policy refusals that name the failing claim, and a
release JWS whose x5c chains to a CA and names the vault host — without Azure.

One class, two flavours (:class:`Flavour`): ``KEY_VAULT`` (resource ``https://vault.azure.net``,
JSON 401 body, ``x5t``/``typ`` in the JWS header, no ``oct-HSM``) and ``MANAGED_HSM`` (resource
``https://managedhsm.azure.net``, empty 401 body, ``kid`` = ``x5t#S256``, sorted payload keys,
``oct-HSM`` allowed, imported keys echo the JWK's ``kty`` as the recording shows).

Usage::

    ca = TestCertificateAuthority.create()
    vault = KeyVaultEmulator(KeyVaultConfig(flavour=Flavour.KEY_VAULT, tenant_id=TENANT,
                                             access_tokens=AccessTokenTrust(issuers=(...), keys=...),
                                             trusted_attestation_issuers=(maa_url,)), ca=ca)
    await vault.seed([SeedKey("demo", "RSA-HSM", release_policy=policy_dict)])
    async with vault.running():   # or: url = await vault.start(); ...; await vault.stop()
        ...  # KeyClient(vault.url, credential, verify_challenge_resource=False, connection_verify=ca_file)

Fault injection (skr_dev.emulators.faults): transport-level faults use the route names
``{flavour}.create``, ``{flavour}.import_key``, ``{flavour}.get`` and ``{flavour}.release`` with
``{flavour}`` = ``keyvault`` or ``managedhsm`` — one prefix per flavour, so a test can break one
vault and not the other (``import_key``, not ``import``: aiohttp refuses route names containing a
Python keyword). They apply only to requests that passed the bearer check, so the
SDK's unauthenticated challenge request never consumes a fault. Semantic faults on
``{flavour}.release``: BAD_SIGNATURE (one bit of the JWS signature flipped) and UNKNOWN_KID
(the JWS is signed by a certificate from the same CA that names another host, ``wrong-host.invalid``,
so clients must reject it on the SAN check). EXPIRED_TOKEN does not apply (a JWS carries no
expiry; the leaf certificate's lifetime is fixed by the CA).

Wording marked UNCONFIRMED below (error texts, codes for some refusals) is the emulator's best
guess; tests assert on the claim named in a refusal, not on the prose around it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import json
import logging
import os
import re
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from skr.core import jose
from skr.errors import BadRequestError, KeyNotFoundError, ReleaseDeniedError, VerificationError
from skr_dev.emulators import policy as release_policy
from skr_dev.emulators.api_versions import KEYVAULT_API_VERSIONS, KEYVAULT_RELEASE_API_VERSIONS
from skr_dev.emulators.faults import FaultKind, FaultSet, faults_middleware
from skr_dev.emulators.server import FAULTS_KEY, HostedEmulator
from skr_dev.emulators.tls import IssuedCertificate, TestCertificateAuthority

__all__ = [
    "ACCEPTED_API_VERSIONS",
    "ENC_ALGORITHMS",
    "AccessTokenTrust",
    "Flavour",
    "KeyVaultConfig",
    "KeyVaultEmulator",
    "SeedKey",
    "seed_keys_from_json",
]

if TYPE_CHECKING:
    from skr_dev.emulators.entra import EntraEmulator

_logger = logging.getLogger(__name__)

ACCEPTED_API_VERSIONS: Final = KEYVAULT_API_VERSIONS
ENC_ALGORITHMS: Final[Mapping[str, type[hashes.HashAlgorithm]]] = {
    "CKM_RSA_AES_KEY_WRAP": hashes.SHA1,
    "RSA_AES_KEY_WRAP_256": hashes.SHA256,
    "RSA_AES_KEY_WRAP_384": hashes.SHA384,
}
DEFAULT_ENC: Final = "CKM_RSA_AES_KEY_WRAP"
MAX_BODY_BYTES: Final = 1024 * 1024
MAX_TARGET_BYTES: Final = 64 * 1024
MAX_ISSUER_DOCUMENT_BYTES: Final = 1024 * 1024
ISSUER_FETCH_TIMEOUT: Final = 5.0
ISSUER_KEYS_TTL: Final = 300.0
MAX_NONCE_CHARS: Final = 1024
MAX_TAGS: Final = 15
POLICY_CONTENT_TYPE: Final = "application/json; charset=utf-8"
WRONG_HOST: Final = "wrong-host.invalid"

RSA_SIZES: Final = frozenset({2048, 3072, 4096})
OCT_SIZES: Final = frozenset({128, 192, 256})
CURVES: Final[Mapping[str, ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
    "P-256K": ec.SECP256K1(),
}
_CURVE_NAMES: Final = {type(curve).__name__: name for name, curve in CURVES.items()}
_KEY_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")

PrivateMaterial = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | bytes


class Flavour(enum.Enum):
    """Which service the emulator plays."""

    KEY_VAULT = "keyvault"
    MANAGED_HSM = "managedhsm"

    @property
    def resource(self) -> str:
        return "https://vault.azure.net" if self is Flavour.KEY_VAULT else "https://managedhsm.azure.net"

    @property
    def route_prefix(self) -> str:
        return self.value

    @property
    def supports_oct(self) -> bool:
        return self is Flavour.MANAGED_HSM

    @property
    def recovery(self) -> tuple[str, int]:
        # KV's default soft-delete is 90 days; MHSM's REC shows CustomizedRecoverable with 7 days.
        if self is Flavour.KEY_VAULT:
            return "Recoverable+Purgeable", 90
        return "CustomizedRecoverable+Purgeable", 7


@dataclass(frozen=True, slots=True)
class AccessTokenTrust:
    """How the emulator validates bearer tokens: the Entra issuer(s) and their signing keys.

    ``keys`` is a callable so a test can rotate the Entra emulator's keys under a running vault.
    """

    issuers: tuple[str, ...]
    keys: Callable[[], Mapping[str, rsa.RSAPublicKey]]

    @classmethod
    def from_entra(cls, entra: EntraEmulator) -> AccessTokenTrust:
        """Trust the tokens of an Entra emulator (its issuer; its current signing keys, looked up per request)."""
        return cls(issuers=(entra.issuer,), keys=lambda: entra.public_keys)


@dataclass(frozen=True, slots=True)
class KeyVaultConfig:
    """Everything that shapes one emulated vault."""

    flavour: Flavour
    tenant_id: str
    access_tokens: AccessTokenTrust
    trusted_attestation_issuers: tuple[str, ...]
    """Issuers (e.g. the MAA emulator's URL) whose OpenID metadata the vault will fetch."""
    issuer_ca_file: Path | None = None
    """CA bundle for fetching issuer metadata; None = trust the emulator's own test CA."""
    hostnames: tuple[str, ...] = ("127.0.0.1", "localhost")
    """Names on the TLS and JWS-signing certificates (IP SANs for IP literals)."""
    authority_host: str = "https://login.microsoftonline.com"
    """What the 401 challenge names as ``authorization`` (only its tenant segment is used by SDKs)."""


@dataclass(frozen=True, slots=True)
class SeedKey:
    """A key to create directly (``skr dev`` demo keys, test fixtures).

    ``private_key`` seeds known material (RSA/EC private key object, or raw bytes for oct);
    otherwise fresh material is generated from ``kty``/``size``/``crv``.
    """

    name: str
    kty: str = "RSA-HSM"
    size: int | None = None
    crv: str | None = None
    release_policy: Mapping[str, Any] | bytes | None = None
    exportable: bool = True
    immutable: bool = False
    key_ops: tuple[str, ...] | None = None
    private_key: PrivateMaterial | None = field(default=None, repr=False)


def seed_keys_from_json(document: bytes | str | Mapping[str, Any]) -> list[SeedKey]:
    """Parse ``{"keys": [{"name", "kty", "size"|"key_size", "crv", "release_policy", "exportable"}]}``."""
    try:
        data: Any = document if isinstance(document, Mapping) else json.loads(document)
    except (ValueError, UnicodeDecodeError):
        raise BadRequestError("seed document is not valid JSON") from None
    entries = data.get("keys") if isinstance(data, Mapping) else None
    if not isinstance(entries, list):
        raise BadRequestError("seed document must be an object with a 'keys' list")
    seeds = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise BadRequestError(f"seed key {index} must be an object with a 'name'")
        size = entry.get("size", entry.get("key_size"))
        policy_value = entry.get("release_policy")
        exportable = entry.get("exportable", policy_value is not None)
        seeds.append(
            SeedKey(
                name=entry["name"],
                kty=str(entry.get("kty", "RSA-HSM")),
                size=size if isinstance(size, int) else None,
                crv=entry.get("crv") if isinstance(entry.get("crv"), str) else None,
                release_policy=policy_value if isinstance(policy_value, Mapping) else None,
                exportable=bool(exportable),
                immutable=bool(entry.get("immutable", False)),
            )
        )
    return seeds


# --- service errors ----------------------------------------------------------------------------------


# Refusals travel as the skr error types (no emulator-private exception classes) and are mapped to
# the service's wire codes in one place, ``_errors_middleware``:
# BadRequestError → 400 BadParameter, ReleaseDeniedError → 403 Forbidden, KeyNotFoundError → 404.


def _bad_parameter(message: str) -> BadRequestError:
    return BadRequestError(message)


def _forbidden(message: str) -> ReleaseDeniedError:
    return ReleaseDeniedError(message)


def _error_response(status: int, code: str, message: str) -> web.Response:
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":"))
    return web.Response(status=status, text=body, content_type="application/json", charset="utf-8")


# --- stored keys -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _StoredPolicy:
    data: bytes  # canonical compact JSON, as KV re-serialises it
    parsed: release_policy.ReleasePolicy
    content_type: str
    immutable: bool


@dataclass(frozen=True, slots=True)
class _KeyVersion:
    name: str
    version: str
    kty: str
    key_ops: tuple[str, ...]
    hsm: bool
    exportable: bool
    enabled: bool
    created: int
    updated: int
    policy: _StoredPolicy | None
    tags: Mapping[str, str]
    not_before: int | None
    expires: int | None
    material: PrivateMaterial = field(repr=False)


_DEFAULT_OPS: Final[Mapping[str, tuple[str, ...]]] = {
    "RSA": ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"),
    "EC": ("sign", "verify"),
    "oct": ("encrypt", "decrypt", "wrapKey", "unwrapKey"),
}


def _base_kty(kty: str) -> str:
    return kty[: -len("-HSM")] if kty.endswith("-HSM") else kty


def _b64url_int(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return jose.b64url_encode(value.to_bytes(size, "big"))


def _public_jwk(key: _KeyVersion, kid: str, *, exponent_bytes: int | None = None) -> dict[str, Any]:
    """The public JWK; ``exponent_bytes`` pads ``e`` (KV's release payload sends ``AAEAAQ``)."""
    jwk: dict[str, Any] = {"kid": kid, "kty": key.kty, "key_ops": list(key.key_ops)}
    material = key.material
    if isinstance(material, rsa.RSAPrivateKey):
        numbers = material.public_key().public_numbers()
        jwk["n"] = _b64url_int(numbers.n)
        natural = max(1, (numbers.e.bit_length() + 7) // 8)
        jwk["e"] = _b64url_int(numbers.e, max(natural, exponent_bytes or 0))
    elif isinstance(material, ec.EllipticCurvePrivateKey):
        numbers_ec = material.public_key().public_numbers()
        length = (material.curve.key_size + 7) // 8
        jwk["crv"] = _CURVE_NAMES[type(material.curve).__name__]
        jwk["x"] = _b64url_int(numbers_ec.x, length)
        jwk["y"] = _b64url_int(numbers_ec.y, length)
    return jwk


def _target_bytes(material: PrivateMaterial) -> bytes:
    """What gets wrapped: PKCS#8 DER for RSA/EC, raw bytes for oct (azure-facts §2.3)."""
    if isinstance(material, bytes):
        return material
    return material.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _decode_lenient_b64(text: Any, *, what: str, max_bytes: int) -> bytes:
    """b64 or b64url, padded or not: what clients send for ``release_policy.data`` and JWK fields."""
    if not isinstance(text, str) or not text:
        raise _bad_parameter(f"{what} must be a non-empty base64 string")
    if len(text) > (max_bytes * 4) // 3 + 4:
        raise _bad_parameter(f"{what} is too large")
    normalised = text.strip().replace("-", "+").replace("_", "/").rstrip("=")
    if re.fullmatch(r"[A-Za-z0-9+/]*", normalised) is None or len(normalised) % 4 == 1:
        raise _bad_parameter(f"{what} is not valid base64")
    try:
        return base64.b64decode(normalised + "=" * (-len(normalised) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _bad_parameter(f"{what} is not valid base64") from None


def _lookup_ci(mapping: Mapping[str, Any], name: str) -> Any:
    """Field names the SDKs spell differently (``Hsm`` vs ``hsm``) are matched case-insensitively."""
    for key, value in mapping.items():
        if key.lower() == name.lower():
            return value
    return None


# --- the emulator ------------------------------------------------------------------------------------


class KeyVaultEmulator(HostedEmulator):
    """An HTTPS Key Vault or Managed HSM on loopback, driven by the real Azure SDKs."""

    def __init__(
        self,
        config: KeyVaultConfig,
        *,
        ca: TestCertificateAuthority,
        faults: FaultSet | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not config.tenant_id:
            raise ValueError("tenant_id is required (it must equal the credential's AZURE_TENANT_ID)")
        self.name = config.flavour.route_prefix
        super().__init__(faults=faults)
        self.config = config
        self.ca = ca
        self._clock = clock
        self._hostnames = tuple(config.hostnames)
        self._keys: dict[str, list[_KeyVersion]] = {}
        self._signer: IssuedCertificate = ca.issue_server_certificate(self._hostnames)
        self._wrong_host_signer: IssuedCertificate | None = None
        self._issuer_keys: dict[str, tuple[float, dict[str, rsa.RSAPublicKey]]] = {}
        self._issuer_locks: dict[str, asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None
        self._trusted_issuers = frozenset(_issuer_key(item) for item in config.trusted_attestation_issuers)

    def __repr__(self) -> str:
        return f"KeyVaultEmulator({self.flavour.value}, keys={len(self._keys)})"

    # -- lifecycle --

    @property
    def flavour(self) -> Flavour:
        return self.config.flavour

    @property
    def signing_chain(self) -> tuple[x509.Certificate, ...]:
        """(leaf, intermediate, root) of the certificate that signs release JWSs."""
        return self._signer.chain

    async def start(
        self,
        *,
        ca: TestCertificateAuthority | None = None,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> str:
        """Serve HTTPS on loopback with a leaf from the vault's CA naming ``hostnames``; returns the URL."""
        if host not in self._hostnames:
            self._hostnames = (host, *self._hostnames)
            self._signer = self.ca.issue_server_certificate(self._hostnames)
        context = ssl_context or (ca or self.ca).server_ssl_context(self._hostnames)
        return await super().start(ssl_context=context, host=host, port=port)

    async def stop(self) -> None:
        await super().stop()
        await self._close_session()

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def build_app(self) -> web.Application:
        """The aiohttp application: challenge auth first, then faults, then the routes."""
        app = web.Application(
            client_max_size=MAX_BODY_BYTES,
            middlewares=[self._errors_middleware, self._auth_middleware, faults_middleware(self.faults)],
        )
        app[FAULTS_KEY] = self.faults
        prefix = self.flavour.route_prefix
        app.router.add_post("/keys/{name}/create", self._handle_create, name=f"{prefix}.create")
        # One route per operation so fault names stay unique; the optional segment covers the three
        # release forms (/keys/n/v/release, /keys/n//release, /keys/n/release) and the get forms
        # (/keys/n, /keys/n/, /keys/n/v).
        app.router.add_post("/keys/{name}/{version:(?:[^/]*/)?}release", self._handle_release, name=f"{prefix}.release")
        app.router.add_put("/keys/{name}", self._handle_import, name=f"{prefix}.import_key")
        app.router.add_get("/keys/{name}{version:(?:/[^/]*)?}", self._handle_get, name=f"{prefix}.get")
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self._close_session()

    # -- seeding --

    async def seed(self, keys: Sequence[SeedKey]) -> list[str]:
        """Create keys directly (no HTTP); returns their versions. Same rules as the REST API."""
        versions = []
        for seed in keys:
            material = seed.private_key
            kty = seed.kty
            if material is None:
                material = await asyncio.to_thread(_generate, kty, seed.size, seed.crv, self.flavour)
            policy_stored = None
            if seed.release_policy is not None:
                raw = (
                    seed.release_policy
                    if isinstance(seed.release_policy, bytes)
                    else json.dumps(seed.release_policy).encode()
                )
                policy_stored = _store_policy(raw, content_type=None, immutable=seed.immutable)
            stored = self._store(
                seed.name,
                kty=kty,
                hsm=kty.endswith("-HSM") or self.flavour is Flavour.MANAGED_HSM,
                material=material,
                key_ops=seed.key_ops,
                attributes=_Attributes(exportable=seed.exportable, enabled=True, not_before=None, expires=None),
                policy=policy_stored,
                tags={},
            )
            versions.append(stored.version)
        return versions

    # -- middlewares --

    @web.middleware
    async def _errors_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequestError as error:
            return _error_response(400, "BadParameter", error.message)
        except ReleaseDeniedError as error:
            return _error_response(403, "Forbidden", error.message)
        except KeyNotFoundError as error:
            return _error_response(404, "KeyNotFound", error.message)
        except web.HTTPRequestEntityTooLarge:
            return _error_response(413, "BadParameter", f"Request body is larger than {MAX_BODY_BYTES} bytes.")
        except web.HTTPNotFound:
            return _error_response(404, "NotFound", "The requested resource was not found.")
        except web.HTTPMethodNotAllowed:
            return _error_response(405, "MethodNotAllowed", "The HTTP method is not allowed for this resource.")

    def _challenge_header(self) -> str:
        authority = f"{self.config.authority_host.rstrip('/')}/{self.config.tenant_id}"
        return f'Bearer authorization="{authority}", resource="{self.flavour.resource}"'

    def _unauthorized(self, message: str | None) -> web.Response:
        headers = {"WWW-Authenticate": self._challenge_header()}
        if message is None and self.flavour is Flavour.MANAGED_HSM:
            return web.Response(status=401, headers=headers)  # MHSM: empty body, Content-Length 0
        text = message or "AKV10000: Request is missing a Bearer or PoP token."
        response = _error_response(401, "Unauthorized", text)
        response.headers.update(headers)
        return response

    @web.middleware
    async def _auth_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Challenge auth, decided before the body is read and whatever route the path names."""
        if request.path.startswith("/_emulator/"):
            return await handler(request)
        authorization = request.headers.get("Authorization")
        if authorization is None:
            return self._unauthorized(None)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self._unauthorized("AKV10001: The Authorization header is not a Bearer token.")
        try:
            self._validate_access_token(token.strip())
        except VerificationError as error:
            return self._unauthorized(f"AKV10032: Invalid access token: {error.message}")
        return await handler(request)

    def _validate_access_token(self, token: str) -> None:
        resource = self.flavour.resource
        verified = jose.verify_jwt_rs256(
            token,
            self.config.access_tokens.keys(),
            issuer=self.config.access_tokens.issuers,
            now=self._clock(),
            audience=(resource, resource + "/"),
            what="access token",
        )
        tenant = verified.claims.get("tid")
        if tenant is not None and tenant != self.config.tenant_id:
            raise VerificationError("access token was issued for another tenant")

    # -- request helpers --

    def _api_version(self, request: web.Request, accepted: frozenset[str] = ACCEPTED_API_VERSIONS) -> str:
        version = request.query.get("api-version")
        if not version:
            raise _bad_parameter("The 'api-version' query parameter is missing.")
        if version not in accepted:
            supported = ", ".join(sorted(accepted))
            raise _bad_parameter(f"The specified version ({version[:32]}) is not recognized; use one of {supported}.")
        return version

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            return jose.parse_json_object(raw, what="request body")
        except VerificationError as error:
            raise _bad_parameter(f"The request body is not valid: {error.message}") from None

    def _vault_url(self, request: web.Request) -> str:
        return f"https://{request.host}"

    def _key_name(self, request: web.Request) -> str:
        name = request.match_info["name"]
        if _KEY_NAME.fullmatch(name) is None:
            raise _bad_parameter("The key name must be 1-127 characters of letters, digits and '-'.")
        return name

    def _find(self, name: str, version: str) -> _KeyVersion:
        versions = self._keys.get(name.lower(), [])
        if version:
            for item in versions:
                if item.version == version:
                    return item
        elif versions:
            return versions[-1]
        label = f"{name}/{version}" if version else name
        # Text UNCONFIRMED (azure-facts §2.6); the code KeyNotFound and status 404 are documented.
        raise KeyNotFoundError(f"A key with (name/id) {label} was not found in this key vault.")

    def _bundle(self, key: _KeyVersion, vault_url: str, *, key_hsm: str | None = None) -> dict[str, Any]:
        kid = f"{vault_url}/keys/{key.name}/{key.version}"
        # The Key Vault release payload (REC, azure-facts §2): a 4-byte exponent and a release_policy
        # of {data, immutable} only; Managed HSM's has AQAB and contentType. Get/create keep both.
        kv_release = key_hsm is not None and self.flavour is Flavour.KEY_VAULT
        jwk = _public_jwk(key, kid, exponent_bytes=4 if kv_release else None)
        if key_hsm is not None:
            jwk["key_hsm"] = key_hsm
        recovery_level, recoverable_days = self.flavour.recovery
        attributes: dict[str, Any] = {
            "enabled": key.enabled,
            "created": key.created,
            "updated": key.updated,
            "recoveryLevel": recovery_level,
            "recoverableDays": recoverable_days,
            "exportable": key.exportable,
        }
        if key.not_before is not None:
            attributes["nbf"] = key.not_before
        if key.expires is not None:
            attributes["exp"] = key.expires
        bundle: dict[str, Any] = {"key": jwk, "attributes": attributes}
        if key.tags:
            bundle["tags"] = dict(key.tags)
        if key.policy is not None:
            bundle["release_policy"] = {
                "contentType": key.policy.content_type,
                "data": jose.b64url_encode(key.policy.data),
                "immutable": key.policy.immutable,
            }
            if kv_release:
                del bundle["release_policy"]["contentType"]
        return bundle

    def _store(
        self,
        name: str,
        *,
        kty: str,
        hsm: bool,
        material: PrivateMaterial,
        key_ops: Sequence[str] | None,
        attributes: _Attributes,
        policy: _StoredPolicy | None,
        tags: Mapping[str, str],
    ) -> _KeyVersion:
        exportable, enabled = attributes.exportable, attributes.enabled
        not_before, expires = attributes.not_before, attributes.expires
        if _KEY_NAME.fullmatch(name) is None:
            raise _bad_parameter("The key name must be 1-127 characters of letters, digits and '-'.")
        if exportable and policy is None:
            raise _bad_parameter("AKV.SKR.1004: Exportable keys must have release policy.")
        if policy is not None and not exportable:
            raise _bad_parameter("AKV.SKR.1005: Non-exportable keys must not have release policy.")
        if exportable and not hsm:
            # Code from a script comment (azure-facts §2.4); the text is the emulator's (UNCONFIRMED).
            raise _bad_parameter("AKV.SKR.1006: Exportable keys must be HSM-protected (RSA-HSM, EC-HSM, oct-HSM).")
        if _base_kty(kty) == "oct" and not self.flavour.supports_oct:
            raise _bad_parameter("oct-HSM keys are only supported by Managed HSM, not by a key vault.")
        previous = self._keys.get(name.lower(), [])
        locked = previous[-1].policy if previous and previous[-1].policy is not None else None
        if locked is not None and locked.immutable and (policy is None or policy.data != locked.data):
            raise _bad_parameter("AKV.SKR.1020: Immutable Key Release Policy cannot be modified.")
        now = int(self._clock().timestamp())
        stored = _KeyVersion(
            name=previous[0].name if previous else name,
            version=uuid.uuid4().hex,
            kty=kty,
            key_ops=tuple(key_ops) if key_ops else _DEFAULT_OPS[_base_kty(kty)],
            hsm=hsm,
            exportable=exportable,
            enabled=enabled,
            created=now,
            updated=now,
            policy=policy,
            tags=dict(tags),
            not_before=not_before,
            expires=expires,
            material=material,
        )
        self._keys.setdefault(name.lower(), []).append(stored)
        return stored

    # -- handlers --

    async def _handle_create(self, request: web.Request) -> web.Response:
        self._api_version(request)
        name = self._key_name(request)
        body = await self._json_body(request)
        kty = body.get("kty")
        if not isinstance(kty, str):
            raise _bad_parameter("The 'kty' field is required.")
        allowed = {"RSA-HSM", "EC-HSM", "oct-HSM"} | ({"RSA", "EC"} if self.flavour is Flavour.KEY_VAULT else set())
        if kty not in allowed:
            if kty == "oct-HSM":
                raise _bad_parameter("oct-HSM keys are only supported by Managed HSM, not by a key vault.")
            raise _bad_parameter(f"Key type {kty[:16]!r} is not supported here; use one of {sorted(allowed)}.")
        size = body.get("key_size")
        crv = body.get("crv")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            raise _bad_parameter("The 'key_size' field must be an integer.")
        if crv is not None and not isinstance(crv, str):
            raise _bad_parameter("The 'crv' field must be a string.")
        attributes, policy, tags, key_ops = self._common_fields(body)
        _check_generation_parameters(kty, size, crv)
        material = await asyncio.to_thread(_generate, kty, size, crv, self.flavour)
        stored = self._store(
            name,
            kty=kty,
            hsm=kty.endswith("-HSM"),
            material=material,
            key_ops=key_ops,
            attributes=attributes,
            policy=policy,
            tags=tags,
        )
        return web.json_response(self._bundle(stored, self._vault_url(request)))

    async def _handle_import(self, request: web.Request) -> web.Response:
        self._api_version(request)
        name = self._key_name(request)
        body = await self._json_body(request)
        jwk = body.get("key")
        if not isinstance(jwk, dict):
            raise _bad_parameter("The 'key' field (a JSON Web Key) is required.")
        hsm_flag = _lookup_ci(body, "hsm")
        if hsm_flag is not None and not isinstance(hsm_flag, bool):
            raise _bad_parameter("The 'Hsm' field must be a boolean.")
        kty = jwk.get("kty")
        if not isinstance(kty, str) or _base_kty(kty) not in _DEFAULT_OPS:
            raise _bad_parameter("JSON Web Key: 'kty' must be RSA, RSA-HSM, EC, EC-HSM, oct or oct-HSM.")
        hsm = bool(hsm_flag) or kty.endswith("-HSM") or self.flavour is Flavour.MANAGED_HSM
        material = _material_from_jwk(jwk, _base_kty(kty))
        attributes, policy, tags, key_ops = self._common_fields(body)
        if key_ops is None and isinstance(jwk.get("key_ops"), list):
            key_ops = _key_ops(jwk.get("key_ops"))
        # The MHSM recording echoes the JWK's kty ("RSA") for an imported key; KV reports "-HSM".
        reported = kty if self.flavour is Flavour.MANAGED_HSM else _base_kty(kty) + ("-HSM" if hsm else "")
        stored = self._store(
            name,
            kty=reported,
            hsm=hsm,
            material=material,
            key_ops=key_ops,
            attributes=attributes,
            policy=policy,
            tags=tags,
        )
        return web.json_response(self._bundle(stored, self._vault_url(request)))

    async def _handle_get(self, request: web.Request) -> web.Response:
        self._api_version(request)
        name = request.match_info["name"]
        version = request.match_info["version"].lstrip("/")
        key = self._find(name, version)
        return web.json_response(self._bundle(key, self._vault_url(request)))

    def _common_fields(
        self, body: Mapping[str, Any]
    ) -> tuple[_Attributes, _StoredPolicy | None, dict[str, str], tuple[str, ...] | None]:
        attributes = _parse_attributes(body.get("attributes"))
        policy = None
        policy_field = body.get("release_policy")
        if policy_field is not None:
            if not isinstance(policy_field, dict):
                raise _bad_parameter("The 'release_policy' field must be an object.")
            data = _decode_lenient_b64(
                policy_field.get("data"), what="release_policy.data", max_bytes=release_policy.MAX_POLICY_BYTES
            )
            content_type = policy_field.get("contentType")
            immutable = policy_field.get("immutable", False)
            if content_type is not None and not isinstance(content_type, str):
                raise _bad_parameter("release_policy.contentType must be a string.")
            if not isinstance(immutable, bool):
                raise _bad_parameter("release_policy.immutable must be a boolean.")
            policy = _store_policy(data, content_type=content_type, immutable=immutable)
        tags_field = body.get("tags") or {}
        if (
            not isinstance(tags_field, dict)
            or len(tags_field) > MAX_TAGS
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags_field.items())
        ):
            raise _bad_parameter(f"'tags' must be an object of at most {MAX_TAGS} string values.")
        key_ops = _key_ops(body["key_ops"]) if body.get("key_ops") is not None else None
        return attributes, policy, dict(tags_field), key_ops

    async def _handle_release(self, request: web.Request) -> web.Response:
        """Release: verify the attestation token, evaluate the policy, wrap, sign (azure-facts §2)."""
        api_version = self._api_version(request, KEYVAULT_RELEASE_API_VERSIONS)
        name = request.match_info["name"]
        version = request.match_info["version"].rstrip("/")
        body = await self._json_body(request)
        target = body.get("target")
        if not isinstance(target, str) or not target:
            raise _bad_parameter("The 'target' field (the attestation token) is required.")
        if len(target) > MAX_TARGET_BYTES:
            raise _bad_parameter(f"The 'target' token is larger than {MAX_TARGET_BYTES} bytes.")
        nonce = body.get("nonce")
        if nonce is not None and (not isinstance(nonce, str) or len(nonce) > MAX_NONCE_CHARS):
            raise _bad_parameter(f"The 'nonce' field must be a string of at most {MAX_NONCE_CHARS} characters.")
        enc = body.get("enc", DEFAULT_ENC)
        if not isinstance(enc, str) or enc not in ENC_ALGORITHMS:
            raise _bad_parameter(f"The 'enc' field must be one of {sorted(ENC_ALGORITHMS)}.")
        key = self._find(name, version)
        if not key.enabled:
            raise _forbidden("Operation release is not allowed on a disabled key.")
        if not key.exportable or key.policy is None:
            # Status and text UNCONFIRMED: the service refuses; 403 reads as "not releasable".
            raise _forbidden("The key is not exportable and cannot be released.")
        try:
            verified = await self._verify_attestation(target)
        except VerificationError as error:
            _logger.info("release of %s refused: attestation not verifiable (%s)", key.name, error.message)
            raise _forbidden(
                f"Target environment attestation statement cannot be verified. ({error.message})"
            ) from None
        decision = release_policy.evaluate(key.policy.parsed, verified.claims, verified.issuer)
        if not decision.allowed:
            assert decision.failure is not None
            # Wording UNCONFIRMED; the failing claim is named so developers know what to fix.
            raise _forbidden(
                "Target environment attestation does not meet key release policy requirements: "
                + decision.failure.message()
            )
        wrapping_kid, wrapping_key = _runtime_wrapping_key(verified.claims)
        ciphertext = _wrap(wrapping_key, enc, _target_bytes(key.material))
        key_hsm = {
            "schema_version": "1.0",
            "header": {"kid": wrapping_kid, "alg": "dir", "enc": enc},
            "ciphertext": jose.b64url_encode(ciphertext),
        }
        vault_url = self._vault_url(request)
        request_part: dict[str, Any] = {
            "api-version": api_version,
            "enc": enc,
            "kid": f"{vault_url}/keys/{name}" + (f"/{version}" if version else ""),
        }
        if nonce is not None:
            request_part["nonce"] = nonce
        payload = {
            "request": request_part,
            "response": {
                "key": self._bundle(
                    key, vault_url, key_hsm=jose.b64url_encode(json.dumps(key_hsm, separators=(",", ":")).encode())
                )
            },
        }
        route = f"{self.flavour.route_prefix}.release"
        fault = self.faults.take(route, {FaultKind.BAD_SIGNATURE, FaultKind.UNKNOWN_KID})
        signer = self._signer
        if fault is not None and fault.kind is FaultKind.UNKNOWN_KID:
            signer = self._wrong_host()
        jws = self._sign(payload, signer, corrupt=fault is not None and fault.kind is FaultKind.BAD_SIGNATURE)
        return web.json_response({"value": jws})

    def _wrong_host(self) -> IssuedCertificate:
        if self._wrong_host_signer is None:
            self._wrong_host_signer = self.ca.issue_server_certificate((WRONG_HOST,))
        return self._wrong_host_signer

    def _sign(self, payload: Mapping[str, Any], signer: IssuedCertificate, *, corrupt: bool) -> str:
        """Compact JWS, RS256 via ``cryptography``; header per flavour (azure-facts §2.2)."""
        leaf_der = signer.certificate.public_bytes(serialization.Encoding.DER)
        x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode() for cert in signer.chain]
        s256 = jose.b64url_encode(hashlib.sha256(leaf_der).digest())
        header: dict[str, Any]
        if self.flavour is Flavour.KEY_VAULT:
            sha1 = hashlib.sha1(leaf_der).digest()  # x5t is SHA-1 by definition (RFC 7515)
            header = {
                "alg": "RS256",
                "kid": sha1.hex().upper(),
                "x5t": jose.b64url_encode(sha1),
                "typ": "JWT",
                "x5t#S256": s256,
                "x5c": x5c,
            }
        else:
            header = {"alg": "RS256", "kid": s256, "x5c": x5c, "x5t#S256": s256}
        sort_keys = self.flavour is Flavour.MANAGED_HSM  # MHSM emitted alphabetically sorted members
        header_b64 = jose.b64url_encode(json.dumps(header, separators=(",", ":")).encode())
        payload_b64 = jose.b64url_encode(json.dumps(payload, separators=(",", ":"), sort_keys=sort_keys).encode())
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        signature = bytearray(signer.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256()))
        if corrupt:
            signature[len(signature) // 2] ^= 0x01
        return f"{header_b64}.{payload_b64}.{jose.b64url_encode(bytes(signature))}"

    # -- attestation token verification --

    async def _verify_attestation(self, token: str) -> jose.VerifiedJwt:
        """Verify ``target`` against its issuer's OpenID metadata and JWKS (trusted issuers only)."""
        unverified = jose.parse_compact(token, max_bytes=MAX_TARGET_BYTES, what="attestation token")
        claims = jose.parse_json_object(unverified.payload, what="attestation token claims")
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or _issuer_key(issuer) not in self._trusted_issuers:
            raise VerificationError("the attestation token's issuer is not trusted by this vault")
        kid = unverified.header.get("kid")
        keys = await self._issuer_signing_keys(issuer, refresh=False)
        if isinstance(kid, str) and kid not in keys:
            keys = await self._issuer_signing_keys(issuer, refresh=True)  # the issuer may have rotated
        return jose.verify_jwt_rs256(
            token, keys, issuer=issuer, now=self._clock(), max_bytes=MAX_TARGET_BYTES, what="attestation token"
        )

    async def _issuer_signing_keys(self, issuer: str, *, refresh: bool) -> dict[str, rsa.RSAPublicKey]:
        cache_key = _issuer_key(issuer)
        lock = self._issuer_locks.setdefault(cache_key, asyncio.Lock())
        async with lock:
            cached = self._issuer_keys.get(cache_key)
            if cached is not None and not refresh and cached[0] > time.monotonic():
                return cached[1]
            base = issuer.rstrip("/")
            metadata = jose.parse_json_object(
                await self._fetch(f"{base}/.well-known/openid-configuration"), what="issuer OpenID metadata"
            )
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise VerificationError("issuer OpenID metadata has no jwks_uri")
            # Only fetch keys from the issuer's own origin (an emulator must not be an open fetcher).
            if _origin(jwks_uri) != _origin(base):
                raise VerificationError("issuer jwks_uri is not on the issuer's own host")
            keys = jose.keys_from_jwks(await self._fetch(jwks_uri))
            self._issuer_keys[cache_key] = (time.monotonic() + ISSUER_KEYS_TTL, keys)
            return keys

    def _issuer_ssl_context(self) -> ssl.SSLContext:
        if self.config.issuer_ca_file is not None:
            context = ssl.create_default_context(cafile=str(self.config.issuer_ca_file))
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            return context
        return self.ca.client_ssl_context()

    async def _fetch(self, url: str) -> bytes:
        if not url.startswith("https://"):
            raise VerificationError("issuer metadata must be served over https")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=ISSUER_FETCH_TIMEOUT),
                connector=aiohttp.TCPConnector(ssl=self._issuer_ssl_context()),
            )
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise VerificationError(f"issuer metadata fetch answered HTTP {response.status}")
                if (response.content_length or 0) > MAX_ISSUER_DOCUMENT_BYTES:
                    raise VerificationError("issuer metadata is too large")
                chunks: list[bytes] = []
                total = 0
                async for chunk in response.content.iter_chunked(64 * 1024):
                    total += len(chunk)
                    if total > MAX_ISSUER_DOCUMENT_BYTES:
                        raise VerificationError("issuer metadata is too large")
                    chunks.append(chunk)
                return b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise VerificationError(f"issuer metadata could not be fetched ({type(error).__name__})") from None


# --- pure helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Attributes:
    exportable: bool
    enabled: bool
    not_before: int | None
    expires: int | None


def _parse_attributes(value: Any) -> _Attributes:
    if value is None:
        return _Attributes(exportable=False, enabled=True, not_before=None, expires=None)
    if not isinstance(value, dict):
        raise _bad_parameter("The 'attributes' field must be an object.")
    exportable = value.get("exportable", False)
    enabled = value.get("enabled", True)
    if not isinstance(exportable, bool) or not isinstance(enabled, bool):
        raise _bad_parameter("attributes.exportable and attributes.enabled must be booleans.")
    times = []
    for name in ("nbf", "exp"):
        item = value.get(name)
        if item is not None and (isinstance(item, bool) or not isinstance(item, int)):
            raise _bad_parameter(f"attributes.{name} must be an integer (seconds since the epoch).")
        times.append(item)
    return _Attributes(exportable=exportable, enabled=enabled, not_before=times[0], expires=times[1])


def _key_ops(value: Any) -> tuple[str, ...]:
    allowed = {"encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export"}
    if not isinstance(value, list) or not all(isinstance(op, str) and op in allowed for op in value):
        raise _bad_parameter(f"'key_ops' must be a list drawn from {sorted(allowed)}.")
    return tuple(value)


def _store_policy(data: bytes, *, content_type: str | None, immutable: bool) -> _StoredPolicy:
    parsed = release_policy.parse_policy(data)  # BadRequestError → 400 BadParameter
    return _StoredPolicy(
        data=release_policy.canonical_json(data),
        parsed=parsed,
        content_type=content_type or POLICY_CONTENT_TYPE,
        immutable=immutable,
    )


def _check_generation_parameters(kty: str, size: int | None, crv: str | None) -> None:
    base = _base_kty(kty)
    if base == "RSA" and size is not None and size not in RSA_SIZES:
        raise _bad_parameter(f"RSA key size must be one of {sorted(RSA_SIZES)}.")
    if base == "oct" and size is not None and size not in OCT_SIZES:
        raise _bad_parameter(f"oct-HSM key size must be one of {sorted(OCT_SIZES)}.")
    if base == "EC" and crv is not None and crv not in CURVES:
        raise _bad_parameter(f"EC curve must be one of {sorted(CURVES)}.")


def _generate(kty: str, size: int | None, crv: str | None, flavour: Flavour) -> PrivateMaterial:
    base = _base_kty(kty)
    _check_generation_parameters(kty, size, crv)
    if base == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=size or 2048)
    if base == "EC":
        return ec.generate_private_key(CURVES[crv or "P-256"])
    if base == "oct":
        if not flavour.supports_oct:
            raise _bad_parameter("oct-HSM keys are only supported by Managed HSM, not by a key vault.")
        return os.urandom((size or 256) // 8)
    raise _bad_parameter(f"Key type {kty[:16]!r} is not supported.")


def _jwk_int(jwk: Mapping[str, Any], name: str) -> int:
    return int.from_bytes(_decode_lenient_b64(jwk.get(name), what=f"JSON Web Key '{name}'", max_bytes=1024), "big")


def _material_from_jwk(jwk: Mapping[str, Any], base: str) -> PrivateMaterial:
    """Private key material from an import JWK (RSA n,e,d[,p,q,dp,dq,qi]; EC crv,x,y,d; oct k)."""
    try:
        if base == "RSA":
            n, e, d = _jwk_int(jwk, "n"), _jwk_int(jwk, "e"), _jwk_int(jwk, "d")
            if all(jwk.get(part) for part in ("p", "q", "dp", "dq", "qi")):
                p, q = _jwk_int(jwk, "p"), _jwk_int(jwk, "q")
                dp, dq, qi = _jwk_int(jwk, "dp"), _jwk_int(jwk, "dq"), _jwk_int(jwk, "qi")
            else:
                p, q = rsa.rsa_recover_prime_factors(n, e, d)
                dp, dq, qi = rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q)
            public = rsa.RSAPublicNumbers(e, n)
            key = rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, public).private_key()
            if key.key_size not in RSA_SIZES:
                raise _bad_parameter(f"RSA key size must be one of {sorted(RSA_SIZES)}.")
            return key
        if base == "EC":
            crv = jwk.get("crv")
            if not isinstance(crv, str) or crv not in CURVES:
                raise _bad_parameter(f"JSON Web Key: 'crv' must be one of {sorted(CURVES)}.")
            private_value = _jwk_int(jwk, "d")
            ec_key = ec.derive_private_key(private_value, CURVES[crv])
            numbers = ec_key.public_key().public_numbers()
            if (numbers.x, numbers.y) != (_jwk_int(jwk, "x"), _jwk_int(jwk, "y")):
                raise _bad_parameter("JSON Web Key: x/y do not match d.")
            return ec_key
        raw = _decode_lenient_b64(jwk.get("k"), what="JSON Web Key 'k'", max_bytes=64)
        if len(raw) * 8 not in OCT_SIZES:
            raise _bad_parameter("JSON Web Key: an oct key must be 128, 192 or 256 bits.")
        return raw
    except ValueError:
        raise _bad_parameter("JSON Web Key: the private key parameters are not a valid key.") from None


def _runtime_wrapping_key(claims: Mapping[str, Any]) -> tuple[str, rsa.RSAPublicKey]:
    """The first RSA JWK in ``x-ms-runtime.keys`` usable for encryption (azure-facts §1.5)."""
    runtime = claims.get("x-ms-runtime")
    keys = runtime.get("keys") if isinstance(runtime, Mapping) else None
    if isinstance(keys, list):
        for jwk in keys[:16]:
            if not isinstance(jwk, Mapping) or jwk.get("kty") != "RSA":
                continue
            ops = jwk.get("key_ops")
            usable = (isinstance(ops, list) and "encrypt" in ops) or "enc" in (jwk.get("use"), jwk.get("key_use"))
            if not usable:
                continue
            try:
                n = int.from_bytes(jose.b64url_decode(jwk.get("n", ""), what="n", max_bytes=1024), "big")
                e = int.from_bytes(jose.b64url_decode(jwk.get("e", ""), what="e", max_bytes=8), "big")
                public = rsa.RSAPublicNumbers(e, n).public_key()
            except (VerificationError, ValueError):
                continue
            if public.key_size < 2048:
                continue
            kid = jwk.get("kid")
            return (kid if isinstance(kid, str) else ""), public
    # Status/text UNCONFIRMED; KV documents that x-ms-runtime.keys must hold an RSA encryption key.
    raise _forbidden(
        "Target environment attestation statement does not carry an RSA encryption key in x-ms-runtime.keys."
    )


def _wrap(wrapping_key: rsa.RSAPublicKey, enc: str, target: bytes) -> bytes:
    """RSA-OAEP(fresh AES-256 key) ‖ AES-KWP(that key, target), hash per ``enc`` (azure-facts §2.3)."""
    algorithm = ENC_ALGORITHMS[enc]()
    aes_key = os.urandom(32)
    wrapped_key = wrapping_key.encrypt(
        aes_key, padding.OAEP(mgf=padding.MGF1(algorithm=algorithm), algorithm=algorithm, label=None)
    )
    return wrapped_key + aes_key_wrap_with_padding(aes_key, target)


def _issuer_key(value: str) -> str:
    """Issuer identity for trust lookups: scheme/host lower-cased, one trailing slash ignored."""
    text = value.strip()
    text = text[:-1] if text.endswith("/") else text
    scheme, sep, rest = text.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}{sep}{host.lower()}{slash}{path}"


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme.lower()}://{rest.split('/', 1)[0].lower()}"
