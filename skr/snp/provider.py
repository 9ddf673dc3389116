"""Pick the SEV-SNP evidence interface this machine offers: configfs-tsm first, then /dev/sev-guest.

configfs-tsm is preferred (as go-sev-guest and Contrast do): it is the kernel's newer, shared
interface and lets several agents each use their own entry. It counts as present only when an
entry can really be created under its root and names ``sev_guest`` as provider (a TDX guest, or
a kernel without the SEV provider, also has the directory). ``/dev/sev-guest`` counts as present
when it is a character device that opens read-write.

Neither present is :class:`PlatformUnavailableError`, naming every path tried and why; there is
no fake fallback. Paths are parameters so tests and unusual layouts can point elsewhere.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from skr.errors import DeviceError, PlatformUnavailableError
from skr.snp.configfs import DEFAULT_TSM_REPORT_ROOT, ConfigfsTsmProvider
from skr.snp.device import DEFAULT_SEV_GUEST_PATH, ReportProvider, SevGuestDevice

__all__ = ["select_provider"]

_logger = logging.getLogger(__name__)


def _sev_guest_unusable(path: str) -> str | None:
    """Why ``path`` is not a usable sev-guest device, or ``None`` when it is."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISCHR(mode):
        return "not a character device"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    return None


def select_provider(
    *,
    configfs_root: Path | str = DEFAULT_TSM_REPORT_ROOT,
    sev_guest_path: str = DEFAULT_SEV_GUEST_PATH,
    busy_retries: int = 4,
    backoff: float = 0.05,
) -> ReportProvider:
    """The first usable interface: configfs-tsm at ``configfs_root``, else ``sev_guest_path``.

    ``busy_retries`` and ``backoff`` configure :class:`SevGuestDevice` if it is chosen.

    Raises:
        PlatformUnavailableError: neither is usable; ``tried`` lists both paths.
    """
    root = Path(configfs_root)
    reasons: list[str] = []

    if root.is_dir():
        configfs = ConfigfsTsmProvider(root)
        try:
            configfs.probe()
        except DeviceError as exc:
            reasons.append(f"configfs-tsm at {root}: {exc.message}")
        else:
            _logger.info("SEV-SNP evidence via configfs-tsm at %s", root)
            return configfs
    else:
        reasons.append(f"configfs-tsm at {root}: no such directory")

    why = _sev_guest_unusable(sev_guest_path)
    if why is None:
        _logger.info("SEV-SNP evidence via %s", sev_guest_path)
        return SevGuestDevice(sev_guest_path, busy_retries=busy_retries, backoff=backoff)
    reasons.append(f"{sev_guest_path}: {why}")

    raise PlatformUnavailableError(
        "no SEV-SNP guest interface found (" + "; ".join(reasons) + "); is this an SEV-SNP confidential VM "
        "and are the devices passed to the container?",
        tried=(str(root), sev_guest_path),
    )
