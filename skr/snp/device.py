"""Getting evidence from the SEV-SNP platform: the provider interface and ``/dev/sev-guest``.

Two kernel interfaces deliver the same evidence (a signed 1184-byte report plus the host's GHCB
certificate table): the ``/dev/sev-guest`` ioctls (Linux >= 5.19, here) and configfs-tsm
(Linux >= 6.7, :mod:`skr.snp.configfs`). Both implement :class:`ReportProvider`, return an
unparsed :class:`RawEvidence` and raise only :mod:`skr.errors` types; :mod:`skr.snp.provider`
picks one. There is no fake fallback: no device means :class:`PlatformUnavailableError`.

The providers are blocking and stateless between calls (each call opens, asks and closes), so
one instance may be shared by threads; the async shell calls them through ``asyncio.to_thread``.
The kernel serializes guest requests itself (``snp_cmd_mutex``).

Retry policy for ``/dev/sev-guest``:

* VMM BUSY (``SNP_GUEST_VMM_ERR_BUSY`` in exitinfo2) or ``EAGAIN``: retried ``busy_retries``
  times with exponential backoff (default 4 retries from 50 ms: 0.75 s of sleep at most), then
  :class:`DeviceBusyError`. Current kernels retry BUSY themselves for 60 s and then fail with
  ``ETIMEDOUT``, which is reported as :class:`DeviceBusyError` at once.
* Extended report, ``SNP_GUEST_VMM_ERR_INVALID_LEN``: the kernel wrote the certificate-buffer
  length the host needs into ``certs_len``; the request is repeated once with that length if it
  is a page multiple no larger than :data:`MAX_CERTS_BUFFER` (1 MiB), else refused. The first
  buffer is 16 KiB, which is also the most Linux accepts (``SEV_FW_BLOB_MAX_SIZE``).
"""

from __future__ import annotations

import enum
import errno as errno_codes
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from skr.errors import (
    BadRequestError,
    ConfigError,
    DeviceBusyError,
    DeviceError,
    FirmwareError,
    PlatformUnavailableError,
)
from skr.primitives.sensitive import Sensitive
from skr.snp import _native
from skr.snp._native import CallStatus, Stage
from skr.snp.report import REPORT_SIZE

__all__ = [
    "DEFAULT_CERTS_BUFFER",
    "DEFAULT_SEV_GUEST_PATH",
    "MAX_CERTS_BUFFER",
    "SEV_GUEST_PROVIDER",
    "GuestField",
    "RawEvidence",
    "ReportProvider",
    "RootKey",
    "SevGuestDevice",
    "check_evidence",
    "describe_firmware_status",
    "error_for_status",
    "parse_key_response",
    "parse_report_response",
    "trim_certificate_table",
    "validate_report_request",
]

_logger = logging.getLogger(__name__)

DEFAULT_SEV_GUEST_PATH: Final = "/dev/sev-guest"
SEV_GUEST_PROVIDER: Final = "sev-guest"
DEFAULT_CERTS_BUFFER: Final = 16 * 1024  # Linux's SEV_FW_BLOB_MAX_SIZE: the most it accepts
MAX_CERTS_BUFFER: Final = _native.MAX_CERTS_BUFFER
MAX_BUSY_RETRIES: Final = 10
MAX_BACKOFF: Final = 1.0

REPORT_DATA_SIZE: Final = _native.USER_DATA_SIZE
MAX_VMPL: Final = _native.MAX_VMPL
MSG_RESPONSE_HEADER: Final = 0x20  # MSG_REPORT_RSP / MSG_KEY_RSP: status, size, reserved
DERIVED_KEY_SIZE: Final = 32
REPORT_VMPL_OFFSET: Final = 0x30
REPORT_DATA_OFFSET: Final = 0x50
CERT_ENTRY_SIZE: Final = 24  # GUID[16] || offset u32 || length u32

# exitinfo2 low half when no firmware call was made: 0xff (sev-guest.c sets it before the call)
# or SEV_RET_NO_FW_CALL (-1) truncated to 32 bits in newer kernels.
_NO_FIRMWARE_CALL: Final = frozenset({0xFF, 0xFFFF_FFFF})

