"""Who may talk to the local API: the request origin policy (issue 13, item 1).

Why: the API hands out private keys and MAA tokens to anything that can reach the listening
socket. A browser on the same machine (a developer's laptop running ``skr dev``, a headless
browser inside the pod) can reach loopback too. Two browser-borne attacks matter:

* **DNS rebinding**: a page on ``evil.example`` makes its own name resolve to 127.0.0.1 and then
  talks to the sidecar "same-origin". The browser still sends ``Host: evil.example:PORT``, so the
  Host header must name the address the sidecar listens on.
* **Cross-site requests**: a page POSTs with a "simple" content type (text/plain, form,
  multipart), which needs no CORS preflight. Browsers mark such requests with ``Origin`` and (all
  current engines) ``Sec-Fetch-Site``. No legitimate client of this API is a web page, so any
  ``Origin`` header, and any ``Sec-Fetch-Site`` other than ``none`` / ``same-origin``, is refused.

The policy (one function, no I/O, so it is the same for ``skr serve`` and ``skr dev``):

1. ``Host`` must be present exactly once (HTTP/1.1 requires it). A request without Host is accepted
   only for HTTP/1.0, which predates Host; browsers always send one, so this opens nothing.
2. Its host part must be ``localhost``, ``127.0.0.1``, ``[::1]`` or the literal address the
   connection arrived on; its port must be the port the connection arrived on (no port means 80).
3. No ``Origin`` header at all (``null`` included).
4. ``Sec-Fetch-Site`` absent, ``none`` or ``same-origin``.

``curl localhost:PORT/key/release -d '{...}'`` sends ``Host: localhost:PORT``, a form content
type and neither Origin nor Sec-Fetch-Site, so it keeps working; content type is deliberately not
part of the policy (the Go sidecar's clients send whatever their HTTP library defaults to).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

from skr.errors import OriginNotAllowedError

__all__ = ["LOOPBACK_NAMES", "check_request_origin"]

LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
_ALLOWED_FETCH_SITES: Final = frozenset({"none", "same-origin"})
_DIGITS: Final = frozenset("0123456789")


def _split_host(value: str) -> tuple[str, int] | None:
    """``host[:port]`` or ``[v6][:port]`` → (lowercase host, port); None when malformed.

    ASCII digits only: ``str.isdigit`` and ``int`` accept superscripts and full-width digits.
    """
    if value.startswith("["):
        inner, sep, rest = value[1:].partition("]")
        if not sep:
            return None
        host, port_text = inner, rest.removeprefix(":") if rest.startswith(":") else None
        if rest and port_text is None:
            return None
    elif ":" in value:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, None
    if port_text is None:
        return host.lower(), 80
    if not port_text or len(port_text) > 5 or not set(port_text) <= _DIGITS:
        return None
    return host.lower(), int(port_text)


def _normalise_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return text.lower()


def check_request_origin(
    *,
    hosts: Sequence[str],
    origins: Sequence[str],
    fetch_sites: Sequence[str],
    http_version: tuple[int, int],
    local_address: str,
    local_port: int,
) -> None:
    """Raise :class:`OriginNotAllowedError` unless the request may come from a local non-browser client.

    ``hosts``, ``origins`` and ``fetch_sites`` are every value of those headers (a repeated header
    is refused rather than guessed at); ``local_address`` / ``local_port`` are the accepting
    socket's, which is how ``--port 0`` and wildcard binds still know "the listening address".
    """
    if origins:
        raise OriginNotAllowedError("requests carrying an Origin header (from a web page) are refused")
    if len(fetch_sites) > 1 or (fetch_sites and fetch_sites[0].strip().lower() not in _ALLOWED_FETCH_SITES):
        raise OriginNotAllowedError("cross-site requests (Sec-Fetch-Site) are refused")
    if not hosts:
        if http_version < (1, 1):
            return
        raise OriginNotAllowedError("a Host header naming the sidecar's listening address is required")
    if len(hosts) > 1:
        raise OriginNotAllowedError("exactly one Host header is allowed")
    parsed = _split_host(hosts[0].strip())
    if parsed is None:
        raise OriginNotAllowedError("the Host header is malformed")
    host, port = parsed
    allowed = LOOPBACK_NAMES | {_normalise_address(local_address)}
    if _normalise_address(host) not in allowed or port != local_port:
        # The value is attacker-chosen; it is not echoed back or logged.
        raise OriginNotAllowedError(
            f"the Host header must name the sidecar's listening address (localhost or 127.0.0.1, port {local_port})"
        )
