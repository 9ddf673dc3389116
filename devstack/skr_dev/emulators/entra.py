"""Entra ID (Azure AD) token endpoint emulator, plus a simulated Kubernetes service-account issuer.

Why: skr obtains Key Vault tokens through azure-identity (workload identity on AKS, managed
identity elsewhere). Tests and ``skr dev`` need an authority that the *real* credentials talk to
unchanged (azure-facts §4.4, §7), that verifies federated assertions the way Entra does, and whose
tokens the Key Vault emulator can validate.

What it serves (HTTPS only):

* ``POST /{tenant}/oauth2/v2.0/token`` (form, route ``entra.token``): ``grant_type=client_credentials``
  with either a federated client assertion (``client_assertion_type=urn:ietf:params:oauth:client-
  assertion-type:jwt-bearer``; an RS256 JWT from a trusted service-account issuer with
  ``aud=api://AzureADTokenExchange``, mapped through a federated credential (issuer, subject) to the
  client id) or a client secret. The ``claims`` field (CAE, ``xms_cc``) is accepted. Answers
  ``{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"<JWT>"}``
  (numbers), or Entra's error shape ``{"error","error_description":"AADSTS...","error_codes",
  "timestamp","trace_id","correlation_id","error_uri"}``.
* ``GET /{tenant}/v2.0/.well-known/openid-configuration`` (and the v1 path; route ``entra.openid``)
  for MSAL-based credentials with ``disable_instance_discovery=True``.
* ``GET /{tenant}/discovery/v2.0/keys`` (also ``/common/...`` and ``/{tenant}/discovery/keys``;
  route ``entra.jwks``): the signing keys (``kty, use, kid, x5t, n, e, x5c, issuer``).

Access tokens are RS256 JWTs. Decision: ``iss`` is Entra's real v2 issuer
``https://login.microsoftonline.com/{tenant}/v2.0`` (not the emulator's URL), so tokens look exactly
like production ones and the Key Vault emulator's challenge authority
(``https://login.microsoftonline.com/{tenant}``) names the same tenant. ``aud`` is the scope's
resource (``https://vault.azure.net`` for ``https://vault.azure.net/.default``). The payload carries
``tid``, ``oid``/``sub``, ``iat``/``nbf``/``exp``, ``ver`` "2.0", and BOTH ``azp`` (v2) and ``appid``
(v1; GO-REF reads it) so clients reading either work; ``xms_cc`` when the request asked for CAE and
``xms_az_rid``/``xms_mirid`` for managed identities that declare a resource id.

Semantic faults on ``entra.token`` (and ``imds.token`` for tokens IMDS issues through this
emulator): BAD_SIGNATURE (a signature bit flipped), EXPIRED_TOKEN (``exp`` in the past),
UNKNOWN_KID (header ``kid`` not in the JWKS).

Usage::

    ca = TestCertificateAuthority.create()
    entra = EntraEmulator()
    identity = entra.add_workload_identity()              # client id + SA subject, federated
    await entra.start(ca=ca)
    entra.write_federated_token_file(tmp_path / "token", identity.client_id)
    # AZURE_AUTHORITY_HOST=entra.url AZURE_TENANT_ID=entra.tenant_id AZURE_CLIENT_ID=identity.client_id
    # AZURE_FEDERATED_TOKEN_FILE=tmp_path/"token"; WorkloadIdentityCredential(connection_verify=ca_file)
    claims = entra.validate_access_token(token, "https://vault.azure.net")
    await entra.stop()
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import os
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from skr.errors import VerificationError
from skr.primitives.sensitive import Sensitive
from skr_dev.emulators.faults import FaultKind, FaultSet
from skr_dev.emulators.server import HostedEmulator, json_response
from skr_dev.emulators.tls import self_signed_certificate

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_SERVICE_ACCOUNT_ISSUER",
    "DEFAULT_TENANT_ID",
    "FEDERATED_AUDIENCE",
    "EntraEmulator",
    "FederatedCredential",
    "IssuedAccessToken",
    "ServiceAccountIssuer",
    "TokenSigningKey",
    "WorkloadIdentity",
]

DEFAULT_TENANT_ID: Final = "5e1ec7ed-0000-4000-8000-00000000e5e1"
"""A clearly fake tenant id; ``skr dev`` and the fixtures use it."""
DEFAULT_CLIENT_ID: Final = "c1e47000-0000-4000-8000-0000000c11e7"
"""The client id of the default workload identity ``skr dev`` registers."""
DEFAULT_SERVICE_ACCOUNT_ISSUER: Final = "https://oidc.aks.skr-emulator.invalid/5e1ec7ed/"
FEDERATED_AUDIENCE: Final = "api://AzureADTokenExchange"
CLIENT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
REAL_AUTHORITY: Final = "https://login.microsoftonline.com"

_TOKEN_LIFETIME: Final = 3599
_MAX_FORM_BODY: Final = 64 * 1024
_MAX_ASSERTION: Final = 16 * 1024
_MAX_TOKEN: Final = 16 * 1024
_MAX_CLAIMS: Final = 4 * 1024
_DEFAULT_SCOPE_SUFFIX: Final = "/.default"
_IGNORED_SCOPES: Final = frozenset({"openid", "profile", "offline_access", "email"})

Clock = Callable[[], float]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _flip_signature_bit(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{header}.{payload}.{_b64url(bytes(raw))}"


def _object_id(tenant_id: str, client_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"skr-emulator:{tenant_id}:{client_id}"))


@dataclass(frozen=True, slots=True)
class TokenSigningKey:
    """An RS256 signing key with a self-signed certificate; ``kid`` = x5t (as Entra does)."""

    kid: str
    private_key: rsa.RSAPrivateKey = field(repr=False)
    certificate: x509.Certificate = field(repr=False)

    @classmethod
    def generate(cls, common_name: str) -> TokenSigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = self_signed_certificate(common_name, key)
        return cls(kid=_b64url(cert.fingerprint(hashes.SHA1())), private_key=key, certificate=cert)

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def jwk(self, issuer: str | None = None) -> dict[str, Any]:
        """The public JWK as Entra publishes it."""
        public = RSAAlgorithm.to_jwk(self.public_key, as_dict=True)
        entry: dict[str, Any] = {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": public["n"],
            "e": public["e"],
            "x5c": [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")],
        }
        if issuer is not None:
            entry["issuer"] = issuer
        return entry


class ServiceAccountIssuer:
    """A simulated Kubernetes service-account OIDC issuer (the AKS OIDC issuer).

    It signs projected service-account tokens, the ``AZURE_FEDERATED_TOKEN_FILE`` content that
    workload identity exchanges at Entra.
    """

    def __init__(self, issuer: str = DEFAULT_SERVICE_ACCOUNT_ISSUER, *, clock: Clock = time.time) -> None:
        self.issuer = issuer
        self._clock = clock
        self._key = TokenSigningKey.generate("skr emulator service-account issuer")

    def __repr__(self) -> str:
        return f"ServiceAccountIssuer({self.issuer!r})"

    @property
    def kid(self) -> str:
        return self._key.kid

    @property
    def public_keys(self) -> dict[str, rsa.RSAPublicKey]:
        return {self._key.kid: self._key.public_key}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self._key.jwk()]}

    def sign(
        self,
        subject: str,
        *,
        audience: str = FEDERATED_AUDIENCE,
        lifetime: int = 3600,
        now: float | None = None,
        namespace: str | None = None,
        service_account: str | None = None,
    ) -> str:
        """A projected service-account token for ``subject`` (``system:serviceaccount:NS:NAME``)."""
        issued = int(self._clock() if now is None else now)
        claims: dict[str, Any] = {
            "aud": [audience],
            "exp": issued + lifetime,
            "iat": issued,
            "iss": self.issuer,
            "nbf": issued,
            "sub": subject,
        }
        if namespace and service_account:
            claims["kubernetes.io"] = {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
            }
        return jwt.encode(claims, self._key.private_key, algorithm="RS256", headers={"kid": self._key.kid})


@dataclass(frozen=True, slots=True)
class FederatedCredential:
    """Entra's federated identity credential: trust tokens with this issuer/subject/audience."""

    issuer: str
    subject: str
    audience: str = FEDERATED_AUDIENCE


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    """A client registered for workload identity: its id and the SA subject it is federated with."""

    client_id: str
    subject: str
    issuer: str
    namespace: str
    service_account: str