# SEV firmware status codes. 0x00..0x18 are the enum sev_ret_code of <linux/psp-sev.h>
# (checked against the header on the build machine); 0x19..0x27 come from the SEV-SNP firmware
# ABI status table and newer kernel headers (UNCONFIRMED here: not in the installed header).
_FIRMWARE_STATUS: Final[dict[int, str]] = {
    0x00: "SUCCESS",
    0x01: "INVALID_PLATFORM_STATE",
    0x02: "INVALID_GUEST_STATE",
    0x03: "INVALID_CONFIG",
    0x04: "INVALID_LEN",
    0x05: "ALREADY_OWNED",
    0x06: "INVALID_CERTIFICATE",
    0x07: "POLICY_FAILURE",
    0x08: "INACTIVE",
    0x09: "INVALID_ADDRESS",
    0x0A: "BAD_SIGNATURE",
    0x0B: "BAD_MEASUREMENT",
    0x0C: "ASID_OWNED",
    0x0D: "INVALID_ASID",
    0x0E: "WBINVD_REQUIRED",
    0x0F: "DFFLUSH_REQUIRED",
    0x10: "INVALID_GUEST",
    0x11: "INVALID_COMMAND",
    0x12: "ACTIVE",
    0x13: "HWERROR_PLATFORM",
    0x14: "HWERROR_UNSAFE",
    0x15: "UNSUPPORTED",
    0x16: "INVALID_PARAM",
    0x17: "RESOURCE_LIMIT",
    0x18: "SECURE_DATA_INVALID",
    0x19: "INVALID_PAGE_SIZE",
    0x1A: "INVALID_PAGE_STATE",
    0x1B: "INVALID_MDATA_ENTRY",
    0x1C: "INVALID_PAGE_OWNER",
    0x1D: "AEAD_OFLOW",
    0x1F: "EXIT_RING_BUFFER",
    0x20: "RMP_INIT_REQUIRED",
    0x21: "BAD_SVN",
    0x22: "BAD_VERSION",
    0x23: "SHUTDOWN_REQUIRED",
    0x24: "UPDATE_FAILED",
    0x25: "RESTORE_REQUIRED",
    0x26: "RMP_INITIALIZATION_FAILED",
    0x27: "INVALID_KEY",
}
_FIRMWARE_HINTS: Final[dict[int, str]] = {
    0x16: "a request field is out of range, e.g. a VMPL more privileged than the guest's own",
    0x27: "the requested key is not available, e.g. no VLEK installed",  # UNCONFIRMED wording
}
_VMM_ERRORS: Final[dict[int, str]] = {
    _native.VMM_ERR_INVALID_LEN: "INVALID_LEN (certificate buffer too small)",
    _native.VMM_ERR_BUSY: "BUSY (the hypervisor throttled the request)",
}


class RootKey(enum.IntEnum):
    """MSG_KEY_REQ ROOT_KEY_SEL: which root key a derived key comes from."""

    VCEK = 0
    VMRK = 1


class GuestField(enum.IntFlag):
    """MSG_KEY_REQ GUEST_FIELD_SELECT: guest data mixed into a derived key."""

    POLICY = 1 << 0
    IMAGE_ID = 1 << 1
    FAMILY_ID = 1 << 2
    MEASUREMENT = 1 << 3
    GUEST_SVN = 1 << 4
    TCB_VERSION = 1 << 5
    LAUNCH_MIT_VECTOR = 1 << 6  # SEV-SNP ABI 1.55+ (UNCONFIRMED)


@dataclass(frozen=True, slots=True)
class RawEvidence:
    """What the platform produced, unparsed and unverified."""

    report: bytes  # the 1184-byte signed report
    certificates: bytes  # raw GHCB certificate table (extended report / auxblob); b"" if none
    provider: str  # "configfs-tsm" or "sev-guest"


class ReportProvider(Protocol):
    """A source of SEV-SNP evidence. Blocking; raises only :mod:`skr.errors` types."""

    name: str

    def get_report(self, report_data: bytes, *, vmpl: int = 0, with_certificates: bool = True) -> RawEvidence:
        """A fresh report carrying ``report_data`` (64 bytes), requested at ``vmpl``."""
        ...


# --- pure helpers shared by both providers -------------------------------------------------------


def validate_report_request(report_data: bytes, vmpl: int) -> bytes:
    """Check a report request before anything touches the platform; returns the data as bytes."""
    if not isinstance(report_data, bytes | bytearray | memoryview):
        raise BadRequestError("report data must be bytes")
    data = bytes(report_data)
    if len(data) != REPORT_DATA_SIZE:
        raise BadRequestError(f"report data must be exactly {REPORT_DATA_SIZE} bytes, got {len(data)}")
    if isinstance(vmpl, bool) or not isinstance(vmpl, int) or not 0 <= vmpl <= MAX_VMPL:
        raise BadRequestError(f"vmpl must be an integer in 0..{MAX_VMPL}")
    return data


