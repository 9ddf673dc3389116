"""SEV-SNP evidence through configfs-tsm (``/sys/kernel/config/tsm/report``, Linux >= 6.7).

The kernel's TSM report interface (drivers/virt/coco/tsm.c, ABI in
Documentation/ABI/testing/configfs-tsm-report) works on directories: ``mkdir`` creates an entry
whose attributes appear at once; writing ``privlevel`` (ASCII decimal) and ``inblob`` (64 bytes,
committed when the file is closed) each advance ``generation``; reading ``outblob`` makes the
provider generate the report for the current inputs, and ``auxblob`` then holds the GHCB
certificate table (for ``sev_guest``: trimmed to the table's size, absent when the host has none).

One request here is:

1. ``mkdir`` a fresh, uniquely named entry (no sharing with other agents);
2. check ``provider`` reads ``sev_guest`` (anything else: not an SEV-SNP guest);
3. read ``generation`` (g), write ``privlevel``, write ``inblob`` (expected: g + 2);
4. read ``outblob`` and, if wanted, ``auxblob``; read ``generation`` again;
5. ``rmdir`` the entry, always (try/finally).

If the second ``generation`` differs from g + 2, somebody else wrote to our entry between our
writes and our reads, so the outblob may answer *their* inblob: the evidence is discarded and the
whole request is repeated with a new entry, up to ``generation_retries`` times, then
:class:`DeviceBusyError`. The report's REPORT_DATA and VMPL are also checked against the request.
"""

from __future__ import annotations

import errno as errno_codes
import logging
import os
import secrets
from pathlib import Path
from typing import Final

from skr.errors import ConfigError, DeviceBusyError, DeviceError, FirmwareError, PlatformUnavailableError
from skr.snp.device import RawEvidence, check_evidence, validate_report_request

__all__ = ["CONFIGFS_PROVIDER", "DEFAULT_TSM_REPORT_ROOT", "ConfigfsTsmProvider"]

_logger = logging.getLogger(__name__)

DEFAULT_TSM_REPORT_ROOT: Final = Path("/sys/kernel/config/tsm/report")
CONFIGFS_PROVIDER: Final = "configfs-tsm"
EXPECTED_TSM_PROVIDER: Final = "sev_guest"
MAX_BLOB: Final = 32 * 1024  # TSM_OUTBLOB_MAX: the kernel never returns more
MAX_TEXT_ATTRIBUTE: Final = 256
MAX_GENERATION_RETRIES: Final = 5
_ENTRY_NAME_ATTEMPTS: Final = 3
_WRITES_PER_REQUEST: Final = 2  # privlevel + inblob


