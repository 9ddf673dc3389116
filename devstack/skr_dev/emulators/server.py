"""Serving an emulator: a loopback-only aiohttp server with request recording and admin routes.

Every emulator is an ordinary ``aiohttp.web.Application``; :class:`EmulatorServer` runs one on a
real socket bound to a loopback address (anything else is refused), records each request
(Authorization values redacted) and adds the admin routes every emulator shares:

* ``GET/POST/DELETE /_emulator/faults``  list, arm (a fault object or a list of them), disarm
  (``?endpoint=NAME`` for one endpoint pattern)
* ``GET/DELETE /_emulator/requests``     the recorded requests, or forget them

Usage::

    server = EmulatorServer("maa")
    await server.start(app, ssl_context=ca.server_ssl_context())
    ...  # talk to server.url
    await server.stop()

:class:`HostedEmulator` is the small base the bundled emulators share: ``await emu.start(ca=ca)``
builds the app, serves it and remembers the URL; ``async with emu.running(ca=ca): ...`` does the same
with clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import CIMultiDict, CIMultiDictProxy

from skr_dev.emulators.faults import Fault, FaultSet, FaultsMiddleware, faults_middleware
from skr_dev.emulators.tls import TestCertificateAuthority

__all__ = [
    "DEFAULT_CLIENT_MAX_SIZE",
    "FAULTS_KEY",
    "EmulatorServer",
    "HostedEmulator",
    "RequestRecord",
    "create_emulator_app",
    "ensure_loopback",
    "json_response",
]

_logger = logging.getLogger(__name__)

DEFAULT_CLIENT_MAX_SIZE = 1024 * 1024
FAULTS_KEY = web.AppKey("skr_dev.emulators.faults", FaultSet)
_MAX_RECORDS = 10_000
_MAX_ADMIN_BODY = 64 * 1024
_SHUTDOWN_TIMEOUT = 1.0
_REDACTED_HEADERS = ("Authorization", "Proxy-Authorization", "X-Identity-Header", "Cookie")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: object, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A compact JSON response (``application/json; charset=utf-8``), the way Azure services answer."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    response = web.Response(status=status, body=body, headers=dict(headers or {}))
    response.content_type = "application/json"
    response.charset = "utf-8"
    return response


def ensure_loopback(host: str) -> str:
    """Return ``host`` if it is a loopback IP literal; raise ValueError otherwise."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"emulators listen on loopback IP literals only (127.0.0.1 or ::1), not {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"emulators listen on loopback only; refusing {host!r}")
    return host


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request an emulator received. Authorization-like header values are redacted."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    time: float
    query: str = ""
    route: str = ""
    status: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``/_emulator/requests`` representation."""
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "route": self.route,
            "status": self.status,
            "time": self.time,
            "headers": [[name, value] for name, value in self.headers.items()],
        }


def _redacted_headers(headers: Mapping[str, str]) -> CIMultiDictProxy[str]:
    copy: CIMultiDict[str] = CIMultiDict()
    redacted = {h.lower() for h in _REDACTED_HEADERS}
    for name, value in headers.items():
        if name.lower() in redacted:
            scheme = value.split(" ", 1)[0] if " " in value else ""
            copy.add(name, f"{scheme} <redacted>".strip())
        else:
            copy.add(name, value)
    return CIMultiDictProxy(copy)


def create_emulator_app(
    *, faults: FaultSet | None = None, client_max_size: int = DEFAULT_CLIENT_MAX_SIZE
) -> web.Application:
    """A bare application wired for fault injection (``app[FAULTS_KEY]`` holds the FaultSet)."""
    faultset = faults if faults is not None else FaultSet()
    app = web.Application(client_max_size=client_max_size, middlewares=[faults_middleware(faultset)])
    app[FAULTS_KEY] = faultset
    return app


def _find_faults_middleware(app: web.Application) -> FaultsMiddleware | None:
    for middleware in app.middlewares:
        if isinstance(middleware, FaultsMiddleware):
            return middleware
    return None


class EmulatorServer:
    """Runs one aiohttp application on a loopback socket, over HTTPS when given an SSL context."""

    def __init__(self, name: str = "emulator") -> None:
        self.name = name
        self.requests: list[RequestRecord] = []
        self.faults: FaultSet | None = None
        self._runner: web.AppRunner | None = None
        self._socket: socket.socket | None = None
        self._stopping = asyncio.Event()
        self._scheme = "http"
        self._host = "127.0.0.1"
        self._port = 0

    def __repr__(self) -> str:
        state = self.url if self._runner is not None else "stopped"
        return f"EmulatorServer({self.name!r}, {state})"

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        if self._runner is None:
            raise RuntimeError(f"emulator {self.name!r} is not running")
        return self._port

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT`` (``http`` without TLS, ``[::1]`` for IPv6), no trailing slash."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{self._scheme}://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(
        self,
        app: web.Application,
        *,
        ssl_context: ssl.SSLContext | None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Serve ``app`` on ``host:port`` (port 0 = any free port). Loopback hosts only."""
        ensure_loopback(host)
        if self._runner is not None:
            raise RuntimeError(f"emulator {self.name!r} is already running")
        if not 0 <= port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        self._install(app)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.setblocking(False)
            runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
            await runner.setup()
            site = web.SockSite(runner, sock, ssl_context=ssl_context)
            await site.start()
        except BaseException:
            sock.close()
            raise
        self._runner = runner
        self._socket = sock
        self._scheme = "https" if ssl_context is not None else "http"
        self._host = host
        self._port = int(sock.getsockname()[1])
        self._stopping.clear()
        _logger.info("emulator %s listening on %s", self.name, self.url)

    async def stop(self) -> None:
        """Stop serving; emulated hangs end, in-flight requests get a short grace period."""
        runner, self._runner = self._runner, None
        self._stopping.set()
        if runner is not None:
            await runner.cleanup()
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    # --- wiring -----------------------------------------------------------------------------------

    def _install(self, app: web.Application) -> None:
        middleware = _find_faults_middleware(app)
        if middleware is None:
            faultset = app.get(FAULTS_KEY) or FaultSet()
            middleware = faults_middleware(faultset)
            app.middlewares.append(middleware)
        if middleware.stopping is None:
            middleware.stopping = self._stopping
        self.faults = middleware.faultset
        if FAULTS_KEY not in app:
            app[FAULTS_KEY] = middleware.faultset
        app.middlewares.insert(0, self._record_middleware())
        if "_emulator.faults" not in app.router.named_resources():
            faults = middleware.faultset
            app.router.add_get("/_emulator/faults", _list_faults(faults), name="_emulator.faults")
            app.router.add_post("/_emulator/faults", _add_faults(faults))
            app.router.add_delete("/_emulator/faults", _clear_faults(faults))
        if "_emulator.requests" not in app.router.named_resources():
            app.router.add_get("/_emulator/requests", self._list_requests, name="_emulator.requests")
            app.router.add_delete("/_emulator/requests", self._clear_requests)

    def _record_middleware(self) -> Middleware:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.time()
            status: int | None = None
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                if not request.path.startswith("/_emulator/"):
                    route = request.match_info.route
                    self._record(
                        RequestRecord(
                            method=request.method,
                            path=request.path,
                            headers=_redacted_headers(request.headers),
                            time=started,
                            query=request.query_string,
                            route=(route.name or "") if route is not None else "",
                            status=status,
                        )
                    )

        return record

    def _record(self, record: RequestRecord) -> None:
        self.requests.append(record)
        if len(self.requests) > _MAX_RECORDS:
            del self.requests[: len(self.requests) - _MAX_RECORDS]

    async def _list_requests(self, request: web.Request) -> web.Response:
        return json_response({"requests": [record.to_json() for record in self.requests]})

    async def _clear_requests(self, request: web.Request) -> web.Response:
        self.requests.clear()
        return json_response({"requests": []})


