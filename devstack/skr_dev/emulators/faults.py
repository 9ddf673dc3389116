"""Fault injection for the emulators: the failures real Azure services produce, on demand.

Clients must survive 429s, 5xx, hangs, garbage bodies and forged tokens, and tests must prove it.
A :class:`FaultSet` holds the armed faults; each emulator consults it per request. Transport-level
kinds (latency, 429, 500/503, hang, malformed JSON, truncated body) are applied by
:func:`faults_middleware` to requests whose aiohttp route *name* matches the fault's endpoint
pattern (``"*"``, an exact name such as ``"maa.attest"``, or a glob such as ``"maa.*"``). Semantic
kinds (bad signature, expired token, unknown kid) are taken by the code that signs a token or JWS.

Route names used by the emulators: ``entra.token``, ``entra.openid``, ``entra.jwks``,
``imds.token``, ``imds.thim``, ``maa.attest``, ``maa.certs``, ``maa.openid``, ``kds.vcek``,
``kds.cert_chain``, ``kds.vlek_cert_chain``, ``kds.crl``, ``certcache.vcek``, and the Key Vault
emulator's ``keyvault.*`` names.

Usage::

    faults = FaultSet([Fault(FaultKind.RATE_LIMIT, endpoint="maa.attest", retry_after=2, times=1)])
    maa = MaaEmulator(faults=faults)           # armed at start-up
    faults.add(Fault(FaultKind.LATENCY, endpoint="*", delay=0.15))   # or at run time
    # or over HTTP: POST /_emulator/faults {"kind": "error_503", "endpoint": "maa.attest", "times": 2}
"""

from __future__ import annotations

import asyncio
import enum
import fnmatch
import json
import math
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = [
    "ADMIN_ROUTE_PREFIX",
    "SEMANTIC_KINDS",
    "TRANSPORT_KINDS",
    "Fault",
    "FaultKind",
    "FaultSet",
    "FaultsMiddleware",
    "faults_middleware",
]

ADMIN_ROUTE_PREFIX = "_emulator."
_MAX_DELAY = 600.0
_MAX_RETRY_AFTER = 3600
_MAX_TIMES = 1_000_000
_MAX_FAULTS = 256
_HANG_POLL = 0.05

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FaultKind(enum.Enum):
    """What goes wrong. Values are the names used in the admin API and in configuration."""

    LATENCY = "latency"
    RATE_LIMIT = "rate_limit"
    ERROR_500 = "error_500"
    ERROR_503 = "error_503"
    HANG = "hang"
    MALFORMED_JSON = "malformed_json"
    TRUNCATED_BODY = "truncated_body"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED_TOKEN = "expired_token"
    UNKNOWN_KID = "unknown_kid"


TRANSPORT_KINDS: frozenset[FaultKind] = frozenset(
    {
        FaultKind.LATENCY,
        FaultKind.RATE_LIMIT,
        FaultKind.ERROR_500,
        FaultKind.ERROR_503,
        FaultKind.HANG,
        FaultKind.MALFORMED_JSON,
        FaultKind.TRUNCATED_BODY,
    }
)
SEMANTIC_KINDS: frozenset[FaultKind] = frozenset(
    {FaultKind.BAD_SIGNATURE, FaultKind.EXPIRED_TOKEN, FaultKind.UNKNOWN_KID}
)
# Faults that replace the response; they are taken once per request, first armed first.
_RESPONSE_KINDS = (
    FaultKind.HANG,
    FaultKind.RATE_LIMIT,
    FaultKind.ERROR_500,
    FaultKind.ERROR_503,
    FaultKind.MALFORMED_JSON,
    FaultKind.TRUNCATED_BODY,
)