class ConfigfsTsmProvider:
    """:class:`~skr.snp.device.ReportProvider` over configfs-tsm; ``root`` is injectable for tests."""

    name: str = CONFIGFS_PROVIDER

    def __init__(self, root: Path | str = DEFAULT_TSM_REPORT_ROOT, *, generation_retries: int = 2) -> None:
        if isinstance(generation_retries, bool) or not isinstance(generation_retries, int):
            raise ConfigError("generation_retries must be an integer")
        if not 0 <= generation_retries <= MAX_GENERATION_RETRIES:
            raise ConfigError(f"generation_retries must be in 0..{MAX_GENERATION_RETRIES}")
        self.root = Path(root)
        self._generation_retries = generation_retries

    def __repr__(self) -> str:
        return f"ConfigfsTsmProvider(root={str(self.root)!r})"

    def probe(self) -> None:
        """Create and remove one entry, checking its provider; raises if this root is unusable."""
        entry = self._create_entry()
        try:
            self._check_provider(entry)
        finally:
            self._remove_entry(entry)

    def get_report(self, report_data: bytes, *, vmpl: int = 0, with_certificates: bool = True) -> RawEvidence:
        """A fresh report through a new configfs entry (see the module docstring for the steps)."""
        data = validate_report_request(report_data, vmpl)
        for attempt in range(self._generation_retries + 1):
            entry = self._create_entry()
            try:
                self._check_provider(entry)
                start = self._read_generation(entry)
                self._write(entry / "privlevel", str(vmpl).encode("ascii"), vmpl=vmpl)
                self._write(entry / "inblob", data, vmpl=vmpl)
                report = self._read_blob(entry / "outblob")
                certificates = self._read_blob(entry / "auxblob") if with_certificates else b""
                end = self._read_generation(entry)
            finally:
                self._remove_entry(entry)
            if end == start + _WRITES_PER_REQUEST:
                check_evidence(report, data, vmpl, provider=self.name)
                return RawEvidence(report=report, certificates=certificates, provider=self.name)
            _logger.warning(
                "configfs-tsm entry changed under us (generation %d, expected %d); attempt %d",
                end,
                start + _WRITES_PER_REQUEST,
                attempt + 1,
            )
        raise DeviceBusyError(
            f"configfs-tsm under {self.root}: another writer kept changing the report entry "
            f"({self._generation_retries + 1} attempts)",
            errno=errno_codes.EBUSY,
        )

    # -- entry lifecycle --

    def _create_entry(self) -> Path:
        for _ in range(_ENTRY_NAME_ATTEMPTS):
            entry = self.root / f"skr-{os.getpid()}-{secrets.token_hex(8)}"
            try:
                os.mkdir(entry, 0o700)
            except FileExistsError:
                continue
            except OSError as exc:
                raise self._mkdir_error(exc) from None
            return entry
        raise DeviceError(f"could not create a uniquely named entry under {self.root}")

    def _mkdir_error(self, exc: OSError) -> DeviceError:
        root = str(self.root)
        reason = exc.strerror or str(exc)
        if exc.errno in (errno_codes.ENOENT, errno_codes.ENOTDIR):
            return PlatformUnavailableError(f"no configfs-tsm report directory at {root} ({reason})", tried=(root,))
        if exc.errno == errno_codes.ENXIO:
            return PlatformUnavailableError(
                f"configfs-tsm at {root} has no attestation provider registered ({reason})", tried=(root,)
            )
        if exc.errno in (errno_codes.EACCES, errno_codes.EPERM, errno_codes.EROFS):
            return DeviceError(f"cannot create a report entry under {root}: {reason}; run skr as root")
        return DeviceError(f"cannot create a report entry under {root}: {reason}")

    def _remove_entry(self, entry: Path) -> None:
        try:
            os.rmdir(entry)
        except OSError as exc:  # never mask the request's own outcome; leave a trace instead
            _logger.warning("could not remove configfs-tsm entry %s: %s", entry, exc.strerror or exc)

    # -- attributes --

    def _check_provider(self, entry: Path) -> None:
        provider = self._read_text(entry / "provider")
        if provider != EXPECTED_TSM_PROVIDER:
            root = str(self.root)
            raise PlatformUnavailableError(
                f"configfs-tsm at {root} is provided by {provider[:32]!r}, not {EXPECTED_TSM_PROVIDER!r}: "
                "this is not an SEV-SNP guest",
                tried=(root,),
            )

    def _read_generation(self, entry: Path) -> int:
        text = self._read_text(entry / "generation")
        if not text.isdigit() or len(text) > 20:
            raise FirmwareError(f"configfs-tsm generation is not a decimal number: {text[:32]!r}")
        return int(text)

    def _read_text(self, path: Path) -> str:
        raw = self._read(path, MAX_TEXT_ATTRIBUTE)
        try:
            return raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise FirmwareError(f"configfs-tsm attribute {path.name} is not ASCII text") from None

    def _read_blob(self, path: Path) -> bytes:
        return self._read(path, MAX_BLOB)

    def _read(self, path: Path, limit: int) -> bytes:
        """Read a whole attribute; reading ``outblob`` is what makes the kernel ask the firmware."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._attribute_error(path, exc, "read") from None
        try:
            chunks = []
            total = 0
            while True:
                chunk = os.read(fd, limit + 1 - total)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise FirmwareError(f"configfs-tsm attribute {path.name} exceeds {limit} bytes")
            return b"".join(chunks)
        except OSError as exc:
            raise self._attribute_error(path, exc, "read") from None
        finally:
            os.close(fd)

    def _write(self, path: Path, data: bytes, *, vmpl: int) -> None:
        """One write and close: configfs commits binary attributes (inblob) when the file closes."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._attribute_error(path, exc, "write", vmpl=vmpl) from None
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise FirmwareError(f"configfs-tsm took {written} of {len(data)} bytes written to {path.name}")
        except OSError as exc:
            raise self._attribute_error(path, exc, "write", vmpl=vmpl) from None
        finally:
            os.close(fd)

    def _attribute_error(self, path: Path, exc: OSError, action: str, *, vmpl: int = 0) -> DeviceError:
        code = exc.errno or 0
        reason = exc.strerror or str(exc)
        where = f"configfs-tsm {path.name}"
        if code in (errno_codes.EAGAIN, errno_codes.ETIMEDOUT, errno_codes.EBUSY):
            return DeviceBusyError(f"{where}: the platform stayed busy ({reason})", errno=code)
        if code == errno_codes.ENOTTY:
            return FirmwareError(
                f"{where}: the provider refused the request; the kernel may have disabled the guest's VMPCK "
                "after an earlier firmware error (see the kernel log)",
                errno=code,
            )
        if path.name == "privlevel" and code == errno_codes.EINVAL:
            return FirmwareError(
                f"{where}: VMPL {vmpl} was refused; it is below this guest's privlevel_floor", errno=code
            )
        if path.name in ("outblob", "auxblob") and code == errno_codes.EINVAL:
            return FirmwareError(
                f"{where}: the firmware rejected the request parameters (INVALID_PARAM or INVALID_KEY)",
                errno=code,
            )
        if path.name in ("outblob", "auxblob") and code == errno_codes.ENXIO:
            return FirmwareError(f"{where}: the firmware refused the report request", errno=code)
        if code == errno_codes.ENOENT:
            return FirmwareError(f"{where} does not exist: the entry is not a configfs-tsm report", errno=code)
        return FirmwareError(f"{where}: {action} failed: {reason} (errno {code})", errno=code)
