"""``skr release``: the init-container mode. Release keys, write them, exit 0 only if all are there.

Each key is written atomically (a temporary file in the same directory, ``fsync``, ``rename``) with
mode 0600, typically into a memory-backed ``emptyDir`` the application container mounts. Transient
failures (timeouts, unavailable services, collateral not yet published) are retried with jittered
backoff until ``--timeout``; permanent ones (policy denied, key missing, endpoint not allowed)
stop at once. The exit code says which class of failure happened (see :mod:`skr.errors`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from skr.core.crypto import export_private_jwk
from skr.core.keyvault import KeyName
from skr.errors import (
    EXIT_OK,
    EXIT_USAGE,
    CollateralUnavailableError,
    ConfigError,
    IdentityUnavailableError,
    SkrError,
    UpstreamError,
    UpstreamTimeoutError,
    exit_code_for,
)
from skr.primitives.retry import Backoff, RetrySchedule
from skr.shell.config import RELEASE_FORMATS, Settings
from skr.shell.wiring import build_runtime
from skr.snp.device import ReportProvider
from skr.snp.provider import select_provider
from skr.snp.verify import TrustedRoots

__all__ = ["FORMATS", "ReleaseJob", "parse_kids", "run_release", "write_atomically"]

_logger = logging.getLogger(__name__)

FORMATS: Final = RELEASE_FORMATS
RETRYABLE: Final = (UpstreamError, UpstreamTimeoutError, CollateralUnavailableError, IdentityUnavailableError)


@dataclass(frozen=True, slots=True)
class ReleaseJob:
    """What ``skr release`` was asked to do."""

    kids: tuple[str, ...]
    out: Path
    fmt: str = "jwk"
    timeout: float = 300.0
    enc: str = "CKM_RSA_AES_KEY_WRAP"

    def destination(self, kid: str) -> Path:
        """``--out`` is a directory (one file per key) unless one key goes to a non-directory path."""
        if len(self.kids) == 1 and not self.out.is_dir() and not str(self.out).endswith("/"):
            return self.out
        name = KeyName.parse(kid).name
        return self.out / f"{name}.{FORMATS[self.fmt]}"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 so readers see all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    # The rename is durable only once the directory is: `skr release` may exit at once after this.
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def run_release(
    settings: Settings,
    job: ReleaseJob,
    *,
    platform: ReportProvider | None = None,
    rng: random.Random | None = None,
    environ: Mapping[str, str] | None = None,
    amd_roots: TrustedRoots | None = None,
) -> int:
    """Release every key of ``job``; return the process exit code."""
    if job.fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}")
    for kid in job.kids:
        KeyName.parse(kid)
    provider = platform or select_provider(configfs_root=settings.configfs_root, sev_guest_path=settings.device_path)
    runtime = await build_runtime(settings, platform=provider, environ=environ, amd_roots=amd_roots, one_shot=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + job.timeout
    # One schedule for the whole job: waits of up to 1, 2, 4 … 30 s, never past the job's deadline.
    schedule = RetrySchedule(
        Backoff(1.0, 30.0),
        clock=loop.time,
        deadline=deadline,
        rng=rng or random.Random(),  # noqa: S311 - backoff jitter
    )
    pending = list(job.kids)
    try:
        while pending:
            kid = pending[0]
            try:
                released = await asyncio.wait_for(
                    runtime.releaser.release(kid=kid, enc=job.enc), max(0.1, deadline - loop.time())
                )
            except (SkrError, TimeoutError) as exc:
                error = exc if isinstance(exc, SkrError) else UpstreamTimeoutError("release did not finish in time")
                wait = schedule.next_delay() if isinstance(error, RETRYABLE) else None
                if wait is None:  # not retryable, or the next attempt could not start before the deadline
                    _logger.error("key %s not released: %s (%s)", kid, error.message, error.code)
                    return exit_code_for(error)
                _logger.warning("key %s: %s; retrying in %.1f s", kid, error.message, wait)
                await asyncio.sleep(wait)
                continue
            try:
                data = export_private_jwk(released.jwk.reveal(), job.fmt)
            except ValueError as exc:
                _logger.error("key %s cannot be written as %s: %s", kid, job.fmt, exc)
                return EXIT_USAGE
            destination = job.destination(kid)
            write_atomically(destination, data.reveal())
            _logger.info("wrote key %s (%s) to %s", kid, released.kty, destination)
            pending.pop(0)
            schedule.reset()  # the next key starts from short waits again; the deadline stays
        return EXIT_OK
    finally:
        await runtime.close()


def parse_kids(values: Sequence[str]) -> tuple[str, ...]:
    """``--kid a --kid b`` and ``--kid a,b`` both work."""
    kids = tuple(part.strip() for value in values for part in value.split(",") if part.strip())
    if not kids:
        raise ConfigError("at least one --kid is required")
    return kids
