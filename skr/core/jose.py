"""JOSE verification for the two signed artefacts skr trusts: MAA tokens and Key Vault release JWSs.

Why this module exists: the Go sidecar verified the release JWS with the algorithm the token named
and trusted whatever root the token carried. Here every algorithm is pinned to RS256, keys come
only from the caller (an issuer's JWKS, or trusted roots plus the vault host name), and every
input is size-bounded and parsed strictly before anything is trusted.

Everything is a pure function over bytes/str with the clock passed in as ``now``. Signatures are
checked with ``cryptography`` (RSASSA-PKCS1-v1_5 with SHA-256, the only thing RS256 means); chains
with ``cryptography.x509.verification`` (web-PKI profile, which also checks the SAN against the
vault host).

Error choice (documented decision): every failure raises :class:`skr.errors.VerificationError`,
because these functions judge untrusted bytes and do not know where the bytes came from. Callers
that fetched the bytes from a service (the MAA and Key Vault clients) may re-raise as
:class:`skr.errors.InvalidUpstreamResponseError` with the service name; both map to HTTP 502.
Messages name the field that failed, never token text, signatures or key bytes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509 import verification as x509_verification

from skr.errors import VerificationError
from skr.primitives.encoding import b64_decode_strict, b64url_decode_strict, b64url_encode

# A corrupt version field raises InvalidVersion (not a ValueError); an odd key type raises
# UnsupportedAlgorithm. Both mean "not a certificate we can use".
_CERT_PARSE_ERRORS = (ValueError, x509.InvalidVersion, UnsupportedAlgorithm)

__all__ = [
    "DEFAULT_LEEWAY",
    "MAX_JWKS_BYTES",
    "MAX_JWT_BYTES",
    "MAX_RELEASE_JWS_BYTES",
    "MIN_RSA_BITS",
    "CompactJws",
    "KeyHsm",
    "ReleasePayload",
    "ReleasePolicyInfo",
    "ReleaseRequestInfo",
    "ReleasedKey",
    "VerifiedJwt",
    "b64_decode_standard",
    "b64url_decode",
    "b64url_encode",
    "keys_from_jwks",
    "parse_compact",
    "parse_json_object",
    "sha256_thumbprint",
    "verify_jwt_rs256",
    "verify_release_jws",
]

# --- limits (every input is bounded) ---------------------------------------------------------------

MAX_JWT_BYTES = 64 * 1024
"""An MAA token is ~5 KB (more with a large x-ms-runtime); Entra tokens are ~2 KB."""
MAX_RELEASE_JWS_BYTES = 256 * 1024
"""A real MHSM release JWS is ~14 KB (three certificates plus an RSA-2048 key_hsm)."""
MAX_JWKS_BYTES = 1024 * 1024
"""Real MAA JWKS carry ~30 KB certificates with embedded SGX quotes, several keys per set."""
MAX_JWKS_KEYS = 64
MAX_X5C_ENTRIES = 8
MAX_CERT_BYTES = 64 * 1024
MAX_CHAIN_DEPTH = 6
MAX_JSON_DEPTH = 32
MIN_RSA_BITS = 2048
DEFAULT_LEEWAY = timedelta(seconds=60)
"""Clock skew tolerated for exp/nbf/iat (MAA sets nbf = iat = issue time)."""

PINNED_ALGORITHM = "RS256"
_HEADER_PARAMS_REJECTED = ("crit", "b64")
"""``crit``/``b64`` (RFC 7797) change how the token must be processed; we support neither.

Header-carried keys (``jwk``, ``jku``, ``x5u``) are simply never used: keys come from the caller."""


# --- encodings -------------------------------------------------------------------------------------


def b64url_decode(text: str | bytes, *, what: str, max_bytes: int | None = None) -> bytes:
    """:func:`skr.primitives.encoding.b64url_decode_strict`, failing as a :class:`VerificationError`."""
    return b64url_decode_strict(text, what=what, max_bytes=max_bytes, error=VerificationError)


def b64_decode_standard(text: str, *, what: str, max_bytes: int | None = None) -> bytes:
    """:func:`skr.primitives.encoding.b64_decode_strict`, failing as a :class:`VerificationError`."""
    return b64_decode_strict(text, what=what, max_bytes=max_bytes, error=VerificationError)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate member name")
        result[key] = value
    return result


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, stopping early once ``limit`` is exceeded."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
    return deepest


def parse_json_object(data: bytes | str, *, what: str, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """Parse strict JSON that must be an object: UTF-8, no duplicate names, no NaN, bounded depth."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise VerificationError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise VerificationError(f"{what} is not a JSON object")
    if _depth(value, max_depth) > max_depth:
        raise VerificationError(f"{what} is nested too deeply")
    return value