def describe_firmware_status(code: int) -> str:
    """``0x16 (INVALID_PARAM: ...)``: a firmware status for a human."""
    name = _FIRMWARE_STATUS.get(code, "unknown status")
    hint = _FIRMWARE_HINTS.get(code)
    return f"0x{code:x} ({name}: {hint})" if hint else f"0x{code:x} ({name})"


def _firmware_called(status: CallStatus) -> bool:
    return status.fw_error not in _NO_FIRMWARE_CALL


def _vmm_error(status: CallStatus) -> int:
    """The VMM error, or 0 when exitinfo2 only says "no firmware call" (all ones)."""
    return 0 if status.vmm_error == 0xFFFF_FFFF else status.vmm_error


def _is_busy(status: CallStatus) -> bool:
    return status.stage is Stage.IOCTL and (
        status.errno == errno_codes.EAGAIN
        or (status.errno == errno_codes.EIO and _vmm_error(status) == _native.VMM_ERR_BUSY)
    )


def _is_invalid_len(status: CallStatus) -> bool:
    return (
        status.stage is Stage.IOCTL
        and status.errno == errno_codes.EIO
        and _vmm_error(status) == _native.VMM_ERR_INVALID_LEN
    )


def error_for_status(status: CallStatus, *, operation: str, path: str) -> DeviceError:
    """The typed error for a failed shim call (never called with a successful status)."""
    reason = os.strerror(status.errno) if status.errno else "unknown error"
    if status.stage is Stage.OPEN:
        if status.errno in (errno_codes.ENOENT, errno_codes.ENXIO, errno_codes.ENODEV):
            return PlatformUnavailableError(f"no SEV-SNP guest device at {path} ({reason})", tried=(path,))
        if status.errno in (errno_codes.EACCES, errno_codes.EPERM):
            return DeviceError(f"cannot open {path}: {reason}; run skr with read-write access to the device")
        return DeviceError(f"cannot open {path}: {reason}")
    if status.stage is not Stage.IOCTL:
        return DeviceError(f"the native binding refused the {operation} arguments (a bug in skr)")

    details = dict(errno=status.errno, fw_error=status.fw_error, vmm_error=status.vmm_error)
    parts = []
    if _firmware_called(status) and status.fw_error:
        parts.append(f"firmware status {describe_firmware_status(status.fw_error)}")
    vmm = _vmm_error(status)
    if vmm:
        parts.append(f"hypervisor error 0x{vmm:x} ({_VMM_ERRORS.get(vmm, 'unknown')})")
    suffix = ": " + "; ".join(parts) if parts else ""

    if status.errno == errno_codes.ENOTTY:
        return FirmwareError(
            f"{path} does not support {operation}: not an SEV-SNP guest device, or the kernel disabled the "
            "guest's VMPCK after an earlier firmware error (see the kernel log)",
            **details,
        )
    if status.errno in (errno_codes.EAGAIN, errno_codes.ETIMEDOUT) or vmm == _native.VMM_ERR_BUSY:
        return DeviceBusyError(f"{operation}: the platform stayed busy ({reason}){suffix}", **details)
    if status.errno == errno_codes.EIO:
        return FirmwareError(f"{operation} failed{suffix or ': I/O error without a firmware status'}", **details)
    if status.errno == errno_codes.EINVAL:
        return FirmwareError(f"{operation} failed: the kernel rejected the request (EINVAL){suffix}", **details)
    return FirmwareError(f"{operation} failed: {reason} (errno {status.errno}){suffix}", **details)


def parse_report_response(message: bytes) -> bytes:
    """The report inside a MSG_REPORT_RSP: status u32 at 0, report_size u32 at 4, report at 0x20."""
    if len(message) < MSG_RESPONSE_HEADER + REPORT_SIZE:
        raise FirmwareError(f"the report response is {len(message)} bytes, too short for a report")
    status, size = struct.unpack_from("<II", message, 0)
    if status:
        raise FirmwareError(
            f"the firmware refused the report request: status {describe_firmware_status(status)}",
            errno=errno_codes.EIO,
            fw_error=status,
        )
    if size != REPORT_SIZE:
        raise FirmwareError(f"the firmware returned a report of {size} bytes, expected {REPORT_SIZE}")
    return bytes(message[MSG_RESPONSE_HEADER : MSG_RESPONSE_HEADER + REPORT_SIZE])


