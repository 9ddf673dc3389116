"""Typed, checked access to the compiled SEV-SNP shim (``skr.snp._snp_native``, built from native/).

Why a separate module: cffi hands back untyped ``Any`` objects and trusts its caller with buffer
sizes. This module is the one place that touches them. It

* loads the extension lazily (a machine with only configfs-tsm never needs it) under a lock, and
  refuses one built for another skr version or with different ABI constants;
* checks every argument (lengths, ranges, types) *before* any C call;
* returns frozen values: the errno, the firmware status and the VMM error of the one
  open/ioctl/close the shim performed, and the raw firmware message on success.

It applies no policy: retries, the certificate-buffer size protocol and the mapping to
:mod:`skr.errors` live in :mod:`skr.snp.device`. The C function releases the GIL for the whole
open/ioctl/close (cffi API mode wraps each call in ``Py_BEGIN_ALLOW_THREADS``).
"""

from __future__ import annotations

import enum
import functools
import importlib
import os
import threading
from dataclasses import dataclass
from typing import Any, Final

import skr
from skr.errors import BadRequestError, ConfigError, DeviceError
from skr.primitives.sensitive import Sensitive

__all__ = [
    "CERTS_PAGE_SIZE",
    "DERIVED_KEY_RESPONSE_SIZE",
    "MAX_CERTS_BUFFER",
    "MAX_VMPL",
    "REPORT_RESPONSE_SIZE",
    "USER_DATA_SIZE",
    "VMM_ERR_BUSY",
    "VMM_ERR_INVALID_LEN",
    "CallStatus",
    "KeyReply",
    "ReportReply",
    "Stage",
    "check_native_version",
    "get_derived_key",
    "get_ext_report",
    "get_report",
    "ioctl_numbers",
    "native_version",
]

USER_DATA_SIZE: Final = 64  # snp_report_req.user_data (REPORT_DATA)
MAX_VMPL: Final = 3
REPORT_RESPONSE_SIZE: Final = 4000  # snp_report_resp.data: MSG_REPORT_RSP
DERIVED_KEY_RESPONSE_SIZE: Final = 64  # snp_derived_key_resp.data: MSG_KEY_RSP
CERTS_PAGE_SIZE: Final = 4096  # the kernel wants certs_len page-aligned
MAX_CERTS_BUFFER: Final = 1 << 20  # our cap; Linux itself refuses > 16 KiB (SEV_FW_BLOB_MAX_SIZE)
MAX_PATH_BYTES: Final = 4096

VMM_ERR_INVALID_LEN: Final = 1  # SNP_GUEST_VMM_ERR_INVALID_LEN: certificate buffer too small
VMM_ERR_BUSY: Final = 2  # SNP_GUEST_VMM_ERR_BUSY: the hypervisor throttled the request

# MSG_KEY_REQ fields (SEV-SNP ABI "MSG_KEY_REQ"). ROOT_KEY_SEL is bit 0 (0 = VCEK, 1 = VMRK);
# KEY_SEL is bits 2..1 (0 = VLEK if installed else VCEK, 1 = VCEK, 2 = VLEK, 3 reserved) since
# ABI 1.55 (UNCONFIRMED). GUEST_FIELD_SELECT bits 0..5 are policy, image ID, family ID,
# measurement, guest SVN and TCB version; bit 6 (launch mitigation vector) is ABI 1.55+
# (UNCONFIRMED). Anything else is refused here rather than sent to the firmware.
_VALID_ROOT_KEY_SELECT: Final = frozenset(range(6))
_GUEST_FIELD_SELECT_MASK: Final = 0x7F
_U32_MAX: Final = 0xFFFF_FFFF
_U64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF

# The constants the C side must agree with (name in the extension -> value Python relies on).
_EXPECTED_CONSTANTS: Final = {
    "SKR_SNP_USER_DATA_LEN": USER_DATA_SIZE,
    "SKR_SNP_REPORT_RESP_LEN": REPORT_RESPONSE_SIZE,
    "SKR_SNP_DERIVED_KEY_RESP_LEN": DERIVED_KEY_RESPONSE_SIZE,
    "SKR_SNP_MAX_VMPL": MAX_VMPL,
    "SKR_SNP_CERTS_PAGE": CERTS_PAGE_SIZE,
    "SKR_SNP_MAX_CERTS_LEN": MAX_CERTS_BUFFER,
    "SNP_GUEST_VMM_ERR_INVALID_LEN": VMM_ERR_INVALID_LEN,
    "SNP_GUEST_VMM_ERR_BUSY": VMM_ERR_BUSY,
    "SKR_SNP_STAGE_OK": 0,
    "SKR_SNP_STAGE_ARGUMENT": 1,
    "SKR_SNP_STAGE_OPEN": 2,
    "SKR_SNP_STAGE_IOCTL": 3,
}

