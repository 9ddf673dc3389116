"""The compiled binding (skr.snp._native over native/snp_shim.c): build stamp, ABI, argument checks,
and the raw ioctl results through the real syscall (real /dev/null, and the seccomp-emulated device).
"""

from __future__ import annotations

import errno
import runpy
import time
from pathlib import Path
from typing import Any

import pytest

import skr
from skr.errors import BadRequestError, ConfigError, DeviceError
from skr.snp import _native
from tests.conftest import REPO_ROOT
from tests.snp.conftest import FirmwareResponder
from tests.snp.sevguest_emulator import Command, Reply, Request, run_in_child

DATA = bytes(range(64))


def test_extension_is_stamped_with_the_package_version() -> None:
    assert _native.native_version() == skr.__version__


def test_version_mismatch_is_refused_with_rebuild_advice() -> None:
    _native.check_native_version("0.1.0", "0.1.0")
    with pytest.raises(DeviceError, match=r"built for skr '0\.0\.9'.*pip install \."):
        _native.check_native_version("0.0.9", "0.1.0")


def test_ioctl_numbers_match_an_independent_computation() -> None:
    # The compiler derived these from <linux/sev-guest.h>; the emulator computes _IOWR by hand.
    assert _native.ioctl_numbers() == {
        "SNP_GET_REPORT": Command.REPORT,
        "SNP_GET_DERIVED_KEY": Command.DERIVED_KEY,
        "SNP_GET_EXT_REPORT": Command.EXT_REPORT,
    }


def test_generated_wrapper_releases_the_gil_around_the_call(tmp_path: Path) -> None:
    builder = runpy.run_path(str(REPO_ROOT / "native" / "build_snp.py"))["ffibuilder"]
    source = tmp_path / "generated.c"
    builder.emit_c_code(str(source))
    text = source.read_text()
    for function in ("skr_snp_get_report", "skr_snp_get_ext_report", "skr_snp_get_derived_key"):
        call = text.index(f"{{ result = {function}(")
        assert text.rindex("Py_BEGIN_ALLOW_THREADS", 0, call) > text.rindex("PyObject *", 0, call)
        assert text.index("Py_END_ALLOW_THREADS", call) < text.index("return pyresult", call)


def test_real_kernel_enotty_from_a_device_without_the_ioctl() -> None:
    # /dev/null opens read-write but knows no SNP ioctl: a genuine ENOTTY from the real kernel.
    reply = _native.get_report("/dev/null", DATA, 0)
    assert reply.status.stage is _native.Stage.IOCTL
    assert reply.status.errno == errno.ENOTTY
    assert reply.message == b""


def test_open_failure_is_reported_as_the_open_stage(tmp_path: Path) -> None:
    reply = _native.get_ext_report(str(tmp_path / "missing"), DATA, 0, 4096)
    assert (reply.status.stage, reply.status.errno) == (_native.Stage.OPEN, errno.ENOENT)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: _native.get_report("/dev/null", DATA[:63], 0), BadRequestError),
        (lambda: _native.get_report("/dev/null", DATA + b"\0", 0), BadRequestError),
        (lambda: _native.get_report("/dev/null", DATA, 4), BadRequestError),
        (lambda: _native.get_report("/dev/null", DATA, -1), BadRequestError),
        (lambda: _native.get_report("/dev/null", DATA, True), BadRequestError),
        (lambda: _native.get_report("/dev/null", "x" * 64, 0), BadRequestError),  # type: ignore[arg-type]
        (lambda: _native.get_report("/dev/\0null", DATA, 0), ConfigError),
        (lambda: _native.get_report("", DATA, 0), ConfigError),
        (lambda: _native.get_ext_report("/dev/null", DATA, 0, 1000), BadRequestError),
        (lambda: _native.get_ext_report("/dev/null", DATA, 0, 0), BadRequestError),
        (lambda: _native.get_ext_report("/dev/null", DATA, 0, 2 << 20), BadRequestError),
        (
            lambda: _native.get_derived_key(
                "/dev/null", root_key_select=6, guest_field_select=0, vmpl=0, guest_svn=0, tcb_version=0
            ),
            BadRequestError,
        ),
        (
            lambda: _native.get_derived_key(
                "/dev/null", root_key_select=0, guest_field_select=1 << 7, vmpl=0, guest_svn=0, tcb_version=0
            ),
            BadRequestError,
        ),
        (
            lambda: _native.get_derived_key(
                "/dev/null", root_key_select=0, guest_field_select=0, vmpl=0, guest_svn=1 << 32, tcb_version=0
            ),
            BadRequestError,
        ),
    ],
)
def test_arguments_are_checked_before_any_c_call(call: object, error: type[Exception]) -> None:
    # Had the shim been called, /dev/null would have produced an ENOTTY status, not an exception.
    with pytest.raises(error):
        call()  # type: ignore[operator]


@pytest.mark.usefixtures("seccomp_supported")
def test_bad_arguments_never_reach_the_device(device_path: Path, firmware: FirmwareResponder) -> None:
    steps: list[dict[str, Any]] = [
        {"op": "report", "path": str(device_path), "report_data": DATA[:63].hex()},
        {"op": "report", "path": str(device_path), "report_data": DATA.hex(), "vmpl": 4},
    ]
    run = run_in_child(firmware, steps, device_path=device_path)
    assert [r["error"] for r in run.results] == ["BadRequestError", "BadRequestError"]
    assert run.log.handled == 0  # not a single intercepted ioctl


@pytest.mark.usefixtures("seccomp_supported")
def test_ext_report_size_protocol_as_the_binding_sees_it(device_path: Path, firmware: FirmwareResponder) -> None:
    table = firmware.certificates  # ~4.7 KiB: does not fit one page
    step = {"op": "native_ext_report", "path": str(device_path), "report_data": DATA.hex(), "certs_buffer": 4096}
    run = run_in_child(firmware, [step], device_path=device_path)
    (result,) = run.results
    assert (result["stage"], result["errno"]) == ("IOCTL", errno.EIO)
    assert (result["fw_error"], result["vmm_error"]) == (0, _native.VMM_ERR_INVALID_LEN)
    assert result["certs_len"] == 8192 >= len(table)
    assert result["message"] == ""


@pytest.mark.usefixtures("seccomp_supported")
def test_the_gil_is_released_during_the_ioctl(tmp_path: Path, device_path: Path, firmware: FirmwareResponder) -> None:
    seen, ack = tmp_path / "seen", tmp_path / "ack"

    def responder(command: Command, request: Request) -> Reply:
        seen.write_text("in ioctl")  # the child's main thread is blocked in ioctl(2) right now
        deadline = time.monotonic() + 10  # bound only: the test asserts on ack, never on time
        while not ack.exists() and time.monotonic() < deadline:
            time.sleep(0.001)  # only a child thread that can take the GIL can write ack
        return firmware(command, request)

    step = {
        "op": "gil_probe",
        "path": str(device_path),
        "report_data": DATA.hex(),
        "with_certificates": False,
        "seen": str(seen),
        "ack": str(ack),
    }
    run = run_in_child(responder, [step], device_path=device_path)
    assert ack.read_text() == "ack"
    assert run.results[0]["ok"] is True
