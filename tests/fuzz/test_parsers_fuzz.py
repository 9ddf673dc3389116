"""Parser fuzzing: untrusted bytes may only ever produce the project's typed errors.

Every parser that sees bytes from outside (tokens, release JWSs, JWKSs, certificates, THIM JSON,
security-context files, configuration, key names, wrapped keys) gets random and mutated input from
hypothesis. The property is always the same: the call returns a well-formed value or raises an
:class:`skr.errors.SkrError` subclass (``ValueError`` only where a function documents it for caller
mistakes). For signed artefacts it is stronger: a mutated token or JWS verifies only when the bytes
that are signed and the signature bytes are exactly the original ones.

Defects these fuzzers found are pinned by regression tests at the end of the file.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import json
import re
import string
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from skr.core import jose
from skr.core.collateral import SecurityContext, ThimCertificates, parse_thim_json
from skr.core.crypto import ENC_ALGORITHMS, generate_wrapping_key, unwrap_released_key
from skr.core.keyvault import KeyName
from skr.errors import (
    BadRequestError,
    ConfigError,
    InvalidUpstreamResponseError,
    VerificationError,
)
from skr.shell.config import SETTINGS, Settings, load_settings
from skr.snp.verify import load_certificates
from skr_dev.simulated.amd import SimulatedAmd
from tests.conftest import real_data_dir

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

REAL: Final = real_data_dir()
"""The same directory the ``real_data`` fixture resolves; read lazily (see _require_real_data)."""

JSON_SCALARS: Final = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
JSON_VALUES: Final = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
B64URL_ALPHABET: Final = string.ascii_letters + string.digits + "-_"


@pytest.fixture(autouse=True, scope="module")
def _require_real_data(real_data: Path) -> None:
    """Fail with the fixture's clear message when the shared vectors are missing."""
    assert real_data == REAL


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _lenient_b64url(text: str) -> bytes:
    stripped = text.strip().rstrip("=")
    return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))


@st.composite
def mutations(draw: st.DrawFn, original: str) -> str:
    """One small edit of ``original``: replace/insert/delete a character, truncate, pad, reorder."""
    kind = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "swap", "pad", "dup", "case"]))
    if not original:
        return draw(st.text(max_size=10))
    at = draw(st.integers(0, len(original) - 1))
    char = draw(st.sampled_from(list(B64URL_ALPHABET + ".=+/ \t\n")) | st.characters())
    if kind == "replace":
        return original[:at] + char + original[at + 1 :]
    if kind == "insert":
        return original[:at] + char + original[at:]
    if kind == "delete":
        return original[:at] + original[at + 1 :]
    if kind == "truncate":
        return original[:at]
    if kind == "swap":
        parts = original.split(".")
        order = draw(st.permutations(range(len(parts))))
        return ".".join(parts[i] for i in order)
    if kind == "pad":
        return draw(st.sampled_from(["", " ", "\n", "="])) + original + draw(st.sampled_from(["", "=", "==", " "]))
    if kind == "dup":
        parts = original.split(".")
        index = draw(st.integers(0, len(parts) - 1))
        return ".".join([*parts[: index + 1], parts[index], *parts[index + 1 :]])
    return original[:at] + original[at].swapcase() + original[at + 1 :]


# --- skr.core.jose: JSON and compact parsing ------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=400) | st.text(max_size=400), max_bytes=st.integers(0, 500))
def test_parse_compact_random(data: bytes | str, max_bytes: int) -> None:
    try:
        parsed = jose.parse_compact(data, max_bytes=max_bytes)
    except VerificationError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    text = (data.decode("ascii") if isinstance(data, bytes) else data).strip()
    assert len(text) <= max_bytes
    assert parsed.signing_input == ".".join(text.split(".")[:2]).encode()
    assert isinstance(dict(parsed.header), dict)


@FUZZ
@given(header=JSON_VALUES, payload=st.binary(max_size=64), signature=st.binary(max_size=64))
def test_parse_compact_structured(header: Any, payload: bytes, signature: bytes) -> None:
    token = f"{_b64url(json.dumps(header).encode())}.{_b64url(payload)}.{_b64url(signature)}"
    try:
        parsed = jose.parse_compact(token, max_bytes=jose.MAX_JWT_BYTES)
    except VerificationError:
        assert not isinstance(header, dict), header
        return
    assert dict(parsed.header) == header
    assert (parsed.payload, parsed.signature) == (payload, signature)


