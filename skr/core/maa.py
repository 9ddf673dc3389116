"""Microsoft Azure Attestation (MAA) client for SEV-SNP evidence.

The request is built exactly as azure-facts §1.2 describes (a pure function, :func:`build_attest_request`);
the HTTP exchange goes through :class:`skr.core.upstream.Upstream`. The returned token is never used
before it is verified: RS256 only (the header's ``alg`` is not consulted for the choice), the key
taken from the instance's own ``/certs`` by ``kid``, ``iss`` equal to the instance, ``exp``/``nbf``
with a small leeway, and ``x-ms-runtime.keys`` holding our wrapping key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import rsa

from skr.core.crypto import b64url_encode
from skr.core.endpoints import Endpoint
from skr.core.jose import VerifiedJwt, keys_from_jwks, parse_compact, parse_json_object, verify_jwt_rs256
from skr.core.upstream import HttpResponse, Upstream
from skr.errors import (
    AttestationRejectedError,
    InvalidUpstreamResponseError,
    UpstreamUnavailableError,
    VerificationError,
)
from skr.primitives.sensitive import Sensitive

__all__ = ["MaaClient", "MaaEvidence", "MaaToken", "build_attest_request"]

_logger = logging.getLogger(__name__)

DEFAULT_API_VERSION: Final = "2022-08-01"
TOKEN_LEEWAY: Final = timedelta(seconds=60)
JWKS_TTL: Final = timedelta(hours=1)
MAX_SERVICE_MESSAGE: Final = 300


@dataclass(frozen=True, slots=True)
class MaaEvidence:
    """What MAA needs: the signed report, its VCEK/VLEK chain, and the data bound into it."""

    report: bytes
    vcek_chain_pem: bytes
    runtime_data: bytes  # JSON bytes; REPORT_DATA[0:32] == sha256(runtime_data)
    uvm_endorsement: bytes | None = None  # COSE_Sign1 reference info (Confidential ACI)
    init_time_data: bytes | None = None  # the security policy; sha256 == HOST_DATA


@dataclass(frozen=True, slots=True)
class MaaToken:
    """A verified MAA token. The raw JWT is wrapped so it never reaches a log by accident."""

    raw: Sensitive[str]
    verified: VerifiedJwt
    instance: Endpoint

    @property
    def expires_at(self) -> datetime:
        return self.verified.expires_at

    @property
    def claims(self) -> Mapping[str, Any]:
        return self.verified.claims


def build_attest_request(evidence: MaaEvidence, *, nonce: str) -> dict[str, Any]:
    """The AttestSevSnpVm request body (unpadded base64url at every layer, as the REST spec sample)."""
    inner: dict[str, Any] = {
        "SnpReport": b64url_encode(evidence.report),
        "VcekCertChain": b64url_encode(evidence.vcek_chain_pem),
    }
    if evidence.uvm_endorsement:
        endorsements = {"Uvm": [b64url_encode(evidence.uvm_endorsement)]}
        inner["Endorsements"] = b64url_encode(json.dumps(endorsements, separators=(",", ":")).encode())
    body: dict[str, Any] = {
        "report": b64url_encode(json.dumps(inner, separators=(",", ":")).encode()),
        "runtimeData": {"data": b64url_encode(evidence.runtime_data), "dataType": "JSON"},
    }
    if evidence.init_time_data:
        body["initTimeData"] = {"data": b64url_encode(evidence.init_time_data), "dataType": "Binary"}
    body["nonce"] = nonce
    return body


class MaaClient:
    """Attests SEV-SNP evidence and returns verified tokens; caches each instance's signing keys."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        clock: Callable[[], datetime],
        api_version: str = DEFAULT_API_VERSION,
        max_token_bytes: int = 64 * 1024,
    ) -> None:
        self._upstream = upstream
        self._clock = clock
        self._api_version = api_version
        self._max_token_bytes = max_token_bytes
        self._jwks: dict[str, tuple[datetime, dict[str, rsa.RSAPublicKey]]] = {}
        self._jwks_locks: dict[str, asyncio.Lock] = {}

    async def attest(self, instance: Endpoint, evidence: MaaEvidence, *, runtime_kid: str | None = None) -> MaaToken:
        """POST the evidence, then verify the token before returning it.

        Raises:
            AttestationRejectedError: MAA refused the evidence (its message is passed on).
            InvalidUpstreamResponseError: the answer or the token failed validation.
            UpstreamUnavailableError / UpstreamTimeoutError: transport trouble after retries.
        """
        url = f"{instance.base_url}/attest/SevSnpVm?api-version={self._api_version}"
        body = build_attest_request(evidence, nonce=str(secrets.randbits(63)))
        response = await self._upstream.request(
            "POST", url, json_body=body, headers={"Accept": "application/json"}, expected=frozenset({200})
        )
        if response.status != 200:
            raise _error_for(response)
        try:
            document = parse_json_object(response.body, what="MAA response")
        except VerificationError as exc:
            raise InvalidUpstreamResponseError(f"MAA answered with {exc}", service="maa") from None
        token = next((v for k, v in document.items() if k.lower() == "token"), None)
        if not isinstance(token, str) or not token:
            raise InvalidUpstreamResponseError("MAA response has no token", service="maa")
        verified = await self.verify_token(instance, token, runtime_kid=runtime_kid)
        return MaaToken(Sensitive(token, "MAA token"), verified, instance)

    async def verify_token(self, instance: Endpoint, token: str, *, runtime_kid: str | None = None) -> VerifiedJwt:
        """Verify an MAA token from ``instance`` (signature, issuer, lifetime, runtime key)."""
        keys = await self._signing_keys(instance)
        try:
            kid = parse_compact(token, max_bytes=self._max_token_bytes, what="MAA token").header.get("kid")
            if isinstance(kid, str) and kid not in keys:
                # The instance may have rotated its signing key since /certs was cached: refetch once.
                keys = await self._signing_keys(instance, refresh=True)
            verified = self._verify(instance, token, keys)
            if runtime_kid is not None:
                _check_runtime_key(verified.claims, runtime_kid)
        except VerificationError as exc:
            raise InvalidUpstreamResponseError(f"MAA token rejected: {exc}", service="maa") from None
        return verified

    def _verify(self, instance: Endpoint, token: str, keys: Mapping[str, rsa.RSAPublicKey]) -> VerifiedJwt:
        return verify_jwt_rs256(
            token,
            keys,
            issuer=instance.base_url,
            now=self._clock(),
            leeway=TOKEN_LEEWAY,
            max_bytes=self._max_token_bytes,
            what="MAA token",
        )

    async def prefetch_signing_keys(self, instance: Endpoint) -> None:
        """Fetch and cache ``instance``'s signing keys ahead of the first token."""
        await self._signing_keys(instance)

    async def _signing_keys(self, instance: Endpoint, *, refresh: bool = False) -> dict[str, rsa.RSAPublicKey]:
        lock = self._jwks_locks.setdefault(instance.netloc, asyncio.Lock())
        async with lock:
            cached = self._jwks.get(instance.netloc)
            if cached and not refresh and self._clock() < cached[0]:
                return cached[1]
            response = await self._upstream.request("GET", f"{instance.base_url}/certs")
            if response.status != 200:
                raise UpstreamUnavailableError(
                    f"MAA signing keys unavailable (HTTP {response.status})", service="maa", status=response.status
                )
            try:
                keys = keys_from_jwks(response.body)
            except VerificationError as exc:
                raise InvalidUpstreamResponseError(f"MAA /certs is unusable: {exc}", service="maa") from None
            self._jwks[instance.netloc] = (self._clock() + JWKS_TTL, keys)
            return keys


