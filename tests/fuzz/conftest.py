"""A real sidecar on loopback for the HTTP fuzzer, driven from a background event loop.

Why a thread: hypothesis drives plain synchronous test functions, while the sidecar and the aiohttp
client need a running event loop. The loop lives in its own thread for the whole module; tests hand
it coroutines and block on the result, so every fuzzed request still crosses a real socket.

Why nothing can leave the machine: both allow-lists are pinned to one loopback address whose port is
bound but never listening (connections to it are refused at once), and the workload-identity
authority points at that same address. Every other MAA or vault host is refused by the allow-list
before any connection is made; THIM, the Azure certificate cache and AMD KDS are disabled.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from yarl import URL

from skr.shell.config import Settings
from skr.shell.serve import RunningSidecar, start_sidecar
from skr_dev.simulated.amd import SimulatedAmd
from skr_dev.simulated.platform import SimulatedPlatform

T = TypeVar("T")

AMD = SimulatedAmd.create()
MAX_BODY_BYTES = 65536


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer: status, lower-cased headers and the raw body."""

    method: str
    target: str
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def from_app(self) -> bool:
        """True when the answer went through the sidecar's middleware (it always sets a request id)."""
        return "x-request-id" in self.headers

    def json(self) -> Any:
        return json.loads(self.body)

    def describe(self) -> str:
        return f"{self.method} {self.target[:160]!r} -> {self.status} {self.body[:300]!r}"


@dataclass(frozen=True, slots=True)
class RawReply:
    """What came back on a raw socket: a parsed response, or nothing (``status`` is None)."""

    request: bytes
    status: int | None
    headers: Mapping[str, str]
    body: bytes
    timed_out: bool
    received: bytes

    def as_reply(self) -> Reply:
        assert self.status is not None
        head = self.request.split(b"\r\n", 1)[0][:160].decode("latin-1")
        method = "HEAD" if head.startswith("HEAD ") else "RAW"
        return Reply(method, head, self.status, self.headers, self.body)