@FUZZ
@given(data=st.binary(max_size=300) | st.text(max_size=300))
def test_parse_json_object_random(data: bytes | str) -> None:
    try:
        value = jose.parse_json_object(data, what="fuzz")
    except VerificationError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    assert isinstance(value, dict)


@FUZZ
@given(document=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5))
def test_parse_json_object_round_trips(document: dict[str, Any]) -> None:
    assert jose.parse_json_object(json.dumps(document).encode(), what="fuzz") == document


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_parse_json_object_refuses_deep_nesting(depth: int) -> None:
    with pytest.raises(VerificationError):
        jose.parse_json_object(b'{"a":' + b"[" * depth + b"]" * depth + b"}", what="fuzz")


@pytest.mark.parametrize(
    "text",
    [b'{"a":1,"a":1}', b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}', b"\xff{}", b'{"a":1}x', b"[]"],
)
def test_parse_json_object_strictness(text: bytes) -> None:
    with pytest.raises(VerificationError):
        jose.parse_json_object(text, what="fuzz")


# --- skr.core.jose: JWKS -------------------------------------------------------------------------------

KEY: Final = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KID: Final = "fuzz-kid"
PUBLIC_NUMBERS: Final = KEY.public_key().public_numbers()
JWK_VALUES: Final = st.fixed_dictionaries(
    {},
    optional={
        "kty": st.sampled_from(["RSA", "EC", "oct", ""]) | JSON_VALUES,
        "use": st.sampled_from(["sig", "enc"]) | JSON_VALUES,
        "kid": st.sampled_from([KID, "", "k" * 300]) | JSON_VALUES,
        "n": st.sampled_from([_b64url(PUBLIC_NUMBERS.n.to_bytes(256, "big")), "AQAB", "", "!!"])
        | st.binary(max_size=40).map(_b64url)
        | JSON_VALUES,
        "e": st.sampled_from(["AQAB", "AA", "Aw", ""]) | st.binary(max_size=8).map(_b64url) | JSON_VALUES,
        "x5c": st.lists(st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode()) | JSON_VALUES, max_size=2)
        | JSON_VALUES,
    },
)


@FUZZ
@given(keys=st.lists(JWK_VALUES, max_size=4) | JSON_VALUES, as_text=st.booleans())
def test_keys_from_jwks_random(keys: Any, as_text: bool) -> None:
    document: Any = {"keys": keys}
    try:
        result = jose.keys_from_jwks(json.dumps(document) if as_text else document)
    except VerificationError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    assert result
    assert all(isinstance(kid, str) and isinstance(key, rsa.RSAPublicKey) for kid, key in result.items())
    assert all(key.key_size >= 1 for key in result.values())


@functools.cache
def _mhsm_jws() -> str:
    return (REAL / "akv" / "mhsm_release_response.jws").read_text().strip()


@functools.cache
def _mhsm_chain_der() -> list[bytes]:
    header = json.loads(_lenient_b64url(_mhsm_jws().split(".", 1)[0]))
    return [base64.b64decode(item) for item in header["x5c"]]