_REBUILD = "rebuild it with `pip install .` (needs gcc and the Linux UAPI headers)"


class Stage(enum.IntEnum):
    """Which step of the shim's open/ioctl/close failed."""

    OK = 0
    ARGUMENT = 1  # the shim refused its arguments (a bug: Python checks them first)
    OPEN = 2
    IOCTL = 3


@dataclass(frozen=True, slots=True)
class CallStatus:
    """The outcome of one call into the shim; ``errno`` is 0 on success."""

    stage: Stage
    errno: int
    fw_error: int  # exitinfo2 bits 31..0
    vmm_error: int  # exitinfo2 bits 63..32

    @property
    def ok(self) -> bool:
        return self.stage is Stage.OK


@dataclass(frozen=True, slots=True)
class ReportReply:
    """SNP_GET_REPORT / SNP_GET_EXT_REPORT result.

    ``message`` is the raw MSG_REPORT_RSP (status, report size, report) and ``certificates`` the
    whole certificate buffer (ext only); both are empty unless ``status.ok``. ``certs_len`` is the
    kernel's certs_len after the call: on VMM_ERR_INVALID_LEN, the size it asks for.
    """

    status: CallStatus
    message: bytes
    certificates: bytes = b""
    certs_len: int = 0


@dataclass(frozen=True, slots=True)
class KeyReply:
    """SNP_GET_DERIVED_KEY result; ``message`` (MSG_KEY_RSP) holds the key, so it stays wrapped."""

    status: CallStatus
    message: Sensitive[bytes]


# --- loading --------------------------------------------------------------------------------------

_load_lock = threading.Lock()


def check_native_version(native: str, package: str) -> None:
    """Refuse an extension stamped with another version than the Python package."""
    if native != package:
        raise DeviceError(
            f"the native SEV-SNP binding was built for skr {native!r} but this is skr {package!r}; {_REBUILD}"
        )


@functools.cache
def _load() -> tuple[Any, Any]:
    # Lazy: a machine that only uses configfs-tsm never needs the extension. A failure is not
    # cached (functools.cache keeps return values only), so a later call tries again.
    try:
        module = importlib.import_module("skr.snp._snp_native")
    except ImportError as exc:
        raise DeviceError(f"the native SEV-SNP binding skr.snp._snp_native is not built; {_REBUILD}") from exc
    ffi, lib = module.ffi, module.lib
    check_native_version(ffi.string(lib.skr_snp_native_version()).decode("ascii"), skr.__version__)
    for name, expected in _EXPECTED_CONSTANTS.items():
        actual = getattr(lib, name, None)
        if actual != expected:
            raise DeviceError(f"the native SEV-SNP binding disagrees on {name} ({actual!r}); {_REBUILD}")
    return ffi, lib


def _binding() -> tuple[Any, Any]:
    """``(ffi, lib)`` of the extension, loaded and checked once."""
    with _load_lock:
        return _load()


def native_version() -> str:
    """The version compiled into the extension (loads it)."""
    ffi, lib = _binding()
    return str(ffi.string(lib.skr_snp_native_version()).decode("ascii"))


def ioctl_numbers() -> dict[str, int]:
    """The request numbers the compiler derived from ``<linux/sev-guest.h>`` (for diagnostics)."""
    _, lib = _binding()
    return {
        "SNP_GET_REPORT": int(lib.SNP_GET_REPORT),
        "SNP_GET_DERIVED_KEY": int(lib.SNP_GET_DERIVED_KEY),
        "SNP_GET_EXT_REPORT": int(lib.SNP_GET_EXT_REPORT),
    }


# --- argument checks (all before any C call) ------------------------------------------------------


def _device_path(path: str) -> bytes:
    if not isinstance(path, str) or not path:
        raise ConfigError("the SEV-SNP device path must be a non-empty string")
    encoded = os.fsencode(path)
    if b"\0" in encoded or len(encoded) > MAX_PATH_BYTES:
        raise ConfigError("the SEV-SNP device path contains a NUL byte or is too long")
    return encoded


def _user_data(user_data: bytes) -> bytes:
    if not isinstance(user_data, bytes | bytearray | memoryview):
        raise BadRequestError("report data must be bytes")
    data = bytes(user_data)
    if len(data) != USER_DATA_SIZE:
        raise BadRequestError(f"report data must be exactly {USER_DATA_SIZE} bytes, got {len(data)}")
    return data