def _check_runtime_key(claims: Mapping[str, Any], runtime_kid: str) -> None:
    runtime = claims.get("x-ms-runtime")
    keys = runtime.get("keys") if isinstance(runtime, dict) else None
    if not isinstance(keys, list) or not any(isinstance(k, dict) and k.get("kid") == runtime_kid for k in keys):
        raise VerificationError("x-ms-runtime does not carry this sidecar's wrapping key")


def _error_for(response: HttpResponse) -> Exception:
    message = _service_message(response.body)
    if response.status in (400, 401, 403):
        return AttestationRejectedError(
            f"MAA rejected the evidence (HTTP {response.status}): {message}"
            if message
            else f"MAA rejected the evidence (HTTP {response.status})"
        )
    return UpstreamUnavailableError(f"MAA answered HTTP {response.status}", service="maa", status=response.status)


def _service_message(body: bytes) -> str:
    """The CloudError message, printable and truncated (it is shown to clients)."""
    try:
        error = json.loads(body.decode("utf-8")).get("error", {})
        message = error.get("message", "") if isinstance(error, dict) else ""
    except (ValueError, UnicodeDecodeError, AttributeError):
        return ""
    if not isinstance(message, str):
        return ""
    cleaned = "".join(c for c in message if c.isprintable())
    return cleaned[:MAX_SERVICE_MESSAGE]