@dataclass(frozen=True, slots=True)
class Fault:
    """One armed fault.

    ``endpoint`` is an aiohttp route-name pattern. ``delay`` is the added latency in seconds
    (LATENCY), or for HANG an upper bound (0 = until the client gives up or the server stops).
    ``retry_after`` is the Retry-After seconds sent with RATE_LIMIT. ``times`` is how many requests
    the fault affects before it disarms itself (``None`` = until cleared).
    """

    kind: FaultKind
    endpoint: str = "*"
    delay: float = 0.0
    retry_after: int = 1
    times: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, FaultKind):
            raise ValueError("kind must be a FaultKind")
        if not isinstance(self.endpoint, str) or not 0 < len(self.endpoint) <= 200:
            raise ValueError("endpoint must be a non-empty route-name pattern")
        if isinstance(self.delay, bool) or not isinstance(self.delay, int | float):
            raise ValueError("delay must be a number of seconds")
        if not (math.isfinite(self.delay) and 0.0 <= self.delay <= _MAX_DELAY):
            raise ValueError(f"delay must be between 0 and {_MAX_DELAY} seconds")
        if isinstance(self.retry_after, bool) or not isinstance(self.retry_after, int):
            raise ValueError("retry_after must be an integer")
        if not 0 <= self.retry_after <= _MAX_RETRY_AFTER:
            raise ValueError(f"retry_after must be between 0 and {_MAX_RETRY_AFTER}")
        if self.times is not None and (
            isinstance(self.times, bool) or not isinstance(self.times, int) or not 1 <= self.times <= _MAX_TIMES
        ):
            raise ValueError(f"times must be null or between 1 and {_MAX_TIMES}")

    def matches(self, endpoint: str) -> bool:
        """Does this fault apply to the route named ``endpoint``?"""
        return fnmatch.fnmatchcase(endpoint, self.endpoint)

    def to_json(self) -> dict[str, Any]:
        """The admin-API representation."""
        return {
            "kind": self.kind.value,
            "endpoint": self.endpoint,
            "delay": self.delay,
            "retry_after": self.retry_after,
            "times": self.times,
        }

    @classmethod
    def from_json(cls, data: object) -> Fault:
        """Parse the admin-API / configuration form; raises ValueError on anything odd."""
        if not isinstance(data, Mapping):
            raise ValueError("a fault must be a JSON object")
        unknown = set(data) - {"kind", "endpoint", "delay", "retry_after", "times"}
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        kind_name = data.get("kind")
        if not isinstance(kind_name, str):
            raise ValueError("fault 'kind' must be a string")
        try:
            kind = FaultKind(kind_name.lower())
        except ValueError:
            kinds = ", ".join(k.value for k in FaultKind)
            raise ValueError(f"unknown fault kind {kind_name[:40]!r}; expected one of {kinds}") from None
        return cls(
            kind=kind,
            endpoint=data.get("endpoint", "*"),
            delay=data.get("delay", 0.0),
            retry_after=data.get("retry_after", 1),
            times=data.get("times"),
        )


class FaultSet:
    """The armed faults of one or more emulators. Thread-safe: tests may arm faults from any thread."""

    def __init__(self, faults: Iterable[Fault] = ()) -> None:
        self._lock = threading.Lock()
        self._entries: list[list[Any]] = []  # [Fault, remaining uses or None]
        for fault in faults:
            self.add(fault)

    def __repr__(self) -> str:
        return f"FaultSet({list(self.active())!r})"

    def add(self, fault: Fault) -> None:
        """Arm ``fault``."""
        with self._lock:
            if len(self._entries) >= _MAX_FAULTS:
                raise ValueError(f"at most {_MAX_FAULTS} faults may be armed")
            self._entries.append([fault, fault.times])

    def clear(self, endpoint: str | None = None) -> None:
        """Disarm every fault, or only those whose endpoint pattern equals ``endpoint``."""
        with self._lock:
            if endpoint is None:
                self._entries.clear()
            else:
                self._entries = [entry for entry in self._entries if entry[0].endpoint != endpoint]

    def active(self) -> tuple[Fault, ...]:
        """The armed faults, oldest first (``times`` shows the remaining uses)."""
        with self._lock:
            return tuple(
                entry[0]
                if entry[1] == entry[0].times
                else Fault(entry[0].kind, entry[0].endpoint, entry[0].delay, entry[0].retry_after, entry[1])
                for entry in self._entries
            )

    def take(self, endpoint: str, kinds: Iterable[FaultKind]) -> Fault | None:
        """Consume one use of the oldest armed fault of one of ``kinds`` matching ``endpoint``."""
        wanted = frozenset(kinds)
        with self._lock:
            for index, entry in enumerate(self._entries):
                fault: Fault = entry[0]
                if fault.kind in wanted and fault.matches(endpoint):
                    if entry[1] is not None:
                        entry[1] -= 1
                        if entry[1] <= 0:
                            del self._entries[index]
                    return fault
        return None

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._entries)


