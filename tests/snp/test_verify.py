"""Report verification: all real vectors against the pinned AMD roots, and every way to fail."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skr.errors import ReportFormatError, VerificationError
from skr.snp.certtable import CertKind, build_certificate_table
from skr.snp.report import AttestationReport, Product, SigningKey, TcbVersion, parse_report
from skr.snp.vcek import load_amd_der_certificate, load_amd_pem_certificates
from skr.snp.verify import (
    MAX_CERTIFICATES,
    TrustedRoots,
    VerifiedAttestation,
    load_certificates,
    verify_attestation,
    verify_certificate_signature,
)
from skr_dev.simulated.amd import SimulatedAmd

NOW = datetime.datetime(2026, 11, 23, tzinfo=datetime.UTC)
VLEK_VALID = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)  # the AWS VLEK expired 2025-12-10
AMD = TrustedRoots.amd()

REPORTS = [
    "csc_milan_v2_aci",
    "gsg_milan_v2_debug",
    "virtee_milan_v2",
    "trustee_milan_v2",
    "trustee_vlek_milan_v3",
    "trustee_genoa_siena_v3",
    "azure_milan_v2_hcl",
    "azure_genoa_v3_hcl",
    "azure_milan_v3_hcl",
    "oak_genoa_v5",
    "oak_turin_v5",
    "gcp_milan_v5_vmpl0",
    "gcp_milan_v5_vmpl1_x25519",
]


def _expected(real_data: Path) -> dict[str, Any]:
    reports: dict[str, Any] = json.loads((real_data / "expected.json").read_text())["reports"]
    return reports


def _signer_bytes(real_data: Path, signer: str) -> bytes:
    if signer.endswith("[vcek]"):  # azure_milan_v3_hcl: base64url DER in the evidence JSON
        evidence = json.loads((real_data / signer.removesuffix("[vcek]")).read_text())
        return base64.urlsafe_b64decode(evidence["vcek"])
    return (real_data / signer).read_bytes()


def _vector(real_data: Path, name: str) -> tuple[bytes, bytes, dict[str, Any]]:
    expected = _expected(real_data)[name]
    return (real_data / expected["file"]).read_bytes(), _signer_bytes(real_data, expected["signer_cert"]), expected


def _product_of_chain(chain_path: str) -> Product:
    return {"milan": Product.MILAN, "genoa": Product.GENOA, "turin": Product.TURIN}[Path(chain_path).name.split("_")[0]]


def _time_for(name: str) -> datetime.datetime:
    return VLEK_VALID if "vlek" in name else NOW


# --- the pinned roots -----------------------------------------------------------------------------


def test_pinned_roots_are_amds(real_data: Path) -> None:
    assert AMD.name == "AMD"
    assert set(AMD.products()) == set(Product)
    for product in Product:
        roots = AMD.for_product(product)
        stem = product.value.lower()
        ask, ark = load_amd_pem_certificates((real_data / f"amd-roots/{stem}_ask_ark.pem").read_bytes(), max_count=2)
        asvk, _ = load_amd_pem_certificates((real_data / f"amd-roots/{stem}_asvk_ark.pem").read_bytes(), max_count=2)
        assert roots.ark == ark and roots.ask == ask and roots.asvk == asvk
        assert roots.ark.subject.rfc4514_string().startswith(f"CN=ARK-{product.value},")


def test_pinned_roots_load_without_warnings() -> None:
    from skr.snp import verify

    verify._amd_roots.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TrustedRoots.amd().products()


def test_roots_with_a_foreign_ask_are_refused() -> None:
    milan, genoa = AMD.for_product(Product.MILAN), AMD.for_product(Product.GENOA)
    with pytest.raises(VerificationError, match="Milan ASK"):
        TrustedRoots.from_certificates({Product.MILAN: (milan.ark, genoa.ask, None)}, name="mixed")
    with pytest.raises(VerificationError, match="no roots"):
        TrustedRoots.from_certificates({}, name="empty")


def test_certificate_signature_is_pinned_to_pss(real_data: Path) -> None:
    milan = AMD.for_product(Product.MILAN)
    verify_certificate_signature(milan.ask, milan.ark)
    with pytest.raises(VerificationError, match="issuer"):
        verify_certificate_signature(milan.ask, AMD.for_product(Product.GENOA).ark)
    vcek = load_amd_der_certificate((real_data / "trustee/milan_v2_vcek.der").read_bytes())
    with pytest.raises(VerificationError, match="not RSA"):  # an EC "issuer" with a matching name
        verify_certificate_signature(vcek, _self_named(vcek))


def _self_named(certificate: x509.Certificate) -> x509.Certificate:
    """An EC certificate whose subject is the VCEK's issuer (to reach the key-type check)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    return (
        x509.CertificateBuilder()
        .subject_name(certificate.issuer)
        .issuer_name(certificate.issuer)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .sign(key, hashes.SHA384())
    )


