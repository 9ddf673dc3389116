"""SevGuestDevice: the compiled binding through the real ioctl syscall against the emulated
/dev/sev-guest (seccomp user notification), plus its pure helpers.
"""

from __future__ import annotations

import errno
import hashlib
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skr.errors import (
    BadRequestError,
    ConfigError,
    DeviceBusyError,
    DeviceError,
    FirmwareError,
    PlatformUnavailableError,
)
from skr.primitives.sensitive import Sensitive
from skr.snp._native import CallStatus, Stage
from skr.snp.certtable import CertKind, build_certificate_table, parse_certificate_table
from skr.snp.device import (
    GuestField,
    RootKey,
    SevGuestDevice,
    describe_firmware_status,
    error_for_status,
    parse_key_response,
    parse_report_response,
    trim_certificate_table,
)
from skr.snp.report import parse_report
from skr.snp.verify import verify_attestation
from skr_dev.simulated.amd import SimulatedAmd
from tests.snp.conftest import FirmwareResponder, simulated_derived_key
from tests.snp.sevguest_emulator import (
    Command,
    DerivedKeyRequest,
    Reply,
    ReportRequest,
    report_response,
    run_in_child,
)

REPORT_DATA = hashlib.sha256(b"runtime data").digest() + bytes(32)
BUSY = Reply(errno=errno.EIO, vmm_error=2)
NOW = datetime.now(UTC)

needs_seccomp = pytest.mark.usefixtures("seccomp_supported")


def step(device_path: Path, op: str = "report", **fields: Any) -> dict[str, Any]:
    return {"op": op, "path": str(device_path), "report_data": REPORT_DATA.hex(), **fields}


# --- through the emulated device ------------------------------------------------------------------


@needs_seccomp
def test_signed_report_carries_the_requested_report_data(
    device_path: Path, firmware: FirmwareResponder, amd: SimulatedAmd
) -> None:
    run = run_in_child(firmware, [step(device_path)], device_path=device_path)
    (result,) = run.results
    assert result["ok"], result
    report, certificates = bytes.fromhex(result["report"]), bytes.fromhex(result["certificates"])

    assert result["provider"] == "sev-guest"
    assert parse_report(report).report_data == REPORT_DATA
    assert certificates == amd.certificate_table()
    verified = verify_attestation(report, certificates, trusted=amd.trusted_roots(), now=NOW)
    assert verified.report.report_data == REPORT_DATA

    ((command, request),) = run.log.calls
    assert command is Command.EXT_REPORT
    assert isinstance(request, ReportRequest)
    assert (request.msg_version, request.user_data, request.vmpl) == (1, REPORT_DATA, 0)
    assert request.reserved == bytes(28)
    assert request.certs_len == 16 * 1024


@needs_seccomp
def test_plain_report_uses_snp_get_report_and_passes_the_vmpl(device_path: Path, firmware: FirmwareResponder) -> None:
    run = run_in_child(firmware, [step(device_path, vmpl=2, with_certificates=False)], device_path=device_path)
    (result,) = run.results
    assert result["ok"], result
    assert result["certificates"] == ""
    assert parse_report(bytes.fromhex(result["report"])).vmpl == 2
    ((command, request),) = run.log.calls
    assert command is Command.REPORT
    assert isinstance(request, ReportRequest)
    assert request.vmpl == 2


@needs_seccomp
def test_enotty_maps_to_firmware_error(device_path: Path, firmware: FirmwareResponder) -> None:
    # passthrough: the real kernel runs the ioctl on the ordinary file and answers ENOTTY itself
    firmware.script = [Reply(passthrough=True)]
    (result,) = run_in_child(firmware, [step(device_path)], device_path=device_path).results
    assert result["error"] == "FirmwareError"
    assert result["errno"] == errno.ENOTTY
    assert "does not support SNP_GET_EXT_REPORT" in result["message"]
    assert "not an SEV-SNP guest" in result["message"]


@needs_seccomp
def test_eio_with_a_firmware_error_names_the_status(device_path: Path, firmware: FirmwareResponder) -> None:
    firmware.script = [Reply(errno=errno.EIO, fw_error=0x16)]
    (result,) = run_in_child(firmware, [step(device_path)], device_path=device_path).results
    assert result["error"] == "FirmwareError"
    assert (result["errno"], result["fw_error"], result["vmm_error"]) == (errno.EIO, 0x16, 0)
    assert "firmware status 0x16 (INVALID_PARAM" in result["message"]
    assert REPORT_DATA.hex() not in result["message"]


