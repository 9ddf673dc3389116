"""Key Vault / Managed HSM secure key release through azure-keyvault-keys, then verify and unwrap.

The SDK (``azure.keyvault.keys.aio.KeyClient.release_key``) does the HTTP, the challenge-based auth
and its own retries; it returns the JWS unverified. This module then:

1. verifies the JWS: RS256 only, the ``x5c`` chain to trusted roots (system roots, plus an extra CA
   file when configured), the leaf naming the vault host (:func:`skr.core.jose.verify_release_jws`);
2. checks the payload is the key we asked for, wrapped to our key with the ``enc`` we asked for;
3. unwraps with ``cryptography`` and returns a private JWK (:mod:`skr.core.crypto`).

SDK exceptions become the typed errors of :mod:`skr.errors`, carrying the service's reason when the
release policy refused.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    IncompleteReadError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import AioHttpTransport
from cryptography import x509

from skr.core.crypto import (
    ENC_ALGORITHMS,
    WrappingKey,
    b64url_decode,
    b64url_encode,
    private_jwk_from_key_bytes,
    unwrap_released_key,
)
from skr.core.endpoints import Endpoint, is_loopback_host
from skr.core.jose import ReleasePayload, verify_release_jws
from skr.core.upstream import RetryPolicy, Upstream
from skr.errors import (
    BadRequestError,
    IdentityUnavailableError,
    InvalidUpstreamResponseError,
    KeyNotFoundError,
    ReleaseDeniedError,
    SkrError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    VerificationError,
)
from skr.primitives.sensitive import Sensitive

__all__ = ["DEFAULT_ENC", "KeyName", "ReleasedJwk", "VaultClient"]

_logger = logging.getLogger(__name__)

DEFAULT_ENC: Final = "CKM_RSA_AES_KEY_WRAP"
MAX_REASON: Final = 400
_CHALLENGE_API_VERSION: Final = "7.4"


@dataclass(frozen=True, slots=True)
class KeyName:
    """``name`` or ``name/version`` as requests give it."""

    name: str
    version: str | None = None

    @classmethod
    def parse(cls, kid: str) -> KeyName:
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise BadRequestError("kid must be a key name, optionally name/version")
        parts = kid.strip("/").split("/")
        if len(parts) > 2 or not all(_valid_segment(p) for p in parts):
            raise BadRequestError("kid must be a key name, optionally name/version (letters, digits, dashes)")
        return cls(parts[0], parts[1] if len(parts) == 2 else None)

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}/{self.version}"


def _valid_segment(segment: str) -> bool:
    return 0 < len(segment) <= 127 and all(c.isascii() and (c.isalnum() or c == "-") for c in segment)


@dataclass(frozen=True, slots=True)
class ReleasedJwk:
    """A released key as a private JWK (secret) plus non-secret facts about it."""

    jwk: Sensitive[dict[str, Any]]
    kid: str
    kty: str
    enc: str

    def __repr__(self) -> str:
        return f"ReleasedJwk(kid={self.kid!r}, kty={self.kty!r}, enc={self.enc!r})"


class VaultClient:
    """Releases keys from Key Vault / Managed HSM; one SDK client per vault, reused."""

    def __init__(
        self,
        *,
        transport_factory: Callable[[], AioHttpTransport],
        trusted_roots: Sequence[x509.Certificate],
        clock: Callable[[], datetime],
        timeout: float = 15.0,
        api_version: str | None = None,
        retry_total: int = 2,
        challenge_upstream: Upstream | None = None,
    ) -> None:
        self._transport_factory = transport_factory
        self._trusted_roots = tuple(trusted_roots)
        self._clock = clock
        self._timeout = timeout
        self._api_version = api_version
        self._retry_total = retry_total
        self._challenge_upstream = challenge_upstream

    async def release(
        self,
        vault: Endpoint,
        key: KeyName,
        *,
        attestation_token: Sensitive[str],
        credential: AsyncTokenCredential,
        wrapping_key: WrappingKey,
        enc: str = DEFAULT_ENC,
    ) -> ReleasedJwk:
        """Release ``key`` from ``vault`` to ``wrapping_key``; verify, unwrap and return it as a JWK."""
        if enc not in ENC_ALGORITHMS:
            raise ValueError(f"unsupported enc {enc!r}")
        client = self._client(vault, credential)
        try:
            result = await asyncio.wait_for(
                client.release_key(key.name, attestation_token.reveal(), version=key.version, algorithm=enc),
                self._timeout,
            )
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"key vault {vault} did not answer within {self._timeout:.0f} s", service="keyvault"
            ) from None
        except SkrError:
            raise
        except Exception as exc:  # the SDK's exception family is wide; map it in one place
            error = _map_sdk_error(exc, vault, key, attempts=self._retry_total + 1)
            if isinstance(error, IdentityUnavailableError):
                # The vault refused the token: never offer it again (a fresh one may be fine).
                invalidate = getattr(credential, "invalidate", None)
                if callable(invalidate):
                    invalidate()
            raise error from None
        jws = getattr(result, "value", None)
        if not isinstance(jws, str) or not jws:
            raise InvalidUpstreamResponseError("key vault release response has no value", service="keyvault")
        payload = self._verify(jws, vault)
        return _unwrap(payload, key, wrapping_key, enc)

    async def public_key(self, vault: Endpoint, key: KeyName, *, credential: AsyncTokenCredential) -> dict[str, Any]:
        """The public JWK of ``key`` (get key; no attestation needed), for wrapping image layer keys by name."""
        client = self._client(vault, credential)
        try:
            result = await asyncio.wait_for(client.get_key(key.name, version=key.version), self._timeout)
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"key vault {vault} did not answer within {self._timeout:.0f} s", service="keyvault"
            ) from None
        except SkrError:
            raise
        except Exception as exc:
            raise _map_sdk_error(exc, vault, key) from None
        jwk = getattr(result, "key", None)
        n, e = getattr(jwk, "n", None), getattr(jwk, "e", None)
        if not isinstance(n, bytes) or not isinstance(e, bytes):
            raise InvalidUpstreamResponseError(f"key {key} is not an RSA key", service="keyvault")
        return {"kty": "RSA", "n": b64url_encode(n), "e": b64url_encode(e), "kid": str(getattr(jwk, "kid", "") or "")}

    def preload(self) -> None:
        """Import the Key Vault SDK now (blocking; call from a worker thread), not on the first release."""
        importlib.import_module("azure.keyvault.keys.aio")
        importlib.import_module("azure.keyvault.keys._shared.http_challenge_cache")

    async def prime_challenge(self, vault: Endpoint, key: KeyName) -> bool:
        """Learn the vault's authentication challenge ahead of the release; True if now cached.

        The SDK discovers the challenge with an unauthenticated request the first time it talks to a
        vault, which costs a full round trip on the critical path. Sent here, concurrently with
        attestation, the same request costs nothing. The SDK still validates the cached challenge
        (tenant, scope and, for DNS hosts, that the resource matches the vault) when it uses it.
        This touches the SDK's challenge cache module (``_shared.http_challenge_cache``): pinned
        SDK versions; any failure only means the SDK discovers the challenge itself.
        """
        if self._challenge_upstream is None:
            return False
        url = f"{vault.base_url}/keys/{key.name}/release?api-version={self._api_version or _CHALLENGE_API_VERSION}"
        try:
            from azure.keyvault.keys._shared import http_challenge_cache  # noqa: PLC0415
            from azure.keyvault.keys._shared.http_challenge import HttpChallenge  # noqa: PLC0415

            if http_challenge_cache.get_challenge_for_url(url) is not None:
                return True
            response = await self._challenge_upstream.request(
                "POST",
                url,
                data=b"",
                headers={"Content-Type": "application/json"},
                expected=frozenset({401}),
                retry=RetryPolicy(attempts=1, timeout=min(self._timeout, 5.0)),
            )
            header = response.headers.get("WWW-Authenticate", "")
            if response.status != 401 or " " not in header.strip():
                return False
            http_challenge_cache.set_challenge_for_url(url, HttpChallenge(url, header, dict(response.headers)))
        except (SkrError, ImportError, ValueError, AttributeError) as exc:
            _logger.debug("could not prime the auth challenge of %s: %s", vault, type(exc).__name__)
            return False
        return True

    def _verify(self, jws: str, vault: Endpoint) -> ReleasePayload:
        try:
            return verify_release_jws(jws, trusted_roots=self._trusted_roots, vault_host=vault.host, now=self._clock())
        except VerificationError as exc:
            raise InvalidUpstreamResponseError(
                f"key release response rejected: {exc.message}", service="keyvault"
            ) from None

    def _client(self, vault: Endpoint, credential: AsyncTokenCredential) -> Any:
        from azure.keyvault.keys.aio import KeyClient  # noqa: PLC0415 - heavy SDK import, first use only

        kwargs: dict[str, Any] = {
            "transport": self._transport_factory(),
            # Challenge resource verification is for DNS names; a loopback vault (emulators) can
            # only be reached when the allow-list names it exactly.
            "verify_challenge_resource": not is_loopback_host(vault.host),
            "retry_total": self._retry_total,
        }
        if self._api_version:
            kwargs["api_version"] = self._api_version
        # The credential can differ per request (request tokens), so a client is a cheap wrapper built
        # per call over the shared transport; the SDK's challenge cache is process-wide.
        return KeyClient(vault.base_url, credential, **kwargs)


def _reason(exc: Exception) -> str:
    error = getattr(exc, "error", None)
    message = getattr(error, "message", None) or getattr(exc, "message", None) or str(exc)
    first = str(message).splitlines()[0] if str(message) else type(exc).__name__
    return "".join(c for c in first if c.isprintable())[:MAX_REASON]


def _map_sdk_error(exc: Exception, vault: Endpoint, key: KeyName, *, attempts: int = 1) -> SkrError:
    """The SDK's exception as skr's typed error; ``attempts`` is what the SDK's retry policy allowed."""
    tried = f" (up to {attempts} attempts made by the Key Vault SDK's retry policy)" if attempts > 1 else ""
    status = getattr(exc, "status_code", None)
    if isinstance(exc, DecodeError | IncompleteReadError):
        return InvalidUpstreamResponseError(
            f"{vault} sent an unreadable release response ({type(exc).__name__})", service="keyvault"
        )
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return KeyNotFoundError(f"key {key} was not found in {vault}: check the key name and version")
    if isinstance(exc, ClientAuthenticationError) or status == 401:
        if isinstance(exc, IdentityUnavailableError):
            return exc
        return IdentityUnavailableError(
            f"{vault} did not accept the access token: {_reason(exc)}", service="keyvault", status=status
        )
    if isinstance(exc, HttpResponseError) and status in (400, 403):
        reason = _reason(exc)
        return ReleaseDeniedError(f"{vault} refused to release {key}: {reason}", reason=reason)
    if isinstance(exc, HttpResponseError) and status is not None:
        return UpstreamUnavailableError(f"{vault} answered HTTP {status}{tried}", service="keyvault", status=status)
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return UpstreamUnavailableError(f"{vault} is unreachable ({type(exc).__name__}){tried}", service="keyvault")
    if isinstance(exc, ValueError) and "challenge resource" in str(exc):
        return InvalidUpstreamResponseError(
            f"{vault} sent an authentication challenge for another resource", service="keyvault"
        )
    _logger.warning("unexpected error from the Key Vault SDK: %s", type(exc).__name__)
    return UpstreamUnavailableError(f"{vault} release failed ({type(exc).__name__})", service="keyvault")


