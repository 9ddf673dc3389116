"""The simulated AMD platform is shaped like AMD's real certificates and reports."""

from __future__ import annotations

import datetime
import hashlib
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from skr.errors import VerificationError
from skr.snp.certtable import CertKind, parse_certificate_table
from skr.snp.report import Product, SigningKey, TcbVersion, parse_report
from skr.snp.vcek import load_amd_pem_certificates, parse_amd_extensions, serial_zero_warnings_suppressed
from skr.snp.verify import AMD_PSS_PADDING, TrustedRoots, load_certificates, verify_certificate_signature
from skr_dev import SIMULATED_BANNER
from skr_dev.simulated.amd import DEFAULT_TCB, SimulatedAmd, simulated_trusted_roots

NOW = datetime.datetime(2026, 11, 23, tzinfo=datetime.UTC)


@pytest.fixture(scope="module", params=list(Product), ids=lambda p: p.value)
def simulated(request: pytest.FixtureRequest) -> SimulatedAmd:
    product: Product = request.param
    return SimulatedAmd.create(product)


def _names(certificate: x509.Certificate) -> list[tuple[str, str]]:
    return [(attr.oid.dotted_string, str(attr.value)) for attr in certificate.subject]


def test_hierarchy_is_shaped_like_amds(simulated: SimulatedAmd, real_data: Path) -> None:
    product = simulated.product
    real_ask, real_ark = load_amd_pem_certificates(
        (real_data / f"amd-roots/{product.value.lower()}_ask_ark.pem").read_bytes(), max_count=2
    )
    ark, ask = simulated.ark_certificate(), simulated.ca_certificate()
    for fake, real in ((ark, real_ark), (ask, real_ask)):
        assert _names(fake) == _names(real)
        assert fake.issuer == real.issuer
        assert fake.serial_number == real.serial_number
        key = fake.public_key()
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 4096
        assert fake.signature_algorithm_oid == real.signature_algorithm_oid  # RSASSA-PSS
        assert [(e.oid, e.critical) for e in fake.extensions] == [(e.oid, e.critical) for e in real.extensions]
        for kind in (x509.BasicConstraints, x509.KeyUsage, x509.CRLDistributionPoints):
            assert (
                fake.extensions.get_extension_for_class(kind).value
                == real.extensions.get_extension_for_class(kind).value
            )
    verify_certificate_signature(ark, ark)
    verify_certificate_signature(ask, ark)
    # the PSS parameters are exactly AMD's: salt 48 verifies, another salt does not
    ark_key = ark.public_key()
    assert isinstance(ark_key, rsa.RSAPublicKey)
    with pytest.raises(InvalidSignature):
        ark_key.verify(
            ask.signature,
            ask.tbs_certificate_bytes,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=32),
            hashes.SHA384(),
        )
    ark_key.verify(ask.signature, ask.tbs_certificate_bytes, AMD_PSS_PADDING, hashes.SHA384())


def test_vcek_is_shaped_like_amds(simulated: SimulatedAmd, real_data: Path) -> None:
    real_file = {"Milan": "trustee/milan_v2_vcek.der", "Genoa": "oak/genoa_vcek.der", "Turin": "oak/turin_vcek.der"}
    real = load_certificates((real_data / real_file[simulated.product.value]).read_bytes())[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the simulator's own serial-0 handling must be silent too
        vcek = load_certificates(simulated.signer_der())[0]
        with serial_zero_warnings_suppressed():
            assert vcek.serial_number == 0
    assert _names(vcek) == _names(real)
    assert vcek.issuer == real.issuer
    assert [e.oid for e in vcek.extensions] == [e.oid for e in real.extensions]
    key = vcek.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)
    ext, real_ext = parse_amd_extensions(vcek), parse_amd_extensions(real)
    assert ext.struct_version == real_ext.struct_version == (1 if simulated.product is Product.TURIN else 0)
    assert ext.product_name == real_ext.product_name
    assert ext.hwid == simulated.hwid
    assert ext.hwid is not None and real_ext.hwid is not None and len(ext.hwid) == len(real_ext.hwid)
    parts = simulated.reported_tcb.decode(simulated.product)
    assert ext.spls() == {**parts.as_dict(), "fmc": parts.fmc}