@st.composite
def byte_mutations(draw: st.DrawFn, original: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend"]))
    at = draw(st.integers(0, len(original) - 1))
    if kind == "flip":
        return original[:at] + bytes([original[at] ^ (1 << draw(st.integers(0, 7)))]) + original[at + 1 :]
    if kind == "set":
        return original[:at] + bytes([draw(st.integers(0, 255))]) + original[at + 1 :]
    if kind == "insert":
        return original[:at] + draw(st.binary(min_size=1, max_size=4)) + original[at:]
    if kind == "delete":
        return original[:at] + original[at + draw(st.integers(1, 4)) :]
    if kind == "truncate":
        return original[:at]
    return original + draw(st.binary(min_size=1, max_size=16))


@FUZZ
@given(data=st.data())
def test_keys_from_jwks_with_mutated_certificates(data: st.DataObject) -> None:
    leaf = _mhsm_chain_der()[0]
    mutated = data.draw(byte_mutations(leaf))
    document = {"keys": [{"kty": "RSA", "kid": KID, "x5c": [base64.b64encode(mutated).decode()]}]}
    try:
        result = jose.keys_from_jwks(document)
    except VerificationError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    assert isinstance(result[KID], rsa.RSAPublicKey)


def test_jwks_certificate_with_unknown_key_type_is_a_verification_error() -> None:
    """Regression: cryptography's UnsupportedAlgorithm used to escape keys_from_jwks."""
    der = _mhsm_chain_der()[0]
    rsa_encryption = bytes.fromhex("06092a864886f70d010101")
    unknown = bytes.fromhex("06092a864886f70d010163")  # 1.2.840.113549.1.1.99
    assert der.count(rsa_encryption) == 1
    document = {
        "keys": [{"kty": "RSA", "kid": KID, "x5c": [base64.b64encode(der.replace(rsa_encryption, unknown)).decode()]}]
    }
    with pytest.raises(VerificationError):
        jose.keys_from_jwks(document)


# --- skr.core.jose: RS256 JWTs -------------------------------------------------------------------------

ISSUER: Final = "https://fuzz.attest.example"
AUDIENCE: Final = "https://fuzz.audience.example"
NOW: Final = datetime(2030, 1, 1, tzinfo=UTC)
NOW_TS: Final = int(NOW.timestamp())
LEEWAY: Final = jose.DEFAULT_LEEWAY.total_seconds()
KEYS: Final = {KID: KEY.public_key()}
GOOD_CLAIMS: Final = {
    "iss": ISSUER,
    "aud": AUDIENCE,
    "exp": NOW_TS + 3600,
    "nbf": NOW_TS - 60,
    "iat": NOW_TS - 60,
    "x-ms-attestation-type": "sevsnpvm",
}
TOKEN: Final = jwt.encode(GOOD_CLAIMS, KEY, algorithm="RS256", headers={"kid": KID})


def _verify_token(token: str | bytes) -> jose.VerifiedJwt:
    return jose.verify_jwt_rs256(token, KEYS, issuer=ISSUER, now=NOW, audience=AUDIENCE)


def test_minted_token_verifies() -> None:
    verified = _verify_token(TOKEN)
    assert dict(verified.claims) == GOOD_CLAIMS and verified.kid == KID


@settings(FUZZ, max_examples=400)
@given(data=st.data())
def test_mutated_jwt_verifies_only_with_the_signed_bytes_unchanged(data: st.DataObject) -> None:
    mutated = data.draw(mutations(TOKEN))
    try:
        _verify_token(mutated)
    except VerificationError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    header_b64, payload_b64, signature_b64 = mutated.strip().split(".")
    original = TOKEN.split(".")
    assert f"{header_b64}.{payload_b64}" == f"{original[0]}.{original[1]}", "a change to the signed part verified"
    assert _lenient_b64url(signature_b64) == _lenient_b64url(original[2]), "a different signature verified"


@FUZZ
@given(data=st.binary(max_size=600) | st.text(max_size=600))
def test_random_tokens_never_verify(data: bytes | str) -> None:
    with pytest.raises(VerificationError):
        _verify_token(data)


def _sign(header: Any, payload: bytes, *, header_bytes: bytes | None = None) -> str:
    """A compact JWS over arbitrary header/payload bytes, really signed RS256 with KEY."""
    encoded_header = _b64url(header_bytes if header_bytes is not None else json.dumps(header).encode())
    signing_input = f"{encoded_header}.{_b64url(payload)}"
    signature = KEY.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


MISSING: Final = object()
NUMERIC_DATES: Final = st.sampled_from(
    [
        MISSING,
        NOW_TS + 3600,
        NOW_TS - 3600,
        NOW_TS + 30,
        NOW_TS - 30,
        NOW_TS - 90,
        NOW_TS + 90,
        NOW_TS + 0.5,
        True,
        "2030",
        None,
        10**20,
        -(10**20),
        0,
    ]
)


def _date_ok(value: Any, *, required: bool, must_be_past: bool) -> bool:
    if value is MISSING or value is None:
        return not required
    if isinstance(value, bool) or not isinstance(value, int | float) or abs(value) > 10**11:
        return False
    if must_be_past:  # nbf / iat: not later than now + leeway
        return value <= NOW_TS + LEEWAY
    return value + LEEWAY > NOW_TS  # exp: not expired yet


def _mostly(good: Any, other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` seven times in eight, else ``other``: most tokens break one or two rules, some none."""
    return st.integers(0, 7).flatmap(lambda n: st.just(good) if n else other)


@settings(FUZZ, max_examples=300)
@given(
    alg=_mostly("RS256", st.sampled_from(["none", "HS256", "RS512", "PS256", "ES256", "rs256", ""]) | JSON_SCALARS),
    kid=_mostly(KID, st.sampled_from(["other", ""]) | JSON_SCALARS),
    extra_header=_mostly(
        {}, st.dictionaries(st.sampled_from(["crit", "b64", "jku", "jwk", "x5u", "typ", "zip"]), JSON_VALUES)
    ),
    iss=_mostly(
        ISSUER, st.sampled_from([ISSUER + "/", ISSUER.upper(), "https://other.example", MISSING]) | JSON_SCALARS
    ),
    aud=_mostly(AUDIENCE, st.sampled_from([[AUDIENCE, "x"], ["x"], [], MISSING]) | JSON_SCALARS),
    exp=_mostly(NOW_TS + 3600, NUMERIC_DATES),
    nbf=_mostly(NOW_TS - 60, NUMERIC_DATES),
    iat=_mostly(MISSING, NUMERIC_DATES),
)
def test_signed_tokens_verify_exactly_when_the_rules_hold(
    alg: Any, kid: Any, extra_header: dict[str, Any], iss: Any, aud: Any, exp: Any, nbf: Any, iat: Any
) -> None:
    header = {**extra_header, "alg": alg, "kid": kid}
    claims = {
        name: value
        for name, value in (("iss", iss), ("aud", aud), ("exp", exp), ("nbf", nbf), ("iat", iat))
        if value is not MISSING
    }
    token = _sign(header, json.dumps(claims).encode())
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    should_verify = (
        alg == "RS256"
        and kid == KID
        and "crit" not in header
        and "b64" not in header
        and isinstance(iss, str)
        and iss.removesuffix("/") == ISSUER
        and AUDIENCE in audiences
        and _date_ok(exp, required=True, must_be_past=False)
        and _date_ok(nbf, required=False, must_be_past=True)
        and _date_ok(iat, required=False, must_be_past=True)
    )
    event("should verify" if should_verify else "should be refused")
    try:
        verified = _verify_token(token)
    except VerificationError:
        assert not should_verify, (header, claims)
        return
    assert should_verify, (header, claims)
    assert verified.issuer == iss and dict(verified.claims) == claims


@pytest.mark.parametrize(
    "header_bytes",
    [
        b'{"alg":"RS256","kid":"fuzz-kid","alg":"RS256"}',  # duplicate member
        b'{"alg":"RS256","kid":"fuzz-kid"',  # truncated
        b'["RS256"]',
        b'{"alg":"RS256","kid":"fuzz-kid","x":NaN}',
        b'\xef\xbb\xbf{"alg":"RS256","kid":"fuzz-kid"}',
        b'{"alg":"RS256","kid":"fuzz-kid","x":' + b"[" * 40 + b"]" * 40 + b"}",
    ],
)
def test_signed_tokens_with_malformed_headers_never_verify(header_bytes: bytes) -> None:
    token = _sign(None, json.dumps(GOOD_CLAIMS).encode(), header_bytes=header_bytes)
    with pytest.raises(VerificationError):
        _verify_token(token)


@FUZZ
@given(payload=st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_signed_tokens_with_arbitrary_payloads(payload: bytes) -> None:
    try:
        verified = _verify_token(_sign({"alg": "RS256", "kid": KID}, payload))
    except VerificationError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    assert verified.issuer == ISSUER  # only a payload that satisfies every claim rule gets here


# --- skr.core.jose: release JWS ------------------------------------------------------------------------

MHSM_HOST: Final = "timovkeyvaulthsm.managedhsm.azure.net"  # only a certificate name here; nothing connects
MHSM_TIME: Final = datetime(2022, 5, 27, 12, 0, tzinfo=UTC)


@functools.cache
def _mhsm_root() -> x509.Certificate:
    return x509.load_der_x509_certificate(_mhsm_chain_der()[2])


def _verify_mhsm(jws: str | bytes, *, vault_host: str = MHSM_HOST) -> jose.ReleasePayload:
    return jose.verify_release_jws(jws, trusted_roots=[_mhsm_root()], vault_host=vault_host, now=MHSM_TIME)


def test_real_release_jws_verifies() -> None:
    assert _verify_mhsm(_mhsm_jws()).key.kty


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_mutated_release_jws_verifies_only_with_the_signed_bytes_unchanged(data: st.DataObject) -> None:
    original = _mhsm_jws()
    mutated = data.draw(mutations(original))
    try:
        _verify_mhsm(mutated)
    except VerificationError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    header_b64, payload_b64, signature_b64 = mutated.strip().split(".")
    parts = original.split(".")
    assert f"{header_b64}.{payload_b64}" == f"{parts[0]}.{parts[1]}", "a change to the signed part verified"
    assert _lenient_b64url(signature_b64) == _lenient_b64url(parts[2]), "a different signature verified"


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_release_jws_with_mutated_x5c_never_verifies(data: st.DataObject) -> None:
    original = _mhsm_jws()
    header_b64, payload_b64, signature_b64 = original.split(".")
    header = json.loads(_lenient_b64url(header_b64))
    index = data.draw(st.integers(0, len(header["x5c"]) - 1), label="x5c index")
    der = base64.b64decode(header["x5c"][index])
    mutated = data.draw(byte_mutations(der), label="mutated certificate")
    assume(mutated != der)
    header["x5c"][index] = base64.b64encode(mutated).decode()
    token = f"{_b64url(json.dumps(header).encode())}.{payload_b64}.{signature_b64}"
    with pytest.raises(VerificationError):
        _verify_mhsm(token)


@FUZZ
@given(vault_host=st.text(max_size=80) | st.sampled_from(["", "https://x", "[::1", "a:b:c", MHSM_HOST + ":x"]))
def test_release_jws_with_random_vault_hosts(vault_host: str) -> None:
    try:
        _verify_mhsm(_mhsm_jws(), vault_host=vault_host)
    except (VerificationError, ValueError):  # ValueError: the caller passed an unusable vault_host
        return
    host = vault_host.strip()
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host  # a port is not part of the name
    assert host.lower().rstrip(".").endswith(MHSM_HOST), vault_host


@FUZZ
@given(data=st.binary(max_size=600) | st.text(max_size=600))
def test_random_release_jws_never_verifies(data: bytes | str) -> None:
    with pytest.raises(VerificationError):
        _verify_mhsm(data)


def _local_chain() -> tuple[x509.Certificate, x509.Certificate, rsa.RSAPrivateKey]:
    """A loopback vault's certificate chain: root CA → leaf for 127.0.0.1, valid around NOW."""
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf_key = KEY
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz root")])
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=10))
        .not_valid_after(NOW + timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(root_name)
        .public_key(leaf_key.public_key())
        .serial_number(2)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    return root, leaf, leaf_key


ROOT, LEAF, LEAF_KEY = _local_chain()
X5C: Final = [base64.b64encode(LEAF.public_bytes(serialization.Encoding.DER)).decode()]
KEY_HSM: Final = {
    "schema_version": "1.0",
    "header": {"kid": "wrapping-kid", "alg": "dir", "enc": "RSA_AES_KEY_WRAP_256"},
    "ciphertext": _b64url(b"\x01" * 300),
}
RELEASE_PAYLOAD: Final = {
    "request": {"api-version": "7.6", "enc": "RSA_AES_KEY_WRAP_256", "kid": "https://127.0.0.1/keys/k", "nonce": "n"},
    "response": {
        "key": {
            "key": {
                "kid": "https://127.0.0.1/keys/k/v1",
                "kty": "RSA-HSM",
                "key_ops": ["encrypt", "decrypt"],
                "n": _b64url(b"\x02" * 256),
                "e": "AQAB",
                "key_hsm": KEY_HSM,  # replaced by its base64url JSON when signing
            },
            "attributes": {"enabled": True, "exportable": True},
            "release_policy": {"data": _b64url(b'{"anyOf":[]}'), "contentType": "application/json", "immutable": False},
        }
    },
}


def _sign_release(payload: bytes, header: Mapping[str, Any] | None = None) -> str:
    return jwt.api_jws.encode(payload, LEAF_KEY, algorithm="RS256", headers={"x5c": X5C, **(header or {})})


def _encode_payload(document: Any) -> bytes:
    def encode_key_hsm(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: (_b64url(json.dumps(v).encode()) if k == "key_hsm" and isinstance(v, dict) else encode_key_hsm(v))
                for k, v in value.items()
            }
        return value

    return json.dumps(encode_key_hsm(document)).encode()


def _verify_local(jws: str) -> jose.ReleasePayload:
    return jose.verify_release_jws(jws, trusted_roots=[ROOT], vault_host="127.0.0.1", now=NOW)


def test_local_release_jws_verifies() -> None:
    result = _verify_local(_sign_release(_encode_payload(RELEASE_PAYLOAD)))
    assert result.key.key_hsm.ciphertext == b"\x01" * 300 and result.exportable


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _replaced(document: Any, path: tuple[Any, ...], value: Any, *, delete: bool) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy: Any = dict(document) if isinstance(document, dict) else list(document)
    if delete and not rest:
        del copy[head]
        return copy
    copy[head] = _replaced(document[head], rest, value, delete=delete)
    return copy


RELEASE_PATHS: Final = _paths(RELEASE_PAYLOAD)


@settings(FUZZ, max_examples=300)
@given(path=st.sampled_from(RELEASE_PATHS), value=JSON_VALUES, delete=st.booleans())
def test_release_payload_structure_fuzz(path: tuple[Any, ...], value: Any, delete: bool) -> None:
    document = _replaced(RELEASE_PAYLOAD, path, value, delete=delete and bool(path))
    try:
        result = _verify_local(_sign_release(_encode_payload(document)))
    except VerificationError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    assert result.key.key_hsm.alg == "dir"
    assert result.key.key_hsm.enc == result.request.enc
    assert all(isinstance(op, str) for op in result.key.key_ops)
    assert isinstance(result.key.key_hsm.ciphertext, bytes)


@FUZZ
@given(payload=st.binary(max_size=300))
def test_release_payload_random_bytes(payload: bytes) -> None:
    with pytest.raises(VerificationError):
        _verify_local(_sign_release(payload))


# --- skr.shell.config -----------------------------------------------------------------------------------

ENV_NAMES: Final = [setting.env for setting in SETTINGS] + ["Port", "LogLevel"]
CONFIG_TEXT: Final = (
    st.text(max_size=40)
    | st.sampled_from(["0", "1", "-1", "65535", "65536", "1e3", "true", "off", "2048", "4096", "1023", "0x10"])
    | st.sampled_from(["debug", "WARN", "json", "text", "auto", "127.0.0.1:9", "https://h", " , ,", "a,b"])
    | st.integers(-(10**6), 10**6).map(str)
).filter(lambda text: "nan" not in text.lower() and "inf" not in text.lower())  # non-finite: regression test below


def _sidecar_args(document: Any) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


SIDECAR_ARGS: Final = (
    st.text(max_size=60)
    | JSON_VALUES.map(_sidecar_args)
    | st.fixed_dictionaries(
        {},
        optional={
            "certcache": st.fixed_dictionaries(
                {},
                optional={
                    "endpoint": st.sampled_from(["americas.test.acccache.azure.net", "h/vcek/v1", ""]) | JSON_VALUES,
                    "endpoint_type": st.sampled_from(["AMD", "AzCache", "LocalTHIM", "other"]) | JSON_VALUES,
                },
            )
            | JSON_VALUES,
            "identity": st.fixed_dictionaries({}, optional={"client_id": JSON_VALUES}) | JSON_VALUES,
        },
    ).map(_sidecar_args)
)


@settings(FUZZ, max_examples=400)
@given(
    env=st.dictionaries(st.sampled_from(ENV_NAMES), CONFIG_TEXT, max_size=8),
    sidecar_args=st.none() | SIDECAR_ARGS,
)
def test_load_settings_random_environment(env: dict[str, str], sidecar_args: str | None) -> None:
    environ = dict(env)
    if sidecar_args is not None:
        environ["SkrSideCarArgs"] = sidecar_args
    try:
        loaded = load_settings(environ=environ)
    except ConfigError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    assert isinstance(loaded, Settings)
    assert 0 <= loaded.port < 65536
    assert loaded.wrapping_key_bits in (2048, 3072, 4096)
    assert loaded.log_level in ("debug", "info", "warning", "error", "critical")
    assert loaded.log_format in ("json", "text", "auto")
    assert loaded.max_body_bytes >= 1024
    assert min(loaded.maa_timeout, loaded.akv_timeout, loaded.collateral_timeout) > 0
    assert isinstance(loaded.unsafe_bind, bool)
    assert all(isinstance(item, str) and item for item in loaded.allowed_maa_endpoints)
    try:
        loaded.allow_list()
        loaded.managed_hsm_netlocs()
    except ConfigError:
        pass
    assert set(loaded.redacted()) == {setting.name for setting in SETTINGS}


# --- skr.core.crypto.unwrap_released_key ---------------------------------------------------------------

WRAPPING: Final = generate_wrapping_key(2048)
ENCS: Final = sorted(ENC_ALGORITHMS)


def _wrap(target: bytes, enc: str, aes_key: bytes) -> bytes:
    """CKM_RSA_AES_KEY_WRAP as the vault builds it, with cryptography's primitives."""
    hash_type = ENC_ALGORITHMS[enc]
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hash_type()), algorithm=hash_type(), label=None)
    public = WRAPPING.private_key.reveal().public_key()
    return public.encrypt(aes_key, oaep) + aes_key_wrap_with_padding(aes_key, target)


@FUZZ
@given(
    enc=st.sampled_from(ENCS) | st.text(max_size=24),
    ciphertext=st.binary(max_size=900)
    | st.integers(0, 80).flatmap(lambda n: st.binary(min_size=256 + 8 * n, max_size=256 + 8 * n)),
)
def test_unwrap_random_ciphertexts_are_refused(enc: str, ciphertext: bytes) -> None:
    with pytest.raises(InvalidUpstreamResponseError):
        unwrap_released_key(WRAPPING, enc, ciphertext)


@FUZZ
@given(
    enc=st.sampled_from(ENCS),
    target=st.binary(min_size=1, max_size=600),
    aes_key=st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    data=st.data(),
)
def test_unwrap_round_trip_and_any_single_change_is_refused(
    enc: str, target: bytes, aes_key: bytes, data: st.DataObject
) -> None:
    wrapped = _wrap(target, enc, aes_key)
    assert unwrap_released_key(WRAPPING, enc, wrapped).reveal() == target
    mutated = data.draw(byte_mutations(wrapped), label="mutated wrap")
    assume(mutated != wrapped)
    with pytest.raises(InvalidUpstreamResponseError):
        unwrap_released_key(WRAPPING, enc, mutated)
    other = next(name for name in ENCS if name != enc)
    with pytest.raises(InvalidUpstreamResponseError):
        unwrap_released_key(WRAPPING, other, wrapped)


# --- skr.core.collateral -------------------------------------------------------------------------------


@functools.cache
def _real_thim() -> bytes:
    return (REAL / "csc" / "milan_v2_aci_thim_certs.json").read_bytes()


def test_real_thim_json_parses() -> None:
    parsed = parse_thim_json(_real_thim())
    assert parsed.tcbm == "7308000000000003" and b"BEGIN CERTIFICATE" in parsed.vcek_pem


THIM_DOCUMENTS: Final = st.fixed_dictionaries(
    {},
    optional={
        "vcekCert": st.sampled_from(["-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----", ""]) | JSON_VALUES,
        "VCEKCERT": JSON_VALUES,
        "certificateChain": JSON_VALUES,
        "tcbm": JSON_VALUES,
        "cacheControl": JSON_VALUES,
    },
)


@FUZZ
@given(
    data=st.binary(max_size=400)
    | THIM_DOCUMENTS.map(lambda d: json.dumps(d).encode())
    | JSON_VALUES.map(lambda v: json.dumps(v).encode())
)
def test_parse_thim_json_random(data: bytes) -> None:
    try:
        parsed = parse_thim_json(data)
    except VerificationError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    assert isinstance(parsed, ThimCertificates)
    assert b"BEGIN CERTIFICATE" in parsed.vcek_pem and isinstance(parsed.tcbm, str)


@FUZZ
@given(data=st.data())
def test_parse_thim_json_mutated(data: st.DataObject) -> None:
    mutated = data.draw(byte_mutations(_real_thim()))
    try:
        parsed = parse_thim_json(mutated)
    except VerificationError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    assert b"BEGIN CERTIFICATE" in parsed.vcek_pem


def test_real_security_context_loads() -> None:
    context = SecurityContext.load({"UVM_SECURITY_CONTEXT_DIR": str(REAL / "csc" / "security-context")})
    assert context is not None and context.policy is not None and context.host_amd_cert is not None
    assert hashlib.sha256(context.policy).hexdigest() == (
        "4f4448c67f3c8dfc8de8a5e37125d807dadcc41f06cf23f615dbd52eec777d10"
    )
    assert context.reference_info


CONTEXT_FILES: Final = ("security-policy-base64", "host-amd-cert-base64", "reference-info-base64")
ASCII_CONTENT: Final = (
    st.binary(max_size=200).map(base64.b64encode)
    | st.text(alphabet=string.printable, max_size=200).map(str.encode)
    | THIM_DOCUMENTS.map(lambda d: base64.encodebytes(json.dumps(d).encode()))
    | st.builds(lambda: base64.b64encode(_real_thim()))
)


@settings(FUZZ, max_examples=150)
@given(
    files=st.dictionaries(st.sampled_from([*CONTEXT_FILES, "unrelated"]), ASCII_CONTENT, max_size=4),
    directories=st.lists(st.sampled_from(CONTEXT_FILES), max_size=1),
)
def test_security_context_directory_fuzz(files: dict[str, bytes], directories: list[str]) -> None:
    """Random ASCII contents (non-ASCII bytes are the regression case below)."""
    with tempfile.TemporaryDirectory() as workdir:
        root = Path(workdir)
        for name, content in files.items():
            (root / name).write_bytes(content)
        for name in directories:
            if name not in files:
                (root / name).mkdir()  # a directory where a file is expected is "absent"
        try:
            context = SecurityContext.load({"UVM_SECURITY_CONTEXT_DIR": workdir})
        except VerificationError as exc:
            event(f"refused: {type(exc).__name__}")
            return
    assert context is not None and context.source == workdir
    if context.host_amd_cert is not None:
        assert b"BEGIN CERTIFICATE" in context.host_amd_cert.vcek_pem


@FUZZ
@given(
    env=st.dictionaries(
        st.sampled_from(["UVM_SECURITY_POLICY", "UVM_HOST_AMD_CERTIFICATE", "UVM_REFERENCE_INFO"]),
        st.text(max_size=100) | st.binary(max_size=100).map(lambda b: base64.b64encode(b).decode()),
    )
)
def test_security_context_legacy_variables_fuzz(env: dict[str, str]) -> None:
    try:
        context = SecurityContext.load(env, root=Path("/nonexistent-fuzz-root"))
    except VerificationError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    assert (context is None) == (not any(env.values()))


# --- skr.snp.verify.load_certificates -------------------------------------------------------------

AMD = SimulatedAmd.create()


@functools.cache
def _certificate_inputs() -> list[bytes]:
    pem = (REAL / "csc" / "milan_v2_aci_vcek_ask_ark.pem").read_bytes()
    der = (REAL / "trustee" / "milan_v2_vcek.der").read_bytes()
    return [pem, der, der + der, AMD.certificate_table(), AMD.vcek_pem_chain()]


@FUZZ
@given(data=st.binary(max_size=600))
def test_load_certificates_random_bytes(data: bytes) -> None:
    try:
        certificates = load_certificates(data)
    except VerificationError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    assert all(isinstance(cert, x509.Certificate) for cert in certificates)


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_load_certificates_mutated_real_inputs(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(_certificate_inputs()), label="input")
    mutated = data.draw(byte_mutations(original), label="mutated")
    try:
        certificates = load_certificates(mutated)
    except VerificationError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    assert all(isinstance(cert, x509.Certificate) for cert in certificates)


def test_load_certificates_real_inputs() -> None:
    counts = [len(load_certificates(data)) for data in _certificate_inputs()]
    assert counts == [3, 1, 2, 3, 3]


# --- skr.core.keyvault.KeyName -------------------------------------------------------------------------


@settings(FUZZ, max_examples=400)
@given(kid=st.text(max_size=300) | st.from_regex(r"/?[A-Za-z0-9-]{0,130}(/[A-Za-z0-9-]{0,130})?/?", fullmatch=True))
def test_key_name_parse(kid: str) -> None:
    try:
        key = KeyName.parse(kid)
    except BadRequestError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    segment = r"[A-Za-z0-9-]{1,127}"
    assert re.fullmatch(segment, key.name) and (key.version is None or re.fullmatch(segment, key.version))
    assert KeyName.parse(str(key)) == key


@FUZZ
@given(kid=JSON_VALUES)
def test_key_name_parse_wrong_types(kid: Any) -> None:
    assume(not isinstance(kid, str))
    with pytest.raises(BadRequestError):
        KeyName.parse(kid)


# --- regressions: defects the fuzzers found, fixed --------------------------------------------------


def test_thim_json_deep_nesting_is_a_verification_error() -> None:
    with pytest.raises(VerificationError):
        parse_thim_json(b"[" * 100_000 + b"]" * 100_000)


def test_sidecar_args_deep_nesting_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        load_settings(environ={"SkrSideCarArgs": base64.b64encode(b"[" * 100_000).decode()})


def test_security_context_non_ascii_file_is_a_verification_error() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        (Path(workdir) / "security-policy-base64").write_bytes(b"\xff\xfe" + base64.b64encode(b"policy"))
        with pytest.raises(VerificationError):
            SecurityContext.load({"UVM_SECURITY_CONTEXT_DIR": workdir})


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_timeouts_are_config_errors(value: str) -> None:
    for name in ("SKR_MAA_TIMEOUT", "SKR_AKV_TIMEOUT", "SKR_COLLATERAL_TIMEOUT"):
        with pytest.raises(ConfigError):
            load_settings(environ={name: value})
