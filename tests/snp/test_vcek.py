"""AMD VCEK/VLEK extension parsing and the deliberate serial-0 warning handling."""

from __future__ import annotations

import base64
import datetime
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skr.errors import VerificationError
from skr.snp.report import Product
from skr.snp.vcek import (
    OID_BL_SPL,
    OID_CSP_ID,
    OID_HWID,
    OID_PRODUCT_NAME,
    OID_UCODE_SPL,
    load_amd_der_certificate,
    load_amd_pem_certificates,
    parse_amd_extensions,
    product_from_name,
    serial_zero_warnings_suppressed,
)


def _expected(real_data: Path) -> dict[str, Any]:
    expected: dict[str, Any] = json.loads((real_data / "expected.json").read_text())
    return expected


def _signer_bytes(real_data: Path, signer: str) -> bytes:
    if signer.endswith("[vcek]"):
        evidence = json.loads((real_data / signer.removesuffix("[vcek]")).read_text())
        return base64.urlsafe_b64decode(evidence["vcek"])
    return (real_data / signer).read_bytes()


def _load_first(data: bytes) -> x509.Certificate:
    if data.lstrip().startswith(b"-----BEGIN"):
        return load_amd_pem_certificates(data, max_count=8)[0]
    return load_amd_der_certificate(data)


REPORT_NAMES = [
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


def test_report_names_cover_expected_json(real_data: Path) -> None:
    assert sorted(REPORT_NAMES) == sorted(_expected(real_data)["reports"])


@pytest.mark.parametrize("name", REPORT_NAMES)
def test_extensions_match_expected_json(real_data: Path, name: str) -> None:
    expected = _expected(real_data)["reports"][name]
    certificate = _load_first(_signer_bytes(real_data, expected["signer_cert"]))
    ext = parse_amd_extensions(certificate)
    assert ext.product_name == expected["vcek_product_name"]
    assert {k: v for k, v in ext.spls().items() if v is not None} == expected["vcek_spl"]
    assert ext.csp_id == expected["vcek_csp_id"]
    if expected["vcek_hwid"] is None:
        assert ext.hwid is None
    else:
        assert ext.hwid is not None
        assert ext.hwid.hex() == expected["vcek_hwid"]
    assert ext.struct_version == (1 if ext.product_name == "Turin" else 0)


def test_turin_vcek_without_report(real_data: Path) -> None:
    ext = parse_amd_extensions(load_amd_der_certificate((real_data / "virtee-sev/turin_vcek.der").read_bytes()))
    assert ext.product_name == "Turin"
    assert ext.product() is Product.TURIN
    assert ext.struct_version == 1
    assert ext.hwid == bytes.fromhex("1e550a8ee5cf9f4d")
    assert ext.spls() == {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 9, "fmc": 0}


def test_spl_of_128_or_more_is_read_properly(real_data: Path) -> None:
    certificate = load_amd_der_certificate((real_data / "trustee/vlek_milan.der").read_bytes())
    raw = certificate.extensions.get_extension_for_oid(OID_UCODE_SPL).value
    assert isinstance(raw, x509.UnrecognizedExtension)
    assert raw.value == bytes.fromhex("020200d9")  # DER needs a leading zero byte for 217
    assert parse_amd_extensions(certificate).microcode == 217


@pytest.mark.parametrize(
    ("filename", "raw_prefix"),
    [("negative_forged_vcek_legacy.der", b"\x00\x01"), ("negative_forged_vcek_new.der", b"\x04\x40")],
)
def test_both_hwid_encodings_parse(real_data: Path, filename: str, raw_prefix: bytes) -> None:
    certificate = load_amd_der_certificate((real_data / "trustee" / filename).read_bytes())
    raw = certificate.extensions.get_extension_for_oid(OID_HWID).value
    assert isinstance(raw, x509.UnrecognizedExtension)
    assert raw.value.startswith(raw_prefix)
    assert parse_amd_extensions(certificate).hwid == bytes(range(64))


@pytest.mark.parametrize(
    ("name", "product"),
    [
        ("Milan", Product.MILAN),
        ("Milan-B0", Product.MILAN),
        ("Genoa", Product.GENOA),
        ("Genoa-B1", Product.GENOA),
        ("Turin", Product.TURIN),
        ("Bergamo", None),
        ("", None),
        ("milan", None),
    ],
)
def test_product_from_name(name: str, product: Product | None) -> None:
    assert product_from_name(name) is product


# --- the serial-0 warning -------------------------------------------------------------------------


def test_plain_load_of_a_vcek_warns_and_the_amd_loader_does_not(real_data: Path) -> None:
    der = (real_data / "go-sev-guest/milan_v2_debug_vcek.der").read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x509.load_der_x509_certificate(der)
    assert any(issubclass(w.category, CryptographyDeprecationWarning) for w in caught)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        certificate = load_amd_der_certificate(der)
        with serial_zero_warnings_suppressed():
            assert certificate.serial_number == 0
    assert caught == []


def test_suppression_is_narrow() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with serial_zero_warnings_suppressed():
            warnings.warn("something else entirely", CryptographyDeprecationWarning, stacklevel=1)
            warnings.warn("Parsed a serial number which wasn't positive", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "something else entirely",
        "Parsed a serial number which wasn't positive",
    ]


def test_pem_loader_bounds_the_count(real_data: Path) -> None:
    pem = (real_data / "csc/milan_v2_aci_vcek_ask_ark.pem").read_bytes()
    assert len(load_amd_pem_certificates(pem, max_count=3)) == 3
    with pytest.raises(VerificationError, match="more than 2"):
        load_amd_pem_certificates(pem, max_count=2)


def test_loaders_reject_garbage() -> None:
    with pytest.raises(VerificationError, match="not valid DER"):
        load_amd_der_certificate(b"\x30\x03\x02\x01\x00")
    with pytest.raises(VerificationError, match="exceeds"):
        load_amd_der_certificate(bytes(20000))
    with pytest.raises(VerificationError):
        load_amd_pem_certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", max_count=8)


# --- malformed extension values -------------------------------------------------------------------

_KEY = ec.generate_private_key(ec.SECP384R1())
_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VCEK")])
_WHEN = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


def _certificate_with(extensions: dict[x509.ObjectIdentifier, bytes]) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_NAME)
        .issuer_name(_NAME)
        .public_key(_KEY.public_key())
        .serial_number(1)
        .not_valid_before(_WHEN)
        .not_valid_after(_WHEN + datetime.timedelta(days=1))
    )
    for oid, value in extensions.items():
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    return builder.sign(_KEY, hashes.SHA384())