@needs_seccomp
def test_status_inside_msg_report_rsp_is_a_firmware_error(device_path: Path, firmware: FirmwareResponder) -> None:
    firmware.script = [Reply(message=report_response(bytes(1184), status=0x16))]
    (result,) = run_in_child(firmware, [step(device_path)], device_path=device_path).results
    assert result["error"] == "FirmwareError"
    assert result["fw_error"] == 0x16
    assert "refused the report request" in result["message"]


@needs_seccomp
def test_busy_is_retried_with_backoff_then_succeeds(device_path: Path, firmware: FirmwareResponder) -> None:
    firmware.script = [BUSY, Reply(errno=errno.EAGAIN)]
    run = run_in_child(firmware, [step(device_path)], device_path=device_path)
    (result,) = run.results
    assert result["ok"], result
    assert parse_report(bytes.fromhex(result["report"])).report_data == REPORT_DATA
    assert result["sleeps"] == [0.05, 0.1]
    assert len(run.log.calls) == 3


@needs_seccomp
def test_busy_exhausted_is_device_busy_error(device_path: Path, firmware: FirmwareResponder) -> None:
    firmware.script = [BUSY] * 10
    steps = [step(device_path), step(device_path, device={"busy_retries": 1, "backoff": 0.5})]
    run = run_in_child(firmware, steps, device_path=device_path)
    default, short = run.results
    assert default["error"] == short["error"] == "DeviceBusyError"
    assert default["code"] == "platform_busy"
    assert default["vmm_error"] == 2
    assert default["sleeps"] == [0.05, 0.1, 0.2, 0.4]  # 5 attempts, 0.75 s of backoff at most
    assert short["sleeps"] == [0.5]
    assert len(run.log.calls) == 5 + 2


@needs_seccomp
def test_kernel_timeout_after_its_own_busy_retries_is_not_retried_again(
    device_path: Path, firmware: FirmwareResponder
) -> None:
    firmware.script = [Reply(errno=errno.ETIMEDOUT, fw_error=0xFF)]
    run = run_in_child(firmware, [step(device_path)], device_path=device_path)
    (result,) = run.results
    assert result["error"] == "DeviceBusyError"
    assert result["sleeps"] == []
    assert len(run.log.calls) == 1


@needs_seccomp
def test_invalid_len_retries_once_with_the_size_the_kernel_reports(
    device_path: Path, firmware: FirmwareResponder, amd: SimulatedAmd
) -> None:
    table = amd.certificate_table()
    assert 4096 < len(table) <= 8192
    run = run_in_child(firmware, [step(device_path, device={"certs_buffer": 4096})], device_path=device_path)
    (result,) = run.results
    assert result["ok"], result
    assert bytes.fromhex(result["certificates"]) == table
    lengths = [request.certs_len for _, request in run.log.calls if isinstance(request, ReportRequest)]
    assert lengths == [4096, 8192]


@needs_seccomp
def test_invalid_len_beyond_the_kernel_limit_fails_after_one_retry(device_path: Path, amd: SimulatedAmd) -> None:
    # 20 KiB of certificates: the host asks for 5 pages, which Linux refuses (EINVAL, > 16 KiB).
    big = build_certificate_table([(CertKind.VCEK, b"v" * 20_000)])
    firmware = FirmwareResponder(amd, certificates=big)
    run = run_in_child(firmware, [step(device_path)], device_path=device_path)
    (result,) = run.results
    assert result["error"] == "FirmwareError"
    assert result["errno"] == errno.EINVAL
    assert len(run.log.calls) == 1  # the second request died in the kernel, before the firmware


@needs_seccomp
def test_absurd_certificate_length_is_refused_without_a_second_request(device_path: Path, amd: SimulatedAmd) -> None:
    huge = build_certificate_table([(CertKind.VCEK, bytes(1 << 20))])  # asks for > 1 MiB
    firmware = FirmwareResponder(amd, certificates=huge)
    run = run_in_child(firmware, [step(device_path)], device_path=device_path)
    (result,) = run.results
    assert result["error"] == "FirmwareError"
    assert result["vmm_error"] == 1
    assert "refusing" in result["message"]
    assert len(run.log.calls) == 1


@needs_seccomp
def test_report_for_other_report_data_is_refused(device_path: Path, firmware: FirmwareResponder) -> None:
    firmware.script = [Reply(message=report_response(firmware.signed_report(bytes(64), 0)))]
    (result,) = run_in_child(firmware, [step(device_path)], device_path=device_path).results
    assert result["error"] == "FirmwareError"
    assert "does not carry the requested REPORT_DATA" in result["message"]