# --- every real report ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REPORTS)
def test_real_report_verifies(real_data: Path, name: str) -> None:
    report, signer, expected = _vector(real_data, name)
    verified = verify_attestation(report, signer, trusted=AMD, now=_time_for(name))
    assert isinstance(verified, VerifiedAttestation)
    assert verified.product is _product_of_chain(expected["chain"])
    assert verified.signer_kind is SigningKey(expected["signing_key"])
    assert verified.report.to_bytes() == report
    assert verified.report.chip_id.hex() == expected["chip_id"]
    assert verified.report.host_data.hex() == expected["host_data"]
    assert verified.roots_name == "AMD"
    pinned = AMD.for_product(verified.product)
    assert verified.chain[1] == pinned.signing_ca(verified.signer_kind)
    assert verified.chain[2] == pinned.ark
    assert verified.extensions.product_name == expected["vcek_product_name"]
    # Turin's 8-byte hwID and the VLEK's zero CHIP_ID are the only non-64-byte bindings
    assert verified.chip_id_masked is (expected["signing_key"] == 1)


@pytest.mark.parametrize("name", ["csc_milan_v2_aci", "oak_turin_v5", "trustee_genoa_siena_v3"])
def test_real_report_with_full_chain_and_as_a_ghcb_table(real_data: Path, name: str) -> None:
    report, signer, expected = _vector(real_data, name)
    chain_pem = (real_data / expected["chain"]).read_bytes()
    signer_cert = load_certificates(signer)[0]
    ask, ark = load_amd_pem_certificates(chain_pem, max_count=2)
    der = [c.public_bytes(serialization.Encoding.DER) for c in (signer_cert, ask, ark)]
    inputs: list[bytes | str | list[x509.Certificate]] = [
        signer_cert.public_bytes(serialization.Encoding.PEM) + chain_pem,
        (signer_cert.public_bytes(serialization.Encoding.PEM) + chain_pem).decode(),
        b"".join(der),
        build_certificate_table([(CertKind.VCEK, der[0]), (CertKind.ASK, der[1]), (CertKind.ARK, der[2])]),
        [signer_cert, ask, ark],
    ]
    for certificates in inputs:
        assert verify_attestation(report, certificates, trusted=AMD, now=NOW).product is _product_of_chain(
            expected["chain"]
        )


def test_product_hint_must_agree(real_data: Path) -> None:
    report, signer, _ = _vector(real_data, "csc_milan_v2_aci")
    assert verify_attestation(report, signer, trusted=AMD, now=NOW, product=Product.MILAN).product is Product.MILAN
    with pytest.raises(VerificationError, match="says Milan but the requested product says Genoa"):
        verify_attestation(report, signer, trusted=AMD, now=NOW, product=Product.GENOA)


