"""Wrapping key, RFC 7638 thumbprints, unwrap of CKM_RSA_AES_KEY_WRAP ciphertexts, JWK conversion."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from hypothesis import given, settings
from hypothesis import strategies as st

from skr.core.crypto import (
    ENC_ALGORITHMS,
    b64url_decode,
    b64url_encode,
    generate_wrapping_key,
    jwk_thumbprint,
    private_jwk_from_key_bytes,
    unwrap_released_key,
)
from skr.errors import InvalidUpstreamResponseError
from skr.primitives.sensitive import Sensitive

WRAPPING_KEY = generate_wrapping_key(2048)


def _wrap(public: rsa.RSAPublicKey, enc: str, target: bytes, aes_size: int = 32) -> bytes:
    """What Key Vault does (azure-facts §2.3), written independently of skr.core.crypto."""
    aes_key = os.urandom(aes_size)
    h = ENC_ALGORITHMS[enc]
    rsa_part = public.encrypt(aes_key, padding.OAEP(mgf=padding.MGF1(h()), algorithm=h(), label=None))
    return rsa_part + aes_key_wrap_with_padding(aes_key, target)


def test_rfc7638_example_thumbprint() -> None:
    # RFC 7638 §3.1 example key and thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
        "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
        "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    assert (
        jwk_thumbprint({"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256"})
        == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    )


def test_wrapping_key_jwks_and_report_data() -> None:
    jwk = WRAPPING_KEY.jwks["keys"][0]
    assert jwk["key_ops"] == ["encrypt"]
    assert jwk["kid"] == jwk_thumbprint(jwk) == WRAPPING_KEY.kid
    assert json.loads(WRAPPING_KEY.runtime_data) == WRAPPING_KEY.jwks
    # GO-REF's byte layout: compact JSON, members sorted.
    assert WRAPPING_KEY.runtime_data.startswith(b'{"keys":[{"e":"AQAB","key_ops":["encrypt"],"kid":')
    assert WRAPPING_KEY.report_data() == hashlib.sha256(WRAPPING_KEY.runtime_data).digest() + bytes(32)
    assert "BEGIN" not in repr(WRAPPING_KEY) and "redacted" in repr(WRAPPING_KEY.private_key)


def test_wrapping_key_sizes() -> None:
    assert generate_wrapping_key(3072).key_size == 3072
    with pytest.raises(ValueError, match="2048"):
        generate_wrapping_key(1024)


@pytest.mark.parametrize("enc", sorted(ENC_ALGORITHMS))
@pytest.mark.parametrize("aes_size", [16, 24, 32])
def test_unwrap_each_enc(enc: str, aes_size: int) -> None:
    target = os.urandom(32)
    public = WRAPPING_KEY.private_key.reveal().public_key()
    assert unwrap_released_key(WRAPPING_KEY, enc, _wrap(public, enc, target, aes_size)).reveal() == target


def test_rsa_2048_target_ciphertext_is_1480_bytes_like_the_real_recording() -> None:
    target = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = WRAPPING_KEY.private_key.reveal().public_key()
    ciphertext = _wrap(public, "CKM_RSA_AES_KEY_WRAP", target)
    # 256 RSA bytes + RFC 5649 output (8-byte header + padded key); 1216-byte PKCS#8 gives the real 1480.
    assert len(ciphertext) == 256 + 8 + (len(target) + 7) // 8 * 8
    assert 256 + 8 + (1216 + 7) // 8 * 8 == 1480
    assert unwrap_released_key(WRAPPING_KEY, "CKM_RSA_AES_KEY_WRAP", ciphertext).reveal() == target


def test_unwrap_failures_are_typed_and_secret_free() -> None:
    target = b"\x42" * 32
    public = WRAPPING_KEY.private_key.reveal().public_key()
    good = _wrap(public, "RSA_AES_KEY_WRAP_256", target)
    other = generate_wrapping_key(2048)
    cases = {
        "unsupported key wrap": (WRAPPING_KEY, "A256KW", good),
        "expected 256 RSA bytes": (WRAPPING_KEY, "RSA_AES_KEY_WRAP_256", good[:270]),
        "not wrapped to this sidecar": (other, "RSA_AES_KEY_WRAP_256", good),
        "(RSA-OAEP failed)": (WRAPPING_KEY, "CKM_RSA_AES_KEY_WRAP", good),  # wrong hash for this wrap
        "corrupt": (WRAPPING_KEY, "RSA_AES_KEY_WRAP_256", good[:-1] + bytes([good[-1] ^ 1])),
    }
    for message, (key, enc, blob) in cases.items():
        with pytest.raises(InvalidUpstreamResponseError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
            unwrap_released_key(key, enc, blob)
        assert target.hex() not in str(info.value) and "4242" not in repr(info.value)


def test_rsa_jwk_from_pkcs8() -> None:
    key = rsa.generate_private_key(65537, 2048)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    jwk = private_jwk_from_key_bytes("RSA-HSM", Sensitive(der), kid="https://v/keys/k/1", key_ops=["decrypt"]).reveal()
    assert set(jwk) == {"kty", "n", "e", "d", "p", "q", "dp", "dq", "qi", "kid", "key_ops"}
    assert int.from_bytes(b64url_decode(jwk["n"]), "big") == key.public_key().public_numbers().n
    assert int.from_bytes(b64url_decode(jwk["d"]), "big") == key.private_numbers().d
    assert jwk["kid"] == "https://v/keys/k/1" and jwk["key_ops"] == ["decrypt"]


@pytest.mark.parametrize(
    ("curve", "crv", "size"),
    [
        (ec.SECP256R1(), "P-256", 32),
        (ec.SECP384R1(), "P-384", 48),
        (ec.SECP521R1(), "P-521", 66),
        (ec.SECP256K1(), "P-256K", 32),
    ],
)
def test_ec_jwk_from_pkcs8(curve: ec.EllipticCurve, crv: str, size: int) -> None:
    key = ec.generate_private_key(curve)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    jwk = private_jwk_from_key_bytes("EC-HSM", Sensitive(der), kid=None, key_ops=None).reveal()
    assert jwk["crv"] == crv and len(b64url_decode(jwk["x"])) == size and len(b64url_decode(jwk["d"])) == size
    assert int.from_bytes(b64url_decode(jwk["x"]), "big") == key.public_key().public_numbers().x


def test_oct_jwk_and_mismatches() -> None:
    jwk = private_jwk_from_key_bytes("oct-HSM", Sensitive(b"\1" * 32), kid="k", key_ops=["wrapKey"]).reveal()
    assert jwk == {"kty": "oct", "k": b64url_encode(b"\1" * 32), "kid": "k", "key_ops": ["wrapKey"]}
    ec_der = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InvalidUpstreamResponseError, match="does not match its kty"):
        private_jwk_from_key_bytes("RSA-HSM", Sensitive(ec_der), kid=None, key_ops=None)
    with pytest.raises(InvalidUpstreamResponseError, match="not valid PKCS#8"):
        private_jwk_from_key_bytes("EC", Sensitive(b"junk"), kid=None, key_ops=None)
    with pytest.raises(InvalidUpstreamResponseError, match="unsupported released key type"):
        private_jwk_from_key_bytes("DSA", Sensitive(b"x"), kid=None, key_ops=None)
    assert "redacted" in repr(private_jwk_from_key_bytes("oct", Sensitive(b"\1" * 16), kid=None, key_ops=None))


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_b64url_round_trip(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text
    assert b64url_decode(text) == data
    assert b64url_decode(text + "=" * (-len(text) % 4)) == data


@pytest.mark.parametrize("bad", ["a", "ab+c", "ab/c", "é", "a b"])
def test_b64url_rejects_other_alphabets(bad: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode(bad)


def test_inconsistent_rsa_parameters_are_refused() -> None:
    # A PKCS#8 key whose CRT coefficient was tampered with: cheap arithmetic catches it without
    # OpenSSL's (slow) full key check.
    key = rsa.generate_private_key(65537, 2048)
    numbers = key.private_numbers()
    tampered = rsa.RSAPrivateNumbers(
        numbers.p,
        numbers.q,
        numbers.d,
        numbers.dmp1,
        numbers.dmq1,
        (numbers.iqmp + 1) % numbers.p,
        numbers.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    der = tampered.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InvalidUpstreamResponseError, match="inconsistent"):
        private_jwk_from_key_bytes("RSA-HSM", Sensitive(der), kid=None, key_ops=None)