def _list_faults(faults: FaultSet) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return json_response({"faults": [fault.to_json() for fault in faults.active()]})

    return handler


def _add_faults(faults: FaultSet) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > _MAX_ADMIN_BODY:
            return json_response({"error": {"code": "BadRequest", "message": "body too large"}}, status=413)
        try:
            data = json.loads(await request.read())
            items = data.get("faults") if isinstance(data, dict) and "faults" in data else data
            parsed = [Fault.from_json(item) for item in (items if isinstance(items, list) else [items])]
            for fault in parsed:
                faults.add(fault)
        except (ValueError, UnicodeDecodeError) as exc:
            return json_response({"error": {"code": "BadRequest", "message": str(exc)[:300]}}, status=400)
        return json_response({"faults": [fault.to_json() for fault in faults.active()]}, status=201)

    return handler


def _clear_faults(faults: FaultSet) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        faults.clear(request.query.get("endpoint"))
        return json_response({"faults": [fault.to_json() for fault in faults.active()]})

    return handler


class HostedEmulator:
    """Shared life cycle of the bundled emulators: build the app, serve it, remember the URL.

    Subclasses implement :meth:`build_app` and may override :meth:`_on_started`. ``requires_tls``
    says whether the real service is HTTPS-only (all are, except IMDS).
    """

    name = "emulator"
    requires_tls = True

    def __init__(self, *, faults: FaultSet | None = None) -> None:
        self.faults = faults if faults is not None else FaultSet()
        self.server = EmulatorServer(self.name)
        self._url: str | None = None

    def build_app(self) -> web.Application:
        """The aiohttp application serving this emulator's routes."""
        raise NotImplementedError

    def _new_app(self, client_max_size: int = DEFAULT_CLIENT_MAX_SIZE) -> web.Application:
        return create_emulator_app(faults=self.faults, client_max_size=client_max_size)

    @property
    def url(self) -> str:
        """The base URL clients use (no trailing slash); set once started."""
        if self._url is None:
            raise RuntimeError(f"{self.name} emulator has not been started")
        return self._url

    @property
    def requests(self) -> list[RequestRecord]:
        """Requests received so far (Authorization values redacted)."""
        return self.server.requests

    async def start(
        self,
        *,
        ca: TestCertificateAuthority | None = None,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> str:
        """Serve on ``host:port`` and return the base URL.

        HTTPS emulators need ``ca`` (a leaf for ``host`` and ``localhost`` is issued) or an
        explicit ``ssl_context``; IMDS is plain HTTP and ignores both.
        """
        ensure_loopback(host)
        context = ssl_context
        if self.requires_tls and context is None:
            if ca is None:
                raise ValueError(f"the {self.name} emulator serves HTTPS only: pass ca= or ssl_context=")
            context = ca.server_ssl_context((host, "localhost"))
        if not self.requires_tls:
            context = None
        await self.server.start(self.build_app(), ssl_context=context, host=host, port=port)
        self._url = self.server.url
        self._on_started(self._url)
        return self._url

    def _on_started(self, url: str) -> None:
        """Hook: the emulator now knows its public URL (issuer names, jku, ...)."""

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        await self.server.stop()

    @contextlib.asynccontextmanager
    async def running(
        self,
        *,
        ca: TestCertificateAuthority | None = None,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> AsyncIterator[str]:
        """``async with emu.running(ca=ca) as url:`` start, yield the URL, stop."""
        url = await self.start(ca=ca, ssl_context=ssl_context, host=host, port=port)
        try:
            yield url
        finally:
            await self.stop()