def test_vlek_verifies_inside_its_validity_and_is_expired_today(real_data: Path) -> None:
    report, signer, _ = _vector(real_data, "trustee_vlek_milan_v3")
    verified = verify_attestation(report, signer, trusted=AMD, now=VLEK_VALID)
    assert verified.signer_kind is SigningKey.VLEK
    assert verified.extensions.csp_id == "CN=cc-us-east-2.amazonaws.com"
    with pytest.raises(VerificationError, match=r"VLEK expired at 2025-12-10T22:14:21\+00:00"):
        verify_attestation(report, signer, trusted=AMD, now=NOW)


def test_certificate_not_yet_valid(real_data: Path) -> None:
    report, signer, _ = _vector(real_data, "csc_milan_v2_aci")
    with pytest.raises(VerificationError, match="VCEK is not valid before 2022-11-29"):
        verify_attestation(report, signer, trusted=AMD, now=datetime.datetime(2022, 1, 1, tzinfo=datetime.UTC))


def test_naive_time_is_a_programming_error(real_data: Path) -> None:
    report, signer, _ = _vector(real_data, "csc_milan_v2_aci")
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_attestation(report, signer, trusted=AMD, now=datetime.datetime(2026, 1, 1))


@pytest.mark.parametrize("forged", ["negative_forged_vcek_legacy.der", "negative_forged_vcek_new.der"])
def test_forged_vceks_are_rejected(real_data: Path, forged: str) -> None:
    report = (real_data / "trustee/milan_v2_report.bin").read_bytes()
    certificate = (real_data / "trustee" / forged).read_bytes()
    with pytest.raises(VerificationError, match="VCEK is not signed by the pinned Milan ASK"):
        verify_attestation(report, certificate, trusted=AMD, now=NOW)


def test_signer_from_another_report_does_not_verify(real_data: Path) -> None:
    report, _, _ = _vector(real_data, "csc_milan_v2_aci")
    _, other_signer, _ = _vector(real_data, "trustee_milan_v2")
    with pytest.raises(VerificationError, match="report signature does not verify with the VCEK"):
        verify_attestation(report, other_signer, trusted=AMD, now=NOW)


def test_right_signer_is_picked_among_several(real_data: Path) -> None:
    report, signer, _ = _vector(real_data, "csc_milan_v2_aci")
    _, other_signer, _ = _vector(real_data, "trustee_milan_v2")
    both = [load_certificates(other_signer)[0], load_certificates(signer)[0]]
    assert verify_attestation(report, both, trusted=AMD, now=NOW).signer == both[1]
    _, third, _ = _vector(real_data, "virtee_milan_v2")
    wrong = [load_certificates(other_signer)[0], load_certificates(third)[0]]
    with pytest.raises(VerificationError, match="does not verify with any of the 2 supplied VCEK"):
        verify_attestation(report, wrong, trusted=AMD, now=NOW)


def test_every_flipped_byte_of_the_signed_region_is_rejected(real_data: Path) -> None:
    report, signer, _ = _vector(real_data, "oak_turin_v5")
    certificates = list(load_certificates(signer))
    verify_attestation(report, certificates, trusted=AMD, now=NOW)
    for offset in range(0x2A0):
        tampered = bytearray(report)
        tampered[offset] ^= 0x01
        with pytest.raises(VerificationError):
            verify_attestation(bytes(tampered), certificates, trusted=AMD, now=NOW)


def test_tampered_signature_is_rejected(real_data: Path) -> None:
    report, signer, _ = _vector(real_data, "gcp_milan_v5_vmpl0")
    for offset in (0x2A0, 0x2A0 + 47, 0x2E8, 0x2E8 + 47):
        tampered = bytearray(report)
        tampered[offset] ^= 0x80
        with pytest.raises(VerificationError, match="report signature does not verify"):
            verify_attestation(bytes(tampered), signer, trusted=AMD, now=NOW)