def parse_key_response(message: Sensitive[bytes]) -> Sensitive[bytes]:
    """The 32-byte key inside a MSG_KEY_RSP: status u32 at 0, key at 0x20."""
    raw = message.reveal()
    if len(raw) < MSG_RESPONSE_HEADER + DERIVED_KEY_SIZE:
        raise FirmwareError(f"the key response is {len(raw)} bytes, too short for a key")
    (status,) = struct.unpack_from("<I", raw, 0)
    if status:
        raise FirmwareError(
            f"the firmware refused the key request: status {describe_firmware_status(status)}",
            errno=errno_codes.EIO,
            fw_error=status,
        )
    return Sensitive(bytes(raw[MSG_RESPONSE_HEADER : MSG_RESPONSE_HEADER + DERIVED_KEY_SIZE]), "derived key")


def trim_certificate_table(buffer: bytes) -> bytes:
    """Cut a certificate buffer to the table it holds, the way Linux sizes configfs ``auxblob``.

    The size is the largest ``offset + length`` over the entries before the all-zero terminator
    (capped at the buffer); an empty table gives ``b""``. Nothing is validated here: parsing and
    checking the table is :mod:`skr.snp.certtable`'s job.
    """
    size = 0
    for start in range(0, len(buffer) - CERT_ENTRY_SIZE + 1, CERT_ENTRY_SIZE):
        guid = buffer[start : start + 16]
        offset, length = struct.unpack_from("<II", buffer, start + 16)
        if not any(guid) and offset == 0 and length == 0:
            break
        size = max(size, offset + length)
    return bytes(buffer[: min(size, len(buffer))])


def check_evidence(report: bytes, report_data: bytes, vmpl: int, *, provider: str) -> None:
    """Refuse a report that does not carry what was asked for (wrong size, REPORT_DATA or VMPL).

    A mismatch means another request's report (a configfs writer race) or a broken platform;
    either way the evidence must not be used. Signatures are checked elsewhere (skr.snp.verify).
    """
    if len(report) != REPORT_SIZE:
        raise FirmwareError(f"{provider} returned {len(report)} bytes, not a {REPORT_SIZE}-byte report")
    if report[REPORT_DATA_OFFSET : REPORT_DATA_OFFSET + REPORT_DATA_SIZE] != report_data:
        raise FirmwareError(f"{provider} returned a report that does not carry the requested REPORT_DATA")
    (reported_vmpl,) = struct.unpack_from("<I", report, REPORT_VMPL_OFFSET)
    if reported_vmpl != vmpl:
        raise FirmwareError(f"{provider} returned a report for VMPL {reported_vmpl}, requested {vmpl}")


# --- /dev/sev-guest -------------------------------------------------------------------------------

_Reply = TypeVar("_Reply", _native.ReportReply, _native.KeyReply)


