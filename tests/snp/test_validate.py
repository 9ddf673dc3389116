"""Validation options: each field's accept and reject case, the combined failure list, policies."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skr.errors import ConfigError, ValidationFailedError
from skr.snp.report import AttestationReport, GuestPolicy, Product, parse_report
from skr.snp.validate import (
    MAX_POLICY_SIZE,
    MinimumTcb,
    ValidationOptions,
    host_data_for_policy,
    validate_report,
)

ACI_HOST_DATA = bytes.fromhex("cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c")


@pytest.fixture(scope="module")
def aci(real_data: Path) -> AttestationReport:
    """csc/milan_v2_aci_report.bin: Milan v2, guest_svn 2, TCB bl=3 tee=0 snp=8 ucode=115, fw 1.52.4."""
    return parse_report((real_data / "csc/milan_v2_aci_report.bin").read_bytes())


@pytest.fixture(scope="module")
def turin(real_data: Path) -> AttestationReport:
    """oak/turin_v5_report.bin: TCB fmc=0 bl=1 tee=0 snp=2 ucode=71, chip id 8 bytes + zeros."""
    return parse_report((real_data / "oak/turin_v5_report.bin").read_bytes())


def _failures(report: AttestationReport, options: ValidationOptions, product: Product) -> tuple[str, ...]:
    try:
        validate_report(report, options, product)
    except ValidationFailedError as exc:
        return exc.failures
    return ()


def _flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


def test_nothing_checked_passes(aci: AttestationReport) -> None:
    options = ValidationOptions()
    assert not options.checks_anything()
    validate_report(aci, options, Product.MILAN)


# (field, accepted value (from the report), rejected value, the field name the failure must name)
CASES: list[tuple[str, Any, Any, str]] = [
    ("host_data", "host_data", "flip", "host_data"),
    ("measurement", "measurement", "flip", "measurement"),
    ("family_id", "family_id", "flip", "family_id"),
    ("image_id", "image_id", "flip", "image_id"),
    ("report_data", "report_data", "flip", "report_data"),
    ("vmpl", 0, 1, "vmpl"),
    ("minimum_guest_svn", 2, 3, "guest_svn"),
    ("minimum_build", 4, 5, "current_build"),
    ("minimum_version", (1, 52), (1, 53), "current_version"),
    ("minimum_tcb", MinimumTcb(bootloader=3, tee=0, snp=8, microcode=115), MinimumTcb(snp=9), "reported_tcb.snp"),
    ("minimum_tcb", MinimumTcb(microcode=100), MinimumTcb(microcode=116), "reported_tcb.microcode"),
    ("minimum_tcb", MinimumTcb(bootloader=2), MinimumTcb(bootloader=4), "reported_tcb.bootloader"),
    ("minimum_tcb", MinimumTcb(tee=0), MinimumTcb(tee=1), "reported_tcb.tee"),
    ("allowed_chip_ids", "chip_ids", frozenset({bytes(64)}), "chip_id"),
]


@pytest.mark.parametrize(("field", "accepted", "rejected", "named"), CASES)
def test_each_field_accepts_and_rejects(
    aci: AttestationReport, field: str, accepted: Any, rejected: Any, named: str
) -> None:
    if accepted == "chip_ids":
        accepted = frozenset({aci.chip_id, bytes(64)})
    elif isinstance(accepted, str):
        accepted = getattr(aci, accepted)
    if rejected == "flip":
        rejected = _flip(accepted)
    assert _failures(aci, ValidationOptions(**{field: accepted}), Product.MILAN) == ()
    failures = _failures(aci, ValidationOptions(**{field: rejected}), Product.MILAN)
    assert len(failures) == 1
    assert failures[0].startswith(named + ":")


def test_report_data_prefix_form(aci: AttestationReport) -> None:
    prefix = aci.report_data[:32]
    assert aci.report_data[32:] == bytes(32)
    assert _failures(aci, ValidationOptions(report_data=prefix), Product.MILAN) == ()
    assert _failures(aci, ValidationOptions(report_data=_flip(prefix)), Product.MILAN)[0].startswith("report_data:")


def test_report_data_prefix_requires_zero_tail(real_data: Path) -> None:
    report = parse_report((real_data / "teekit/gcp_milan_v5_vmpl1_x25519_report.bin").read_bytes())
    assert any(report.report_data[32:])  # sha512 binding fills all 64 bytes
    assert _failures(report, ValidationOptions(report_data=report.report_data[:32]), Product.MILAN)
    assert _failures(report, ValidationOptions(report_data=report.report_data), Product.MILAN) == ()


def test_debug_and_migration_policy(real_data: Path, aci: AttestationReport) -> None:
    debug = parse_report((real_data / "go-sev-guest/milan_v2_debug_report.bin").read_bytes())
    assert debug.policy.debug
    strict = ValidationOptions(require_no_debug=True, require_no_migration_agent=True)
    assert _failures(aci, strict, Product.MILAN) == ()
    assert _failures(debug, strict, Product.MILAN) == (
        "policy.debug: the guest policy allows debugging (the host can read guest memory)",
    )
    migratable = dataclasses.replace(aci, policy=GuestPolicy(aci.policy.raw | 1 << 18))
    assert _failures(migratable, strict, Product.MILAN)[0].startswith("policy.migrate_ma:")
    assert _failures(migratable, ValidationOptions(), Product.MILAN) == ()


def test_turin_fmc_and_eight_byte_chip_id(turin: AttestationReport, aci: AttestationReport) -> None:
    hwid = bytes.fromhex("3b42092f69c656d3")
    assert _failures(turin, ValidationOptions(allowed_chip_ids=frozenset({hwid})), Product.TURIN) == ()
    assert _failures(turin, ValidationOptions(allowed_chip_ids=frozenset({_flip(hwid)})), Product.TURIN)
    assert _failures(turin, ValidationOptions(minimum_tcb=MinimumTcb(fmc=0, snp=2)), Product.TURIN) == ()
    failures = _failures(turin, ValidationOptions(minimum_tcb=MinimumTcb(fmc=1, snp=3)), Product.TURIN)
    assert failures == (
        "reported_tcb.snp: 2 is below the minimum 3",
        "reported_tcb.fmc: 0 is below the minimum 1",
    )
    # Milan has no FMC: an FMC floor is ignored there, not failed
    assert _failures(aci, ValidationOptions(minimum_tcb=MinimumTcb(fmc=5)), Product.MILAN) == ()


def test_every_failure_is_listed(aci: AttestationReport) -> None:
    options = ValidationOptions(
        report_data=bytes(64),
        host_data=bytes(32),
        measurement=bytes(48),
        family_id=bytes(16),
        image_id=bytes(16),
        minimum_tcb=MinimumTcb(bootloader=9, tee=9, snp=9, microcode=200),
        vmpl=3,
        minimum_guest_svn=10,
        allowed_chip_ids=frozenset({bytes(64)}),
        minimum_build=200,
        minimum_version=(2, 0),
    )
    assert options.checks_anything()
    with pytest.raises(ValidationFailedError) as caught:
        validate_report(aci, options, Product.MILAN)
    names = [failure.split(":", 1)[0] for failure in caught.value.failures]
    assert names == [
        "report_data",
        "host_data",
        "measurement",
        "family_id",
        "image_id",
        "reported_tcb.bootloader",
        "reported_tcb.tee",
        "reported_tcb.snp",
        "reported_tcb.microcode",
        "vmpl",
        "guest_svn",
        "chip_id",
        "current_build",
        "current_version",
    ]
    assert caught.value.code == "validation_failed"
    assert "host_data: expected 0000" in caught.value.message


@pytest.mark.parametrize(
    "bad",
    [
        {"report_data": bytes(63)},
        {"host_data": bytes(31)},
        {"measurement": bytes(32)},
        {"family_id": bytes(15)},
        {"image_id": bytes(17)},
        {"vmpl": 4},
        {"minimum_guest_svn": -1},
        {"allowed_chip_ids": frozenset({bytes(10)})},
        {"allowed_chip_ids": {bytes(64)}},
        {"minimum_build": 256},
        {"minimum_version": (1, 256)},
    ],
)
def test_options_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ValidationOptions(**bad)


def test_minimum_tcb_is_validated() -> None:
    with pytest.raises(ConfigError, match="snp"):
        MinimumTcb(snp=256)


def test_options_are_frozen() -> None:
    options = ValidationOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.vmpl = 1  # type: ignore[misc]


# --- policies and host data -----------------------------------------------------------------------


def test_aci_policy_base64_and_decoded_give_the_reports_host_data(real_data: Path, aci: AttestationReport) -> None:
    encoded = (real_data / "csc/aci_security_policy.base64").read_bytes()
    decoded = base64.b64decode(encoded)
    assert host_data_for_policy(encoded) == ACI_HOST_DATA == aci.host_data
    assert host_data_for_policy(decoded) == ACI_HOST_DATA
    assert host_data_for_policy(encoded, "base64") == ACI_HOST_DATA
    assert host_data_for_policy(decoded, "raw") == ACI_HOST_DATA
    # the common mistake: hashing the base64 text itself
    assert host_data_for_policy(encoded, "raw") == hashlib.sha256(encoded).digest() != ACI_HOST_DATA


def test_base64_with_line_breaks_and_trailing_newline(real_data: Path) -> None:
    encoded = (real_data / "csc/aci_security_policy.base64").read_bytes()
    wrapped = b"\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + b"\r\n"
    assert host_data_for_policy(wrapped) == ACI_HOST_DATA


def test_security_context_policy(real_data: Path) -> None:
    policy = (real_data / "csc/security-context/security-policy-base64").read_bytes()
    assert host_data_for_policy(policy).hex() == "4f4448c67f3c8dfc8de8a5e37125d807dadcc41f06cf23f615dbd52eec777d10"


def test_raw_rego_is_hashed_as_is() -> None:
    rego = b'package policy\n\napi_svn := "0.10.0"\n'
    assert host_data_for_policy(rego) == hashlib.sha256(rego).digest()
    with pytest.raises(ConfigError, match="not valid base64"):
        host_data_for_policy(rego, "base64")


@pytest.mark.parametrize("policy", [b"", b"x" * (MAX_POLICY_SIZE + 1)])
def test_policy_bounds(policy: bytes) -> None:
    with pytest.raises(ConfigError):
        host_data_for_policy(policy)


def test_with_policy_file(tmp_path: Path, real_data: Path, aci: AttestationReport) -> None:
    encoded_file = real_data / "csc/aci_security_policy.base64"
    decoded_file = tmp_path / "policy.rego"
    decoded_file.write_bytes(base64.b64decode(encoded_file.read_bytes()))
    for path in (encoded_file, decoded_file):
        options = ValidationOptions.with_policy_file(path, vmpl=0)
        assert options.host_data == ACI_HOST_DATA
        assert options.vmpl == 0
        validate_report(aci, options, Product.MILAN)
    other = tmp_path / "other.rego"
    other.write_bytes(b"package other\n")
    with pytest.raises(ValidationFailedError, match="host_data"):
        validate_report(aci, ValidationOptions.with_policy_file(other), Product.MILAN)
    with pytest.raises(ConfigError, match="cannot read policy file"):
        ValidationOptions.with_policy_file(tmp_path / "missing")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=2000))
def test_base64_round_trip_matches_raw(document: bytes) -> None:
    encoded = base64.b64encode(document)
    assert host_data_for_policy(encoded) == hashlib.sha256(document).digest()
    assert host_data_for_policy(document, "raw") == hashlib.sha256(document).digest()
