"""Drop-in compatibility with the Go sidecar: its documented request bodies, its response shapes.

Why: existing scripts and applications call the Go sidecar (microsoft/confidential-sidecar-
containers ``cmd/skr``) with the bodies its documentation gives (azure-facts §6.2) and parse its
answers; skr must accept those bodies unchanged and answer with the same shapes. Extra fields (the
dev-mode ``warning``) are allowed, as the Go clients ignore unknown fields, so the tests assert the
required keys and their types.

The values are checked independently of skr's code: report fields by their ABI offsets, the report
signature with the VCEK from ``endorsements``, the MAA token against the emulator's ``/certs``, and
each released private key against the public key the vault serves.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import warnings
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from tests.blackbox.conftest import DevProcess, HttpResult, b64, entra_access_token, http

REPORT_SIZE = 1184
SIGNED_BYTES = 0x2A0
# Standard base64 with '+' and '/' in it: the Go sidecar decodes runtime_data as STANDARD base64.
RUNTIME_WITH_PLUS_AND_SLASH = b"\xfb\xff\xbf runtime data \xfe\xff"
PRIVATE_MEMBERS = {"RSA": ("n", "e", "d", "p", "q", "dp", "dq", "qi"), "EC": ("crv", "x", "y", "d"), "oct": ("k",)}
VAULT_RESOURCES = {"keyvault": "https://vault.azure.net", "managedhsm": "https://managedhsm.azure.net"}


def _b64url_int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def _b64url_bytes(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _assert_report_binds(report: bytes, runtime: bytes, dev: DevProcess) -> None:
    assert len(report) == REPORT_SIZE
    assert report[0x50:0x90] == hashlib.sha256(runtime).digest() + bytes(32)  # REPORT_DATA
    assert report[0x90:0xC0].hex() == dev.state["measurement"]  # MEASUREMENT
    assert report[0xC0:0xE0].hex() == dev.state["host_data"]  # HOST_DATA
    assert int.from_bytes(report[0x30:0x34], "little") == 0  # VMPL 0


def _vault_key(dev: DevProcess, name: str) -> dict[str, Any]:
    """The key's public bundle, straight from the vault emulator with an Entra token."""
    key = dev.key(name)
    vault = "keyvault" if key["vault_url"] == dev.state["keyvault_url"] else "managedhsm"
    token = entra_access_token(dev, VAULT_RESOURCES[vault])
    result = http(
        "GET",
        f"{key['vault_url']}/keys/{name}?api-version=7.4",
        headers={"Authorization": f"Bearer {token}"},
        context=dev.tls,
    )
    assert result.status == 200, result.body
    bundle: dict[str, Any] = result.json()["key"]
    return bundle


def _go_release(dev: DevProcess, name: str, **extra: str) -> HttpResult:
    key = dev.key(name)
    body = {"maa_endpoint": dev.host("maa"), "akv_endpoint": key["vault_url"].removeprefix("https://"), "kid": name}
    return dev.api("POST", "/key/release", {**body, **extra})


def _released_jwk(result: HttpResult) -> dict[str, Any]:
    assert result.status == 200, result.body
    body = result.json()
    assert isinstance(body["key"], str), "the Go sidecar double-encodes: key is a JSON string"
    jwk = json.loads(body["key"])
    assert isinstance(jwk, dict)
    return jwk


# --- /status ----------------------------------------------------------------------------------------


def test_status_message(dev: DevProcess) -> None:
    result = dev.api("GET", "/status")
    assert result.status == 200
    body = result.json()
    assert body["message"] == "STATUS OK"
    assert set(body) <= {"message", "warning"}


# --- /attest/raw ------------------------------------------------------------------------------------