def test_absent_extensions_are_none() -> None:
    ext = parse_amd_extensions(_certificate_with({}))
    assert ext.product_name is None and ext.hwid is None and ext.bootloader is None and ext.product() is None


@pytest.mark.parametrize(
    ("oid", "value", "message"),
    [
        (OID_BL_SPL, bytes.fromhex("02020005"), "not minimally encoded"),
        (OID_BL_SPL, bytes.fromhex("0201ff"), "outside 0..255"),  # -1
        (OID_BL_SPL, bytes.fromhex("02020100"), "outside 0..255"),  # 256
        (OID_BL_SPL, bytes.fromhex("020105ff"), "does not match"),  # trailing byte
        (OID_BL_SPL, bytes.fromhex("0400"), "expected a DER INTEGER"),
        (OID_BL_SPL, bytes.fromhex("0200"), "empty DER INTEGER"),
        (OID_BL_SPL, bytes.fromhex("02"), "truncated"),
        (OID_BL_SPL, bytes.fromhex("028101"), "not minimally encoded"),
        (OID_BL_SPL, bytes.fromhex("028401020304"), "unsupported DER length"),
        (OID_PRODUCT_NAME, bytes.fromhex("0202ffff"), "expected a DER string"),
        (OID_PRODUCT_NAME, b"\x16\x02\xc3\xa9", "not ASCII"),
        (OID_PRODUCT_NAME, b"\x16\x02a\n", "control characters"),
        (OID_CSP_ID, b"\x16\x05abc", "does not match"),
        (OID_HWID, bytes(63), "neither 64 or 8 raw bytes"),
        (OID_HWID, b"\x04\x3f" + bytes(63), "neither 64 or 8 raw bytes"),
        (OID_HWID, b"\x04\x40" + bytes(65), "neither 64 or 8 raw bytes"),
        (OID_HWID, b"", "neither 64 or 8 raw bytes"),
    ],
)
def test_malformed_values_are_rejected(oid: x509.ObjectIdentifier, value: bytes, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        parse_amd_extensions(_certificate_with({oid: value}))


def test_wrapped_turin_hwid_parses() -> None:
    ext = parse_amd_extensions(_certificate_with({OID_HWID: b"\x04\x08" + bytes(range(8))}))
    assert ext.hwid == bytes(range(8))


def test_long_form_length_parses() -> None:
    name = b"x" * 200
    ext = parse_amd_extensions(_certificate_with({OID_PRODUCT_NAME: b"\x16\x81\xc8" + name}))
    assert ext.product_name == name.decode()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    oid=st.sampled_from([OID_BL_SPL, OID_PRODUCT_NAME, OID_HWID, OID_CSP_ID]),
    value=st.binary(min_size=0, max_size=80),
)
def test_random_extension_values_only_raise_typed_errors(oid: x509.ObjectIdentifier, value: bytes) -> None:
    try:
        certificate = _certificate_with({oid: value})
    except ValueError:
        return  # cryptography refused to build it; nothing to parse
    try:
        parse_amd_extensions(certificate)
    except VerificationError:
        pass