def test_vlek_has_csp_id_and_no_hwid(real_data: Path) -> None:
    vlek_amd = SimulatedAmd.create(Product.MILAN, signer=SigningKey.VLEK, csp_id="CN=test-csp.invalid")
    real = load_certificates((real_data / "trustee/vlek_milan.der").read_bytes())[0]
    vlek = load_certificates(vlek_amd.signer_der())[0]
    assert _names(vlek) == _names(real)
    assert vlek.issuer == real.issuer  # CN=SEV-VLEK-Milan
    assert [e.oid for e in vlek.extensions] == [e.oid for e in real.extensions]
    ext = parse_amd_extensions(vlek)
    assert ext.hwid is None and ext.csp_id == "CN=test-csp.invalid" and ext.product_name == "Milan"
    asvk, ark = load_amd_pem_certificates(vlek_amd.ask_ark_pem(), max_count=2)
    assert asvk.serial_number == 0x10101
    verify_certificate_signature(vlek, asvk)
    verify_certificate_signature(asvk, ark)


def test_hierarchy_is_cached_per_product() -> None:
    one, two = SimulatedAmd.create(Product.GENOA), SimulatedAmd.create(Product.GENOA)
    assert one.ark_certificate() is two.ark_certificate()
    assert one.chip_id != two.chip_id  # but every instance is its own chip


def test_kds_issues_vceks_for_any_tcb(simulated: SimulatedAmd) -> None:
    turin = simulated.product is Product.TURIN
    spls = {"blSPL": 7, "teeSPL": 1, "snpSPL": 200, "ucodeSPL": 250} | ({"fmcSPL": 3} if turin else {})
    der = simulated.vcek_der_for(simulated.hwid.hex(), spls)
    ext = parse_amd_extensions(load_certificates(der)[0])
    assert (ext.bootloader, ext.tee, ext.snp, ext.microcode) == (7, 1, 200, 250)
    assert ext.fmc == (3 if turin else None)
    assert simulated.vcek_der_for(simulated.hwid, spls) == der  # KDS serves the same certificate again
    # unspecified SPLs are 0, as at KDS
    ext = parse_amd_extensions(load_certificates(simulated.vcek_der_for(simulated.hwid, {}))[0])
    assert (ext.bootloader, ext.snp, ext.microcode) == (0, 0, 0)