def test_attest_raw_go_body_gives_hex_report(dev: DevProcess) -> None:
    encoded = b64(RUNTIME_WITH_PLUS_AND_SLASH)
    assert "+" in encoded and "/" in encoded
    result = dev.api("POST", "/attest/raw", {"runtime_data": encoded})
    assert result.status == 200, result.body
    body = result.json()
    assert set(body) - {"warning"} == {"report"}
    assert isinstance(body["report"], str) and re.fullmatch(r"[0-9a-f]{2368}", body["report"])
    _assert_report_binds(bytes.fromhex(body["report"]), RUNTIME_WITH_PLUS_AND_SLASH, dev)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",  # what `curl -d` sends, as in the Go sidecar's examples
        "text/plain",
        "",
    ],
)
def test_attest_raw_ignores_the_content_type_like_gin(dev: DevProcess, content_type: str) -> None:
    headers = {"Content-Type": content_type}
    body = json.dumps({"runtime_data": b64(b"curl")}).encode()
    result = dev.api("POST", "/attest/raw", body, headers=headers)
    assert result.status == 200, result.body
    _assert_report_binds(bytes.fromhex(result.json()["report"]), b"curl", dev)


def test_unknown_request_fields_are_ignored(dev: DevProcess) -> None:
    result = dev.api("POST", "/attest/raw", {"runtime_data": b64(b"x"), "something_new": [1, 2, 3]})
    assert result.status == 200, result.body


# --- /attest/combined ---------------------------------------------------------------------------


def test_attest_combined_go_body_gives_the_four_fields(dev: DevProcess) -> None:
    runtime = b'{"combined": true}'
    result = dev.api("POST", "/attest/combined", {"runtime_data": b64(runtime)})
    assert result.status == 200, result.body
    body = result.json()
    assert set(body) - {"warning"} == {"endorsed_tcb", "endorsements", "evidence", "uvm_endorsements"}
    assert all(isinstance(body[name], str) for name in body)

    report = base64.b64decode(body["evidence"], validate=True)
    _assert_report_binds(report, runtime, dev)
    # endorsed_tcb: the tcbm, i.e. REPORTED_TCB (u64 at 0x180) as 16 hex digits.
    assert re.fullmatch(r"[0-9a-fA-F]{16}", body["endorsed_tcb"])
    assert int(body["endorsed_tcb"], 16) == int.from_bytes(report[0x180:0x188], "little")

    pem = base64.b64decode(body["endorsements"], validate=True)
    with warnings.catch_warnings():  # VCEKs have serial number 0, as AMD issues them
        warnings.filterwarnings("ignore", message="Parsed a serial number", category=CryptographyDeprecationWarning)
        chain = x509.load_pem_x509_certificates(pem)
    assert len(chain) == 3  # VCEK, ASK, ARK
    vcek = chain[0].public_key()
    assert isinstance(vcek, ec.EllipticCurvePublicKey) and vcek.curve.name == "secp384r1"
    r = int.from_bytes(report[0x2A0 : 0x2A0 + 72], "little")
    s = int.from_bytes(report[0x2A0 + 72 : 0x2A0 + 144], "little")
    vcek.verify(encode_dss_signature(r, s), report[:SIGNED_BYTES], ec.ECDSA(hashes.SHA384()))

    # uvm_endorsements: the security context's reference-info-base64, as is.
    reference = (dev.state_dir / "security-context" / "reference-info-base64").read_text().strip()
    assert body["uvm_endorsements"] == reference


# --- /attest/maa ------------------------------------------------------------------------------------


def test_attest_maa_go_body_gives_a_verifiable_token(dev: DevProcess) -> None:
    runtime = json.dumps({"keys": [], "note": "runtime data the Go clients send is JSON"}).encode()
    result = dev.api("POST", "/attest/maa", {"maa_endpoint": dev.host("maa"), "runtime_data": b64(runtime)})
    assert result.status == 200, result.body
    body = result.json()
    assert set(body) - {"warning"} == {"token"}
    token = body["token"]
    assert isinstance(token, str) and token.count(".") == 2

    certs = dev.emulator("maa", "GET", "/certs").json()["keys"]
    kid = jwt.get_unverified_header(token)["kid"]
    entry = next(k for k in certs if k["kid"] == kid)
    signer = x509.load_der_x509_certificate(base64.b64decode(entry["x5c"][0])).public_key()
    assert isinstance(signer, rsa.RSAPublicKey)
    claims = jwt.decode(token, signer, algorithms=["RS256"], issuer=dev.state["maa_url"], options={"verify_aud": False})
    assert claims["x-ms-attestation-type"] == "sevsnpvm"
    assert claims["x-ms-sevsnpvm-hostdata"] == dev.state["host_data"]
    assert claims["x-ms-sevsnpvm-reportdata"] == (hashlib.sha256(runtime).digest() + bytes(32)).hex()
    assert claims["x-ms-runtime"] == json.loads(runtime)