@dataclass(slots=True)
class _Client:
    client_id: str
    object_id: str
    secrets: list[Sensitive[str]] = field(default_factory=list)
    federated: list[FederatedCredential] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    """An access token and its timing (epoch seconds)."""

    access_token: Sensitive[str]
    expires_in: int
    expires_on: int
    not_before: int
    resource: str
    client_id: str


class _EntraError(Exception):
    """An error answered in Entra's JSON shape (never leaves this module)."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.code = code
        self.description = description


class EntraEmulator(HostedEmulator):
    """The Entra ID token endpoint, OpenID metadata and JWKS for one tenant. See the module docstring."""

    name = "entra"

    def __init__(
        self,
        *,
        tenant_id: str = DEFAULT_TENANT_ID,
        faults: FaultSet | None = None,
        token_lifetime: int = _TOKEN_LIFETIME,
        issuer: str | None = None,
        service_account_issuer: ServiceAccountIssuer | None = None,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(faults=faults)
        self.tenant_id = tenant_id
        self.token_lifetime = token_lifetime
        self._issuer = issuer or f"{REAL_AUTHORITY}/{tenant_id}/v2.0"
        self._clock = clock
        self.service_account_issuer = service_account_issuer or ServiceAccountIssuer(clock=clock)
        self._signing_keys: list[TokenSigningKey] = [TokenSigningKey.generate("skr emulator Entra ID token signing")]
        self._trusted_issuers: dict[str, Callable[[], Mapping[str, rsa.RSAPublicKey]]] = {}
        self.trust_service_account_issuer(self.service_account_issuer)
        self._clients: dict[str, _Client] = {}
        self._workload_identities: dict[str, WorkloadIdentity] = {}

    def __repr__(self) -> str:
        return f"EntraEmulator(tenant_id={self.tenant_id!r}, clients={len(self._clients)})"

    # --- configuration ----------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        """The ``iss`` of every access token this emulator issues."""
        return self._issuer

    @property
    def authority(self) -> str:
        """What ``AZURE_AUTHORITY_HOST`` must be set to (the emulator's base URL)."""
        return self.url

    @property
    def public_keys(self) -> dict[str, rsa.RSAPublicKey]:
        """kid -> public key of every published signing key (current one first)."""
        return {key.kid: key.public_key for key in self._signing_keys}

    def jwks(self) -> dict[str, Any]:
        """The JWKS served at ``/{tenant}/discovery/v2.0/keys``."""
        return {"keys": [key.jwk(self._issuer) for key in self._signing_keys]}

    def rotate_signing_key(self, *, keep_previous: bool = True) -> str:
        """Start signing with a new key; the old one stays published unless ``keep_previous`` is false."""
        new = TokenSigningKey.generate("skr emulator Entra ID token signing")
        self._signing_keys = [new, *(self._signing_keys if keep_previous else [])]
        return new.kid

    def trust_service_account_issuer(self, issuer: ServiceAccountIssuer | str, keys: Any = None) -> None:
        """Accept client assertions from ``issuer`` (a ServiceAccountIssuer, or a URL plus a callable
        returning kid -> RSA public key)."""
        if isinstance(issuer, ServiceAccountIssuer):
            source = issuer
            self._trusted_issuers[issuer.issuer] = lambda: source.public_keys
            return
        if not callable(keys):
            raise TypeError("keys must be a callable returning a kid -> RSAPublicKey mapping")
        self._trusted_issuers[issuer] = keys

    def _client(self, client_id: str) -> _Client:
        normalised = client_id.lower()
        client = self._clients.get(normalised)
        if client is None:
            client = _Client(client_id=normalised, object_id=_object_id(self.tenant_id, normalised))
            self._clients[normalised] = client
        return client

    def add_client_secret(self, client_id: str, secret: str) -> None:
        """Register (or extend) an app registration that authenticates with ``secret``."""
        if not secret:
            raise ValueError("secret must not be empty")
        self._client(client_id).secrets.append(Sensitive(secret, "client secret"))

    def add_federated_credential(self, client_id: str, credential: FederatedCredential) -> None:
        """Register a federated identity credential on ``client_id``."""
        self._client(client_id).federated.append(credential)

    def add_workload_identity(
        self,
        client_id: str | None = None,
        *,
        namespace: str = "default",
        service_account: str = "workload",
    ) -> WorkloadIdentity:
        """Register a client federated with ``system:serviceaccount:{namespace}:{service_account}``
        of the simulated service-account issuer; ``client_id`` defaults to a fresh UUID."""
        cid = (client_id or str(uuid.uuid4())).lower()
        subject = f"system:serviceaccount:{namespace}:{service_account}"
        issuer = self.service_account_issuer.issuer
        self.add_federated_credential(cid, FederatedCredential(issuer=issuer, subject=subject))
        identity = WorkloadIdentity(cid, subject, issuer, namespace, service_account)
        self._workload_identities[cid] = identity
        return identity

    def federated_token(self, client_id: str, *, lifetime: int = 3600) -> str:
        """A service-account token that ``client_id``'s federated credential accepts."""
        identity = self._workload_identities.get(client_id.lower())
        if identity is None:
            raise KeyError(f"{client_id} is not a workload identity of this emulator (use add_workload_identity)")
        return self.service_account_issuer.sign(
            identity.subject,
            lifetime=lifetime,
            namespace=identity.namespace,
            service_account=identity.service_account,
        )

    def write_federated_token_file(self, path: Path, client_id: str, *, lifetime: int = 3600) -> Path:
        """Write ``client_id``'s federated token (mode 0600, replaced atomically) and return ``path``."""
        token = self.federated_token(client_id, lifetime=lifetime)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(token)
        tmp.replace(path)
        return path

    # --- tokens -----------------------------------------------------------------------------------

    def issue_access_token(
        self,
        client_id: str,
        resource: str,
        *,
        endpoint: str = "entra.token",
        extra_claims: Mapping[str, Any] | None = None,
        lifetime: int | None = None,
        app_acr: str = "2",
        faults: FaultSet | None = None,
    ) -> IssuedAccessToken:
        """Mint an access token for ``client_id`` with ``aud=resource``.

        The semantic faults armed for ``endpoint`` in ``faults`` (default: this emulator's) apply;
        IMDS passes its own fault set and ``endpoint="imds.token"``.
        """
        now = int(self._clock())
        life = self.token_lifetime if lifetime is None else lifetime
        fault = (faults if faults is not None else self.faults).take(
            endpoint, (FaultKind.BAD_SIGNATURE, FaultKind.EXPIRED_TOKEN, FaultKind.UNKNOWN_KID)
        )
        issued_at = now
        if fault is not None and fault.kind is FaultKind.EXPIRED_TOKEN:
            issued_at = now - life - 300
        cid = client_id.lower()
        oid = _object_id(self.tenant_id, cid)
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": self._issuer,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + life,
            "aio": _b64url(os.urandom(24)),
            "appid": cid,
            "appidacr": app_acr,
            "azp": cid,
            "azpacr": app_acr,
            "idp": f"https://sts.windows.net/{self.tenant_id}/",
            "idtyp": "app",
            "oid": oid,
            "sub": oid,
            "tid": self.tenant_id,
            "uti": _b64url(os.urandom(16)),
            "ver": "2.0",
        }
        if extra_claims:
            claims.update(extra_claims)
        key = self._signing_keys[0]
        kid = key.kid
        if fault is not None and fault.kind is FaultKind.UNKNOWN_KID:
            kid = _b64url(os.urandom(20))
        token = jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": kid, "x5t": kid})
        if fault is not None and fault.kind is FaultKind.BAD_SIGNATURE:
            token = _flip_signature_bit(token)
        return IssuedAccessToken(
            access_token=Sensitive(token, "access token"),
            expires_in=life,
            expires_on=issued_at + life,
            not_before=issued_at,
            resource=resource,
            client_id=cid,
        )

    def validate_access_token(
        self, token: str, audience: str | Sequence[str], *, now: float | None = None
    ) -> dict[str, Any]:
        """Verify an access token this emulator issued (RS256 pinned, kid, iss, aud, exp/nbf).

        ``audience`` may be a list; a trailing slash is ignored on both sides. Raises
        :class:`skr.errors.VerificationError` naming the failed check (never the token).
        """
        if not isinstance(token, str) or not 0 < len(token) <= _MAX_TOKEN:
            raise VerificationError("access token is missing or too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise VerificationError("access token is not a JWT") from None
        if header.get("alg") != "RS256":
            raise VerificationError("access token is not RS256-signed")
        key = self.public_keys.get(str(header.get("kid")))
        if key is None:
            raise VerificationError("access token kid is not a signing key of this authority")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
                issuer=self._issuer,
            )
        except jwt.InvalidIssuerError:
            raise VerificationError("access token issuer is not this authority") from None
        except jwt.InvalidSignatureError:
            raise VerificationError("access token signature is invalid") from None
        except jwt.PyJWTError as exc:
            raise VerificationError(f"access token is invalid: {type(exc).__name__}") from None
        current = self._clock() if now is None else now
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int) or current >= exp:
            raise VerificationError("access token has expired")
        if isinstance(nbf, int) and current + 300 < nbf:
            raise VerificationError("access token is not valid yet")
        wanted = [audience] if isinstance(audience, str) else list(audience)
        if str(claims.get("aud", "")).rstrip("/") not in {a.rstrip("/") for a in wanted}:
            raise VerificationError("access token audience does not match")
        if claims.get("tid") != self.tenant_id:
            raise VerificationError("access token tenant does not match")
        return claims

    # --- HTTP -------------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = self._new_app(client_max_size=_MAX_FORM_BODY)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token, name="entra.token")
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._openid, name="entra.openid")
        app.router.add_get("/{tenant}/.well-known/openid-configuration", self._openid, name="entra.openid_v1")
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._keys, name="entra.jwks")
        app.router.add_get("/{tenant}/discovery/keys", self._keys, name="entra.jwks_v1")
        return app

    def _error(self, request: web.Request, error: _EntraError) -> web.Response:
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        timestamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
        trace_id = str(uuid.uuid4())
        correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
        description = (
            f"AADSTS{error.code}: {error.description} Trace ID: {trace_id} "
            f"Correlation ID: {correlation_id} Timestamp: {now.strftime('%Y-%m-%d %H:%M:%S')}Z"
        )
        base = self._url or REAL_AUTHORITY
        return json_response(
            {
                "error": error.error,
                "error_description": description,
                "error_codes": [error.code],
                "timestamp": timestamp,
                "trace_id": trace_id,
                "correlation_id": correlation_id,
                "error_uri": f"{base}/error?code={error.code}",
            },
            status=error.status,
        )

    def _check_tenant(self, tenant: str) -> None:
        if tenant.lower() != self.tenant_id.lower():
            raise _EntraError(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant[:64]}' not found. Check to make sure you have the correct tenant ID and are "
                "signing into the correct cloud.",
            )

    async def _openid(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        try:
            self._check_tenant(tenant)
        except _EntraError as exc:
            return self._error(request, exc)
        base = f"{self.url}/{self.tenant_id}"
        return json_response(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": self._issuer,
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid", "azp", "ver"],
                "kerberos_endpoint": f"{base}/kerberos",
                "tenant_region_scope": "NA",
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
                "rbac_url": "https://pas.windows.net",
            }
        )

    async def _keys(self, request: web.Request) -> web.Response:
        return json_response(self.jwks())

    async def _token(self, request: web.Request) -> web.Response:
        try:
            self._check_tenant(request.match_info["tenant"])
            form = await self._read_form(request)
            return self._grant(form)
        except _EntraError as exc:
            return self._error(request, exc)

    async def _read_form(self, request: web.Request) -> dict[str, str]:
        if request.content_type != "application/x-www-form-urlencoded":
            raise _EntraError(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            )
        try:
            posted = await request.post()
        except (ValueError, web.HTTPRequestEntityTooLarge):
            raise _EntraError(400, "invalid_request", 900144, "The request body is malformed or too large.") from None
        form: dict[str, str] = {}
        for name, value in posted.items():
            if not isinstance(value, str):
                raise _EntraError(400, "invalid_request", 900144, "File uploads are not accepted.")
            form[name] = value
        return form

    def _resource(self, form: Mapping[str, str]) -> str:
        scope = form.get("scope", "")
        resources = [s for s in scope.split() if s not in _IGNORED_SCOPES]
        if not resources and form.get("resource"):
            return form["resource"]
        if len(resources) != 1 or not resources[0].endswith(_DEFAULT_SCOPE_SUFFIX):
            raise _EntraError(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope[:200]} is not valid. Client credential flows must have a "
                "scope value with /.default suffixed to the resource identifier (application ID URI).",
            )
        resource = resources[0][: -len(_DEFAULT_SCOPE_SUFFIX)]
        if not resource:
            raise _EntraError(400, "invalid_scope", 1002012, "The provided value for scope is not valid.")
        return resource

    def _cae_claims(self, form: Mapping[str, str]) -> dict[str, Any]:
        raw = form.get("claims")
        if raw is None:
            return {}
        if len(raw) > _MAX_CLAIMS:
            raise _EntraError(400, "invalid_request", 90023, "The claims parameter is too large.")
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise _EntraError(400, "invalid_request", 90023, "The claims parameter is not valid JSON.") from None
        if not isinstance(parsed, dict):
            raise _EntraError(400, "invalid_request", 90023, "The claims parameter must be a JSON object.")
        access = parsed.get("access_token")
        if isinstance(access, dict):
            xms_cc = access.get("xms_cc")
            if isinstance(xms_cc, dict) and isinstance(xms_cc.get("values"), list):
                values = [v for v in xms_cc["values"] if isinstance(v, str)]
                if values:
                    return {"xms_cc": values}
        return {}

    def _grant(self, form: Mapping[str, str]) -> web.Response:
        grant_type = form.get("grant_type")
        if not grant_type:
            raise _EntraError(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."
            )
        if grant_type != "client_credentials":
            raise _EntraError(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type[:64]}'.",
            )
        client_id = form.get("client_id", "")
        if not client_id:
            raise _EntraError(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."
            )
        resource = self._resource(form)
        extra = self._cae_claims(form)
        client = self._clients.get(client_id.lower())
        if client is None:
            # Real Entra answers AADSTS700016 with error "unauthorized_client" (UNCONFIRMED); the
            # emulator uses "invalid_client" as specified for skr, same JSON shape.
            raise _EntraError(
                400,
                "invalid_client",
                700016,
                f"Application with identifier '{client_id[:64]}' was not found in the directory "
                f"'{self.tenant_id}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant.",
            )
        if "client_assertion" in form or "client_assertion_type" in form:
            self._authenticate_assertion(client, form)
            acr = "2"
        elif "client_secret" in form:
            self._authenticate_secret(client, form["client_secret"])
            acr = "1"
        else:
            raise _EntraError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        issued = self.issue_access_token(client.client_id, resource, extra_claims=extra, app_acr=acr)
        return json_response(
            {
                "token_type": "Bearer",
                "expires_in": issued.expires_in,
                "ext_expires_in": issued.expires_in,
                "access_token": issued.access_token.reveal(),
            }
        )

    def _authenticate_secret(self, client: _Client, presented: str) -> None:
        for secret in client.secrets:
            if hmac.compare_digest(secret.reveal().encode(), presented.encode()):
                return
        raise _EntraError(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
            f"value, not the client secret ID, for a secret added to app '{client.client_id}'.",
        )

    def _authenticate_assertion(self, client: _Client, form: Mapping[str, str]) -> None:
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise _EntraError(
                400,
                "invalid_request",
                50027,
                "Invalid client_assertion_type; expected urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
            )
        assertion = form.get("client_assertion", "").strip()
        if not assertion or len(assertion) > _MAX_ASSERTION:
            raise _EntraError(400, "invalid_request", 50027, "JWT token is invalid or malformed.")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _EntraError(400, "invalid_request", 50027, "JWT token is invalid or malformed.") from None
        issuer = unverified.get("iss")
        keys_source = self._trusted_issuers.get(issuer) if isinstance(issuer, str) else None
        if keys_source is None:
            raise _EntraError(
                400,
                "invalid_client",
                700211,
                f"No matching federated identity record found for presented assertion issuer '{str(issuer)[:200]}'.",
            )
        key = keys_source().get(str(header.get("kid")))
        if key is None:
            raise _EntraError(
                401, "invalid_client", 700027, "Client assertion failed signature validation. (key not found)"
            )
        try:
            claims = jwt.decode(
                assertion,
                key,
                algorithms=["RS256"],
                issuer=issuer,
                options={
                    "verify_aud": False,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["iss", "sub", "aud", "exp"],
                },
            )
        except jwt.InvalidSignatureError:
            raise _EntraError(401, "invalid_client", 700027, "Client assertion failed signature validation.") from None
        except jwt.PyJWTError:
            raise _EntraError(400, "invalid_request", 50027, "JWT token is invalid or malformed.") from None
        now = self._clock()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int) or now >= exp or (isinstance(nbf, int) and now + 300 < nbf):
            raise _EntraError(400, "invalid_client", 700024, "Client assertion is not within its valid time range.")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        subject = claims["sub"]
        for credential in client.federated:
            if credential.issuer == issuer and credential.subject == subject and credential.audience in audiences:
                return
        raise _EntraError(
            400,
            "invalid_client",
            70021,
            "No matching federated identity record found for presented assertion. "
            f"Assertion Issuer: '{str(issuer)[:200]}'. Assertion Subject: '{str(subject)[:200]}'. "
            f"Assertion Audience: '{','.join(str(a)[:100] for a in audiences[:4])}'.",
        )
