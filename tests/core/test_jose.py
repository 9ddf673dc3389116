"""skr.core.jose: pinned-RS256 JWT verification and release-JWS verification, on real and built artefacts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from skr.core import jose
from skr.errors import VerificationError

MAA_ISSUER = "https://sharedeus.eus.attest.azure.net"
MHSM_HOST = "timovkeyvaulthsm.managedhsm.azure.net"
MHSM_TIME = datetime(2022, 5, 27, 12, 0, tzinfo=UTC)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: dict[str, Any]) -> str:
    return _b64url(json.dumps(obj).encode())


# --- real artefacts ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def expected(real_data: Path) -> dict[str, Any]:
    return json.loads((real_data / "expected.json").read_text())


@pytest.fixture(scope="module")
def maa_token(real_data: Path) -> str:
    return (real_data / "maa" / "sevsnp_genoa_maa_token.jwt").read_text().strip()


@pytest.fixture(scope="module")
def maa_keys(real_data: Path) -> dict[str, rsa.RSAPublicKey]:
    return jose.keys_from_jwks((real_data / "maa" / "maa_sharedeus_jwks_derived.json").read_bytes())


@pytest.fixture(scope="module")
def maa_now(expected: dict[str, Any]) -> datetime:
    token = expected["maa_sevsnp_genoa_token"]
    return datetime.fromtimestamp((token["iat"] + token["exp"]) // 2, tz=UTC)


@pytest.fixture(scope="module")
def mhsm_jws(real_data: Path) -> str:
    return (real_data / "akv" / "mhsm_release_response.jws").read_text().strip()


@pytest.fixture(scope="module")
def mhsm_chain(mhsm_jws: str) -> list[x509.Certificate]:
    header = json.loads(jose.b64url_decode(mhsm_jws.split(".", maxsplit=1)[0], what="h"))
    return [x509.load_der_x509_certificate(base64.b64decode(item)) for item in header["x5c"]]


def test_real_maa_token_verifies_at_pinned_clock(
    maa_token: str, maa_keys: dict[str, rsa.RSAPublicKey], maa_now: datetime, expected: dict[str, Any]
) -> None:
    exp = expected["maa_sevsnp_genoa_token"]
    verified = jose.verify_jwt_rs256(maa_token, maa_keys, issuer=MAA_ISSUER, now=maa_now)
    assert verified.kid == exp["header"]["kid"]
    assert dict(verified.header) == exp["header"]
    assert verified.claims["jti"] == exp["jti"]
    assert verified.claims["x-ms-attestation-type"] == exp["attestation_type"]
    assert verified.claims["x-ms-compliance-status"] == exp["compliance_status"]
    for name, value in exp["sevsnpvm_claims"].items():
        assert verified.claims[name] == value, name
    assert verified.expires_at == datetime.fromtimestamp(exp["exp"], tz=UTC)
    assert verified.issued_at == datetime.fromtimestamp(exp["iat"], tz=UTC)


def test_real_maa_token_verifies_with_the_pem_key(
    real_data: Path, maa_token: str, maa_now: datetime, expected: dict[str, Any]
) -> None:
    key = serialization.load_pem_public_key((real_data / "maa" / "maa_sharedeus_signing_key.pem").read_bytes())
    assert isinstance(key, rsa.RSAPublicKey)
    kid = expected["maa_sevsnp_genoa_token"]["header"]["kid"]
    verified = jose.verify_jwt_rs256(maa_token, {kid: key}, issuer=MAA_ISSUER + "/", now=maa_now)
    assert verified.issuer == MAA_ISSUER


def test_real_maa_token_is_expired_today(maa_token: str, maa_keys: dict[str, rsa.RSAPublicKey]) -> None:
    # The token expired 2026-10-09; "today" for this suite is any date after that.
    with pytest.raises(VerificationError, match="expired"):
        jose.verify_jwt_rs256(maa_token, maa_keys, issuer=MAA_ISSUER, now=datetime(2027, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        ("issuer", "issuer"),
        ("unknown_kid", "key id"),
        ("before_nbf", "not valid yet"),
        ("tampered_payload", "signature"),
        ("tampered_signature", "signature"),
        ("audience", "audience"),
    ],
)
def test_real_maa_token_rejections(
    maa_token: str, maa_keys: dict[str, rsa.RSAPublicKey], maa_now: datetime, mutation: str, message: str
) -> None:
    token, keys, issuer, now, audience = maa_token, dict(maa_keys), MAA_ISSUER, maa_now, None
    header, payload, signature = token.split(".")
    if mutation == "issuer":
        issuer = "https://sharedwus.wus.attest.azure.net"
    elif mutation == "unknown_kid":
        keys = {"another-kid": next(iter(keys.values()))}
    elif mutation == "before_nbf":
        now = datetime(2026, 10, 1, tzinfo=UTC)
    elif mutation == "tampered_payload":
        claims = json.loads(jose.b64url_decode(payload, what="p"))
        claims["x-ms-sevsnpvm-is-debuggable"] = True
        token = f"{header}.{_segment(claims)}.{signature}"
    elif mutation == "tampered_signature":
        raw = bytearray(jose.b64url_decode(signature, what="s"))
        raw[10] ^= 1
        token = f"{header}.{payload}.{_b64url(bytes(raw))}"
    elif mutation == "audience":
        audience = "https://vault.azure.net"
    with pytest.raises(VerificationError, match=message) as info:
        jose.verify_jwt_rs256(token, keys, issuer=issuer, now=now, audience=audience)
    assert signature not in info.value.message and payload not in info.value.message


def test_real_mhsm_release_jws_verifies_and_parses(
    mhsm_jws: str, mhsm_chain: list[x509.Certificate], expected: dict[str, Any]
) -> None:
    exp = expected["akv_mhsm_release_response"]
    result = jose.verify_release_jws(mhsm_jws, trusted_roots=[mhsm_chain[2]], vault_host=MHSM_HOST, now=MHSM_TIME)
    assert result.request.api_version == exp["request"]["api-version"]
    assert result.request.enc == exp["request"]["enc"]
    assert result.request.kid == exp["request"]["kid"]
    assert result.request.nonce is None
    assert result.key.kid == exp["key_kid"]
    assert result.key.kty == exp["key_kty"]
    assert list(result.key.key_ops) == exp["key_ops"]
    assert _b64url(result.key.e or b"") == exp["key_e"]
    assert result.key.n is not None
    assert hashlib.sha256(result.key.n).hexdigest() == exp["key_n_sha256"]
    assert len(result.key.n) * 8 == exp["key_n_bits"]
    assert dict(result.attributes) == exp["attributes"]
    assert result.exportable
    assert result.release_policy is not None
    assert result.release_policy.content_type == exp["release_policy_contentType"]
    assert result.release_policy.immutable == exp["release_policy_immutable"]
    assert json.loads(result.release_policy.data) == exp["release_policy_decoded"]
    hsm = exp["key_hsm_decoded"]
    assert result.key.key_hsm.schema_version == hsm["schema_version"]
    assert (result.key.key_hsm.kid, result.key.key_hsm.alg, result.key.key_hsm.enc) == (
        hsm["header"]["kid"],
        hsm["header"]["alg"],
        hsm["header"]["enc"],
    )
    assert len(result.key.key_hsm.ciphertext) == hsm["ciphertext_len_bytes"]
    assert hashlib.sha256(result.key.key_hsm.ciphertext).hexdigest() == hsm["ciphertext_sha256"]
    assert result.signer.subject.rfc4514_string() == exp["x5c"][0]["subject"]


def test_real_mhsm_release_jws_wildcard_subdomain_matches(mhsm_jws: str, mhsm_chain: list[x509.Certificate]) -> None:
    result = jose.verify_release_jws(
        mhsm_jws, trusted_roots=[mhsm_chain[2]], vault_host="a." + MHSM_HOST + ":443", now=MHSM_TIME
    )
    assert result.key.kty == "RSA"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("other_host", "subjectAltName"),
        ("sibling_host", "subjectAltName"),
        ("today", "not valid at validation time"),
        ("tampered_signature", "signature is invalid"),
        ("tampered_payload", "signature is invalid"),
        ("root_not_trusted", "not trusted"),
        ("intermediate_as_root_missing", "not trusted"),
        ("thumbprint", "x5t#S256"),
        ("alg_none", "algorithm"),
    ],
)
def test_real_mhsm_release_jws_rejections(
    mhsm_jws: str, mhsm_chain: list[x509.Certificate], case: str, message: str
) -> None:
    jws, roots, host, now = mhsm_jws, [mhsm_chain[2]], MHSM_HOST, MHSM_TIME
    header_b64, payload_b64, signature_b64 = jws.split(".")
    header = json.loads(jose.b64url_decode(header_b64, what="h"))
    if case == "other_host":
        host = "otherhsm.managedhsm.azure.net"
    elif case == "sibling_host":
        host = "a.b." + MHSM_HOST
    elif case == "today":
        now = datetime.now(UTC)
    elif case == "tampered_signature":
        raw = bytearray(jose.b64url_decode(signature_b64, what="s"))
        raw[-1] ^= 0x40
        jws = f"{header_b64}.{payload_b64}.{_b64url(bytes(raw))}"
    elif case == "tampered_payload":
        payload = json.loads(jose.b64url_decode(payload_b64, what="p"))
        payload["request"]["kid"] += "x"
        jws = f"{header_b64}.{_segment(payload)}.{signature_b64}"
    elif case == "root_not_trusted":
        roots = [_build_chain(["x.example"]).root]
    elif case == "intermediate_as_root_missing":
        # The token carries the DigiCert root itself; it must not anchor the chain by itself.
        roots = [_build_chain(["x.example"]).root, _build_chain(["y.example"]).intermediate]
    elif case == "thumbprint":
        header["x5t#S256"] = _b64url(b"\0" * 32)
        jws = f"{_segment(header)}.{payload_b64}.{signature_b64}"
    elif case == "alg_none":
        header["alg"] = "none"
        jws = f"{_segment(header)}.{payload_b64}."
    with pytest.raises(VerificationError, match=message) as info:
        jose.verify_release_jws(jws, trusted_roots=roots, vault_host=host, now=now)
    assert signature_b64[:40] not in info.value.message


# --- locally built artefacts ---------------------------------------------------------------------


@dataclass
class Chain:
    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: Any

    def x5c(self) -> list[str]:
        return [
            base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
            for c in (self.leaf, self.intermediate, self.root)
        ]


_KEYS = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca_cert(subject_key: Any, issuer_key: Any, subject: str, issuer: str, path_length: int | None) -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def _build_chain(hostnames: list[str], *, leaf_key: Any = None) -> Chain:
    root_key, intermediate_key = _KEYS[0], _KEYS[1]
    leaf_key = leaf_key or _KEYS[2]
    tag = hashlib.sha256(",".join(hostnames).encode()).hexdigest()[:8]
    root = _ca_cert(root_key, root_key, f"Test Root {tag}", f"Test Root {tag}", None)
    intermediate = _ca_cert(intermediate_key, root_key, f"Test Intermediate {tag}", f"Test Root {tag}", 0)
    sans: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = datetime.now(UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(hostnames[0]))
        .issuer_name(_name(f"Test Intermediate {tag}"))
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(intermediate_key.public_key()), critical=False
        )
        .sign(intermediate_key, hashes.SHA256())
    )
    return Chain(root, intermediate, leaf, leaf_key)


def _release_payload(**overrides: Any) -> dict[str, Any]:
    key_hsm = {
        "schema_version": "1.0",
        "header": {"kid": "wrapping-key", "alg": "dir", "enc": "RSA_AES_KEY_WRAP_256"},
        "ciphertext": _b64url(b"\x01" * 300),
    }
    payload: dict[str, Any] = {
        "request": {"api-version": "7.6", "enc": "RSA_AES_KEY_WRAP_256", "kid": "https://h/keys/k", "nonce": "n"},
        "response": {
            "key": {
                "key": {
                    "kid": "https://h/keys/k/v1",
                    "kty": "EC-HSM",
                    "key_ops": ["sign", "verify"],
                    "crv": "P-256",
                    "x": _b64url(b"\x02" * 32),
                    "y": _b64url(b"\x03" * 32),
                    "key_hsm": _b64url(json.dumps(key_hsm).encode()),
                },
                "attributes": {"enabled": True, "exportable": True},
            }
        },
    }
    payload.update(overrides)
    return payload


def _sign_release(chain: Chain, payload: dict[str, Any], **header_overrides: Any) -> str:
    header: dict[str, Any] = {"alg": "RS256", "x5c": chain.x5c()}
    header.update(header_overrides)
    return jwt.api_jws.encode(json.dumps(payload).encode(), chain.leaf_key, algorithm="RS256", headers=header)


def test_built_release_jws_for_ip_host_verifies() -> None:
    chain = _build_chain(["127.0.0.1", "vault.localtest"])
    jws = _sign_release(chain, _release_payload(), **{"x5t#S256": jose.sha256_thumbprint(chain.leaf)})
    result = jose.verify_release_jws(
        jws, trusted_roots=[chain.root], vault_host="127.0.0.1:8443", now=datetime.now(UTC)
    )
    assert result.key.kty == "EC-HSM"
    assert result.key.crv == "P-256" and result.key.x == b"\x02" * 32
    assert result.key.key_hsm.ciphertext == b"\x01" * 300
    assert result.request.nonce == "n"
    assert result.release_policy is None
    dns = jose.verify_release_jws(jws, trusted_roots=[chain.root], vault_host="vault.localtest", now=datetime.now(UTC))
    assert dns.key.kid == "https://h/keys/k/v1"


def test_built_release_jws_rejects_root_only_in_token() -> None:
    chain = _build_chain(["127.0.0.1"])
    other = _build_chain(["other.example"])
    jws = _sign_release(chain, _release_payload())
    with pytest.raises(VerificationError, match="not trusted"):
        jose.verify_release_jws(jws, trusted_roots=[other.root], vault_host="127.0.0.1", now=datetime.now(UTC))


def test_built_release_jws_rejects_ip_mismatch() -> None:
    chain = _build_chain(["127.0.0.1"])
    jws = _sign_release(chain, _release_payload())
    with pytest.raises(VerificationError, match="not trusted"):
        jose.verify_release_jws(jws, trusted_roots=[chain.root], vault_host="127.0.0.2", now=datetime.now(UTC))


def test_built_release_jws_rejects_hs256_keyed_with_leaf_public_key() -> None:
    chain = _build_chain(["127.0.0.1"])
    header = _segment({"alg": "HS256", "x5c": chain.x5c()})
    payload = _segment(_release_payload())
    secret = chain.leaf.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = _b64url(hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    with pytest.raises(VerificationError, match="algorithm 'HS256' is not allowed"):
        jose.verify_release_jws(
            f"{header}.{payload}.{signature}", trusted_roots=[chain.root], vault_host="127.0.0.1", now=datetime.now(UTC)
        )


def test_built_release_jws_rejects_ec_leaf_and_missing_x5c() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    chain = _build_chain(["127.0.0.1"], leaf_key=ec_key)
    header = _segment({"alg": "RS256", "x5c": chain.x5c()})
    forged = f"{header}.{_segment(_release_payload())}.{_b64url(b'0' * 256)}"
    with pytest.raises(VerificationError, match="RSA"):
        jose.verify_release_jws(forged, trusted_roots=[chain.root], vault_host="127.0.0.1", now=datetime.now(UTC))
    rsa_chain = _build_chain(["127.0.0.1"])
    no_x5c = jwt.api_jws.encode(json.dumps(_release_payload()).encode(), rsa_chain.leaf_key, algorithm="RS256")
    with pytest.raises(VerificationError, match="x5c"):
        jose.verify_release_jws(no_x5c, trusted_roots=[rsa_chain.root], vault_host="127.0.0.1", now=datetime.now(UTC))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p["request"].update(enc="CKM_RSA_AES_KEY_WRAP"), "differs from request.enc"),
        (lambda p: p["response"]["key"]["key"].pop("key_hsm"), "key_hsm"),
        (lambda p: p["response"]["key"]["key"].update(key_ops="sign"), "key_ops"),
        (lambda p: p.pop("request"), "request"),
        (lambda p: p["response"]["key"].update(release_policy={"data": 5}), "release_policy.data"),
        (lambda p: p["response"]["key"]["key"].update(x="+/+/"), "base64url"),
    ],
)
def test_built_release_jws_payload_validation(mutate: Any, message: str) -> None:
    chain = _build_chain(["127.0.0.1"])
    payload = _release_payload()
    mutate(payload)
    jws = _sign_release(chain, payload)
    with pytest.raises(VerificationError, match=message):
        jose.verify_release_jws(jws, trusted_roots=[chain.root], vault_host="127.0.0.1", now=datetime.now(UTC))


def test_release_jws_x5t_sha1_checked() -> None:
    chain = _build_chain(["127.0.0.1"])
    good = _b64url(hashlib.sha1(chain.leaf.public_bytes(serialization.Encoding.DER)).digest())
    ok = _sign_release(chain, _release_payload(), x5t=good, typ="JWT", kid=good.upper())
    assert jose.verify_release_jws(ok, trusted_roots=[chain.root], vault_host="127.0.0.1", now=datetime.now(UTC))
    bad = _sign_release(chain, _release_payload(), x5t=_b64url(b"\0" * 20))
    with pytest.raises(VerificationError, match="x5t"):
        jose.verify_release_jws(bad, trusted_roots=[chain.root], vault_host="127.0.0.1", now=datetime.now(UTC))


# --- JWT verification with generated tokens ------------------------------------------------------

_SIGNER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_NOW = datetime(2030, 1, 1, tzinfo=UTC)
_KEYS_BY_KID = {"k1": _SIGNER.public_key()}


def _token(claims: dict[str, Any] | None = None, *, key: Any = _SIGNER, alg: str = "RS256", **header: Any) -> str:
    """A token built by hand (PyJWT refuses some of the malformed headers/claims tested here)."""
    base: dict[str, Any] = {
        "iss": "https://issuer.example",
        "iat": int(_NOW.timestamp()),
        "exp": int(_NOW.timestamp()) + 3600,
    }
    base.update(claims or {})
    if alg != "RS256":
        return jwt.encode(base, key, algorithm=alg, headers={"kid": "k1", **header})
    full_header = {"alg": "RS256", "kid": "k1", **header}
    signing_input = f"{_segment(full_header)}.{_segment(base)}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


def test_generated_token_with_audience_list() -> None:
    token = _token({"aud": ["api://x", "https://vault.azure.net"]})
    verified = jose.verify_jwt_rs256(
        token,
        _KEYS_BY_KID,
        issuer={"https://other", "https://issuer.example/"},
        now=_NOW,
        audience="https://vault.azure.net",
    )
    assert verified.claims["aud"] == ["api://x", "https://vault.azure.net"]


@pytest.mark.parametrize(
    ("token_factory", "message"),
    [
        (lambda: _token(alg="HS256", key=b"k" * 32), "HS256"),
        (lambda: _token(alg="RS384"), "RS384"),
        (lambda: _token(alg="PS256"), "PS256"),
        (lambda: _token(key=ec.generate_private_key(ec.SECP256R1()), alg="ES256"), "ES256"),
        (lambda: jwt.encode({"iss": "https://issuer.example", "exp": 4102444800}, None, algorithm="none"), "none"),
        (lambda: _token({"exp": None}), "exp"),
        (lambda: _token({"exp": "tomorrow"}), "not a number"),
        (lambda: _token({"exp": True}), "not a number"),
        (lambda: _token({"iat": int(_NOW.timestamp()) + 3600}), "issued in the future"),
        (lambda: _token({"nbf": int(_NOW.timestamp()) + 3600}), "not valid yet"),
        (lambda: _token({"exp": int(_NOW.timestamp()) - 61}), "expired"),
        (lambda: _token({"iss": None}), "issuer"),
        (lambda: _token(crit=["exp"]), "crit"),
        (lambda: _token(kid=None), "kid"),
        (lambda: _token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)), "signature"),
        (lambda: _token() + "x" * (70 * 1024), "too large"),
        (lambda: "a.b", "three"),
        (lambda: _token().replace(".", "..", 1), "three"),
    ],
)
def test_generated_token_rejections(token_factory: Any, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        jose.verify_jwt_rs256(token_factory(), _KEYS_BY_KID, issuer="https://issuer.example", now=_NOW)


def test_hs256_keyed_with_the_rsa_public_key_is_rejected() -> None:
    public_pem = _SIGNER.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _segment({"alg": "HS256", "kid": "k1", "typ": "JWT"})
    payload = _segment({"iss": "https://issuer.example", "exp": int(_NOW.timestamp()) + 60})
    signature = _b64url(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    with pytest.raises(VerificationError, match="only RS256"):
        jose.verify_jwt_rs256(
            f"{header}.{payload}.{signature}", _KEYS_BY_KID, issuer="https://issuer.example", now=_NOW
        )


def test_leeway_allows_small_skew() -> None:
    token = _token({"exp": int(_NOW.timestamp()) - 30, "nbf": int(_NOW.timestamp()) + 30})
    verified = jose.verify_jwt_rs256(token, _KEYS_BY_KID, issuer="https://issuer.example", now=_NOW)
    assert verified.not_before is not None
    with pytest.raises(VerificationError):
        jose.verify_jwt_rs256(token, _KEYS_BY_KID, issuer="https://issuer.example", now=_NOW, leeway=timedelta(0))


def test_small_rsa_key_is_rejected() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    token = _token(key=small)
    with pytest.raises(VerificationError, match="too small"):
        jose.verify_jwt_rs256(token, {"k1": small.public_key()}, issuer="https://issuer.example", now=_NOW)


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone"):
        jose.verify_jwt_rs256(_token(), _KEYS_BY_KID, issuer="https://issuer.example", now=datetime(2030, 1, 1))


# --- JWKS ----------------------------------------------------------------------------------------


def test_jwks_x5c_only_and_n_e_forms(maa_keys: dict[str, rsa.RSAPublicKey]) -> None:
    chain = _build_chain(["signer.example"])
    x5c_only = {"keys": [{"kid": "a", "kty": "RSA", "x5c": [chain.x5c()[0]]}]}
    keys = jose.keys_from_jwks(json.dumps(x5c_only))
    assert keys["a"].public_numbers() == chain.leaf.public_key().public_numbers()
    numbers = chain.leaf.public_key().public_numbers()
    both = {
        "keys": [
            {
                "kid": "b",
                "kty": "RSA",
                "x5c": [chain.x5c()[0]],
                "n": _b64url(numbers.n.to_bytes(256, "big")),
                "e": "AQAB",
            },
            {"kid": "ec", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kid": "enc", "kty": "RSA", "use": "enc", "n": "AA", "e": "AQAB"},
        ]
    }
    assert set(jose.keys_from_jwks(both)) == {"b"}
    assert len(maa_keys) == 1


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "'keys'"),
        ({"keys": []}, "no RSA signing key"),
        ({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}, "kid"),
        ({"keys": [{"kid": "a", "kty": "RSA"}]}, "neither"),
        ({"keys": [{"kid": "a", "kty": "RSA", "x5c": ["not base64!"]}]}, "base64"),
        ({"keys": [{"kid": "a", "kty": "RSA", "x5c": ["AAAA"]}]}, "DER"),
        ({"keys": [{"kid": "a", "x5c": []}]}, "x5c"),
        ({"keys": ["x"]}, "not an object"),
    ],
)
def test_jwks_rejections(document: dict[str, Any], message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        jose.keys_from_jwks(document)


def test_jwks_n_e_mismatch_with_x5c_is_rejected() -> None:
    chain = _build_chain(["signer.example"])
    other = _KEYS[0].public_key().public_numbers()
    doc = {
        "keys": [
            {"kid": "a", "kty": "RSA", "x5c": [chain.x5c()[0]], "n": _b64url(other.n.to_bytes(256, "big")), "e": "AQAB"}
        ]
    }
    with pytest.raises(VerificationError, match="do not match"):
        jose.keys_from_jwks(doc)


def test_jwks_size_and_json_bounds() -> None:
    with pytest.raises(VerificationError, match="too large"):
        jose.keys_from_jwks(b" " * (jose.MAX_JWKS_BYTES + 1))
    with pytest.raises(VerificationError, match="not valid JSON"):
        jose.keys_from_jwks(b'{"keys": [], "keys": []}')
    with pytest.raises(VerificationError, match="not valid JSON"):
        jose.keys_from_jwks(b'{"keys": NaN}')
    with pytest.raises(VerificationError, match="nested too deeply"):
        jose.keys_from_jwks(b'{"keys": ' + b"[" * 40 + b"]" * 40 + b"}")
    with pytest.raises(VerificationError, match="not valid JSON"):
        jose.keys_from_jwks(b'{"keys": ' + b"[" * 100000 + b"]" * 100000 + b"}")


# --- encodings and parsing (properties) ----------------------------------------------------------


@given(st.binary(max_size=300))
def test_b64url_round_trip_padded_and_unpadded(data: bytes) -> None:
    unpadded = jose.b64url_encode(data)
    assert "=" not in unpadded
    assert jose.b64url_decode(unpadded, what="x") == data
    assert jose.b64url_decode(base64.urlsafe_b64encode(data).decode(), what="x") == data


@pytest.mark.parametrize("text", ["a+b/", "ab cd", "abcde", "ab=", "a===", "ab==c", "é"])
def test_b64url_rejects_malformed(text: str) -> None:
    with pytest.raises(VerificationError):
        jose.b64url_decode(text, what="field")


@settings(max_examples=300)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_parse_compact_never_crashes(token: str | bytes) -> None:
    try:
        jose.parse_compact(token, max_bytes=1024)
    except VerificationError:
        pass


@settings(max_examples=200)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=20,
    )
)
def test_jwt_with_random_json_header_never_crashes(header: Any) -> None:
    token = f"{_b64url(json.dumps(header).encode())}.{_segment({'iss': 'x'})}.{_b64url(b'sig')}"
    with pytest.raises(VerificationError):
        jose.verify_jwt_rs256(token, _KEYS_BY_KID, issuer="x", now=_NOW)


def test_compact_repr_hides_payload() -> None:
    parsed = jose.parse_compact(_token({"secret-claim": "s3cr3t"}), max_bytes=10_000)
    assert "s3cr3t" not in repr(parsed)