@needs_seccomp
def test_derived_key_passes_every_field_and_stays_redacted(device_path: Path, firmware: FirmwareResponder) -> None:
    fields = GuestField.MEASUREMENT | GuestField.POLICY
    kwargs = {
        "root_key_select": int(RootKey.VMRK),
        "guest_field_select": int(fields),
        "vmpl": 1,
        "guest_svn": 7,
        "tcb_version": 0x1122334455667788,
    }
    run = run_in_child(firmware, [step(device_path, op="derived_key", kwargs=kwargs)], device_path=device_path)
    (result,) = run.results
    assert result["ok"], result
    ((command, request),) = run.log.calls
    assert command is Command.DERIVED_KEY
    assert request == DerivedKeyRequest(1, 1, 0, int(fields), 1, 7, 0x1122334455667788)
    assert bytes.fromhex(result["key"]) == simulated_derived_key(request)
    assert result["key"] not in result["repr"]
    assert "redacted" in result["repr"]


@needs_seccomp
def test_no_descriptor_leaks_over_a_thousand_calls(
    tmp_path: Path, device_path: Path, firmware: FirmwareResponder
) -> None:
    failures = {"eio": Reply(errno=errno.EIO, fw_error=0x16), "enotty": Reply(passthrough=True)}

    def responder(command: Command, request: Any) -> Reply:
        if isinstance(request, ReportRequest) and request.user_data[:3] in (b"eio", b"ent"):
            return failures["eio" if request.user_data[:3] == b"eio" else "enotty"]
        return firmware(command, request)

    eio, enotty = (b"eio".ljust(64, b"\0")).hex(), (b"ent".ljust(64, b"\0")).hex()
    mix = [
        step(device_path),  # extended report, success
        step(device_path, with_certificates=False),  # plain report, success
        step(device_path, op="derived_key"),  # derived key, success
        {**step(device_path), "report_data": eio},  # EIO + firmware error
        {**step(device_path), "report_data": enotty},  # real ENOTTY
        step(tmp_path / "missing"),  # open fails
    ]
    steps: list[dict[str, Any]] = [
        {"op": "fd_count"},
        {"op": "repeat", "count": 1000, "steps": mix},
        {"op": "fd_count"},
    ]
    run = run_in_child(responder, steps, device_path=device_path)
    before, repeated, after = run.results
    assert repeated["outcomes"] == {
        "ok": 3000,
        "FirmwareError": 2000,
        "PlatformUnavailableError": 1000,
    }
    assert after["fds"] == before["fds"]


# --- without the emulator -------------------------------------------------------------------------


def test_missing_device_is_platform_unavailable_naming_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / "no-sev-guest")
    with pytest.raises(PlatformUnavailableError) as caught:
        SevGuestDevice(path).get_report(REPORT_DATA)
    assert path in caught.value.message
    assert caught.value.tried == (path,)
    assert caught.value.code == "platform_unavailable"


@pytest.mark.parametrize(
    ("report_data", "vmpl"),
    [(REPORT_DATA[:63], 0), (REPORT_DATA, 4), (REPORT_DATA, -1), (REPORT_DATA, True), ("text", 0)],
)
def test_wrong_lengths_are_rejected_before_any_c_call(report_data: Any, vmpl: Any) -> None:
    # /dev/null would answer ENOTTY (FirmwareError) had the request reached the kernel.
    device = SevGuestDevice("/dev/null")
    for with_certificates in (True, False):
        with pytest.raises(BadRequestError):
            device.get_report(report_data, vmpl=vmpl, with_certificates=with_certificates)


def test_real_enotty_without_emulation() -> None:
    with pytest.raises(FirmwareError) as caught:
        SevGuestDevice("/dev/null").get_report(REPORT_DATA)
    assert caught.value.errno == errno.ENOTTY
    assert not isinstance(caught.value, DeviceBusyError)


@pytest.mark.parametrize(
    "options",
    [
        {"busy_retries": 11},
        {"busy_retries": -1},
        {"busy_retries": True},
        {"backoff": 1.5},
        {"backoff": -0.1},
        {"certs_buffer": 1000},
        {"certs_buffer": 0},
        {"certs_buffer": 2 << 20},
    ],
)
def test_bad_device_options_are_config_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SevGuestDevice("/dev/sev-guest", **options)


# --- pure helpers ---------------------------------------------------------------------------------


def status(stage: Stage, code: int, fw: int = 0, vmm: int = 0) -> CallStatus:
    return CallStatus(stage=stage, errno=code, fw_error=fw, vmm_error=vmm)