def _unwrap(payload: ReleasePayload, key: KeyName, wrapping_key: WrappingKey, enc: str) -> ReleasedJwk:
    released = payload.key
    if f"/keys/{key.name}/" not in released.kid + "/":
        raise InvalidUpstreamResponseError("the vault released a different key than requested", service="keyvault")
    if key.version is not None and not released.kid.rstrip("/").endswith(f"/{key.version}"):
        raise InvalidUpstreamResponseError(
            "the vault released a different key version than requested", service="keyvault"
        )
    wrapped = released.key_hsm
    if wrapped.kid != wrapping_key.kid:
        raise InvalidUpstreamResponseError("the key was wrapped to another key than this sidecar's", service="keyvault")
    if wrapped.enc != enc or payload.request.enc != enc:
        raise InvalidUpstreamResponseError(
            f"the key was wrapped with {wrapped.enc}, not the requested {enc}", service="keyvault"
        )
    key_bytes = unwrap_released_key(wrapping_key, wrapped.enc, wrapped.ciphertext)
    jwk = private_jwk_from_key_bytes(released.kty, key_bytes, kid=released.kid, key_ops=list(released.key_ops))
    _check_public_parts(jwk.reveal(), released.n, released.e, released.x, released.y)
    return ReleasedJwk(jwk=jwk, kid=released.kid, kty=released.kty, enc=wrapped.enc)


def _check_public_parts(
    jwk: dict[str, Any], n: bytes | None, e: bytes | None, x: bytes | None, y: bytes | None
) -> None:
    """The unwrapped private key must belong to the public key the signed payload names."""

    def same(member: str, expected: bytes | None) -> bool:
        if expected is None:
            return True
        return int.from_bytes(b64url_decode(jwk[member]), "big") == int.from_bytes(expected, "big")

    if jwk["kty"] == "RSA" and not (same("n", n) and same("e", e)):
        raise InvalidUpstreamResponseError(
            "the unwrapped RSA key does not match the released public key", service="keyvault"
        )
    if jwk["kty"] == "EC" and not (same("x", x) and same("y", y)):
        raise InvalidUpstreamResponseError(
            "the unwrapped EC key does not match the released public key", service="keyvault"
        )