# --- compact serialisation -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompactJws:
    """A compact JWS split and decoded, NOT yet verified."""

    header: Mapping[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes

    def __repr__(self) -> str:
        return f"CompactJws(alg={self.header.get('alg')!r}, payload_bytes={len(self.payload)})"


def parse_compact(token: str | bytes, *, max_bytes: int, what: str = "token") -> CompactJws:
    """Split ``header.payload.signature`` with size bounds and strict base64url/JSON decoding."""
    if isinstance(token, bytes):
        if len(token) > max_bytes:
            raise VerificationError(f"{what} is too large (limit {max_bytes} bytes)")
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise VerificationError(f"{what} is not ASCII text") from None
    if not isinstance(token, str):
        raise VerificationError(f"{what} must be a string")
    token = token.strip()
    if not token:
        raise VerificationError(f"{what} is empty")
    if len(token) > max_bytes:
        raise VerificationError(f"{what} is too large (limit {max_bytes} bytes)")
    parts = token.split(".")
    if len(parts) != 3:
        raise VerificationError(f"{what} is not a compact JWS (expected three dot-separated parts)")
    header_b64, payload_b64, signature_b64 = parts
    if not header_b64:
        raise VerificationError(f"{what} has an empty header")
    header = parse_json_object(b64url_decode(header_b64, what=f"{what} header"), what=f"{what} header")
    payload = b64url_decode(payload_b64, what=f"{what} payload")
    signature = b64url_decode(signature_b64, what=f"{what} signature")
    return CompactJws(
        header=MappingProxyType(header),
        payload=payload,
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
        signature=signature,
    )


def _check_header_pinned(header: Mapping[str, Any], *, what: str) -> None:
    """(1) The algorithm is pinned: only RS256, whatever else the header says."""
    alg = header.get("alg")
    if alg != PINNED_ALGORITHM:
        shown = alg if isinstance(alg, str) and len(alg) <= 16 else "<invalid>"
        raise VerificationError(f"{what} algorithm {shown!r} is not allowed; only RS256 is accepted")
    for name in _HEADER_PARAMS_REJECTED:
        if name in header:
            raise VerificationError(f"{what} header parameter {name!r} is not supported")


def _verify_rs256(jws: CompactJws, key: rsa.RSAPublicKey, *, what: str) -> None:
    if key.key_size < MIN_RSA_BITS:
        raise VerificationError(f"{what} signing key is too small ({key.key_size} bits)")
    if len(jws.signature) != (key.key_size + 7) // 8:
        raise VerificationError(f"{what} signature is invalid")
    try:
        key.verify(jws.signature, jws.signing_input, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise VerificationError(f"{what} signature is invalid") from None


# --- JWKS ------------------------------------------------------------------------------------------


def _int_from_b64url(value: Any, *, what: str) -> int:
    if not isinstance(value, str) or not value:
        raise VerificationError(f"{what} is missing")
    return int.from_bytes(b64url_decode(value, what=what, max_bytes=2048), "big")


def _rsa_key_from_jwk(jwk: Mapping[str, Any], *, index: int) -> rsa.RSAPublicKey:
    what = f"JWKS key {index}"
    x5c = jwk.get("x5c")
    from_cert: rsa.RSAPublicKey | None = None
    if x5c is not None:
        if not isinstance(x5c, list) or not x5c or not isinstance(x5c[0], str):
            raise VerificationError(f"{what} x5c is not a non-empty list of strings")
        der = b64_decode_standard(x5c[0], what=f"{what} x5c[0]", max_bytes=MAX_CERT_BYTES)
        try:
            cert_key = x509.load_der_x509_certificate(der).public_key()
        except _CERT_PARSE_ERRORS:
            raise VerificationError(f"{what} x5c[0] is not a DER certificate") from None
        if not isinstance(cert_key, rsa.RSAPublicKey):
            raise VerificationError(f"{what} x5c[0] does not hold an RSA key")
        from_cert = cert_key
    if "n" in jwk or "e" in jwk:
        n = _int_from_b64url(jwk.get("n"), what=f"{what} n")
        e = _int_from_b64url(jwk.get("e"), what=f"{what} e")
        if from_cert is not None:
            numbers = from_cert.public_numbers()
            if (numbers.n, numbers.e) != (n, e):
                raise VerificationError(f"{what} n/e do not match its x5c certificate")
            return from_cert
        try:
            return rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError:
            raise VerificationError(f"{what} n/e do not form an RSA key") from None
    if from_cert is None:
        raise VerificationError(f"{what} has neither x5c nor n/e")
    return from_cert


def keys_from_jwks(document: bytes | str | Mapping[str, Any]) -> dict[str, rsa.RSAPublicKey]:
    """Turn a JWKS into ``{kid: RSA public key}``.

    The key comes from ``x5c[0]`` when present (MAA publishes only x5c), else from ``n``/``e``.
    Keys that are not RSA or are marked for encryption are skipped; a duplicate kid or a set
    without any usable key is an error. The JWKS certificates' validity is not checked: MAA's are
    self-signed carriers of the key, and trust comes from fetching the set from the pinned issuer.
    """
    if isinstance(document, Mapping):
        parsed: Mapping[str, Any] = document
    else:
        raw = document.encode("utf-8") if isinstance(document, str) else document
        if len(raw) > MAX_JWKS_BYTES:
            raise VerificationError(f"JWKS is too large (limit {MAX_JWKS_BYTES} bytes)")
        parsed = parse_json_object(raw, what="JWKS")
    entries = parsed.get("keys")
    if not isinstance(entries, list):
        raise VerificationError("JWKS has no 'keys' list")
    if len(entries) > MAX_JWKS_KEYS:
        raise VerificationError(f"JWKS has too many keys (limit {MAX_JWKS_KEYS})")
    keys: dict[str, rsa.RSAPublicKey] = {}
    for index, jwk in enumerate(entries):
        if not isinstance(jwk, dict):
            raise VerificationError(f"JWKS key {index} is not an object")
        kty = jwk.get("kty", "RSA" if "x5c" in jwk else None)
        if kty != "RSA" or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise VerificationError(f"JWKS key {index} has no usable 'kid'")
        key = _rsa_key_from_jwk(jwk, index=index)
        if kid in keys and keys[kid].public_numbers() != key.public_numbers():
            raise VerificationError(f"JWKS key {index} reuses a kid for a different key")
        keys[kid] = key
    if not keys:
        raise VerificationError("JWKS holds no RSA signing key")
    return keys


# --- JWT (MAA and Entra tokens) --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedJwt:
    """A JWT whose RS256 signature, issuer, audience and lifetime have been checked."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    kid: str
    issuer: str
    expires_at: datetime
    not_before: datetime | None
    issued_at: datetime | None

    def __repr__(self) -> str:
        return f"VerifiedJwt(issuer={self.issuer!r}, expires_at={self.expires_at.isoformat()})"


def _normalise_issuer(value: str) -> str:
    return value[:-1] if value.endswith("/") else value


def _numeric_date(claims: Mapping[str, Any], name: str, *, required: bool) -> datetime | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise VerificationError(f"token has no '{name}' claim")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise VerificationError(f"token '{name}' claim is not a number")
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise VerificationError(f"token '{name}' claim is out of range") from None


def _as_set(value: str | Collection[str]) -> frozenset[str]:
    return frozenset((value,)) if isinstance(value, str) else frozenset(value)


def verify_jwt_rs256(
    token: str | bytes,
    keys_by_kid: Mapping[str, rsa.RSAPublicKey],
    *,
    issuer: str | Collection[str],
    now: datetime,
    leeway: timedelta = DEFAULT_LEEWAY,
    audience: str | Collection[str] | None = None,
    max_bytes: int = MAX_JWT_BYTES,
    what: str = "token",
) -> VerifiedJwt:
    """Verify an RS256 JWT against the issuer's keys and return its claims.

    Steps: (1) parse with size bounds; (2) the header must say RS256 (``none``, ``HS256`` — also
    HS256 keyed with the RSA public key —, and every other algorithm are refused before any key is
    touched); (3) the ``kid`` must name one of ``keys_by_kid``; (4) the signature must verify;
    (5) claims must be a JSON object; (6) ``iss`` must equal ``issuer`` (a trailing slash ignored);
    (7) ``aud`` must contain ``audience`` when one is given; (8) ``exp`` is required and must be in
    the future, ``nbf``/``iat`` must not be in the future (each with ``leeway``).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    jws = parse_compact(token, max_bytes=max_bytes, what=what)  # (1)
    _check_header_pinned(jws.header, what=what)  # (2)
    kid = jws.header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise VerificationError(f"{what} header has no 'kid'")
    key = keys_by_kid.get(kid)  # (3)
    if key is None:
        raise VerificationError(f"{what} key id is not in the issuer's key set")
    _verify_rs256(jws, key, what=what)  # (4)
    claims = parse_json_object(jws.payload, what=f"{what} claims")  # (5)
    token_issuer = claims.get("iss")  # (6)
    expected_issuers = {_normalise_issuer(item) for item in _as_set(issuer)}
    if not isinstance(token_issuer, str) or _normalise_issuer(token_issuer) not in expected_issuers:
        shown = token_issuer[:120] if isinstance(token_issuer, str) else "<missing>"
        raise VerificationError(f"{what} issuer {shown!r} is not the expected issuer")
    if audience is not None:  # (7)
        token_audience = claims.get("aud")
        audiences = [token_audience] if isinstance(token_audience, str) else token_audience
        if not isinstance(audiences, list) or not _as_set(audience) & {
            item for item in audiences if isinstance(item, str)
        }:
            raise VerificationError(f"{what} audience is not the expected audience")
    expires_at = _numeric_date(claims, "exp", required=True)  # (8)
    not_before = _numeric_date(claims, "nbf", required=False)
    issued_at = _numeric_date(claims, "iat", required=False)
    assert expires_at is not None
    if now >= expires_at + leeway:
        raise VerificationError(f"{what} has expired")
    if not_before is not None and now + leeway < not_before:
        raise VerificationError(f"{what} is not valid yet (nbf is in the future)")
    if issued_at is not None and now + leeway < issued_at:
        raise VerificationError(f"{what} was issued in the future (iat)")
    return VerifiedJwt(
        header=jws.header,
        claims=MappingProxyType(claims),
        kid=kid,
        issuer=token_issuer,
        expires_at=expires_at,
        not_before=not_before,
        issued_at=issued_at,
    )


# --- the Key Vault / Managed HSM release JWS -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReleaseRequestInfo:
    """``payload.request``: what the vault says it was asked."""

    api_version: str
    enc: str
    kid: str
    nonce: str | None


@dataclass(frozen=True, slots=True)
class KeyHsm:
    """``key_hsm`` decoded: the wrapped key (CKM_RSA_AES_KEY_WRAP family) and its header."""

    schema_version: str
    kid: str
    alg: str
    enc: str
    ciphertext: bytes

    def __repr__(self) -> str:
        return f"KeyHsm(kid={self.kid!r}, enc={self.enc!r}, ciphertext_bytes={len(self.ciphertext)})"


@dataclass(frozen=True, slots=True)
class ReleasedKey:
    """``payload.response.key.key``: the public half of the released key plus the wrapped blob."""

    kid: str
    kty: str
    key_ops: tuple[str, ...]
    key_hsm: KeyHsm
    n: bytes | None = None
    e: bytes | None = None
    crv: str | None = None
    x: bytes | None = None
    y: bytes | None = None


@dataclass(frozen=True, slots=True)
class ReleasePolicyInfo:
    """``payload.response.key.release_policy`` as the vault stored it."""

    data: bytes
    content_type: str | None
    immutable: bool | None


@dataclass(frozen=True, slots=True)
class ReleasePayload:
    """A verified release JWS payload."""

    request: ReleaseRequestInfo
    key: ReleasedKey
    attributes: Mapping[str, Any]
    release_policy: ReleasePolicyInfo | None
    signer: x509.Certificate

    @property
    def exportable(self) -> bool:
        return self.attributes.get("exportable") is True


def _vault_subject(vault_host: str) -> x509_verification.Subject:
    """The name the leaf must carry: an IP SAN for IP literals, else a DNS SAN (wildcards allowed)."""
    host = vault_host.strip()
    if "://" in host:
        raise ValueError("vault_host must be a host name, not a URL")
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    else:
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return x509.DNSName(host.lower().rstrip("."))
    except ValueError:
        raise ValueError("vault_host is not a valid host name") from None


def _load_x5c(header: Mapping[str, Any]) -> list[x509.Certificate]:
    x5c = header.get("x5c")
    if not isinstance(x5c, list) or not x5c:
        raise VerificationError("release JWS header has no x5c certificate chain")
    if len(x5c) > MAX_X5C_ENTRIES:
        raise VerificationError(f"release JWS x5c has too many certificates (limit {MAX_X5C_ENTRIES})")
    certs = []
    for index, entry in enumerate(x5c):
        if not isinstance(entry, str):
            raise VerificationError(f"release JWS x5c[{index}] is not a string")
        der = b64_decode_standard(entry, what=f"release JWS x5c[{index}]", max_bytes=MAX_CERT_BYTES)
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except _CERT_PARSE_ERRORS:
            raise VerificationError(f"release JWS x5c[{index}] is not a DER certificate") from None
    return certs


def _check_thumbprints(header: Mapping[str, Any], leaf: x509.Certificate) -> None:
    """``x5t#S256`` / ``x5t``, when present, must be the leaf's SHA-256 / SHA-1 thumbprint."""
    der = leaf.public_bytes(serialization.Encoding.DER)
    for name, algorithm in (("x5t#S256", hashes.SHA256()), ("x5t", hashes.SHA1())):  # noqa: S303 -- x5t is defined as SHA-1 (RFC 7515 4.1.7); a fingerprint, not a signature
        if name not in header:
            continue
        claimed = header[name]
        if not isinstance(claimed, str):
            raise VerificationError(f"release JWS {name} is not a string")
        digest = hashes.Hash(algorithm)
        digest.update(der)
        if b64url_decode(claimed, what=f"release JWS {name}", max_bytes=64) != digest.finalize():
            raise VerificationError(f"release JWS {name} does not match the signing certificate")


def _verify_chain(
    certs: list[x509.Certificate],
    *,
    trusted_roots: Sequence[x509.Certificate],
    vault_host: str,
    now: datetime,
) -> None:
    """Leaf → x5c[1:] as untrusted intermediates → one of ``trusted_roots`` at ``now``, naming the host."""
    if not trusted_roots:
        raise ValueError("trusted_roots must not be empty")
    subject = _vault_subject(vault_host)
    verifier = (
        x509_verification.PolicyBuilder()
        .store(x509_verification.Store(list(trusted_roots)))
        .time(now)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .build_server_verifier(subject)
    )
    try:
        verifier.verify(certs[0], certs[1:])
    except x509_verification.VerificationError as error:
        # cryptography's message names the failing check and the certificate subject, never
        # signature or key bytes; keep only its first line.
        detail = str(error).split("\n", 1)[0][:300]
        raise VerificationError(f"release JWS certificate chain is not trusted: {detail}") from None


def _str_field(
    mapping: Mapping[str, Any], name: str, *, where: str, required: bool = True, max_chars: int = 4096
) -> str | None:
    value = mapping.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > max_chars:
        raise VerificationError(f"release payload {where}.{name} is missing or not a string")
    return value


def _object_field(mapping: Mapping[str, Any], name: str, *, where: str) -> Mapping[str, Any]:
    value = mapping.get(name)
    if not isinstance(value, dict):
        raise VerificationError(f"release payload {where}.{name} is missing or not an object")
    return value


def _parse_key_hsm(text: str) -> KeyHsm:
    blob = parse_json_object(
        b64url_decode(text, what="release key_hsm", max_bytes=MAX_RELEASE_JWS_BYTES), what="release key_hsm"
    )
    schema_version = _str_field(blob, "schema_version", where="key_hsm")
    header = _object_field(blob, "header", where="key_hsm")
    ciphertext_text = _str_field(blob, "ciphertext", where="key_hsm", max_chars=MAX_RELEASE_JWS_BYTES)
    assert schema_version is not None and ciphertext_text is not None
    kid = _str_field(header, "kid", where="key_hsm.header")
    alg = _str_field(header, "alg", where="key_hsm.header")
    enc = _str_field(header, "enc", where="key_hsm.header")
    assert kid is not None and alg is not None and enc is not None
    if alg != "dir":
        raise VerificationError("release key_hsm.header.alg is not 'dir'")
    ciphertext = b64url_decode(ciphertext_text, what="release key_hsm ciphertext", max_bytes=64 * 1024)
    return KeyHsm(schema_version=schema_version, kid=kid, alg=alg, enc=enc, ciphertext=ciphertext)


def _optional_b64url(mapping: Mapping[str, Any], name: str) -> bytes | None:
    value = mapping.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise VerificationError(f"release payload key.{name} is not a string")
    return b64url_decode(value, what=f"release payload key.{name}", max_bytes=4096)


def _parse_release_payload(payload: bytes, signer: x509.Certificate) -> ReleasePayload:
    document = parse_json_object(payload, what="release payload")
    request = _object_field(document, "request", where="payload")
    response = _object_field(document, "response", where="payload")
    bundle = _object_field(response, "key", where="response")
    key = _object_field(bundle, "key", where="response.key")
    api_version = _str_field(request, "api-version", where="request")
    enc = _str_field(request, "enc", where="request")
    request_kid = _str_field(request, "kid", where="request")
    nonce = _str_field(request, "nonce", where="request", required=False)
    assert api_version is not None and enc is not None and request_kid is not None
    key_hsm_text = _str_field(key, "key_hsm", where="response.key.key", max_chars=MAX_RELEASE_JWS_BYTES)
    assert key_hsm_text is not None
    key_hsm = _parse_key_hsm(key_hsm_text)
    if key_hsm.enc != enc:
        raise VerificationError("release key_hsm.header.enc differs from request.enc")
    key_ops_value = key.get("key_ops", [])
    if not isinstance(key_ops_value, list) or not all(isinstance(op, str) for op in key_ops_value):
        raise VerificationError("release payload key.key_ops is not a list of strings")
    kid = _str_field(key, "kid", where="response.key.key")
    kty = _str_field(key, "kty", where="response.key.key")
    assert kid is not None and kty is not None
    released = ReleasedKey(
        kid=kid,
        kty=kty,
        key_ops=tuple(key_ops_value),
        key_hsm=key_hsm,
        n=_optional_b64url(key, "n"),
        e=_optional_b64url(key, "e"),
        crv=_str_field(key, "crv", where="response.key.key", required=False),
        x=_optional_b64url(key, "x"),
        y=_optional_b64url(key, "y"),
    )
    attributes = bundle.get("attributes", {})
    if not isinstance(attributes, dict):
        raise VerificationError("release payload key.attributes is not an object")
    policy_info: ReleasePolicyInfo | None = None
    policy = bundle.get("release_policy")
    if policy is not None:
        if not isinstance(policy, dict):
            raise VerificationError("release payload release_policy is not an object")
        data_text = _str_field(policy, "data", where="release_policy", max_chars=MAX_RELEASE_JWS_BYTES)
        assert data_text is not None
        immutable = policy.get("immutable")
        if immutable is not None and not isinstance(immutable, bool):
            raise VerificationError("release payload release_policy.immutable is not a boolean")
        policy_info = ReleasePolicyInfo(
            data=b64url_decode(data_text, what="release_policy.data", max_bytes=MAX_RELEASE_JWS_BYTES),
            content_type=_str_field(policy, "contentType", where="release_policy", required=False),
            immutable=immutable,
        )
    return ReleasePayload(
        request=ReleaseRequestInfo(api_version=api_version, enc=enc, kid=request_kid, nonce=nonce),
        key=released,
        attributes=MappingProxyType(attributes),
        release_policy=policy_info,
        signer=signer,
    )


def verify_release_jws(
    jws: str | bytes,
    *,
    trusted_roots: Sequence[x509.Certificate],
    vault_host: str,
    now: datetime,
) -> ReleasePayload:
    """Verify a Key Vault / Managed HSM release JWS and parse its payload.

    (1) parse with size bounds; (2) alg pinned to RS256; (3) load ``x5c`` (standard base64 DER);
    (4) ``x5t#S256``/``x5t``, when present, must match the leaf; (5) the leaf must chain through
    ``x5c[1:]`` (untrusted intermediates; a root carried only in the token is never trusted) to one
    of ``trusted_roots``, every certificate valid at ``now``, and name ``vault_host`` (DNS SAN,
    wildcards allowed, or IP SAN); (6) the RS256 signature must verify with the leaf key; (7) only
    then is the payload parsed into frozen types.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    parsed = parse_compact(jws, max_bytes=MAX_RELEASE_JWS_BYTES, what="release JWS")  # (1)
    _check_header_pinned(parsed.header, what="release JWS")  # (2)
    certs = _load_x5c(parsed.header)  # (3)
    _check_thumbprints(parsed.header, certs[0])  # (4)
    _verify_chain(certs, trusted_roots=trusted_roots, vault_host=vault_host, now=now)  # (5)
    leaf_key = certs[0].public_key()
    if not isinstance(leaf_key, rsa.RSAPublicKey):
        raise VerificationError("release JWS signing certificate does not hold an RSA key")
    _verify_rs256(parsed, leaf_key, what="release JWS")  # (6)
    return _parse_release_payload(parsed.payload, certs[0])  # (7)


def sha256_thumbprint(certificate: x509.Certificate) -> str:
    """``x5t#S256`` of a certificate: unpadded base64url of SHA-256 over its DER."""
    return b64url_encode(hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest())