def test_supplied_ark_must_be_the_pinned_one(real_data: Path) -> None:
    report, signer, _ = _vector(real_data, "csc_milan_v2_aci")
    fake_ark = SimulatedAmd.create(Product.MILAN).ark_certificate()  # AMD's name, another key
    certificates = [*load_certificates(signer), fake_ark]
    with pytest.raises(VerificationError, match="supplied certificate ARK-Milan does not match the pinned ARK-Milan"):
        verify_attestation(report, certificates, trusted=AMD, now=NOW)


# --- structural refusals --------------------------------------------------------------------------


def _resign(simulated: SimulatedAmd, report: bytes, **changes: Any) -> bytes:
    return simulated.sign(dataclasses.replace(parse_report(report), **changes))


@pytest.fixture(scope="module")
def milan() -> SimulatedAmd:
    return SimulatedAmd.create(Product.MILAN)


def test_signature_algo_must_be_ecdsa_p384(milan: SimulatedAmd) -> None:
    report = _resign(milan, milan.sign_report(bytes(64)), signature_algo=2)
    with pytest.raises(VerificationError, match="SIGNATURE_ALGO is 2"):
        verify_attestation(report, milan.vcek_pem_chain(), trusted=milan.trusted_roots(), now=NOW)


def test_mask_chip_key_means_unsigned(milan: SimulatedAmd) -> None:
    report = dataclasses.replace(parse_report(milan.sign_report(bytes(64))), mask_chip_key=True)
    with pytest.raises(VerificationError, match="MASK_CHIP_KEY"):
        verify_attestation(report.to_bytes(), milan.vcek_pem_chain(), trusted=milan.trusted_roots(), now=NOW)


def test_signing_key_none_is_refused(milan: SimulatedAmd) -> None:
    report = dataclasses.replace(parse_report(milan.sign_report(bytes(64))), signing_key=SigningKey.NONE)
    with pytest.raises(VerificationError, match="SIGNING_KEY is NONE"):
        verify_attestation(report, milan.vcek_pem_chain(), trusted=milan.trusted_roots(), now=NOW)


def test_report_signed_by_vlek_needs_a_vlek(milan: SimulatedAmd) -> None:
    vlek = SimulatedAmd.create(Product.MILAN, signer=SigningKey.VLEK)
    report = vlek.sign_report(bytes(64))
    with pytest.raises(VerificationError, match=r"signed by the VLEK \(SIGNING_KEY=1\) but no VLEK.*found: SEV-VCEK"):
        verify_attestation(report, milan.vcek_pem_chain(), trusted=milan.trusted_roots(), now=NOW)


def test_report_signed_by_vcek_refuses_a_vlek(milan: SimulatedAmd) -> None:
    vlek = SimulatedAmd.create(Product.MILAN, signer=SigningKey.VLEK)
    report = milan.sign_report(bytes(64))
    with pytest.raises(VerificationError, match="no VCEK certificate was supplied"):
        verify_attestation(report, vlek.vcek_pem_chain(), trusted=milan.trusted_roots(), now=NOW)


def test_cpuid_and_product_name_must_agree(milan: SimulatedAmd) -> None:
    report = _resign(milan, milan.sign_report(bytes(64), version=3), cpuid_mod_id=0x11)
    with pytest.raises(VerificationError, match="report CPUID says Genoa but VCEK productName 'Milan-B0' says Milan"):
        verify_attestation(report, milan.vcek_pem_chain(), trusted=milan.trusted_roots(), now=NOW)


def test_unknown_cpuid_is_refused(milan: SimulatedAmd) -> None:
    report = _resign(milan, milan.sign_report(bytes(64), version=3), cpuid_fam_id=0x17)
    with pytest.raises(VerificationError, match="CPUID family 0x17 model 0x01 is not a known product"):
        verify_attestation(report, milan.vcek_pem_chain(), trusted=milan.trusted_roots(), now=NOW)


