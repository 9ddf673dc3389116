"""Key material inside the TEE: the ephemeral wrapping key and the unwrap of a released key.

Everything here is a plain function over bytes and ``cryptography`` objects; nothing does I/O.
No primitive is implemented here: RSA-OAEP and AES key wrap with padding (RFC 5649) come from
``cryptography``.

The release ciphertext (CKM_RSA_AES_KEY_WRAP family, azure-facts §2.3) is::

    RSA-OAEP(wrapping public key, ephemeral AES key) || AES-KWP(ephemeral AES key, target key bytes)

where the RSA part is exactly the modulus length, OAEP/MGF1 use SHA-1, SHA-256 or SHA-384 by ``enc``
(the MGF1 hash for the _256/_384 variants follows GO-REF's assumption, UNCONFIRMED), and the target
bytes are PKCS#8 DER for RSA and EC keys and raw bytes for oct keys.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidKey, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from skr.errors import InvalidUpstreamResponseError
from skr.primitives.encoding import b64url_decode_strict, b64url_encode
from skr.primitives.sensitive import Sensitive

__all__ = [
    "ENC_ALGORITHMS",
    "WrappingKey",
    "b64url_decode",
    "b64url_encode",
    "export_private_jwk",
    "generate_wrapping_key",
    "private_jwk_from_key_bytes",
    "rsa_private_key_from_jwk",
    "rsa_public_jwk",
    "unwrap_released_key",
]

# enc value -> OAEP hash. CKM_RSA_AES_KEY_WRAP uses SHA-1 per the BYOK specification.
ENC_ALGORITHMS: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "CKM_RSA_AES_KEY_WRAP": hashes.SHA1,
    "RSA_AES_KEY_WRAP_256": hashes.SHA256,
    "RSA_AES_KEY_WRAP_384": hashes.SHA384,
}
ALLOWED_WRAPPING_KEY_SIZES: Final = frozenset({2048, 3072, 4096})
MAX_WRAPPED_KEY_BYTES: Final = 64 * 1024


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; raises ValueError on anything else."""
    return b64url_decode_strict(text)


def _int_b64(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(size, "big"))