def test_vcek_keys_depend_on_chip_and_tcb(simulated: SimulatedAmd) -> None:
    def key_of(der: bytes) -> bytes:
        return (
            load_certificates(der)[0]
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    base = key_of(simulated.signer_der())
    other_tcb = TcbVersion(simulated.reported_tcb.raw ^ (1 << 56))  # another microcode SPL
    assert key_of(simulated.vcek_der_for(simulated.hwid, other_tcb)) != base
    other_chip = SimulatedAmd.create(simulated.product)
    assert key_of(other_chip.signer_der()) != base


def test_bad_kds_requests(simulated: SimulatedAmd) -> None:
    with pytest.raises(ValueError, match="hwID is"):
        simulated.vcek_der_for(b"\x01" * 10, {})
    with pytest.raises(ValueError, match="unknown SPL"):
        simulated.vcek_der_for(simulated.hwid, {"spl4": 1})
    with pytest.raises(ValueError, match="outside 0..255"):
        simulated.vcek_der_for(simulated.hwid, {"snpSPL": 256})
    if simulated.product is not Product.TURIN:
        with pytest.raises(ValueError, match="no FMC"):
            simulated.vcek_der_for(simulated.hwid, {"fmcSPL": 1})


def test_thim_json(simulated: SimulatedAmd) -> None:
    body = simulated.thim_json()
    assert list(body) == ["vcekCert", "tcbm", "certificateChain", "cacheControl"]
    assert body["cacheControl"] == "86400"
    assert body["tcbm"] == f"{simulated.reported_tcb.raw:016X}" and len(body["tcbm"]) == 16
    vcek = load_certificates(body["vcekCert"])
    assert [c.public_bytes(serialization.Encoding.DER) for c in vcek] == [simulated.signer_der()]
    chain = load_certificates(body["certificateChain"])
    assert [c.subject for c in chain] == [simulated.ca_certificate().subject, simulated.ark_certificate().subject]


def test_default_milan_tcbm_is_the_real_one() -> None:
    assert SimulatedAmd.create(Product.MILAN).thim_json()["tcbm"] == "7308000000000003"
    assert DEFAULT_TCB[Product.MILAN].tcbm() == "7308000000000003"


def test_certificate_table(simulated: SimulatedAmd) -> None:
    table = parse_certificate_table(simulated.certificate_table())
    assert [entry.kind for entry in table.entries] == [CertKind.VCEK, CertKind.ASK, CertKind.ARK]
    assert table.get(CertKind.VCEK) == simulated.signer_der()
    vlek = SimulatedAmd.create(simulated.product, signer=SigningKey.VLEK)
    assert [entry.kind for entry in parse_certificate_table(vlek.certificate_table()).entries] == [
        CertKind.VLEK,
        CertKind.ASK,  # the ASVK travels under the ASK GUID
        CertKind.ARK,
    ]


def test_vcek_pem_chain_order(simulated: SimulatedAmd) -> None:
    chain = load_certificates(simulated.vcek_pem_chain())
    assert [c.subject.rfc4514_string().split(",")[0] for c in chain] == [
        "CN=SEV-VCEK",
        f"CN=SEV-{simulated.product.value}",
        f"CN=ARK-{simulated.product.value}",
    ]


def test_crl_is_signed_by_the_ark(simulated: SimulatedAmd) -> None:
    crl = x509.load_der_x509_crl(simulated.crl_der(revoked_serials=[0x10001, 5]))
    ark = simulated.ark_certificate()
    assert crl.issuer == ark.subject
    ark_key = ark.public_key()
    assert isinstance(ark_key, rsa.RSAPublicKey)
    assert crl.is_signature_valid(ark_key)
    assert {revoked.serial_number for revoked in crl} == {0x10001, 5}
    ark_key.verify(crl.signature, crl.tbs_certlist_bytes, AMD_PSS_PADDING, hashes.SHA384())


@pytest.mark.parametrize("version", [2, 3, 5])
def test_reports_by_version(simulated: SimulatedAmd, version: int) -> None:
    report_data = hashlib.sha512(b"data").digest()
    raw = simulated.sign_report(
        report_data,
        version=version,
        host_data=b"\x22" * 32,
        measurement=b"\x33" * 48,
        policy=0x30000 | 1 << 19,
        vmpl=2,
        guest_svn=9,
        family_id=b"\x44" * 16,
        image_id=b"\x55" * 16,
        mitigation_vector=0xB,
    )
    report = parse_report(raw)
    assert report.to_bytes() == raw and len(raw) == 0x4A0
    assert report.version == version
    assert (report.report_data, report.host_data, report.measurement) == (report_data, b"\x22" * 32, b"\x33" * 48)
    assert (report.vmpl, report.guest_svn, report.policy.debug) == (2, 9, True)
    assert (report.family_id, report.image_id) == (b"\x44" * 16, b"\x55" * 16)
    assert report.chip_id == simulated.chip_id
    assert report.reported_tcb == simulated.reported_tcb
    assert report.signing_key is SigningKey.VCEK and report.signature_algo == 1
    if version >= 3:
        assert report.product_from_cpuid() is simulated.product
    else:
        assert (report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step) == (0, 0, 0)
    expected_mit = 0xB if version >= 5 else 0
    assert report.launch_mit_vector == report.current_mit_vector == expected_mit
    assert any(report.signature_r) and any(report.signature_s)
    assert not any(report.signature_r[48:]) and not any(report.signature_s[48:])


def test_turin_chip_id_shape() -> None:
    turin = SimulatedAmd.create(Product.TURIN)
    assert len(turin.hwid) == 8 and turin.chip_id[8:] == bytes(56)
    with pytest.raises(ValueError, match="Turin CHIP_ID"):
        SimulatedAmd.create(Product.TURIN, chip_id=b"\x01" * 64)


def test_vlek_reports_have_zero_chip_id() -> None:
    vlek = SimulatedAmd.create(Product.GENOA, signer=SigningKey.VLEK)
    report = parse_report(vlek.sign_report(bytes(64)))
    assert report.signing_key is SigningKey.VLEK and report.chip_id == bytes(64)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        SimulatedAmd.create(Product.MILAN).sign_report(bytes(32))
    with pytest.raises(ValueError, match="VCEK or the VLEK"):
        SimulatedAmd.create(Product.MILAN, signer=SigningKey.NONE)
    with pytest.raises(ValueError, match="64 bytes"):
        SimulatedAmd.create(Product.MILAN, chip_id=bytes(8))


def test_simulated_output_says_so() -> None:
    simulated = SimulatedAmd.create(Product.MILAN)
    assert SIMULATED_BANNER in repr(simulated)
    assert SIMULATED_BANNER in simulated.trusted_roots().name


def test_simulated_roots_are_not_amds() -> None:
    amd = TrustedRoots.amd()
    roots = simulated_trusted_roots()
    assert set(roots.products()) == set(Product)
    for product in Product:
        ours, theirs = roots.for_product(product), amd.for_product(product)
        assert ours.ark.subject == theirs.ark.subject  # same names ...
        assert ours.ark != theirs.ark  # ... different keys
        with pytest.raises(VerificationError, match="does not verify"):
            verify_certificate_signature(ours.ask, theirs.ark)
