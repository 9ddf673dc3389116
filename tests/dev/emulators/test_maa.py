"""MAA emulator: evidence checks, token shape (against the real Genoa token), faults, COSE endorsements."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm

from skr.errors import VerificationError
from skr.snp.report import Product, parse_report
from skr.snp.verify import TrustedRoots
from skr_dev.emulators.faults import Fault, FaultKind
from skr_dev.emulators.maa import (
    COMPLIANCE_AKS,
    MICROSOFT_UVM_ROOT_FINGERPRINT,
    SUPPORTED_API_VERSIONS,
    MaaEmulator,
    MaaRequestError,
    UvmEndorsementSigner,
    build_attest_request_body,
    parse_attest_request,
    policy_hash,
    verify_uvm_endorsement,
)
from skr_dev.emulators.tls import TestCertificateAuthority
from skr_dev.simulated.amd import SimulatedAmd

from .conftest import b64url_json, raw_segment

API = "2022-08-01"


def _b64url(data: bytes, *, padded: bool = True) -> str:
    text = base64.urlsafe_b64encode(data).decode()
    return text if padded else text.rstrip("=")


def goref_runtime_data() -> bytes:
    """The JWKS GO-REF attests: one fresh RSA-2048 key, kid = RFC 7638 thumbprint, key_ops encrypt."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    thumbprint_input = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":")).encode()
    kid = _b64url(hashlib.sha256(thumbprint_input).digest(), padded=False)
    jwks = {"keys": [{"e": jwk["e"], "key_ops": ["encrypt"], "kid": kid, "kty": "RSA", "n": jwk["n"]}]}
    return json.dumps(jwks, separators=(",", ":")).encode()


def report_for(platform: SimulatedAmd, runtime: bytes, **fields: Any) -> bytes:
    return platform.sign_report(hashlib.sha256(runtime).digest() + bytes(32), **fields)


def simple_body(platform: SimulatedAmd, runtime: bytes) -> bytes:
    return build_attest_request_body(report_for(platform, runtime), platform.vcek_pem_chain(), runtime)


async def attest(
    session: aiohttp.ClientSession, maa: MaaEmulator, body: bytes, *, path: str = "SevSnpVm", api: str | None = API
) -> tuple[int, dict[str, Any]]:
    url = f"{maa.url}/attest/{path}" + (f"?api-version={api}" if api is not None else "")
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        return response.status, json.loads(await response.read())


async def signing_key_from_certs(session: aiohttp.ClientSession, maa: MaaEmulator) -> tuple[str, Any]:
    async with session.get(f"{maa.url}/certs") as response:
        jwks = await response.json()
    (key,) = jwks["keys"]
    assert list(key) == ["x5c", "kid", "kty"]
    certificate = x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0]))
    assert certificate.subject == certificate.issuer
    assert certificate.subject.rfc4514_string() == f"CN={maa.url}"
    return key["kid"], certificate.public_key()


@pytest.fixture(scope="module")
def genoa() -> SimulatedAmd:
    return SimulatedAmd.create(Product.GENOA)


@pytest.fixture(scope="module")
def turin() -> SimulatedAmd:
    return SimulatedAmd.create(Product.TURIN)


@pytest.fixture(scope="module")
def real_token_claims(real_data: Path) -> dict[str, Any]:
    expected = json.loads((real_data / "expected.json").read_text())
    claims: dict[str, Any] = expected["maa_sevsnp_genoa_token"]["sevsnpvm_claims"]
    return claims


# --- the happy path ---------------------------------------------------------------------------------


