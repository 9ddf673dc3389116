"""Base64 in its few sanctioned forms, each under a name that says how strict it is.

Why one module: the same bytes used to be decoded eight ways, each with its own accidental
leniency. The strict decoders are what untrusted protocol fields get (JOSE segments, JWK members,
``x5c``). The two lenient ones exist because a call site must keep accepting what it accepted
before (the Go sidecar's clients, operators' files); their names say what they let through.

Every decoder raises :class:`EncodingError` (a ``ValueError``) or, where given, the caller's
``error`` class, with a message that names the field (``what``) and never echoes the value.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Final

__all__ = [
    "EncodingError",
    "b64_decode_lenient_alphabet",
    "b64_decode_lenient_padding",
    "b64_decode_strict",
    "b64_encode",
    "b64url_decode_strict",
    "b64url_encode",
]

_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_B64STD_RE: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class EncodingError(ValueError):
    """Text that is not the encoding its field demands."""


ErrorFactory = Callable[[str], Exception]


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, the only form JOSE producers should emit (Go's RawURLEncoding needs it)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64_encode(data: bytes) -> str:
    """Padded standard base64, as the Go sidecar's JSON fields and ``x5c`` carry it."""
    return base64.b64encode(data).decode("ascii")


def _check_size(text_len: int, *, what: str, max_bytes: int | None, error: ErrorFactory) -> None:
    # Refuse before decoding: the encoded text of ``max_bytes`` bytes is at most this long.
    if max_bytes is not None and text_len > (max_bytes * 4) // 3 + 4:
        raise error(f"{what} is too large (limit {max_bytes} bytes)")


def b64url_decode_strict(
    text: str | bytes, *, what: str = "value", max_bytes: int | None = None, error: ErrorFactory = EncodingError
) -> bytes:
    """Decode base64url, padded or unpadded; reject the standard alphabet, whitespace and bad lengths."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise error(f"{what} is not base64url text") from None
    _check_size(len(text), what=what, max_bytes=max_bytes, error=error)
    if _B64URL_RE.fullmatch(text) is None:
        raise error(f"{what} is not valid base64url")
    body = text.rstrip("=")
    padding_len = len(text) - len(body)
    if len(body) % 4 == 1 or (padding_len and len(text) % 4 != 0):
        raise error(f"{what} has an invalid base64url length")
    try:
        decoded = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what} is not valid base64url") from None
    if max_bytes is not None and len(decoded) > max_bytes:
        raise error(f"{what} is too large (limit {max_bytes} bytes)")
    return decoded


def b64_decode_strict(
    text: str, *, what: str = "value", max_bytes: int | None = None, error: ErrorFactory = EncodingError
) -> bytes:
    """Decode padded standard base64 only (the encoding RFC 7515 prescribes for ``x5c`` entries)."""
    _check_size(len(text), what=what, max_bytes=max_bytes, error=error)
    if _B64STD_RE.fullmatch(text) is None or len(text) % 4 != 0:
        raise error(f"{what} is not valid padded base64")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what} is not valid padded base64") from None


def b64_decode_lenient_padding(text: str | bytes, *, what: str = "value") -> bytes:
    """Standard alphabet, padding required, but surplus ``=`` after a full group is tolerated.

    This is exactly Python's ``base64.b64decode(text, validate=True)``, which the CLI, the
    ``SkrSideCarArgs`` parser and the security-context files always used; keeping it (rather than
    :func:`b64_decode_strict`) means those inputs are accepted exactly as before. No whitespace.
    """
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EncodingError(f"{what} is not standard base64") from None


def b64_decode_lenient_alphabet(text: str, *, what: str = "value") -> bytes:
    """Either alphabet (guessed from ``-``/``_``), padding optional, whitespace anywhere ignored.

    Deliberately lenient: the Go sidecar documents standard base64 for ``runtime_data``, but this
    API has always also taken URL-safe and unpadded text; refusing it now would break its clients.
    """
    compact = "".join(text.split())
    alphabet = b"-_" if ("-" in compact or "_" in compact) else b"+/"
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), altchars=alphabet, validate=True)
    except (binascii.Error, ValueError):
        raise EncodingError(f"{what} is not valid base64") from None