@pytest.mark.parametrize(
    ("call_status", "expected", "needle"),
    [
        (status(Stage.OPEN, errno.ENOENT), PlatformUnavailableError, "no SEV-SNP guest device"),
        (status(Stage.OPEN, errno.ENXIO), PlatformUnavailableError, "no SEV-SNP guest device"),
        (status(Stage.OPEN, errno.ENODEV), PlatformUnavailableError, "no SEV-SNP guest device"),
        (status(Stage.OPEN, errno.EACCES), DeviceError, "read-write access"),
        (status(Stage.IOCTL, errno.ENOTTY, 0xFF), FirmwareError, "does not support"),
        (status(Stage.IOCTL, errno.EIO, 0x27), FirmwareError, "INVALID_KEY"),
        (status(Stage.IOCTL, errno.EIO, 0, 7), FirmwareError, "hypervisor error 0x7"),
        (status(Stage.IOCTL, errno.EIO, 0xFF), FirmwareError, "without a firmware status"),
        (status(Stage.IOCTL, errno.EIO, 0xFFFFFFFF, 0xFFFFFFFF), FirmwareError, "without a firmware status"),
        (status(Stage.IOCTL, errno.EINVAL, 0xFF), FirmwareError, "rejected the request"),
        (status(Stage.IOCTL, errno.ETIMEDOUT, 0xFF), DeviceBusyError, "busy"),
        (status(Stage.IOCTL, errno.EIO, 0, 2), DeviceBusyError, "BUSY"),
        (status(Stage.IOCTL, errno.EFAULT), FirmwareError, "errno 14"),
        (status(Stage.ARGUMENT, errno.EINVAL), DeviceError, "a bug in skr"),
    ],
)
def test_error_mapping(call_status: CallStatus, expected: type[DeviceError], needle: str) -> None:
    error = error_for_status(call_status, operation="SNP_GET_REPORT", path="/dev/sev-guest")
    assert type(error) is expected
    assert needle in error.message
    if isinstance(error, FirmwareError):
        assert (error.errno, error.fw_error, error.vmm_error) == (
            call_status.errno,
            call_status.fw_error,
            call_status.vmm_error,
        )


def test_firmware_status_names() -> None:
    assert describe_firmware_status(0x16).startswith("0x16 (INVALID_PARAM: ")
    assert describe_firmware_status(0x07) == "0x7 (POLICY_FAILURE)"
    assert describe_firmware_status(0x99) == "0x99 (unknown status)"


def test_report_response_parsing() -> None:
    report = bytes(range(256)) * 4 + bytes(160)
    assert parse_report_response(report_response(report).ljust(4000, b"\0")) == report
    with pytest.raises(FirmwareError, match="1000 bytes"):
        parse_report_response(struct.pack("<II", 0, 1000) + bytes(24 + 1184))
    with pytest.raises(FirmwareError, match="too short"):
        parse_report_response(bytes(100))


def test_key_response_parsing_keeps_the_key_wrapped() -> None:
    key = bytes(range(32))
    message = struct.pack("<I", 0) + bytes(28) + key
    parsed = parse_key_response(Sensitive(message))
    assert parsed.reveal() == key
    assert key.hex() not in repr(parsed)
    with pytest.raises(FirmwareError, match="0x27"):
        parse_key_response(Sensitive(struct.pack("<I", 0x27) + bytes(60)))


@given(
    blobs=st.lists(st.binary(min_size=1, max_size=300), max_size=4),
    padding=st.integers(min_value=0, max_value=2000),
)
def test_trimming_a_padded_certificate_buffer_gives_back_the_table(blobs: list[bytes], padding: int) -> None:
    kinds = [CertKind.VCEK, CertKind.ASK, CertKind.ARK, CertKind.CRL]
    table = build_certificate_table(list(zip(kinds, blobs, strict=False)))
    trimmed = trim_certificate_table(table + bytes(padding))
    if blobs:
        assert trimmed == table
        assert [entry.data for entry in parse_certificate_table(trimmed).entries] == blobs
    else:
        assert trimmed == b""


@given(st.binary(max_size=4096))
def test_trimming_arbitrary_bytes_never_grows_or_crashes(buffer: bytes) -> None:
    trimmed = trim_certificate_table(buffer)
    assert buffer.startswith(trimmed)


@given(st.binary(max_size=1400))
def test_report_response_parser_only_raises_firmware_errors(message: bytes) -> None:
    try:
        report = parse_report_response(message)
    except FirmwareError:
        return
    assert len(report) == 1184