def test_v2_without_product_name_uses_the_chain_that_verifies(milan: SimulatedAmd) -> None:
    from skr_dev.simulated.amd import simulated_trusted_roots

    vcek = milan.vcek_der_for(milan.hwid, milan.reported_tcb, omit_product_name=True)
    report = milan.sign_report(bytes(64), version=2)
    every_product = simulated_trusted_roots()
    assert verify_attestation(report, vcek, trusted=every_product, now=NOW).product is Product.MILAN
    genoa_only = SimulatedAmd.create(Product.GENOA).trusted_roots()
    with pytest.raises(VerificationError, match="not signed by any pinned .* ASK and names no product"):
        verify_attestation(report, vcek, trusted=genoa_only, now=NOW)


def test_missing_product_roots_are_named(milan: SimulatedAmd) -> None:
    genoa_only = SimulatedAmd.create(Product.GENOA).trusted_roots()
    with pytest.raises(VerificationError, match="roots are pinned for Milan"):
        verify_attestation(milan.sign_report(bytes(64)), milan.vcek_pem_chain(), trusted=genoa_only, now=NOW)


# --- certificate / report binding (built with the simulated platform) ---------------------------


@pytest.mark.parametrize("product", list(Product))
def test_spl_mismatch_is_caught(product: Product) -> None:
    simulated = SimulatedAmd.create(product)
    report = simulated.sign_report(bytes(64), version=3)
    parts = simulated.reported_tcb.decode(product)
    claimed = TcbVersion.encode(
        product,
        bootloader=parts.bootloader,
        tee=parts.tee,
        snp=parts.snp + 1,
        microcode=parts.microcode,
        fmc=parts.fmc or 0,
    )
    # same key as the report's TCB, but the certificate states another snpSPL
    vcek = simulated.vcek_der_for(simulated.hwid, claimed, key_tcb=simulated.reported_tcb)
    message = f"REPORTED_TCB snp={parts.snp} does not match VCEK snpSPL={parts.snp + 1}"
    with pytest.raises(VerificationError, match=message):
        verify_attestation(report, vcek, trusted=simulated.trusted_roots(), now=NOW)


def test_turin_fmc_mismatch_is_caught() -> None:
    turin = SimulatedAmd.create(Product.TURIN)
    report = turin.sign_report(bytes(64), version=5)
    claimed = TcbVersion.encode(Product.TURIN, bootloader=1, tee=0, snp=2, microcode=71, fmc=3)
    vcek = turin.vcek_der_for(turin.hwid, claimed, key_tcb=turin.reported_tcb)
    with pytest.raises(VerificationError, match="REPORTED_TCB fmc=0 does not match VCEK fmcSPL=3"):
        verify_attestation(report, vcek, trusted=turin.trusted_roots(), now=NOW)


def test_vcek_for_another_tcb_has_another_key(milan: SimulatedAmd) -> None:
    newer = TcbVersion.encode(Product.MILAN, bootloader=4, tee=0, snp=9, microcode=120)
    vcek = milan.vcek_der_for(milan.hwid, newer)
    with pytest.raises(VerificationError, match="report signature does not verify"):
        verify_attestation(milan.sign_report(bytes(64)), vcek, trusted=milan.trusted_roots(), now=NOW)
    report_at_newer = milan.sign_report(bytes(64), reported_tcb=newer)
    assert verify_attestation(report_at_newer, vcek, trusted=milan.trusted_roots(), now=NOW).product is Product.MILAN


@pytest.mark.parametrize("product", list(Product))
def test_hwid_mismatch_is_caught(product: Product) -> None:
    simulated = SimulatedAmd.create(product)
    other_chip = SimulatedAmd.create(product).chip_id
    report = simulated.sign_report(bytes(64), chip_id=other_chip)
    with pytest.raises(VerificationError, match="CHIP_ID .* does not match VCEK hwID"):
        verify_attestation(report, simulated.vcek_pem_chain(), trusted=simulated.trusted_roots(), now=NOW)


