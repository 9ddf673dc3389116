"""SIMULATED: a chip in one process serving reports to sidecars and ``skr release`` runs in others.

The bench (and its cold-start scenarios) start each measured command as a fresh interpreter; the
simulated chip stays in the parent and answers over a tiny loopback protocol. This module is the
child side too, so it imports only what ``skr release`` itself loads (plus the socket protocol):
``python -m skr_dev.simulated.remote CONFIG`` runs ``skr release`` against the remote chip, which is
how the bench measures exec -> key file without a device. Never used by production code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from skr.errors import PlatformUnavailableError
from skr.shell.config import Settings
from skr.snp.device import RawEvidence, validate_report_request
from skr.snp.report import REPORT_SIZE, Product
from skr.snp.verify import TrustedRoots
from skr_dev import SIMULATED_BANNER

if TYPE_CHECKING:
    from skr_dev.simulated.platform import SimulatedPlatform

__all__ = [
    "RemoteSimulatedPlatform",
    "SimulatedReportServer",
    "release_child_main",
    "roots_from_json",
    "roots_to_json",
    "settings_from_json",
]

_logger = logging.getLogger(__name__)

_MAX_TABLE_BYTES: Final = 64 * 1024


def _recv_exact(connection: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = connection.recv(min(remaining, 65536))
        if not chunk:
            raise ConnectionError("the report server closed the connection")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


@dataclass
class RemoteSimulatedPlatform:
    """A SIMULATED report provider for a sidecar child process: the parent's chip signs, over loopback.

    Wire format (one request per connection): ``vmpl:u8 with_certificates:u8 report_data[64]`` →
    ``report_len:u32be table_len:u32be report table``.
    """

    port: int
    name: str = "simulated"
    timeout: float = 10.0

    def get_report(self, report_data: bytes, *, vmpl: int = 0, with_certificates: bool = True) -> RawEvidence:
        data = validate_report_request(report_data, vmpl)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout) as connection:
                connection.sendall(struct.pack(">BB", vmpl, int(with_certificates)) + data)
                report_len, table_len = struct.unpack(">II", _recv_exact(connection, 8))
                if report_len != REPORT_SIZE or table_len > _MAX_TABLE_BYTES:
                    raise PlatformUnavailableError("the simulated report server sent a malformed answer")
                report = _recv_exact(connection, report_len)
                table = _recv_exact(connection, table_len)
        except (OSError, struct.error) as exc:
            raise PlatformUnavailableError(
                f"the simulated report server is unreachable ({type(exc).__name__})", tried=(f"127.0.0.1:{self.port}",)
            ) from None
        return RawEvidence(report=report, certificates=table, provider=self.name)


class SimulatedReportServer:
    """Serves :class:`RemoteSimulatedPlatform` requests from this process's simulated chip."""

    def __init__(self, platform: SimulatedPlatform) -> None:
        self._platform = platform
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header = await reader.readexactly(66)
            vmpl, with_certificates = header[0], bool(header[1])
            evidence = await asyncio.to_thread(
                self._platform.get_report, header[2:], vmpl=vmpl, with_certificates=with_certificates
            )
            writer.write(struct.pack(">II", len(evidence.report), len(evidence.certificates)))
            writer.write(evidence.report + evidence.certificates)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            _logger.warning("simulated report request failed: %s", type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def roots_to_json(roots: TrustedRoots) -> list[dict[str, Any]]:
    def pem(certificate: x509.Certificate | None) -> str | None:
        return certificate.public_bytes(serialization.Encoding.PEM).decode() if certificate is not None else None

    return [
        {"product": entry.product.value, "ark": pem(entry.ark), "ask": pem(entry.ask), "asvk": pem(entry.asvk)}
        for entry in roots.by_product
    ]


def roots_from_json(document: Sequence[Mapping[str, Any]]) -> TrustedRoots:
    chains: dict[Product, tuple[x509.Certificate, x509.Certificate, x509.Certificate | None]] = {}
    for entry in document:
        asvk = entry.get("asvk")
        chains[Product(entry["product"])] = (
            x509.load_pem_x509_certificate(entry["ark"].encode()),
            x509.load_pem_x509_certificate(entry["ask"].encode()),
            x509.load_pem_x509_certificate(asvk.encode()) if isinstance(asvk, str) else None,
        )
    return TrustedRoots.from_certificates(chains, name=f"simulated ({SIMULATED_BANNER})")


def settings_from_json(document: Mapping[str, Any]) -> Settings:
    values: dict[str, Any] = {
        name: tuple(value) if isinstance(value, list) else value for name, value in document.items()
    }
    return Settings(**values)


def release_child_main(argv: Sequence[str]) -> int:
    """``skr release`` with the remote simulated chip, as the command line runs it (fast exit included).

    CONFIG is the JSON the bench writes: settings, AMD roots, report port, emulator environment,
    and the release job (``kids``, ``out``, ``format``, ``timeout``).
    """
    from skr.shell.cli import exit_now  # noqa: PLC0415 - the same exit path as `skr release`
    from skr.shell.initcontainer import ReleaseJob, run_release  # noqa: PLC0415

    config = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    logging.basicConfig(level=logging.WARNING, format="[SIMULATED] %(levelname)s %(name)s: %(message)s")
    job = config["job"]
    code = asyncio.run(
        run_release(
            settings_from_json(config["settings"]),
            ReleaseJob(kids=tuple(job["kids"]), out=Path(job["out"]), fmt=job["format"], timeout=job["timeout"]),
            platform=RemoteSimulatedPlatform(int(config["report_port"])),
            environ={**os.environ, **config["environ"]},
            amd_roots=roots_from_json(config["roots"]),
        )
    )
    exit_now(code)
    return code  # not reached


if __name__ == "__main__":
    sys.exit(release_child_main(sys.argv[1:]))