class SevGuestDevice:
    """:class:`ReportProvider` over the ``/dev/sev-guest`` ioctls (compiled cffi binding).

    Args:
        path: the device node.
        busy_retries: extra attempts after a VMM BUSY / EAGAIN answer (0..10).
        backoff: the first delay in seconds, doubled on each retry (0..1).
        sleep: how to wait (injected so tests need not sleep).
        certs_buffer: the first certificate-buffer size for extended reports (page multiple).
    """

    name: str = SEV_GUEST_PROVIDER

    def __init__(
        self,
        path: str = DEFAULT_SEV_GUEST_PATH,
        *,
        busy_retries: int = 4,
        backoff: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
        certs_buffer: int = DEFAULT_CERTS_BUFFER,
    ) -> None:
        if not isinstance(path, str) or not path:
            raise ConfigError("the SEV-SNP device path must be a non-empty string")
        if isinstance(busy_retries, bool) or not isinstance(busy_retries, int):
            raise ConfigError("busy_retries must be an integer")
        if not 0 <= busy_retries <= MAX_BUSY_RETRIES:
            raise ConfigError(f"busy_retries must be in 0..{MAX_BUSY_RETRIES}")
        if not 0.0 <= float(backoff) <= MAX_BACKOFF:
            raise ConfigError(f"backoff must be in 0..{MAX_BACKOFF} seconds")
        if (
            isinstance(certs_buffer, bool)
            or not isinstance(certs_buffer, int)
            or certs_buffer <= 0
            or certs_buffer % _native.CERTS_PAGE_SIZE
            or certs_buffer > MAX_CERTS_BUFFER
        ):
            raise ConfigError(f"certs_buffer must be a multiple of {_native.CERTS_PAGE_SIZE} up to {MAX_CERTS_BUFFER}")
        self.path = path
        self._busy_retries = busy_retries
        self._backoff = float(backoff)
        self._sleep = sleep
        self._certs_buffer = certs_buffer

    def __repr__(self) -> str:
        return f"SevGuestDevice(path={self.path!r})"

    def get_report(self, report_data: bytes, *, vmpl: int = 0, with_certificates: bool = True) -> RawEvidence:
        """A report via SNP_GET_EXT_REPORT (with certificates) or SNP_GET_REPORT."""
        data = validate_report_request(report_data, vmpl)
        if not with_certificates:
            reply = self._call("SNP_GET_REPORT", lambda: _native.get_report(self.path, data, vmpl))
            self._raise_unless_ok(reply.status, "SNP_GET_REPORT")
            report = parse_report_response(reply.message)
            check_evidence(report, data, vmpl, provider=self.name)
            return RawEvidence(report=report, certificates=b"", provider=self.name)

        size = self._certs_buffer
        reply = self._ext_report(data, vmpl, size)
        if _is_invalid_len(reply.status):
            needed = reply.certs_len
            if needed <= size or needed % _native.CERTS_PAGE_SIZE or needed > MAX_CERTS_BUFFER:
                raise FirmwareError(
                    f"SNP_GET_EXT_REPORT: the host asks for a {needed}-byte certificate buffer (had {size}, "
                    f"cap {MAX_CERTS_BUFFER}); refusing",
                    errno=reply.status.errno,
                    fw_error=reply.status.fw_error,
                    vmm_error=reply.status.vmm_error,
                )
            _logger.debug("certificate buffer of %d bytes too small; retrying once with %d", size, needed)
            reply = self._ext_report(data, vmpl, needed)
            if _is_invalid_len(reply.status):
                raise FirmwareError(
                    "SNP_GET_EXT_REPORT: the host asked for a larger certificate buffer twice; refusing",
                    errno=reply.status.errno,
                    fw_error=reply.status.fw_error,
                    vmm_error=reply.status.vmm_error,
                )
        self._raise_unless_ok(reply.status, "SNP_GET_EXT_REPORT")
        report = parse_report_response(reply.message)
        check_evidence(report, data, vmpl, provider=self.name)
        return RawEvidence(report=report, certificates=trim_certificate_table(reply.certificates), provider=self.name)

    def get_derived_key(
        self,
        *,
        root_key_select: int = RootKey.VCEK,
        guest_field_select: int = 0,
        vmpl: int = 0,
        guest_svn: int = 0,
        tcb_version: int = 0,
    ) -> Sensitive[bytes]:
        """A 32-byte key derived by the firmware (SNP_GET_DERIVED_KEY); kept wrapped."""
        reply = self._call(
            "SNP_GET_DERIVED_KEY",
            lambda: _native.get_derived_key(
                self.path,
                root_key_select=int(root_key_select),
                guest_field_select=int(guest_field_select),
                vmpl=vmpl,
                guest_svn=guest_svn,
                tcb_version=tcb_version,
            ),
        )
        self._raise_unless_ok(reply.status, "SNP_GET_DERIVED_KEY")
        return parse_key_response(reply.message)

    # -- internals --

    def _ext_report(self, data: bytes, vmpl: int, size: int) -> _native.ReportReply:
        return self._call("SNP_GET_EXT_REPORT", lambda: _native.get_ext_report(self.path, data, vmpl, size))

    def _call(self, operation: str, attempt: Callable[[], _Reply]) -> _Reply:
        """Run ``attempt``, retrying VMM BUSY / EAGAIN with exponential backoff."""
        delay = self._backoff
        for tries in range(self._busy_retries + 1):
            reply = attempt()
            if not _is_busy(reply.status):
                return reply
            if tries == self._busy_retries:
                break
            _logger.debug("%s: platform busy, retrying in %.3f s", operation, delay)
            self._sleep(delay)
            delay *= 2
        error = error_for_status(reply.status, operation=operation, path=self.path)
        raise DeviceBusyError(
            f"{error.message} (after {self._busy_retries + 1} attempts)",
            errno=reply.status.errno,
            fw_error=reply.status.fw_error,
            vmm_error=reply.status.vmm_error,
        )

    def _raise_unless_ok(self, status: CallStatus, operation: str) -> None:
        if not status.ok:
            raise error_for_status(status, operation=operation, path=self.path)