def test_attest_maa_accepts_an_https_endpoint_too(dev: DevProcess) -> None:
    body = {"maa_endpoint": dev.state["maa_url"], "runtime_data": b64(b"{}")}
    result = dev.api("POST", "/attest/maa", body)
    assert result.status == 200, result.body


# --- /key/release -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["demo-rsa", "demo-ec", "demo-oct"])
def test_key_release_go_body_gives_a_private_jwk_string(dev: DevProcess, name: str) -> None:
    result = _go_release(dev, name)
    assert set(result.json()) - {"warning"} == {"key"}
    jwk = _released_jwk(result)
    kty = jwk["kty"]
    assert kty == dev.key(name)["kty"].removesuffix("-HSM")
    assert set(PRIVATE_MEMBERS[kty]) <= set(jwk)
    assert all(isinstance(jwk[member], str) and jwk[member] for member in PRIVATE_MEMBERS[kty])
    assert isinstance(jwk.get("key_ops"), list)

    public = _vault_key(dev, name)
    assert jwk["kid"] == public["kid"]
    if kty == "RSA":
        numbers = rsa.RSAPrivateNumbers(
            p=_b64url_int(jwk["p"]),
            q=_b64url_int(jwk["q"]),
            d=_b64url_int(jwk["d"]),
            dmp1=_b64url_int(jwk["dp"]),
            dmq1=_b64url_int(jwk["dq"]),
            iqmp=_b64url_int(jwk["qi"]),
            public_numbers=rsa.RSAPublicNumbers(_b64url_int(jwk["e"]), _b64url_int(jwk["n"])),
        )
        numbers.private_key()  # cryptography checks the members are one consistent key
        assert (jwk["n"], jwk["e"]) == (public["n"], public["e"])
    elif kty == "EC":
        assert jwk["crv"] == public["crv"] == "P-256"
        derived = ec.derive_private_key(_b64url_int(jwk["d"]), ec.SECP256R1()).public_key().public_numbers()
        assert (derived.x, derived.y) == (_b64url_int(public["x"]), _b64url_int(public["y"]))
        assert (jwk["x"], jwk["y"]) == (public["x"], public["y"])
    else:
        assert len(_b64url_bytes(jwk["k"])) == 32  # the demo oct-HSM key is 256 bits
        assert "k" not in public  # the vault never shows symmetric material outside a release


def test_key_release_with_go_access_token_field(dev: DevProcess) -> None:
    token = entra_access_token(dev)
    jwk = _released_jwk(_go_release(dev, "demo-rsa", access_token=token))
    assert jwk["kty"] == "RSA" and "d" in jwk


def test_key_release_of_name_slash_version(dev: DevProcess) -> None:
    version = _vault_key(dev, "demo-ec")["kid"].rsplit("/", 1)[1]
    jwk = _released_jwk(_go_release(dev, "demo-ec", kid=f"demo-ec/{version}"))
    assert jwk["kid"].endswith(f"/keys/demo-ec/{version}")


@pytest.mark.parametrize("enc", ["CKM_RSA_AES_KEY_WRAP", "RSA_AES_KEY_WRAP_256", "RSA_AES_KEY_WRAP_384"])
def test_key_release_same_key_under_every_enc(dev: DevProcess, enc: str) -> None:
    baseline = _released_jwk(_go_release(dev, "demo-oct"))
    assert _released_jwk(_go_release(dev, "demo-oct", enc=enc))["k"] == baseline["k"]