def rsa_public_jwk(key: rsa.RSAPublicKey) -> dict[str, str]:
    """The public JWK members of an RSA key (kty, n, e)."""
    numbers = key.public_numbers()
    return {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) over the required members in lexicographic order."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "oct": ("k", "kty")}[jwk["kty"]]
    canonical = json.dumps({name: jwk[name] for name in required}, separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


@dataclass(frozen=True, slots=True)
class WrappingKey:
    """An ephemeral RSA key pair whose public half is attested and receives released keys.

    ``runtime_data`` is the exact JSON bytes sent to MAA as runtimeData; REPORT_DATA is its SHA-256.
    The private key never leaves this object except through :func:`unwrap_released_key`.
    """

    private_key: Sensitive[rsa.RSAPrivateKey]
    kid: str
    jwks: dict[str, Any]
    runtime_data: bytes

    @property
    def key_size(self) -> int:
        return self.private_key.reveal().key_size

    def report_data(self) -> bytes:
        """REPORT_DATA for this key: sha256(runtime data) followed by 32 zero bytes."""
        return hashlib.sha256(self.runtime_data).digest() + bytes(32)

    def __repr__(self) -> str:
        return f"WrappingKey(kid={self.kid!r}, bits={self.key_size})"


def generate_wrapping_key(bits: int = 2048) -> WrappingKey:
    """Create a wrapping key and its JWKS (kid = RFC 7638 thumbprint, key_ops ["encrypt"]).

    This is CPU-heavy (tens to hundreds of milliseconds): callers run it in a worker thread ahead of
    need, never on a request path.
    """
    if bits not in ALLOWED_WRAPPING_KEY_SIZES:
        raise ValueError(f"wrapping key size must be one of {sorted(ALLOWED_WRAPPING_KEY_SIZES)}")
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    public = rsa_public_jwk(private_key.public_key())
    kid = jwk_thumbprint(public)
    jwk = {"e": public["e"], "key_ops": ["encrypt"], "kid": kid, "kty": "RSA", "n": public["n"]}
    jwks = {"keys": [jwk]}
    runtime_data = json.dumps(jwks, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return WrappingKey(Sensitive(private_key, "wrapping key"), kid, jwks, runtime_data)


def unwrap_released_key(wrapping_key: WrappingKey, enc: str, ciphertext: bytes) -> Sensitive[bytes]:
    """Recover the target key bytes from a CKM_RSA_AES_KEY_WRAP-family ciphertext.

    Raises:
        InvalidUpstreamResponseError: unknown ``enc``, a ciphertext of the wrong shape, or a wrap
            that does not open with our key. The message never contains key bytes.
    """
    hash_type = ENC_ALGORITHMS.get(enc)
    if hash_type is None:
        raise InvalidUpstreamResponseError(f"unsupported key wrap algorithm {enc!r}", service="keyvault")
    private_key = wrapping_key.private_key.reveal()
    rsa_length = private_key.key_size // 8
    if len(ciphertext) > MAX_WRAPPED_KEY_BYTES:
        raise InvalidUpstreamResponseError("wrapped key is larger than any key Key Vault releases", service="keyvault")
    # AES-KWP output is at least 16 bytes and a multiple of 8.
    kwp_length = len(ciphertext) - rsa_length
    if kwp_length < 16 or kwp_length % 8:
        raise InvalidUpstreamResponseError(
            f"wrapped key has {len(ciphertext)} bytes; expected {rsa_length} RSA bytes plus an AES key wrap",
            service="keyvault",
        )
    try:
        aes_key = private_key.decrypt(
            ciphertext[:rsa_length],
            padding.OAEP(mgf=padding.MGF1(algorithm=hash_type()), algorithm=hash_type(), label=None),
        )
    except ValueError:
        raise InvalidUpstreamResponseError(
            "the released key was not wrapped to this sidecar's key (RSA-OAEP failed)", service="keyvault"
        ) from None
    if len(aes_key) not in (16, 24, 32):
        raise InvalidUpstreamResponseError("the transport AES key has an invalid length", service="keyvault")
    try:
        target = aes_key_unwrap_with_padding(aes_key, ciphertext[rsa_length:])
    except (InvalidUnwrap, InvalidKey, ValueError):
        raise InvalidUpstreamResponseError(
            "AES key unwrap failed: the wrapped key is corrupt", service="keyvault"
        ) from None
    return Sensitive(target, "released key bytes")


def private_jwk_from_key_bytes(
    kty: str, key_bytes: Sensitive[bytes], *, kid: str | None, key_ops: list[str] | None
) -> Sensitive[dict[str, Any]]:
    """Turn unwrapped bytes into a private JWK per the vault's kty.

    RSA/RSA-HSM and EC/EC-HSM arrive as PKCS#8 DER; oct/oct-HSM as the raw key. The JWK keeps the
    vault's kid and key_ops and uses the plain kty ("RSA", "EC", "oct") as RFC 7517 defines.
    """
    raw = key_bytes.reveal()
    family = kty.removesuffix("-HSM")
    jwk: dict[str, Any]
    if family == "oct":
        if not 1 <= len(raw) <= 64:
            raise InvalidUpstreamResponseError(
                f"released oct key has an invalid length ({len(raw)} bytes)", service="keyvault"
            )
        jwk = {"kty": "oct", "k": b64url_encode(raw)}
    elif family in ("RSA", "EC"):
        try:
            # OpenSSL's full RSA check (primality tests) costs ~30 ms per release on the request path.
            # The bytes come from a JWS verified against the vault's certificate, the caller checks
            # n/e against the signed public key, and _check_rsa_consistency verifies the arithmetic.
            key = serialization.load_der_private_key(raw, password=None, unsafe_skip_rsa_key_validation=True)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise InvalidUpstreamResponseError(f"released {kty} key is not valid PKCS#8", service="keyvault") from None
        if family == "RSA" and isinstance(key, rsa.RSAPrivateKey):
            _check_rsa_consistency(key)
            jwk = _rsa_private_jwk(key)
        elif family == "EC" and isinstance(key, ec.EllipticCurvePrivateKey):
            jwk = _ec_private_jwk(key)
        else:
            raise InvalidUpstreamResponseError(f"released key does not match its kty {kty}", service="keyvault")
    else:
        raise InvalidUpstreamResponseError(f"unsupported released key type {kty!r}", service="keyvault")
    if kid is not None:
        jwk["kid"] = kid
    if key_ops is not None:
        jwk["key_ops"] = list(key_ops)
    return Sensitive(jwk, "released JWK")


def _check_rsa_consistency(key: rsa.RSAPrivateKey) -> None:
    """Cheap arithmetic proof that the CRT parameters form one RSA key (no primality testing)."""
    numbers = key.private_numbers()
    p, q, d = numbers.p, numbers.q, numbers.d
    n, e = numbers.public_numbers.n, numbers.public_numbers.e
    consistent = (
        p > 1
        and q > 1
        and p * q == n
        and d * e % math.lcm(p - 1, q - 1) == 1
        and numbers.dmp1 == d % (p - 1)
        and numbers.dmq1 == d % (q - 1)
        and numbers.iqmp * q % p == 1
    )
    if not consistent:
        raise InvalidUpstreamResponseError("released RSA key parameters are inconsistent", service="keyvault")


def _rsa_private_jwk(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    numbers = key.private_numbers()
    public = numbers.public_numbers
    return {
        "kty": "RSA",
        "n": _int_b64(public.n),
        "e": _int_b64(public.e),
        "d": _int_b64(numbers.d),
        "p": _int_b64(numbers.p),
        "q": _int_b64(numbers.q),
        "dp": _int_b64(numbers.dmp1),
        "dq": _int_b64(numbers.dmq1),
        "qi": _int_b64(numbers.iqmp),
    }


_CURVE_NAMES: Final = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521", "secp256k1": "P-256K"}


def _ec_private_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    crv = _CURVE_NAMES.get(key.curve.name)
    if crv is None:
        raise InvalidUpstreamResponseError(
            f"released EC key uses an unsupported curve {key.curve.name}", service="keyvault"
        )
    size = (key.curve.key_size + 7) // 8
    numbers = key.private_numbers()
    return {
        "kty": "EC",
        "crv": crv,
        "x": _int_b64(numbers.public_numbers.x, size),
        "y": _int_b64(numbers.public_numbers.y, size),
        "d": _int_b64(numbers.private_value, size),
    }


def rsa_private_key_from_jwk(jwk: dict[str, Any]) -> rsa.RSAPrivateKey:
    """The private key of a released RSA JWK (the key-provider unwrap decrypts with it in memory)."""

    def num(name: str) -> int:
        return int.from_bytes(b64url_decode(jwk[name]), "big")

    public = rsa.RSAPublicNumbers(num("e"), num("n"))
    return rsa.RSAPrivateNumbers(num("p"), num("q"), num("d"), num("dp"), num("dq"), num("qi"), public).private_key()


def export_private_jwk(jwk: dict[str, Any], fmt: str) -> Sensitive[bytes]:
    """Serialise a released private JWK as ``jwk`` (JSON), ``pem`` (PKCS#8) or ``raw``.

    ``raw`` is the key bytes for oct keys and PKCS#8 DER for RSA/EC keys; ``pem`` has no meaning
    for a symmetric key and is refused for oct.
    """
    if fmt == "jwk":
        return Sensitive(json.dumps(jwk, separators=(",", ":")).encode(), "key file")
    kty = jwk.get("kty")
    if kty == "oct":
        if fmt == "pem":
            raise ValueError("pem is for RSA and EC keys; write an oct key as raw or jwk")
        return Sensitive(b64url_decode(jwk["k"]), "key file")
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kty == "RSA":
        key = rsa_private_key_from_jwk(jwk)
    elif kty == "EC":
        curve = {v: k for k, v in _CURVE_NAMES.items()}.get(jwk.get("crv", ""))
        if curve is None:
            raise ValueError("unsupported EC curve")
        key = ec.derive_private_key(int.from_bytes(b64url_decode(jwk["d"]), "big"), _CURVES[curve]())
    else:
        raise ValueError(f"unsupported key type {kty!r}")
    encoding = serialization.Encoding.PEM if fmt == "pem" else serialization.Encoding.DER
    return Sensitive(
        key.private_bytes(encoding, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), "key file"
    )


_CURVES: Final[dict[str, type[ec.EllipticCurve]]] = {
    "secp256r1": ec.SECP256R1,
    "secp384r1": ec.SECP384R1,
    "secp521r1": ec.SECP521R1,
    "secp256k1": ec.SECP256K1,
}