def _route_name(request: web.Request) -> str:
    route = request.match_info.route
    name = route.name if route is not None else None
    if name is None and route is not None and route.resource is not None:
        name = route.resource.name
    return name or ""


async def _hang(request: web.Request, fault: Fault, stopping: asyncio.Event | None) -> None:
    """Sleep until the client disconnects, the server stops, or ``fault.delay`` (if set) elapses."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + fault.delay if fault.delay > 0 else None
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        if stopping is not None and stopping.is_set():
            return
        if deadline is not None and loop.time() >= deadline:
            return
        await asyncio.sleep(_HANG_POLL)


def _malformed(body: bytes) -> bytes:
    # Cut a JSON document in half: never valid JSON, always the right content type.
    if len(body) < 2:
        return b'{"'
    return body[: len(body) // 2]


async def _truncated(request: web.Request, status: int, headers: Mapping[str, str], body: bytes) -> web.StreamResponse:
    """Declare the full Content-Length, send half of the body, then drop the connection."""
    full = body if len(body) >= 2 else b'{"error": "truncated"}'
    response = web.StreamResponse(status=status)
    for name in ("Content-Type", "Retry-After", "WWW-Authenticate"):
        if name in headers:
            response.headers[name] = headers[name]
    response.content_length = len(full)
    await response.prepare(request)
    await response.write(full[: len(full) // 2])
    if request.transport is not None:
        request.transport.close()
    return response


def _error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": {"code": str(status), "message": message}}).encode()


class FaultsMiddleware:
    """The aiohttp middleware applying the transport-level faults of ``faultset``."""

    __middleware_version__ = 1  # aiohttp new-style middleware marker

    def __init__(self, faultset: FaultSet, stopping: asyncio.Event | None = None) -> None:
        self.faultset = faultset
        self.stopping = stopping

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = _route_name(request)
        if not endpoint or endpoint.startswith(ADMIN_ROUTE_PREFIX):
            return await handler(request)
        latency = self.faultset.take(endpoint, (FaultKind.LATENCY,))
        if latency is not None and latency.delay > 0:
            await asyncio.sleep(latency.delay)
        fault = self.faultset.take(endpoint, _RESPONSE_KINDS)
        if fault is None:
            return await handler(request)
        if fault.kind is FaultKind.HANG:
            await _hang(request, fault, self.stopping)
            return web.Response(
                status=504, body=_error_body(504, "emulated hang ended"), content_type="application/json"
            )
        if fault.kind is FaultKind.RATE_LIMIT:
            return web.Response(
                status=429,
                body=_error_body(429, "Too many requests (emulated rate limit)."),
                content_type="application/json",
                headers={"Retry-After": str(fault.retry_after)},
            )
        if fault.kind is FaultKind.ERROR_500:
            return web.Response(
                status=500, body=_error_body(500, "Internal server error (emulated)."), content_type="application/json"
            )
        if fault.kind is FaultKind.ERROR_503:
            return web.Response(
                status=503,
                body=_error_body(503, "Service unavailable (emulated)."),
                content_type="application/json",
                headers={"Retry-After": str(fault.retry_after)},
            )
        # MALFORMED_JSON / TRUNCATED_BODY corrupt what the real handler would have sent.
        response = await handler(request)
        body = response.body if isinstance(response, web.Response) and isinstance(response.body, bytes) else b""
        content_type = response.headers.get("Content-Type", "application/json")
        if fault.kind is FaultKind.MALFORMED_JSON:
            return web.Response(status=response.status, body=_malformed(body), headers={"Content-Type": content_type})
        return await _truncated(request, response.status, response.headers, body)


def faults_middleware(faultset: FaultSet, stopping: asyncio.Event | None = None) -> FaultsMiddleware:
    """An aiohttp middleware applying the transport-level faults of ``faultset`` by route name.

    ``stopping`` (optional) ends emulated hangs when set; :class:`~skr_dev.emulators.server.EmulatorServer`
    wires it up for the apps it serves.
    """
    return FaultsMiddleware(faultset, stopping)
