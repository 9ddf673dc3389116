"""Report ABI: the real vectors parse to their expected values; reserved bytes are enforced."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skr.errors import ReportFormatError
from skr.snp.report import (
    REPORT_SIZE,
    AttestationReport,
    GuestPolicy,
    PlatformInfo,
    Product,
    SigningKey,
    TcbVersion,
    parse_report,
    product_from_cpuid,
)
from tests.conftest import real_data_dir

EXPECTED: dict[str, Any] = json.loads((real_data_dir() / "expected.json").read_text())["reports"]
LAYOUT_PRODUCT = {"milan_genoa": Product.MILAN, "turin": Product.TURIN}


def _load(name: str) -> bytes:
    return (real_data_dir() / EXPECTED[name]["file"]).read_bytes()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_report_parses_to_expected_values(name: str) -> None:
    expected = EXPECTED[name]
    data = _load(name)
    report = parse_report(data)
    product = LAYOUT_PRODUCT[expected["tcb_layout"]]
    fields = report.as_dict(product)
    for key in (
        "version", "guest_svn", "family_id", "image_id", "vmpl", "signature_algo", "report_data",
        "measurement", "host_data", "id_key_digest", "author_key_digest", "report_id", "report_id_ma",
        "cpuid_fam_id", "cpuid_mod_id", "cpuid_step", "chip_id", "current_version", "committed_version",
    ):  # fmt: skip
        assert fields[key] == expected[key], key
    assert f"0x{report.policy.raw:x}" == expected["policy"]
    assert report.policy.flags() == expected["policy_decoded"]["flags"]
    assert report.policy.abi_minor == expected["policy_decoded"]["abi_minor"]
    assert f"0x{report.platform_info.raw:x}" == expected["platform_info"]
    assert f"0x{report.flags:x}" == expected["flags"]
    assert report.author_key_en == bool(expected["author_key_en"])
    assert report.mask_chip_key == bool(expected["mask_chip_key"])
    assert int(report.signing_key) == expected["signing_key"]
    assert f"0x{report.launch_mit_vector:x}" == expected["launch_mit_vector"]
    assert f"0x{report.current_mit_vector:x}" == expected["current_mit_vector"]
    for tcb in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        value: TcbVersion = getattr(report, tcb)
        assert f"0x{value.raw:016x}" == expected[f"{tcb}_raw"]
        parts = value.decode(product)
        assert {**parts.as_dict(), "reserved": parts.reserved.hex()} == expected[tcb]
    assert report.signature_r[:48].hex() == expected["signature_r_le"]
    assert report.signature_s[:48].hex() == expected["signature_s_le"]
    assert report.to_bytes() == data


def test_cpuid_product_detection_matches_the_vcek_product() -> None:
    for name, expected in EXPECTED.items():
        report = parse_report(_load(name))
        detected = report.product_from_cpuid()
        if expected["version"] < 3:
            assert detected is None, name
        else:
            assert detected is not None
            assert expected["vcek_product_name"].startswith(detected.value), name


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [(0x19, 0x01, Product.MILAN), (0x19, 0x11, Product.GENOA), (0x19, 0xA0, Product.GENOA),
     (0x1A, 0x02, Product.TURIN), (0x19, 0x50, None), (0x17, 0x31, None), (0, 0, None)],
)  # fmt: skip
def test_product_from_cpuid_table(family: int, model: int, product: Product | None) -> None:
    assert product_from_cpuid(family, model) is product


# Every reserved range of every supported version, as (version, first, last) inclusive.
RESERVED_BYTES = [
    (v, start, end)
    for v, ranges in {
        2: [(0x04C, 0x04F), (0x188, 0x19F), (0x1EB, 0x1EB), (0x1EF, 0x1EF), (0x1F8, 0x29F), (0x330, 0x49F)],
        3: [(0x04C, 0x04F), (0x18B, 0x19F), (0x1EB, 0x1EB), (0x1EF, 0x1EF), (0x1F8, 0x29F), (0x330, 0x49F)],
        5: [(0x04C, 0x04F), (0x18B, 0x19F), (0x1EB, 0x1EB), (0x1EF, 0x1EF), (0x208, 0x29F), (0x330, 0x49F)],
    }.items()
    for start, end in ranges
]
BY_VERSION = {2: "csc_milan_v2_aci", 3: "trustee_genoa_siena_v3", 5: "oak_turin_v5"}


@pytest.mark.parametrize(("version", "start", "end"), RESERVED_BYTES)
def test_every_reserved_byte_is_enforced_with_its_offset(version: int, start: int, end: int) -> None:
    base = _load(BY_VERSION[version])
    for offset in range(start, end + 1):
        mutated = bytearray(base)
        mutated[offset] ^= 0x01
        with pytest.raises(ReportFormatError, match=f"first non-zero byte at 0x{offset:03x}"):
            parse_report(bytes(mutated))


def test_wrong_size_and_unsupported_versions_are_rejected() -> None:
    data = _load("csc_milan_v2_aci")
    with pytest.raises(ReportFormatError, match="exactly 1184 bytes, got 1183"):
        parse_report(data[:-1])
    with pytest.raises(ReportFormatError, match="got 1185"):
        parse_report(data + b"\0")
    for version in (0, 1, 4, 6, 0xFFFFFFFF):
        mutated = bytearray(data)
        mutated[0:4] = version.to_bytes(4, "little")
        with pytest.raises(ReportFormatError, match=f"unsupported report version {version}"):
            parse_report(bytes(mutated))


def test_policy_reserved_bits_and_signing_key_are_checked() -> None:
    data = _load("csc_milan_v2_aci")
    no_mbo = bytearray(data)
    no_mbo[0x08:0x10] = (0x1001F).to_bytes(8, "little")
    with pytest.raises(ReportFormatError, match="bit 17"):
        parse_report(bytes(no_mbo))
    reserved = bytearray(data)
    reserved[0x08:0x10] = (0x3001F | 1 << 40).to_bytes(8, "little")
    with pytest.raises(ReportFormatError, match="reserved bits 26..63"):
        parse_report(bytes(reserved))
    for bad_flags, message in ((0x20, "reserved bits 5..31"), (2 << 2, "unknown signing key 2")):
        mutated = bytearray(data)
        mutated[0x48:0x4C] = bad_flags.to_bytes(4, "little")
        with pytest.raises(ReportFormatError, match=message):
            parse_report(bytes(mutated))


def test_vlek_report_names_its_signer() -> None:
    report = parse_report(_load("trustee_vlek_milan_v3"))
    assert report.signing_key is SigningKey.VLEK
    assert report.chip_id == bytes(64)


def test_debug_policy_decodes() -> None:
    report = parse_report(_load("gsg_milan_v2_debug"))
    assert report.policy.debug
    assert not parse_report(_load("csc_milan_v2_aci")).policy.debug


def test_constructed_reports_obey_the_same_rules() -> None:
    report = parse_report(_load("csc_milan_v2_aci"))
    with pytest.raises(ReportFormatError, match="CPUID"):
        dataclasses.replace(report, cpuid_fam_id=0x19)
    with pytest.raises(ReportFormatError, match="mitigation"):
        dataclasses.replace(report, launch_mit_vector=1)
    with pytest.raises(ReportFormatError, match="host_data must be 32 bytes"):
        dataclasses.replace(report, host_data=b"\0" * 31)
    v3 = dataclasses.replace(report, version=3, cpuid_fam_id=0x19, cpuid_mod_id=0x01, cpuid_step=1)
    assert parse_report(v3.to_bytes()) == v3


@pytest.mark.parametrize("product", list(Product))
def test_tcb_encode_decode_round_trip(product: Product) -> None:
    fmc = 5 if product is Product.TURIN else 0
    tcb = TcbVersion.encode(product, bootloader=3, tee=1, snp=22, microcode=0xDB, fmc=fmc)
    parts = tcb.decode(product)
    assert (parts.bootloader, parts.tee, parts.snp, parts.microcode) == (3, 1, 22, 0xDB)
    assert parts.fmc == (5 if product is Product.TURIN else None)


def test_tcbm_matches_thim_display() -> None:
    # csc THIM JSON says tcbm "7308000000000003" for this report's REPORTED_TCB.
    report = parse_report(_load("csc_milan_v2_aci"))
    thim = json.loads((real_data_dir() / "csc/milan_v2_aci_thim_certs.json").read_text())
    assert report.reported_tcb.tcbm() == thim["tcbm"]


# --- property tests -------------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=2 * REPORT_SIZE))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    try:
        parse_report(data)
    except ReportFormatError:
        pass


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(EXPECTED)),
    st.lists(st.tuples(st.integers(0, REPORT_SIZE - 1), st.integers(1, 255)), min_size=1, max_size=8),
)
def test_mutated_real_reports_parse_or_fail_typed_and_round_trip(name: str, flips: list[tuple[int, int]]) -> None:
    data = bytearray(_load(name))
    for offset, xor in flips:
        data[offset] ^= xor
    try:
        report = parse_report(bytes(data))
    except ReportFormatError:
        return
    assert report.to_bytes() == bytes(data)
    assert parse_report(report.to_bytes()) == report


def _reports() -> st.SearchStrategy[AttestationReport]:
    def build(version: int, ints: list[int], blobs: list[bytes], policy_bits: int) -> AttestationReport:
        v3 = version >= 3
        v5 = version >= 5
        return AttestationReport(
            version=version, guest_svn=ints[0], policy=GuestPolicy(policy_bits | 1 << 17),
            family_id=blobs[0][:16], image_id=blobs[1][:16], vmpl=ints[1] % 4, signature_algo=1,
            current_tcb=TcbVersion(ints[2]), platform_info=PlatformInfo(ints[3]),
            author_key_en=bool(ints[4] & 1), mask_chip_key=bool(ints[4] & 2), signing_key=SigningKey.VCEK,
            report_data=blobs[2][:64], measurement=blobs[3][:48], host_data=blobs[4][:32],
            id_key_digest=blobs[5][:48], author_key_digest=blobs[6][:48], report_id=blobs[7][:32],
            report_id_ma=blobs[8][:32], reported_tcb=TcbVersion(ints[5]),
            cpuid_fam_id=0x19 if v3 else 0, cpuid_mod_id=ints[6] % 256 if v3 else 0, cpuid_step=1 if v3 else 0,
            chip_id=blobs[9][:64], committed_tcb=TcbVersion(ints[7]), current_build=ints[8] % 256,
            current_minor=ints[9] % 256, current_major=1, committed_build=ints[8] % 256,
            committed_minor=ints[9] % 256, committed_major=1, launch_tcb=TcbVersion(ints[10]),
            launch_mit_vector=ints[11] if v5 else 0, current_mit_vector=ints[12] if v5 else 0,
            signature_r=blobs[10][:72], signature_s=blobs[11][:72],
        )  # fmt: skip

    return st.builds(
        build,
        st.sampled_from([2, 3, 5]),
        st.lists(st.integers(0, 2**32 - 1), min_size=13, max_size=13),
        st.lists(st.binary(min_size=72, max_size=72), min_size=12, max_size=12),
        st.integers(0, (1 << 26) - 1),
    )


@settings(max_examples=200)
@given(_reports())
def test_serialise_then_parse_is_the_identity(report: AttestationReport) -> None:
    data = report.to_bytes()
    assert len(data) == REPORT_SIZE
    assert parse_report(data) == report
    assert parse_report(data).to_bytes() == data


def test_real_data_dir_is_the_shared_directory(real_data: Path) -> None:
    assert (real_data / "PROVENANCE.md").is_file()