def test_turin_chip_id_tail_must_be_zero() -> None:
    turin = SimulatedAmd.create(Product.TURIN)
    report = turin.sign_report(bytes(64), chip_id=turin.chip_id[:8] + b"\x01" + bytes(55))
    with pytest.raises(VerificationError, match="does not match VCEK hwID"):
        verify_attestation(report, turin.vcek_pem_chain(), trusted=turin.trusted_roots(), now=NOW)


def test_masked_chip_id_is_reported_not_compared(milan: SimulatedAmd) -> None:
    report = milan.sign_report(bytes(64), chip_id=bytes(64))
    verified = verify_attestation(report, milan.vcek_pem_chain(), trusted=milan.trusted_roots(), now=NOW)
    assert verified.chip_id_masked is True


def test_hwid_of_the_wrong_size_for_the_product() -> None:
    turin = SimulatedAmd.create(Product.TURIN)
    milan_vcek_shape = SimulatedAmd.create(Product.MILAN)
    with pytest.raises(ValueError, match="Turin hwID is 8 bytes"):
        turin.vcek_der_for(milan_vcek_shape.hwid, turin.reported_tcb)


def test_verification_error_names_are_specific_for_expired_simulated_vcek(milan: SimulatedAmd) -> None:
    vcek = milan.vcek_der_for(
        milan.hwid,
        milan.reported_tcb,
        not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
        not_after=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    )
    with pytest.raises(VerificationError, match="VCEK expired at 2026-01-01"):
        verify_attestation(milan.sign_report(bytes(64)), vcek, trusted=milan.trusted_roots(), now=NOW)


# --- simulated reports take the same path --------------------------------------------------------


@pytest.mark.parametrize("signer", [SigningKey.VCEK, SigningKey.VLEK])
@pytest.mark.parametrize("version", [2, 3, 5])
@pytest.mark.parametrize("product", list(Product))
def test_simulated_reports_verify_with_simulated_roots_only(product: Product, version: int, signer: SigningKey) -> None:
    simulated = SimulatedAmd.create(product, signer=signer)
    report_data = hashlib.sha256(b"runtime").digest() + bytes(32)
    report = simulated.sign_report(report_data, version=version, host_data=b"\x11" * 32)
    for certificates in (simulated.vcek_pem_chain(), simulated.certificate_table(), simulated.signer_der()):
        verified = verify_attestation(report, certificates, trusted=simulated.trusted_roots(), now=NOW)
        assert verified.product is product
        assert verified.signer_kind is signer
        assert verified.report.report_data == report_data
        assert verified.roots_name.startswith("simulated")
    with pytest.raises(VerificationError, match=f"{signer.name} is not signed by the pinned {product.value}"):
        verify_attestation(report, simulated.vcek_pem_chain(), trusted=AMD, now=NOW)


# --- certificate input ----------------------------------------------------------------------------


def test_no_certificates(milan: SimulatedAmd) -> None:
    report = milan.sign_report(bytes(64))
    with pytest.raises(VerificationError, match="no certificates supplied"):
        verify_attestation(report, [], trusted=milan.trusted_roots(), now=NOW)
    with pytest.raises(VerificationError, match="no certificates supplied"):
        verify_attestation(report, bytes(24), trusted=milan.trusted_roots(), now=NOW)  # empty GHCB table


def test_certificate_input_is_bounded(milan: SimulatedAmd) -> None:
    der = milan.signer_der()
    with pytest.raises(VerificationError, match=f"more than {MAX_CERTIFICATES}"):
        load_certificates(der * (MAX_CERTIFICATES + 1))
    with pytest.raises(VerificationError, match=f"more than {MAX_CERTIFICATES}"):
        load_certificates(milan.vcek_pem_chain() * 3)
    with pytest.raises(VerificationError, match=f"more than {MAX_CERTIFICATES}"):
        load_certificates([load_certificates(der)[0]] * (MAX_CERTIFICATES + 1))
    with pytest.raises(VerificationError, match="exceeds"):
        load_certificates(b"\x30" + bytes(10_000_000))
    with pytest.raises(VerificationError, match="x509.Certificate"):
        load_certificates(["not a certificate"])  # type: ignore[list-item]