def _unsigned(value: int, what: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise BadRequestError(f"{what} must be an integer in 0..{maximum}")
    return value


def _vmpl(vmpl: int) -> int:
    return _unsigned(vmpl, "vmpl", MAX_VMPL)


def _status(raw: Any) -> CallStatus:
    try:
        stage = Stage(int(raw.stage))
    except ValueError:  # cannot happen with a matching build; fail closed anyway
        stage = Stage.ARGUMENT
    return CallStatus(stage=stage, errno=int(raw.err), fw_error=int(raw.fw_error), vmm_error=int(raw.vmm_error))


# --- the three requests ---------------------------------------------------------------------------


def get_report(path: str, user_data: bytes, vmpl: int) -> ReportReply:
    """One SNP_GET_REPORT on ``path``: 64 bytes of REPORT_DATA, at privilege level ``vmpl``."""
    encoded, data, level = _device_path(path), _user_data(user_data), _vmpl(vmpl)
    ffi, lib = _binding()
    response = ffi.new("uint8_t[]", REPORT_RESPONSE_SIZE)
    raw = ffi.new("struct skr_snp_status *")
    lib.skr_snp_get_report(encoded, ffi.from_buffer("uint8_t[]", data), level, response, REPORT_RESPONSE_SIZE, raw)
    status = _status(raw)
    return ReportReply(status=status, message=bytes(ffi.buffer(response)) if status.ok else b"")


def get_ext_report(path: str, user_data: bytes, vmpl: int, certs_buffer: int) -> ReportReply:
    """One SNP_GET_EXT_REPORT with a certificate buffer of ``certs_buffer`` bytes (page multiple)."""
    encoded, data, level = _device_path(path), _user_data(user_data), _vmpl(vmpl)
    size = _unsigned(certs_buffer, "certificate buffer size", MAX_CERTS_BUFFER)
    if size == 0 or size % CERTS_PAGE_SIZE:
        raise BadRequestError(f"certificate buffer size must be a non-zero multiple of {CERTS_PAGE_SIZE}")
    ffi, lib = _binding()
    response = ffi.new("uint8_t[]", REPORT_RESPONSE_SIZE)
    certs = ffi.new("uint8_t[]", size)
    raw = ffi.new("struct skr_snp_status *")
    lib.skr_snp_get_ext_report(
        encoded, ffi.from_buffer("uint8_t[]", data), level, response, REPORT_RESPONSE_SIZE, certs, size, raw
    )
    status = _status(raw)
    if not status.ok:
        return ReportReply(status=status, message=b"", certs_len=int(raw.certs_len))
    return ReportReply(
        status=status,
        message=bytes(ffi.buffer(response)),
        certificates=bytes(ffi.buffer(certs)),
        certs_len=int(raw.certs_len),
    )


def get_derived_key(
    path: str, *, root_key_select: int, guest_field_select: int, vmpl: int, guest_svn: int, tcb_version: int
) -> KeyReply:
    """One SNP_GET_DERIVED_KEY; the reply's message is the 64-byte MSG_KEY_RSP, kept wrapped."""
    encoded = _device_path(path)
    if isinstance(root_key_select, bool) or root_key_select not in _VALID_ROOT_KEY_SELECT:
        raise BadRequestError("root_key_select must be 0..5 (ROOT_KEY_SEL bit 0, KEY_SEL bits 2..1, not 3)")
    fields = _unsigned(guest_field_select, "guest_field_select", _U64_MAX)
    if fields & ~_GUEST_FIELD_SELECT_MASK:
        raise BadRequestError("guest_field_select may only set bits 0..6")
    level = _vmpl(vmpl)
    svn = _unsigned(guest_svn, "guest_svn", _U32_MAX)
    tcb = _unsigned(tcb_version, "tcb_version", _U64_MAX)
    ffi, lib = _binding()
    response = ffi.new("uint8_t[]", DERIVED_KEY_RESPONSE_SIZE)
    raw = ffi.new("struct skr_snp_status *")
    try:
        lib.skr_snp_get_derived_key(
            encoded, root_key_select, fields, level, svn, tcb, response, DERIVED_KEY_RESPONSE_SIZE, raw
        )
        status = _status(raw)
        message = bytes(ffi.buffer(response)) if status.ok else b""
    finally:
        ffi.memmove(response, bytes(DERIVED_KEY_RESPONSE_SIZE), DERIVED_KEY_RESPONSE_SIZE)
    return KeyReply(status=status, message=Sensitive(message, "derived key response"))