@pytest.mark.parametrize("product", ["milan", "genoa", "turin"])
async def test_token_claims_match_the_report(
    request: pytest.FixtureRequest,
    maa_emulator: MaaEmulator,
    https_session: aiohttp.ClientSession,
    real_token_claims: dict[str, Any],
    product: str,
) -> None:
    platform: SimulatedAmd = request.getfixturevalue("emulator_platform" if product == "milan" else product)
    runtime = goref_runtime_data()
    host_policy = b"package policy\nallow := true\n"
    raw = report_for(
        platform,
        runtime,
        host_data=hashlib.sha256(host_policy).digest(),
        policy=0x30000 | (1 << 16) | (1 << 20),
        vmpl=1,
        guest_svn=7,
        family_id=bytes.fromhex("01232000000000000000000000000000"),
        image_id=bytes.fromhex("02000000000000000000000000000000"),
    )
    report = parse_report(raw)
    body = build_attest_request_body(
        raw, platform.vcek_pem_chain(), runtime, nonce=2**64 - 1, init_time_data=host_policy
    )
    status, answer = await attest(https_session, maa_emulator, body)
    assert status == 200, answer
    assert list(answer) == ["token"]
    token = answer["token"]
    claims = b64url_json(token.split(".")[1])

    # the same x-ms-sevsnpvm-* claim set as the real MAA token, with the same JSON types
    ours = {k: v for k, v in claims.items() if k.startswith("x-ms-sevsnpvm-")}
    assert set(ours) == set(real_token_claims)
    for name, value in real_token_claims.items():
        assert type(ours[name]) is type(value), name
    tcb = report.reported_tcb.decode(platform.product)
    assert ours["x-ms-sevsnpvm-chip-family"] == platform.product.value
    assert ours["x-ms-sevsnpvm-chipid"] == report.chip_id.hex()
    assert ours["x-ms-sevsnpvm-reportdata"] == hashlib.sha256(runtime).hexdigest() + "0" * 64
    assert ours["x-ms-sevsnpvm-hostdata"] == hashlib.sha256(host_policy).hexdigest()
    assert ours["x-ms-sevsnpvm-launchmeasurement"] == report.measurement.hex()
    assert ours["x-ms-sevsnpvm-reportid"] == report.report_id.hex()
    assert ours["x-ms-sevsnpvm-familyId"] == "01232000000000000000000000000000"
    assert ours["x-ms-sevsnpvm-imageId"] == "02000000000000000000000000000000"
    assert (ours["x-ms-sevsnpvm-guestsvn"], ours["x-ms-sevsnpvm-vmpl"]) == (7, 1)
    assert ours["x-ms-sevsnpvm-bootloader-svn"] == tcb.bootloader
    assert ours["x-ms-sevsnpvm-tee-svn"] == tcb.tee
    assert ours["x-ms-sevsnpvm-snpfw-svn"] == tcb.snp
    assert ours["x-ms-sevsnpvm-microcode-svn"] == tcb.microcode
    assert ours["x-ms-sevsnpvm-smt-allowed"] is True
    assert ours["x-ms-sevsnpvm-singlesocket"] is True
    assert ours["x-ms-sevsnpvm-is-debuggable"] is False
    assert ours["x-ms-sevsnpvm-migration-allowed"] is False
    assert all(v == v.lower() for v in ours.values() if isinstance(v, str) and re.fullmatch(r"[0-9a-fA-F]+", v))

    assert claims["x-ms-runtime"] == json.loads(runtime)
    assert "x-ms-inittime" not in claims  # initTimeData was Binary
    assert claims["x-ms-attestation-type"] == "sevsnpvm"
    assert claims["x-ms-compliance-status"] == "azure-compliant-uvm"
    assert claims["x-ms-ver"] == "1.0"
    assert claims["iss"] == maa_emulator.url
    assert claims["exp"] - claims["iat"] == 28800
    assert claims["nbf"] == claims["iat"]
    assert re.fullmatch(r"[0-9a-f]{64}", claims["jti"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", claims["x-ms-policy-hash"])
    assert list(claims) == sorted(claims)  # emitted sorted like the real token
    # a 64-bit integer nonce comes back as its decimal string, as in the published ACI token (UNCONFIRMED)
    assert b'"nonce":"18446744073709551615"' in raw_segment(token, 1)


async def test_token_header_and_verification_with_pyjwt(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    runtime = goref_runtime_data()
    body = build_attest_request_body(
        report_for(emulator_platform, runtime), emulator_platform.vcek_pem_chain(), runtime
    )
    status, answer = await attest(https_session, maa_emulator, body)
    assert status == 200
    token = answer["token"]
    kid, public_key = await signing_key_from_certs(https_session, maa_emulator)
    header_raw = raw_segment(token, 0)
    assert (
        header_raw
        == json.dumps(
            {"alg": "RS256", "jku": f"{maa_emulator.url}/certs", "kid": kid, "typ": "JWT"}, separators=(",", ":")
        ).encode()
    )
    assert re.fullmatch(r"[A-Za-z0-9+/]{43}=", kid)  # opaque standard base64, padded
    claims = jwt.decode(token, public_key, algorithms=["RS256"], issuer=maa_emulator.url)
    assert "nonce" not in claims  # none was sent
    with pytest.raises(jwt.InvalidIssuerError):
        jwt.decode(token, public_key, algorithms=["RS256"], issuer="https://sharedeus.eus.attest.azure.net")


async def test_openid_configuration(maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession) -> None:
    async with https_session.get(f"{maa_emulator.url}/.well-known/openid-configuration") as response:
        config = await response.json()
    assert config["jwks_uri"] == f"{maa_emulator.url}/certs"
    assert config["id_token_signing_alg_values_supported"] == ["RS256"]
    assert config["response_types_supported"] == ["token", "none"]
    assert config["revocation_endpoint"] == f"{maa_emulator.url}/revoke"
    assert config["issuer"] == maa_emulator.issuer  # the token's iss, as OpenID discovery requires


async def test_goref_request_exactly(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    runtime = goref_runtime_data()
    body = build_attest_request_body(
        report_for(emulator_platform, runtime), emulator_platform.vcek_pem_chain(), runtime, nonce=12345678901234567890
    )
    document = json.loads(body)
    assert list(document) == ["report", "runtimeData", "initTimeData", "nonce"]
    assert document["initTimeData"] == {"data": "", "dataType": ""}
    assert document["report"].endswith("=") or len(document["report"]) % 4 == 0  # padded base64url
    inner = json.loads(base64.urlsafe_b64decode(document["report"]))
    assert list(inner) == ["SnpReport", "VcekCertChain"]
    for path in ("SevSnpVM", "SevSnpVm", "sevsnpvm"):
        status, answer = await attest(https_session, maa_emulator, body, path=path, api="2020-10-01")
        assert status == 200, answer
        assert b64url_json(answer["token"].split(".")[1])["nonce"] == "12345678901234567890"


async def test_unpadded_whitespace_and_string_nonce(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    runtime = goref_runtime_data()
    raw = report_for(emulator_platform, runtime)
    inner = json.dumps(
        {
            "SnpReport": _b64url(raw, padded=False),
            "VcekCertChain": _b64url(emulator_platform.vcek_pem_chain(), padded=False),
        },
        indent=4,
    )
    body = json.dumps(
        {
            "report": _b64url(inner.encode(), padded=False),
            "runtimeData": {"data": _b64url(runtime, padded=False), "dataType": "JSON"},
            "nonce": "abc-123",
        }
    ).encode()
    status, answer = await attest(https_session, maa_emulator, body)
    assert status == 200, answer
    claims = b64url_json(answer["token"].split(".")[1])
    assert claims["nonce"] == "abc-123"
    # and the all-unpadded builder form
    body = build_attest_request_body(raw, emulator_platform.vcek_pem_chain(), runtime, padded=False, nonce="n")
    assert "=" not in json.loads(body)["report"]
    assert (await attest(https_session, maa_emulator, body))[0] == 200


async def test_init_time_data_json_becomes_x_ms_inittime(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    runtime = goref_runtime_data()
    init = json.dumps({"policy": "allow-all"}).encode()
    raw = report_for(emulator_platform, runtime, host_data=hashlib.sha256(init).digest())
    document = json.loads(build_attest_request_body(raw, emulator_platform.vcek_pem_chain(), runtime))
    document["initTimeData"] = {"data": _b64url(init), "dataType": "JSON"}
    status, answer = await attest(https_session, maa_emulator, json.dumps(document).encode())
    assert status == 200, answer
    assert b64url_json(answer["token"].split(".")[1])["x-ms-inittime"] == {"policy": "allow-all"}


@pytest.mark.parametrize("api", sorted(SUPPORTED_API_VERSIONS))
async def test_supported_api_versions(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd, api: str
) -> None:
    runtime = goref_runtime_data()
    body = build_attest_request_body(
        report_for(emulator_platform, runtime), emulator_platform.vcek_pem_chain(), runtime
    )
    assert (await attest(https_session, maa_emulator, body, api=api))[0] == 200


async def test_compliance_status_is_configurable(
    emulator_ca: TestCertificateAuthority, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    maa = MaaEmulator(compliance_status=COMPLIANCE_AKS)
    async with maa.running(ca=emulator_ca):
        runtime = goref_runtime_data()
        raw = report_for(emulator_platform, runtime)
        status, answer = await attest(
            https_session, maa, build_attest_request_body(raw, emulator_platform.vcek_pem_chain(), runtime)
        )
    assert status == 200
    assert b64url_json(answer["token"].split(".")[1])["x-ms-compliance-status"] == "azure-signed-katacc-uvm"


async def test_real_aci_evidence_at_a_pinned_time(emulator_ca: TestCertificateAuthority, real_data: Path) -> None:
    """The real Confidential ACI report, VCEK chain, CCE policy and UVM endorsement, against AMD's
    real roots and the real Microsoft UVM root, at a time when the endorsement leaf was valid."""
    csc = real_data / "csc"
    pinned = dt.datetime(2023, 6, 1, tzinfo=dt.UTC).timestamp()
    maa = MaaEmulator(trusted_roots=TrustedRoots.amd(), require_uvm_endorsement=True, clock=lambda: pinned)
    report = (csc / "milan_v2_aci_report.bin").read_bytes()
    policy = base64.b64decode((csc / "aci_security_policy.base64").read_bytes())
    body = json.dumps(
        {
            "report": _b64url(
                json.dumps(
                    {
                        "SnpReport": _b64url(report),
                        "VcekCertChain": _b64url((csc / "milan_v2_aci_vcek_ask_ark.pem").read_bytes()),
                        "Endorsements": _b64url(
                            json.dumps({"Uvm": [_b64url((csc / "aci_uvm_endorsement.cose").read_bytes())]}).encode()
                        ),
                    }
                ).encode()
            ),
            "initTimeData": {"data": _b64url(policy), "dataType": "Binary"},
            "nonce": "real",
        }
    ).encode()
    async with (
        maa.running(ca=emulator_ca),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=emulator_ca.client_ssl_context())) as session,
    ):
        status, answer = await attest(session, maa, body)
        assert status == 200, answer
        _, public_key = await signing_key_from_certs(session, maa)
    claims = jwt.decode(
        answer["token"], public_key, algorithms=["RS256"], issuer=maa.url, options={"verify_exp": False}
    )
    expected = json.loads((real_data / "expected.json").read_text())["reports"]["csc_milan_v2_aci"]
    assert claims["x-ms-sevsnpvm-hostdata"] == expected["host_data"]
    assert claims["x-ms-sevsnpvm-launchmeasurement"] == expected["measurement"]
    assert claims["x-ms-sevsnpvm-chipid"] == expected["chip_id"]
    assert claims["x-ms-sevsnpvm-reportdata"] == expected["report_data"]
    assert claims["x-ms-sevsnpvm-chip-family"] == "Milan"
    assert (claims["x-ms-sevsnpvm-microcode-svn"], claims["x-ms-sevsnpvm-snpfw-svn"]) == (115, 8)
    assert claims["x-ms-sevsnpvm-smt-allowed"] is True
    assert claims["iat"] == int(pinned)
    assert "x-ms-runtime" not in claims  # no runtimeData was sent


# --- every failed check -----------------------------------------------------------------------------


async def _expect_error(
    session: aiohttp.ClientSession, maa: MaaEmulator, body: bytes, code: str, words: str, *, status: int = 400
) -> str:
    got_status, answer = await attest(session, maa, body)
    assert got_status == status, answer
    assert list(answer) == ["error"]
    assert answer["error"]["code"] == code
    message: str = answer["error"]["message"]
    assert re.search(words, message, re.IGNORECASE), message
    return message


async def test_bad_report_signature(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    runtime = goref_runtime_data()
    raw = bytearray(report_for(emulator_platform, runtime))
    raw[0x2A0] ^= 0x01  # signature R
    body = build_attest_request_body(bytes(raw), emulator_platform.vcek_pem_chain(), runtime)
    await _expect_error(https_session, maa_emulator, body, "EvidenceVerificationFailed", r"report signature")


async def test_tampered_report_field(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    runtime = goref_runtime_data()
    raw = bytearray(report_for(emulator_platform, runtime))
    raw[0x140] ^= 0x01  # REPORT_ID, inside the signed bytes
    body = build_attest_request_body(bytes(raw), emulator_platform.vcek_pem_chain(), runtime)
    await _expect_error(https_session, maa_emulator, body, "EvidenceVerificationFailed", r"signature")


async def test_chain_to_untrusted_roots(
    emulator_ca: TestCertificateAuthority, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    maa = MaaEmulator(trusted_roots=TrustedRoots.amd())  # real AMD roots only: the simulated chain fails
    async with maa.running(ca=emulator_ca):
        runtime = goref_runtime_data()
        body = build_attest_request_body(
            report_for(emulator_platform, runtime), emulator_platform.vcek_pem_chain(), runtime
        )
        await _expect_error(https_session, maa, body, "EvidenceVerificationFailed", r"not signed by the pinned")


async def test_vcek_of_another_chip(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    other = SimulatedAmd.create(Product.MILAN)
    runtime = goref_runtime_data()
    body = build_attest_request_body(report_for(emulator_platform, runtime), other.vcek_pem_chain(), runtime)
    await _expect_error(https_session, maa_emulator, body, "EvidenceVerificationFailed", r"signature|CHIP_ID")


async def test_runtime_data_mismatch(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    runtime = goref_runtime_data()
    raw = report_for(emulator_platform, runtime)
    body = build_attest_request_body(raw, emulator_platform.vcek_pem_chain(), runtime + b" ")
    await _expect_error(https_session, maa_emulator, body, "RuntimeDataMismatch", r"sha256\(runtimeData\)")
    raw = emulator_platform.sign_report(hashlib.sha256(runtime).digest() + b"\x01" * 32)
    body = build_attest_request_body(raw, emulator_platform.vcek_pem_chain(), runtime)
    await _expect_error(https_session, maa_emulator, body, "RuntimeDataMismatch", r"REPORT_DATA\[32:64\]")


async def test_host_data_mismatch(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    runtime = goref_runtime_data()
    raw = report_for(emulator_platform, runtime, host_data=hashlib.sha256(b"policy A").digest())
    body = build_attest_request_body(raw, emulator_platform.vcek_pem_chain(), runtime, init_time_data=b"policy B")
    await _expect_error(https_session, maa_emulator, body, "InitTimeDataMismatch", r"HOST_DATA")


@pytest.mark.parametrize("problem", ["untrusted signer", "other measurement", "garbage"])
async def test_bad_uvm_endorsement(
    emulator_ca: TestCertificateAuthority,
    https_session: aiohttp.ClientSession,
    emulator_platform: SimulatedAmd,
    problem: str,
) -> None:
    trusted = UvmEndorsementSigner()
    maa = MaaEmulator(uvm_root_fingerprints={trusted.root_fingerprint})
    runtime = goref_runtime_data()
    raw = report_for(emulator_platform, runtime)
    measurement = parse_report(raw).measurement
    endorsement, words = {
        "untrusted signer": (UvmEndorsementSigner().sign(measurement), r"untrusted root"),
        "other measurement": (trusted.sign(bytes(48)), r"launch measurement does not match"),
        "garbage": (b"\x00\x01not cbor at all", r"CBOR|COSE"),
    }[problem]
    body = build_attest_request_body(raw, emulator_platform.vcek_pem_chain(), runtime, uvm_endorsement=endorsement)
    async with maa.running(ca=emulator_ca):
        await _expect_error(https_session, maa, body, "UvmEndorsementInvalid", words)
        good = build_attest_request_body(
            raw, emulator_platform.vcek_pem_chain(), runtime, uvm_endorsement=trusted.sign(measurement)
        )
        assert (await attest(https_session, maa, good))[0] == 200


async def test_endorsement_required(
    emulator_ca: TestCertificateAuthority, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    maa = MaaEmulator(require_uvm_endorsement=True)
    runtime = goref_runtime_data()
    body = build_attest_request_body(
        report_for(emulator_platform, runtime), emulator_platform.vcek_pem_chain(), runtime
    )
    async with maa.running(ca=emulator_ca):
        await _expect_error(https_session, maa, body, "UvmEndorsementMissing", r"required")


def _report_field(inner: dict[str, Any]) -> str:
    return _b64url(json.dumps(inner).encode())


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (b"not json", "InvalidParameter", "not valid JSON"),
        (b"[1, 2]", "InvalidParameter", "JSON object"),
        (b"{}", "InvalidParameter", "report is required"),
        (b'{"report": 5}', "InvalidParameter", "base64url"),
        (b'{"report": "ab+/cd=="}', "InvalidParameter", "not base64url"),
        (b'{"report": "a"}', "InvalidParameter", "length"),
        (json.dumps({"report": _b64url(b"not json")}).encode(), "InvalidParameter", "not valid JSON"),
        (json.dumps({"report": _report_field({"SnpReport": _b64url(b"x" * 100)})}).encode(), "InvalidReport", "1184"),
        (json.dumps({"report": _report_field({"SnpReport": 3})}).encode(), "InvalidParameter", "SnpReport"),
        (b'{"report": "e30", "nonce": NaN}', "InvalidParameter", "not valid JSON"),
    ],
)
async def test_malformed_requests(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, body: bytes, code: str, words: str
) -> None:
    await _expect_error(https_session, maa_emulator, body, code, words)


@pytest.mark.parametrize(
    ("mutate", "code", "words"),
    [
        (lambda d: d.update(nonce=True), "InvalidParameter", "nonce"),
        (lambda d: d.update(nonce=1.5), "InvalidParameter", "nonce"),
        (lambda d: d.update(nonce="n" * 2000), "InvalidParameter", "nonce"),
        (lambda d: d.update(runtimeData="x"), "InvalidParameter", "runtimeData"),
        (lambda d: d["runtimeData"].update(dataType="XML"), "InvalidParameter", "dataType"),
        (lambda d: d["runtimeData"].update(data="%%%"), "InvalidParameter", "runtimeData.data"),
        (lambda d: d.update(draftPolicyForAttestation="version=1.0;"), "NotSupported", "draftPolicy"),
    ],
)
async def test_malformed_fields(
    maa_emulator: MaaEmulator,
    https_session: aiohttp.ClientSession,
    emulator_platform: SimulatedAmd,
    mutate: Any,
    code: str,
    words: str,
) -> None:
    runtime = goref_runtime_data()
    document = json.loads(
        build_attest_request_body(report_for(emulator_platform, runtime), emulator_platform.vcek_pem_chain(), runtime)
    )
    mutate(document)
    await _expect_error(https_session, maa_emulator, json.dumps(document).encode(), code, words)


async def test_malformed_report_bytes(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    runtime = goref_runtime_data()
    raw = bytearray(report_for(emulator_platform, runtime))
    raw[0:4] = (99).to_bytes(4, "little")  # an unknown report version
    body = build_attest_request_body(bytes(raw), emulator_platform.vcek_pem_chain(), runtime)
    await _expect_error(https_session, maa_emulator, body, "InvalidReport", "malformed")


async def test_too_many_uvm_entries(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    runtime = goref_runtime_data()
    inner = {
        "SnpReport": _b64url(report_for(emulator_platform, runtime)),
        "VcekCertChain": _b64url(emulator_platform.vcek_pem_chain()),
        "Endorsements": _b64url(json.dumps({"Uvm": ["AA"] * 5}).encode()),
    }
    body = json.dumps({"report": _report_field(inner)}).encode()
    await _expect_error(https_session, maa_emulator, body, "InvalidParameter", "at most 4")


async def test_oversized_body(maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession) -> None:
    body = b'{"report": "' + b"A" * (1024 * 1024 + 10) + b'"}'
    await _expect_error(https_session, maa_emulator, body, "PayloadTooLarge", "larger", status=413)


async def test_api_version_and_type_errors(maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession) -> None:
    status, answer = await attest(https_session, maa_emulator, b"{}", api="2019-01-01")
    assert (status, answer["error"]["code"]) == (400, "UnsupportedApiVersion")
    status, answer = await attest(https_session, maa_emulator, b"{}", api=None)
    assert (status, answer["error"]["code"]) == (400, "MissingApiVersionParameter")
    status, answer = await attest(https_session, maa_emulator, b"{}", path="SgxEnclave")
    assert (status, answer["error"]["code"]) == (400, "InvalidParameter")


# --- faults -----------------------------------------------------------------------------------------


async def _good_token(session: aiohttp.ClientSession, maa: MaaEmulator, platform: SimulatedAmd) -> str:
    runtime = goref_runtime_data()
    body = build_attest_request_body(report_for(platform, runtime), platform.vcek_pem_chain(), runtime)
    status, answer = await attest(session, maa, body)
    assert status == 200, answer
    token: str = answer["token"]
    return token


async def test_fault_bad_signature(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    maa_emulator.faults.add(Fault(FaultKind.BAD_SIGNATURE, "maa.attest", times=1))
    token = await _good_token(https_session, maa_emulator, emulator_platform)
    _, key = await signing_key_from_certs(https_session, maa_emulator)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, key, algorithms=["RS256"], issuer=maa_emulator.url)
    token = await _good_token(https_session, maa_emulator, emulator_platform)
    assert jwt.decode(token, key, algorithms=["RS256"], issuer=maa_emulator.url)["x-ms-ver"] == "1.0"


async def test_fault_expired_token(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    maa_emulator.faults.add(Fault(FaultKind.EXPIRED_TOKEN, "maa.attest", times=1))
    token = await _good_token(https_session, maa_emulator, emulator_platform)
    claims = b64url_json(token.split(".")[1])
    assert claims["exp"] < time.time()
    assert claims["exp"] - claims["iat"] == 28800
    _, key = await signing_key_from_certs(https_session, maa_emulator)
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(token, key, algorithms=["RS256"], issuer=maa_emulator.url)


async def test_fault_unknown_kid(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    maa_emulator.faults.add(Fault(FaultKind.UNKNOWN_KID, "maa.attest", times=1))
    token = await _good_token(https_session, maa_emulator, emulator_platform)
    kid, _ = await signing_key_from_certs(https_session, maa_emulator)
    assert jwt.get_unverified_header(token)["kid"] != kid
    token = await _good_token(https_session, maa_emulator, emulator_platform)
    assert jwt.get_unverified_header(token)["kid"] == kid


async def test_transport_fault_on_attest(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    maa_emulator.faults.add(Fault(FaultKind.RATE_LIMIT, "maa.attest", retry_after=5, times=1))
    runtime = goref_runtime_data()
    body = build_attest_request_body(
        report_for(emulator_platform, runtime), emulator_platform.vcek_pem_chain(), runtime
    )
    status, _ = await attest(https_session, maa_emulator, body)
    assert status == 429
    assert (await attest(https_session, maa_emulator, body))[0] == 200


# --- Python API -------------------------------------------------------------------------------------


def test_issue_token_directly() -> None:
    maa = MaaEmulator()
    with pytest.raises(RuntimeError, match="no URL"):
        maa.issue_token({})
    maa.bind("https://127.0.0.1:4443/")
    token = maa.issue_token({"x-ms-sevsnpvm-hostdata": "ab" * 32, "b": 1, "a": 2})
    public = maa.public_keys[maa.kid]
    claims = jwt.decode(token, public, algorithms=["RS256"], issuer="https://127.0.0.1:4443")
    assert list(claims) == sorted(claims)
    assert claims["x-ms-sevsnpvm-hostdata"] == "ab" * 32
    assert jwt.get_unverified_header(token)["jku"] == "https://127.0.0.1:4443/certs"
    old_kid = maa.kid
    assert maa.rotate_signing_key() != old_kid
    assert [k["kid"] for k in maa.jwks()["keys"]] == [maa.kid]


def test_policy_hash_format() -> None:
    first = policy_hash("version=1.0; authorizationrules { => permit(); };")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", first)
    assert first == policy_hash("version=1.0; authorizationrules { => permit(); };")
    assert first != policy_hash("version=1.0;")


# --- the UVM endorsement (COSE_Sign1) ---------------------------------------------------------------


def test_real_endorsement_verifies_at_a_pinned_time(real_data: Path) -> None:
    csc = real_data / "csc"
    cose = (csc / "aci_uvm_endorsement.cose").read_bytes()
    measurement = parse_report((csc / "milan_v2_aci_report.bin").read_bytes()).measurement
    valid_time = dt.datetime(2023, 6, 1, tzinfo=dt.UTC)
    endorsement = verify_uvm_endorsement(
        cose, measurement=measurement, trusted_root_fingerprints={MICROSOFT_UVM_ROOT_FINGERPRINT}, now=valid_time
    )
    assert endorsement.feed == "ContainerPlat-AMD-UVM"
    assert endorsement.guest_svn == "22"
    assert endorsement.launch_measurement == measurement.hex()
    assert endorsement.issuer.startswith(f"did:x509:0:sha256:{MICROSOFT_UVM_ROOT_FINGERPRINT}::eku:")
    assert len(endorsement.chain) == 3
    with pytest.raises(VerificationError, match="not valid at"):  # the leaf expired 2024-01-03
        verify_uvm_endorsement(
            cose,
            measurement=measurement,
            trusted_root_fingerprints={MICROSOFT_UVM_ROOT_FINGERPRINT},
            now=dt.datetime(2024, 1, 4, tzinfo=dt.UTC),
        )
    with pytest.raises(VerificationError, match="untrusted root"):
        verify_uvm_endorsement(cose, measurement=measurement, trusted_root_fingerprints=set(), now=valid_time)
    with pytest.raises(VerificationError, match="launch measurement"):
        verify_uvm_endorsement(
            cose, measurement=bytes(48), trusted_root_fingerprints={MICROSOFT_UVM_ROOT_FINGERPRINT}, now=valid_time
        )
    with pytest.raises(VerificationError, match="feed"):
        verify_uvm_endorsement(
            cose,
            measurement=measurement,
            trusted_root_fingerprints={MICROSOFT_UVM_ROOT_FINGERPRINT},
            now=valid_time,
            feeds={"other-feed"},
        )


def test_real_endorsement_tampered_payload_fails(real_data: Path) -> None:
    csc = real_data / "csc"
    cose = bytearray((csc / "aci_uvm_endorsement.cose").read_bytes())
    measurement = parse_report((csc / "milan_v2_aci_report.bin").read_bytes()).measurement
    index = cose.index(b'"22"')
    cose[index + 1 : index + 3] = b"23"
    with pytest.raises(VerificationError, match="signature"):
        verify_uvm_endorsement(
            bytes(cose),
            measurement=measurement,
            trusted_root_fingerprints={MICROSOFT_UVM_ROOT_FINGERPRINT},
            now=dt.datetime(2023, 6, 1, tzinfo=dt.UTC),
        )


def test_simulated_signer_round_trip() -> None:
    signer = UvmEndorsementSigner()
    measurement = hashlib.sha384(b"uvm").digest()
    endorsement = verify_uvm_endorsement(
        signer.sign(measurement, guest_svn="5"),
        measurement=measurement,
        trusted_root_fingerprints={signer.root_fingerprint},
        now=dt.datetime.now(dt.UTC),
    )
    assert endorsement.issuer == signer.issuer
    assert endorsement.guest_svn == "5"


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_cose_fuzz_only_raises_verification_error(data: bytes) -> None:
    try:
        verify_uvm_endorsement(
            data, measurement=bytes(48), trusted_root_fingerprints={"x"}, now=dt.datetime.now(dt.UTC)
        )
    except VerificationError:
        pass


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.dictionaries(
            st.sampled_from(["report", "runtimeData", "initTimeData", "nonce", "draftPolicyForAttestation", "x"]),
            _json_values,
            max_size=5,
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_request_parser_fuzz_only_raises_maa_errors(body: bytes) -> None:
    try:
        parse_attest_request(body)
    except MaaRequestError as exc:
        assert exc.status in (400, 413)


_inner_values = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=40),
    st.binary(max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    st.lists(st.binary(max_size=32).map(lambda b: base64.urlsafe_b64encode(b).decode()), max_size=6),
)


@settings(max_examples=300)
@given(
    st.dictionaries(st.sampled_from(["SnpReport", "VcekCertChain", "Endorsements", "Other"]), _inner_values),
    st.booleans(),
)
def test_inner_report_fuzz_only_raises_maa_errors(inner: dict[str, Any], padded: bool) -> None:
    encoded = base64.urlsafe_b64encode(json.dumps(inner).encode()).decode()
    body = json.dumps({"report": encoded if padded else encoded.rstrip("=")}).encode()
    try:
        parse_attest_request(body)
    except MaaRequestError as exc:
        assert exc.code in ("InvalidParameter", "InvalidReport")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(report=st.binary(min_size=1184, max_size=1184), chain=st.sampled_from(["good", "garbage", "empty"]))
def test_attest_fuzz_never_raises_anything_but_maa_errors(
    emulator_platform: SimulatedAmd, report: bytes, chain: str
) -> None:
    maa = MaaEmulator(trusted_roots=emulator_platform.trusted_roots())
    maa.bind("https://127.0.0.1:1")
    pem = {
        "good": emulator_platform.vcek_pem_chain(),
        "garbage": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "empty": b"",
    }[chain]
    body = build_attest_request_body(report, pem, b"{}")
    with pytest.raises(MaaRequestError) as caught:
        maa.attest(parse_attest_request(body))
    assert caught.value.code in ("InvalidReport", "EvidenceVerificationFailed")


async def test_certificate_with_an_invalid_x509_version(
    maa_emulator: MaaEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    runtime = goref_runtime_data()
    pem = emulator_platform.vcek_pem_chain()
    first, rest = pem.split(b"-----END CERTIFICATE-----\n", 1)
    der = bytearray(base64.b64decode(b"".join(first.splitlines()[1:])))
    index = der.index(bytes.fromhex("a003020102"))
    der[index + 4] = 0x0A  # X.509 version 11: cryptography raises InvalidVersion, not ValueError
    mutated = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der)) + b"-----END CERTIFICATE-----\n" + rest
    body = build_attest_request_body(report_for(emulator_platform, runtime), mutated, runtime)
    await _expect_error(https_session, maa_emulator, body, "EvidenceVerificationFailed", "malformed|certificate")
