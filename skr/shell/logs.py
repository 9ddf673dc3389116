"""Logging for the CLI: JSON (containers) or text lines, a request id on every line, and redaction.

Library modules only call ``logging.getLogger(__name__)``; this module is used by the CLI alone.
Secrets never reach log calls by design (they travel in :class:`skr.primitives.sensitive.Sensitive`); the
redacting filter is a second line of defence that masks anything shaped like a JWT, a PEM private
key or a bearer header, at every level.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

__all__ = ["configure_logging", "redact", "request_id_var"]

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# Whole JWTs, and their header.claims prefix (a truncated token is still a secret).
_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}(\.[A-Za-z0-9_-]*)?")
_PEM_PRIVATE: Final = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S)
_BEARER: Final = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_JSON_SECRET: Final = re.compile(r'(?i)("(?:k|d|p|q|dp|dq|qi|access_token|token|client_secret)"\s*:\s*")[^"]{6,}(")')


def redact(text: str) -> str:
    """Mask token-, key- and secret-shaped substrings."""
    text = _PEM_PRIVATE.sub("<redacted private key>", text)
    text = _JWT.sub("<redacted token>", text)
    text = _BEARER.sub(r"\1<redacted>", text)
    return _JSON_SECRET.sub(r"\1<redacted>\2", text)


class _ContextFilter(logging.Filter):
    """Adds the request id and the simulated-platform banner; redacts the message."""

    def __init__(self, banner: str | None) -> None:
        super().__init__()
        self._banner = banner

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        message = redact(record.getMessage())
        if self._banner:
            message = f"[{self._banner}] {message}"
        record.msg, record.args = message, None
        if record.exc_info and record.exc_info[1] is not None:
            # Keep the traceback's shape, not its values: exception text may quote inputs.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")


def in_container() -> bool:
    return (
        Path("/.dockerenv").exists() or Path("/run/.containerenv").exists() or "KUBERNETES_SERVICE_HOST" in os.environ
    )


def configure_logging(
    level: str = "info", fmt: str = "auto", *, banner: str | None = None, stream: TextIO | None = None
) -> None:
    """Configure the root logger once for the CLI."""
    if fmt == "auto":
        fmt = "json" if in_container() else "text"
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    handler.addFilter(_ContextFilter(banner))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party libraries log request details (URLs, headers) at debug level; keep them at warning
    # so even debug logs stay free of tokens the SDKs might echo.
    for noisy in ("azure", "msal", "urllib3", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