def _parse_raw_response(data: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """Split a raw HTTP/1.x answer; interim 1xx responses (100 Continue) are skipped."""
    while data.startswith(b"HTTP/"):
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        if 100 <= status < 200:
            data = rest
            continue
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        length = headers.get("content-length")
        body = rest[: int(length)] if length is not None and length.isdigit() else rest
        return status, headers, body
    return None, {}, b""


class _UnexpectedErrors(logging.Handler):
    """Collects log records that mean "an exception escaped where none should" in the sidecar."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        unexpected = (
            (record.name.startswith("skr") and record.exc_info is not None)
            or (record.name == "aiohttp.server" and record.getMessage() == "Unhandled exception")
            or record.name == "asyncio"
        )
        if unexpected:
            self.records.append(record)

    def summary(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()} ({r.exc_info[0] if r.exc_info else ''})" for r in self.records]


class LiveSidecar:
    """A started sidecar plus a client, both on one background loop; counts every request sent."""

    def __init__(self, workdir: Path) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fuzz-sidecar", daemon=True)
        # A bound but never listening socket: connecting to its port is refused immediately.
        self._refuser = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._refuser.bind(("127.0.0.1", 0))
        self.allowed_endpoint = f"127.0.0.1:{self._refuser.getsockname()[1]}"
        token_file = workdir / "federated-token"
        token_file.write_text("not-a-real-federated-token")
        self._environ = {
            "AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000001",
            "AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000002",
            "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
            "AZURE_AUTHORITY_HOST": f"https://{self.allowed_endpoint}",
        }
        self._running: RunningSidecar | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0
        self.sent = 0
        self.errors = _UnexpectedErrors()

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        logging.getLogger().addHandler(self.errors)
        self._thread.start()
        self._call(self._start(), timeout=120)

    async def _start(self) -> None:
        settings = Settings(
            host="127.0.0.1",
            port=0,
            thim_url="",
            azcache_url="",
            kds_url="",
            allowed_maa_endpoints=(self.allowed_endpoint,),
            allowed_akv_endpoints=(self.allowed_endpoint,),
            maa_timeout=1.0,
            akv_timeout=1.0,
            collateral_timeout=1.0,
            max_body_bytes=MAX_BODY_BYTES,
        )
        self._running = await start_sidecar(
            settings, platform=SimulatedPlatform(AMD), amd_roots=AMD.trusted_roots(), environ=self._environ
        )
        await asyncio.wait_for(asyncio.shield(self._running.warm_up), 60)
        self.port = self._running.port
        # force_close: a connection the server closed after an error is never reused by accident.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    def stop(self) -> None:
        try:
            self._call(self._stop(), timeout=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
            self._refuser.close()
            logging.getLogger().removeHandler(self.errors)

    async def _stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._running is not None:
            await self._running.stop()

    def _call(self, coroutine: Coroutine[Any, Any, T], *, timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    # --- requests --------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        target: str,
        *,
        body: bytes | None = None,
        chunks: Sequence[bytes] | None = None,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        skip_auto_headers: Sequence[str] = (),
    ) -> Reply:
        """Send one request with aiohttp's client; ``target`` is sent exactly as given (no re-encoding).

        ``chunks`` sends the body with chunked transfer encoding (no Content-Length).
        """
        self.sent += 1
        return self._call(self._request(method, target, body, chunks, headers, skip_auto_headers), timeout=60)

    async def _request(
        self,
        method: str,
        target: str,
        body: bytes | None,
        chunks: Sequence[bytes] | None,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None,
        skip_auto_headers: Sequence[str],
    ) -> Reply:
        assert self._session is not None
        data: bytes | AsyncIterator[bytes] | None = body
        if chunks is not None:

            async def stream() -> AsyncIterator[bytes]:
                for chunk in chunks:
                    yield chunk

            data = stream()
        url = URL(self.base_url + target, encoded=True)
        async with self._session.request(
            method, url, data=data, headers=headers, skip_auto_headers=skip_auto_headers
        ) as response:
            payload = await response.read()
            return Reply(method, target, response.status, {k.lower(): v for k, v in response.headers.items()}, payload)

    def post_json(self, target: str, document: Any) -> Reply:
        return self.request("POST", target, body=json.dumps(document).encode())

    def raw(self, parts: bytes | Sequence[bytes], *, pause: float = 0.0, timeout: float = 2.0) -> RawReply:
        """Write bytes on a fresh socket (``pause`` seconds between parts) and read the answer.

        For requests aiohttp's client refuses to produce: broken request lines, bogus framing,
        non-UTF-8 bytes, oversized headers. The caller should send ``Connection: close`` where it
        can, so the server ends the exchange; otherwise reading stops after ``timeout``.
        ``Host: x`` stands for the sidecar's own address (see :meth:`own_host`).
        """
        self.sent += 1
        chunks = [self.own_host(parts)] if isinstance(parts, bytes) else [self.own_host(p) for p in parts]
        received = b""
        timed_out = False
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            try:
                for index, chunk in enumerate(chunks):
                    if index and pause:
                        time.sleep(pause)
                    sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed early; what it sent is still readable
            while True:
                try:
                    piece = sock.recv(65536)
                except TimeoutError:
                    timed_out = True
                    break
                except ConnectionResetError:
                    break
                if not piece:
                    break
                received += piece
        status, headers, body = _parse_raw_response(received)
        return RawReply(b"".join(chunks), status, headers, body, timed_out, received)

    def abandon(self, data: bytes) -> None:
        """Write a partial request and hang up without reading: a client that goes away."""
        self.sent += 1
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as sock:
            sock.sendall(self.own_host(data))

    def own_host(self, data: bytes) -> bytes:
        """Replace the placeholder ``Host: x`` with this sidecar's address and port.

        The origin policy (skr/shell/origin.py) refuses a foreign Host with 403 before routing, so
        without this the raw cases would test that policy instead of the parser and handlers.
        """
        return data.replace(b"Host: x\r\n", b"Host: 127.0.0.1:%d\r\n" % self.port)

    def wait_for_identity_flights(self, *, timeout: float) -> None:
        """Block until no identity token fetch is in flight, then collect garbage.

        Peeks at the identity's private in-flight table: there is no public signal for "the
        background fetch has finished", and a finished task is only reported when collected.
        """
        assert self._running is not None
        identity = self._running.runtime.identity
        deadline = time.monotonic() + timeout
        while getattr(identity, "_flights", {}) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._call(self._collect(), timeout=30)

    @staticmethod
    async def _collect() -> None:
        await asyncio.sleep(0)
        gc.collect()

    def status_ok(self) -> bool:
        """GET /status answers 200 STATUS OK (not counted as a fuzzed request)."""
        reply = self._call(self._request("GET", "/status", None, None, None, ()), timeout=30)
        return reply.status == 200 and reply.json() == {"message": "STATUS OK"}


@pytest.fixture(scope="module")
def live_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSidecar]:
    harness = LiveSidecar(tmp_path_factory.mktemp("fuzz-sidecar"))
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()