def test_table_skips_crl_entries(milan: SimulatedAmd) -> None:
    table = build_certificate_table([(CertKind.VCEK, milan.signer_der()), (CertKind.CRL, milan.crl_der())])
    assert len(load_certificates(table)) == 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"hello",
        b"\x30\x82\xff\xff",
        b"\x30\x03\x02\x01\x00",
        b"-----BEGIN CERTIFICATE-----\nzz\n-----END CERTIFICATE-----\n",
        b"\x01" * 23,
    ],
)
def test_garbage_certificates_are_typed_errors(garbage: bytes) -> None:
    with pytest.raises(VerificationError):
        load_certificates(garbage)


def test_malformed_report_is_a_report_format_error(milan: SimulatedAmd) -> None:
    with pytest.raises(ReportFormatError):
        verify_attestation(b"\x00" * 100, milan.vcek_pem_chain(), trusted=milan.trusted_roots(), now=NOW)


def test_parsed_report_objects_are_accepted(real_data: Path) -> None:
    report, signer, _ = _vector(real_data, "oak_genoa_v5")
    parsed: AttestationReport = parse_report(report)
    assert verify_attestation(parsed, signer, trusted=AMD, now=NOW).report is parsed


# --- property tests -------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=1300))
def test_random_report_bytes_only_raise_typed_errors(real_data: Path, data: bytes) -> None:
    signer = (real_data / "trustee/milan_v2_vcek.der").read_bytes()
    with pytest.raises(VerificationError):
        verify_attestation(data, signer, trusted=AMD, now=NOW)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mutations=st.dictionaries(
        st.integers(min_value=0, max_value=0x4A0 - 1), st.integers(min_value=1, max_value=255), min_size=1, max_size=8
    )
)
def test_mutated_real_report_never_verifies(real_data: Path, mutations: dict[int, int]) -> None:
    report = bytearray((real_data / "trustee/milan_v2_report.bin").read_bytes())
    signer = (real_data / "trustee/milan_v2_vcek.der").read_bytes()
    for offset, xor in mutations.items():
        report[offset] ^= xor
    try:
        verify_attestation(bytes(report), signer, trusted=AMD, now=NOW)
    except VerificationError:
        return
    # Every byte matters: the signed region is signed, r/s are the signature (their high bytes
    # push r or s past the curve order), and everything after them is reserved.
    pytest.fail(f"mutations {mutations} were accepted")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=3000), st.binary(max_size=60).map(lambda b: b"\x30\x82" + b)))
def test_random_certificate_bytes_only_raise_typed_errors(real_data: Path, data: bytes) -> None:
    report = (real_data / "trustee/milan_v2_report.bin").read_bytes()
    with pytest.raises(VerificationError):
        verify_attestation(report, data, trusted=AMD, now=NOW)


def test_lazily_parsed_certificate_fields_fail_typed(real_data: Path) -> None:
    der = bytearray((real_data / "trustee/milan_v2_vcek.der").read_bytes())
    ec_public_key_oid = bytes.fromhex("06072a8648ce3d0201")
    position = der.find(ec_public_key_oid)
    assert position > 0
    der[position + len(ec_public_key_oid) - 1] = 0x09  # an unknown key algorithm; loads, fails on use
    report = (real_data / "trustee/milan_v2_report.bin").read_bytes()
    with pytest.raises(VerificationError, match="a supplied certificate is malformed: Unknown key type"):
        verify_attestation(report, bytes(der), trusted=AMD, now=NOW)
