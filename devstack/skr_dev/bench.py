"""``skr bench``: the quality bars of design.md §7, measured on loopback. SIMULATED platform.

Why a harness and not timed unit tests: speed and memory are properties of the whole stack (the
sidecar, the real Azure SDKs, TLS, the event loop), so they are measured end to end against the
emulators with injected latencies, next to baselines measured in the same run on the same machine.

What runs where, and why:

* the emulators, the simulated chip and every baseline run in this process;
* the sidecar under test runs in a **fresh child process** (``python -m skr_dev.bench --child
  sidecar CONFIG``) for start-to-ready, RSS, the first release, warm releases, ``/status`` and the
  soak: a real deployment is a fresh process, so first-use imports and per-process caches (the Key
  Vault SDK's challenge cache) count, and RSS is the sidecar's alone. The child asks this process's
  simulated chip for reports over a tiny loopback socket protocol (:class:`RemoteSimulatedPlatform`);
* an in-process sidecar (``skr serve``'s :func:`skr.shell.serve.start_sidecar`) gives the in-process
  start-to-ready and first release (SDK modules already imported) and the 100-concurrent test.

Key Vault latency is applied in one of two ways, and every figure says which:

* ``every_request`` (the headline): the harness wraps the Key Vault emulator's application with a
  middleware that delays **every** request it receives, the unauthenticated 401 challenge included,
  as a real vault's round trip would be;
* ``fault_only``: the emulator's own ``keyvault.release`` LATENCY fault, which applies only to
  requests that passed the bearer check, so the 401 challenge is free.

Nothing here is imported by production code; every printed result carries the SIMULATED banner.
This module's top-level imports are only what the sidecar itself needs, so the child's RSS stays
honest; the emulators are imported inside the functions that use them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import itertools
import json
import logging
import os
import platform as python_platform
import ssl
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, TextIO

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from cryptography import x509

from skr.errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE
from skr.shell.config import Settings
from skr.shell.serve import RunningSidecar, start_sidecar, wait_for_stop_signal
from skr.snp.verify import TrustedRoots
from skr_dev import SIMULATED_BANNER
from skr_dev.simulated.remote import (
    RemoteSimulatedPlatform,
    SimulatedReportServer,
    roots_from_json,
    roots_to_json,
    settings_from_json,
)

if TYPE_CHECKING:
    from skr.shell.wiring import Runtime
    from skr_dev.emulators.faults import FaultSet
    from skr_dev.emulators.keyvault import KeyVaultConfig, KeyVaultEmulator
    from skr_dev.emulators.server import RequestRecord
    from skr_dev.emulators.stack import EmulatorStack
    from skr_dev.emulators.tls import TestCertificateAuthority
    from skr_dev.simulated.platform import SimulatedPlatform

__all__ = [
    "KV_EVERY_REQUEST",
    "KV_FAULT_ONLY",
    "SECTIONS",
    "BenchOptions",
    "BenchReport",
    "Figure",
    "Goal",
    "Latencies",
    "RemoteSimulatedPlatform",
    "SimulatedReportServer",
    "Spread",
    "compute_figures",
    "cpu_seconds",
    "format_table",
    "main",
    "measure_soak",
    "options_from_args",
    "rss_mib",
    "run_bench",
]

_logger = logging.getLogger(__name__)

KV_EVERY_REQUEST: Final = "every_request"
KV_FAULT_ONLY: Final = "fault_only"
SECTIONS: Final = frozenset({"first", "fault_only", "inprocess", "warm", "status", "concurrent", "soak"})
"""first: fresh-process start, RSS, first/second release, critical path and Go-style baselines;
fault_only: the first release with the emulator's own Key Vault fault; inprocess: in-process start
and first release; warm: warm release vs the Key Vault round trip; status: /status vs a bare aiohttp
handler; concurrent: 100 identical releases at once; soak: RSS over many requests."""

RSA_KID: Final = "demo-rsa"
ENC: Final = "CKM_RSA_AES_KEY_WRAP"
KV_API_VERSION: Final = "7.5"
SETTLE_SECONDS: Final = 0.5  # lets the successor wrapping key (generated after warm-up) finish
READY_TIMEOUT: Final = 60.0
CHILD_STOP_TIMEOUT: Final = 10.0
_POLL_INTERVAL: Final = 0.002


# --- options, figures, report ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Latencies:
    """Injected one-way service times in seconds (design.md §7: MAA 150 ms, Entra 100 ms, KV 100 ms)."""

    maa: float = 0.150
    entra: float = 0.100
    keyvault: float = 0.100

    def describe(self) -> str:
        return (
            f"MAA {self.maa * 1000:.0f} ms (maa.attest), Entra {self.entra * 1000:.0f} ms (entra.token), "
            f"Key Vault {self.keyvault * 1000:.0f} ms"
        )


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """How much to measure. :meth:`quick` is for a fast look; tests shrink everything further."""

    runs: int = 5
    latencies: Latencies = field(default_factory=Latencies)
    sections: frozenset[str] = SECTIONS
    warm_samples: int = 20
    status_latency_requests: int = 1000
    status_requests: int = 5000
    status_concurrency: int = 32
    concurrent_releases: int = 100
    soak_requests: int = 50_000
    soak_release_every: int = 5  # one request in five is a warm /key/release, the rest /status
    soak_concurrency: int = 16

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise ValueError("runs must be at least 1")
        unknown = self.sections - SECTIONS
        if unknown:
            raise ValueError(f"unknown sections: {sorted(unknown)}")
        if min(self.warm_samples, self.status_latency_requests, self.status_requests) < 1:
            raise ValueError("sample counts must be positive")
        if self.concurrent_releases < 1 or self.status_concurrency < 1 or self.soak_concurrency < 1:
            raise ValueError("concurrency must be positive")
        if self.soak_requests < 0 or self.soak_release_every < 1:
            raise ValueError("soak_requests must be >= 0 and soak_release_every >= 1")

    @classmethod
    def quick(cls, **overrides: Any) -> BenchOptions:
        values: dict[str, Any] = {
            "runs": 1,
            "warm_samples": 5,
            "status_latency_requests": 200,
            "status_requests": 1000,
            "soak_requests": 5000,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Goal:
    """``value OP limit`` must hold; ``text`` is how the goal reads in the table."""

    op: str  # "<=", "<", ">=", "=="
    limit: float
    text: str

    def met(self, value: float) -> bool:
        if self.op == "<=":
            return value <= self.limit
        if self.op == "<":
            return value < self.limit
        if self.op == ">=":
            return value >= self.limit
        return value == self.limit

    def ratio(self, value: float) -> float | None:
        """How far the value is from the goal (≤ 1 meets it); None for equality goals."""
        if self.op in ("<=", "<") and self.limit > 0:
            return value / self.limit
        if self.op == ">=" and value > 0:
            return self.limit / value
        return None


@dataclass(frozen=True, slots=True)
class Spread:
    median: float
    minimum: float
    maximum: float
    p25: float
    p75: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        if not samples:
            raise ValueError("no samples")
        ordered = sorted(samples)
        if len(ordered) == 1:
            p25 = p75 = ordered[0]
        else:
            p25, _, p75 = statistics.quantiles(ordered, n=4, method="inclusive")
        return cls(statistics.median(ordered), ordered[0], ordered[-1], p25, p75, len(ordered))


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure: samples (one per run, or per request where stated) and its goal."""

    key: str
    label: str
    unit: str
    samples: tuple[float, ...]
    goal: Goal | None = None
    role: str = "measure"  # "measure" (has a goal), "baseline" or "info"
    note: str = ""

    @property
    def spread(self) -> Spread:
        return Spread.of(self.samples)

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return self.role
        return "PASS" if self.goal.met(self.spread.median) else "MISS"

    def to_json(self) -> dict[str, Any]:
        spread = self.spread
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "role": self.role,
            "median": spread.median,
            "min": spread.minimum,
            "max": spread.maximum,
            "p25": spread.p25,
            "p75": spread.p75,
            "n": spread.n,
            "samples": list(self.samples),
            "goal": dataclasses.asdict(self.goal) if self.goal is not None else None,
            "ratio_to_goal": self.goal.ratio(spread.median) if self.goal is not None else None,
            "verdict": self.verdict,
            "note": self.note,
        }


@dataclass
class BenchReport:
    """Everything one ``skr bench`` produced: figures, raw per-run data, the soak, notes."""

    options: BenchOptions
    figures: list[Figure]
    runs: list[dict[str, Any]]
    soak: dict[str, Any] | None
    notes: list[str]

    def figure(self, key: str) -> Figure | None:
        return next((f for f in self.figures if f.key == key), None)

    def to_json(self) -> dict[str, Any]:
        options = dataclasses.asdict(self.options)
        options["sections"] = sorted(self.options.sections)
        return {
            "simulated": SIMULATED_BANNER,
            "schema": "skr-bench/1",
            "environment": _environment(),
            "options": options,
            "figures": [figure.to_json() for figure in self.figures],
            "runs": self.runs,
            "soak": self.soak,
            "notes": self.notes,
        }


def _environment() -> dict[str, Any]:
    versions: dict[str, str] = {}
    for name in ("aiohttp", "cryptography", "azure-keyvault-keys", "azure-identity", "azure-core"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version  # noqa: PLC0415 - only for the report

            versions[name] = version(name)
    return {
        "python": sys.version.split()[0],
        "implementation": python_platform.python_implementation(),
        "machine": python_platform.machine(),
        "cpus": os.cpu_count(),
        "kernel": python_platform.release(),
        "packages": versions,
    }


# --- small measuring tools ------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time of all of ``pid``'s threads so far.

    Nanosecond run times from /proc/PID/task/*/schedstat when the kernel has them (clock ticks of
    10 ms are too coarse for short loads), else user + system ticks from /proc/PID/stat.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        return sum(int((task / "schedstat").read_text(encoding="ascii").split()[0]) for task in tasks) / 1e9
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = text[text.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def _hammer(
    request: Callable[[int], Awaitable[bool]], total: int, concurrency: int
) -> tuple[float, list[float], int]:
    """Run ``request(i)`` for i in range(total) from ``concurrency`` workers: wall, latencies, failures."""
    counter = itertools.count()
    latencies: list[float] = []
    failures = 0

    async def worker() -> None:
        nonlocal failures
        while (index := next(counter)) < total:
            started = time.perf_counter()
            ok = await request(index)
            latencies.append(time.perf_counter() - started)
            if not ok:
                failures += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
    return time.perf_counter() - started, latencies, failures


async def _wait_ready(session: aiohttp.ClientSession, url: str, *, timeout: float = READY_TIMEOUT) -> float:
    """Poll ``/status`` until it answers 200; returns the perf_counter time it did."""
    deadline = time.perf_counter() + timeout
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{url}/status") as response:
                await response.read()
                if response.status == 200:
                    return time.perf_counter()
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{url} did not become ready within {timeout:.0f} s")
        await asyncio.sleep(_POLL_INTERVAL)


async def _release(session: aiohttp.ClientSession, url: str, kid: str, akv: str) -> tuple[float, str]:
    """POST /key/release; returns (seconds, the JSON-serialised JWK). Raises on anything but 200."""
    started = time.perf_counter()
    async with session.post(f"{url}/key/release", json={"kid": kid, "akv_endpoint": akv}) as response:
        body = await response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        code = _json_field(body, "code")
        raise RuntimeError(f"release of {kid} answered HTTP {response.status} ({code})")
    key = _json_field(body, "key")
    return elapsed, key


def _json_field(body: bytes, name: str) -> str:
    try:
        value = json.loads(body).get(name)
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


# --- child processes --------------------------------------------------------------------------------


async def _run_sidecar_child(config_path: Path) -> None:
    """The child: ``skr serve``'s start-up with the remote simulated platform, until SIGTERM."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    sidecar = await start_sidecar(
        settings_from_json(config["settings"]),
        platform=RemoteSimulatedPlatform(int(config["report_port"])),
        environ={**os.environ, **config["environ"]},
        amd_roots=roots_from_json(config["roots"]),
        simulated_banner=SIMULATED_BANNER,
    )
    print(json.dumps({"event": "listening", "port": sidecar.port}), flush=True)
    try:
        await wait_for_stop_signal()
    finally:
        await sidecar.stop()


async def _bare_status(request: web.Request) -> web.Response:
    return web.json_response({"message": "STATUS OK"})


async def _run_bare_child() -> None:
    """A bare aiohttp app answering /status exactly as the sidecar does, with the same runner options."""
    app = web.Application()
    app.router.add_get("/status", _bare_status)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True)
    await site.start()
    print(json.dumps({"event": "listening", "port": int(runner.addresses[0][1])}), flush=True)
    try:
        await wait_for_stop_signal()
    finally:
        await runner.cleanup()


def _child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m skr_dev.bench", description=SIMULATED_BANNER)
    parser.add_argument("--child", choices=("sidecar", "bare"), required=True)
    parser.add_argument("config", nargs="?", help="sidecar child configuration (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[SIMULATED] %(levelname)s %(name)s: %(message)s")
    if args.child == "sidecar":
        if not args.config:
            parser.error("the sidecar child needs its configuration file")
        asyncio.run(_run_sidecar_child(Path(args.config)))
    else:
        asyncio.run(_run_bare_child())
    return EXIT_OK


@dataclass
class _Child:
    """A running child process and what it said at start-up."""

    process: asyncio.subprocess.Process
    url: str
    spawned_at: float
    listening_at: float
    log_path: Path
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), CHILD_STOP_TIMEOUT)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.log.close()


def _log_tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    return ""


async def _spawn_child(kind: str, directory: Path, config: Mapping[str, Any] | None = None) -> _Child:
    """Start ``python -m skr_dev.bench --child KIND`` and wait for its "listening" line."""
    args = ["--child", kind]
    if config is not None:
        config_path = directory / f"{kind}-child-{time.monotonic_ns()}.json"
        descriptor = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(config, handle)
        args.append(str(config_path))
    log_path = directory / f"{kind}-child-{time.monotonic_ns()}.log"
    log = log_path.open("wb")
    package_root = str(Path(__file__).resolve().parents[2])
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))}
    spawned_at = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "skr_dev.bench",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        env=environ,
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)
        event = json.loads(line) if line else {}
        port = int(event["port"])
    except (TimeoutError, ValueError, KeyError, TypeError):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        log.close()
        raise RuntimeError(f"the {kind} child did not start; its log ends with:\n{_log_tail(log_path)}") from None
    return _Child(process, f"http://127.0.0.1:{port}", spawned_at, time.perf_counter(), log_path, log)


# --- the emulated estate --------------------------------------------------------------------------


def _delay_middleware(delay: float) -> Middleware:
    @web.middleware
    async def delay_every_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        await asyncio.sleep(delay)
        return await handler(request)

    return delay_every_request


def _delayed_vault(
    config: KeyVaultConfig, *, ca: TestCertificateAuthority, faults: FaultSet, delay: float
) -> KeyVaultEmulator:
    """A Key Vault emulator whose every request (the 401 challenge too) costs ``delay`` seconds."""
    from skr_dev.emulators.keyvault import KeyVaultEmulator  # noqa: PLC0415 - parent-only import

    class DelayedKeyVault(KeyVaultEmulator):
        def build_app(self) -> web.Application:
            app = super().build_app()
            # Outermost (after the request recorder the server adds): before the bearer check.
            app.middlewares.insert(0, _delay_middleware(delay))
            return app

    return DelayedKeyVault(config, ca=ca, faults=faults)


@dataclass
class _Stack:
    """Emulators, the simulated chip, its report server, and the sidecar settings wired to them."""

    emulators: EmulatorStack
    vaults: list[KeyVaultEmulator]
    own_vaults: list[KeyVaultEmulator]
    platform: SimulatedPlatform
    report_server: SimulatedReportServer
    settings: Settings
    environ: dict[str, str]
    keys: list[tuple[str, str]]  # (kid, akv netloc)
    kv_mode: str | None

    @property
    def amd_roots(self) -> TrustedRoots:
        return self.emulators.platform.trusted_roots()

    @property
    def state_dir(self) -> Path:
        return self.emulators.state_dir

    @property
    def rsa_key(self) -> tuple[str, str]:
        return next(key for key in self.keys if key[0] == RSA_KID)

    def servers(self) -> dict[str, list[RequestRecord]]:
        logs = {name: emulator.requests for name, emulator in self.emulators.emulators().items()}
        for vault in self.own_vaults:
            logs[vault.name] = vault.requests
        return logs

    def clear_requests(self) -> None:
        for records in self.servers().values():
            records.clear()

    def count(self, route: str, status: int | None = None) -> int:
        return sum(
            1
            for records in self.servers().values()
            for record in records
            if record.route == route and (status is None or record.status == status)
        )

    def timeline(self, since: float) -> list[dict[str, Any]]:
        """Upstream requests received since ``since`` (time.time()), by arrival."""
        rows = [
            {"at_ms": round((record.time - since) * 1000, 1), "route": record.route, "status": record.status}
            for records in self.servers().values()
            for record in records
            if record.time >= since
        ]
        return sorted(rows, key=lambda row: float(row["at_ms"]))

    def child_config(self) -> dict[str, Any]:
        return {
            "settings": dataclasses.asdict(self.settings),
            "roots": roots_to_json(self.amd_roots),
            "report_port": self.report_server.port,
            "environ": self.emulators.environment(),
        }


def _host(url: str) -> str:
    from skr.core.endpoints import Endpoint  # noqa: PLC0415 - parent-only

    return Endpoint.parse(url).netloc


@contextlib.asynccontextmanager
async def _open_stack(
    latencies: Latencies | None, kv_mode: str | None, *, demo_keys: bool = False
) -> AsyncIterator[_Stack]:
    """Start emulators with the latencies armed (``kv_mode`` says how Key Vault's is applied)."""
    from skr_dev.devstack import DEMO_KEYS  # noqa: PLC0415
    from skr_dev.emulators import keyvault as kv  # noqa: PLC0415 - parent-only imports from here on
    from skr_dev.emulators.faults import Fault, FaultKind  # noqa: PLC0415
    from skr_dev.emulators.stack import EmulatorStack  # noqa: PLC0415
    from skr_dev.simulated.platform import SimulatedPlatform  # noqa: PLC0415

    faults: list[Fault] = []
    own_vault = latencies is not None and kv_mode == KV_EVERY_REQUEST
    if latencies is not None:
        for endpoint, delay in (("maa.attest", latencies.maa), ("entra.token", latencies.entra)):
            if delay > 0:
                faults.append(Fault(FaultKind.LATENCY, endpoint=endpoint, delay=delay))
        if kv_mode == KV_FAULT_ONLY and latencies.keyvault > 0:
            faults.append(Fault(FaultKind.LATENCY, endpoint="keyvault.release", delay=latencies.keyvault))
    rsa_only = [{"name": RSA_KID, "vault": "keyvault", "kty": "RSA-HSM", "size": 2048}]
    config: dict[str, Any] = {
        "faults": [fault.to_json() for fault in faults],
        "vaults": not own_vault,
        "keys": [] if own_vault else (list(DEMO_KEYS) if demo_keys else rsa_only),
    }
    emulators = EmulatorStack(config)
    await emulators.start()
    own: list[kv.KeyVaultEmulator] = []
    report_server: SimulatedReportServer | None = None
    try:
        vaults: list[kv.KeyVaultEmulator] = []
        keys: list[tuple[str, str]] = []
        if own_vault:
            assert latencies is not None and emulators.ca_file is not None
            vault = _delayed_vault(
                kv.KeyVaultConfig(
                    flavour=kv.Flavour.KEY_VAULT,
                    tenant_id=emulators.config.tenant_id,
                    access_tokens=kv.AccessTokenTrust.from_entra(emulators.entra),
                    trusted_attestation_issuers=(emulators.maa.url,),
                    issuer_ca_file=emulators.ca_file,
                ),
                ca=emulators.ca,
                faults=emulators.faults,
                delay=latencies.keyvault,
            )
            await vault.start()
            own.append(vault)
            vaults.append(vault)
            await vault.seed(
                [kv.SeedKey(RSA_KID, "RSA-HSM", size=2048, release_policy=emulators.default_release_policy())]
            )
            keys.append((RSA_KID, _host(vault.url)))
        else:
            vaults.extend(v for v in (emulators.keyvault, emulators.managedhsm) if v is not None)
            keys.extend((entry["name"], _host(entry["vault_url"])) for entry in emulators.keys)
        platform = SimulatedPlatform(
            emulators.platform, host_data=emulators.host_data, measurement=emulators.measurement
        )
        report_server = SimulatedReportServer(platform)
        await report_server.start()
        context_dir = emulators.write_security_context(emulators.state_dir / "security-context")
        maa_host = _host(emulators.maa.url)
        kv_host = _host(vaults[0].url)
        hsm_hosts = tuple(_host(v.url) for v in vaults if v.flavour is kv.Flavour.MANAGED_HSM)
        settings = Settings(
            port=0,
            log_level="warning",
            maa_endpoint=maa_host,
            akv_endpoint=kv_host,
            allowed_maa_endpoints=(maa_host,),
            allowed_akv_endpoints=tuple(_host(v.url) for v in vaults),
            managed_hsm_hosts=hsm_hosts,
            ca_file=str(emulators.ca_file),
            thim_url=emulators.imds.url,
            azcache_url=emulators.certcache.url,
            kds_url=emulators.kds.url,
            security_context_dir=str(context_dir),
        )
        yield _Stack(
            emulators=emulators,
            vaults=vaults,
            own_vaults=own,
            platform=platform,
            report_server=report_server,
            settings=settings,
            environ={**os.environ, **emulators.environment()},
            keys=keys,
            kv_mode=kv_mode if latencies is not None else None,
        )
    finally:
        if report_server is not None:
            await report_server.stop()
        for vault in own:
            with contextlib.suppress(Exception):
                await vault.stop()
        await emulators.stop()


def _forget_vault_challenge(vault_url: str) -> None:
    """Make this process's Key Vault SDK forget ``vault_url``'s auth challenge, as a fresh process would.

    The SDK caches challenges process-wide by host:port; an in-process sidecar must not inherit one
    from an earlier measurement (or from a reused port). SDK-private module: best effort.
    """
    with contextlib.suppress(ImportError, AttributeError, ValueError):
        cache = importlib.import_module("azure.keyvault.keys._shared.http_challenge_cache")
        cache.remove_challenge_for_url(vault_url)


async def _start_in_process(stack: _Stack) -> RunningSidecar:
    for vault in stack.vaults:
        _forget_vault_challenge(vault.url)
    return await start_sidecar(
        stack.settings,
        platform=stack.platform,
        environ=stack.environ,
        amd_roots=stack.amd_roots,
        simulated_banner=SIMULATED_BANNER,
    )


def _preload_sdks() -> None:
    """Import the SDKs the sidecar loads on first use, so in-process figures exclude that import.

    (Fresh-process figures include it: that is what a real first release pays.)
    """
    for module in ("azure.identity.aio", "azure.keyvault.keys.aio"):
        importlib.import_module(module)


# --- baselines built from the same components -------------------------------------------------------


class _Components:
    """The sidecar's own building blocks, driven step by step for the baselines."""

    def __init__(self, stack: _Stack, runtime: Runtime) -> None:
        from skr.core.endpoints import Endpoint  # noqa: PLC0415 - parent-only imports
        from skr.core.keyvault import KeyName, VaultClient  # noqa: PLC0415
        from skr.core.maa import MaaClient  # noqa: PLC0415
        from skr.core.upstream import RetryPolicy, Upstream  # noqa: PLC0415
        from skr.shell.wiring import system_trust_roots, utc_now  # noqa: PLC0415

        self.stack = stack
        self.runtime = runtime
        settings = stack.settings
        self.instance = Endpoint.parse(settings.maa_endpoint)
        kid, akv = stack.rsa_key
        self.vault_endpoint = Endpoint.parse(akv)
        self.key = KeyName.parse(kid)
        self.maa = MaaClient(
            Upstream(runtime.session, "maa", retry=RetryPolicy(attempts=3, timeout=settings.maa_timeout)),
            clock=utc_now,
            api_version=settings.maa_api_version,
        )
        ca_certificates = x509.load_pem_x509_certificates(Path(settings.ca_file).read_bytes())
        self.vault = VaultClient(
            transport_factory=self._transport,
            trusted_roots=[*system_trust_roots(), *ca_certificates],
            clock=utc_now,
            timeout=settings.akv_timeout,
        )
        self.last_token: str = ""

    def _transport(self) -> Any:
        from azure.core.pipeline.transport import AioHttpTransport  # noqa: PLC0415

        return AioHttpTransport(session=self.runtime.session, session_owner=False)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, stack: _Stack) -> AsyncIterator[_Components]:
        from skr.shell.wiring import build_runtime  # noqa: PLC0415

        runtime = await build_runtime(
            stack.settings, platform=stack.platform, environ=stack.environ, amd_roots=stack.amd_roots
        )
        try:
            await runtime.releaser.warm_up()
            await asyncio.sleep(SETTLE_SECONDS)
            components = cls(stack, runtime)
            await components.critical_path()  # untimed: opens connections, caches MAA's signing keys
            yield components
        finally:
            await runtime.close()

    async def _maa_token(self, wrapping: Any, evidence: Any) -> Any:
        from skr.core.maa import MaaEvidence  # noqa: PLC0415

        return await self.maa.attest(
            self.instance,
            MaaEvidence(
                report=evidence.raw.report,
                vcek_chain_pem=evidence.collateral.chain_pem,
                runtime_data=evidence.runtime_data,
                uvm_endorsement=self.runtime.releaser.security_context_reference(),
            ),
            runtime_kid=wrapping.kid,
        )

    async def critical_path(self) -> dict[str, float]:
        """report (+ verified collateral) → one MAA attest → one Key Vault release, one after another."""
        from skr.core.crypto import generate_wrapping_key  # noqa: PLC0415

        wrapping = await asyncio.to_thread(generate_wrapping_key, 2048)  # not timed: done ahead of need
        started = time.perf_counter()
        evidence = await self.runtime.releaser.evidence(wrapping.runtime_data)
        reported = time.perf_counter()
        token = await self._maa_token(wrapping, evidence)
        attested = time.perf_counter()
        await self.vault.release(
            self.vault_endpoint,
            self.key,
            attestation_token=token.raw,
            credential=self.runtime.identity,
            wrapping_key=wrapping,
        )
        released = time.perf_counter()
        self.last_token = token.raw.reveal()
        return {
            "report_s": reported - started,
            "maa_s": attested - reported,
            "keyvault_s": released - attested,
            "total_s": released - started,
        }

    async def go_sequential(self) -> dict[str, float]:
        """The Go sidecar's design with these components: fresh key, report, MAA, token, KV, in sequence."""
        from skr.core.crypto import generate_wrapping_key  # noqa: PLC0415
        from skr.core.identity import AzureIdentity, scope_for  # noqa: PLC0415

        identity = AzureIdentity(environ=self.stack.environ, transport=self._transport())
        try:
            started = time.perf_counter()
            wrapping = await asyncio.to_thread(generate_wrapping_key, 2048)
            generated = time.perf_counter()
            evidence = await self.runtime.releaser.evidence(wrapping.runtime_data)
            reported = time.perf_counter()
            token = await self._maa_token(wrapping, evidence)
            attested = time.perf_counter()
            await identity.get_token(scope_for(self.vault_endpoint), enable_cae=True)
            identified = time.perf_counter()
            await self.vault.release(
                self.vault_endpoint, self.key, attestation_token=token.raw, credential=identity, wrapping_key=wrapping
            )
            released = time.perf_counter()
        finally:
            await identity.close()
        return {
            "keygen_s": generated - started,
            "report_s": reported - generated,
            "maa_s": attested - reported,
            "identity_s": identified - attested,
            "keyvault_s": released - identified,
            "total_s": released - started,
        }

    async def bearer(self) -> str:
        from skr.core.identity import scope_for  # noqa: PLC0415

        token = await self.runtime.identity.get_token(scope_for(self.vault_endpoint), enable_cae=True)
        return str(token.token)


# --- the measurements --------------------------------------------------------------------------------


async def _measure_fresh_process(stack: _Stack, result: dict[str, Any]) -> _Child:
    """Spawn a sidecar process; start-to-ready, idle RSS, first and second release, RSS after.

    Returns the still-running child (the caller stops it); stops it itself if a step fails.
    """
    kid, akv = stack.rsa_key
    child = await _spawn_child("sidecar", stack.state_dir, stack.child_config())
    try:
        async with aiohttp.ClientSession() as session:
            ready_at = await _wait_ready(session, child.url)
            result["process_listening_s"] = child.listening_at - child.spawned_at
            result["process_start_to_ready_s"] = ready_at - child.spawned_at
            await asyncio.sleep(SETTLE_SECONDS)
            result["idle_rss_mib"] = rss_mib(child.pid)
            stack.clear_requests()
            since = time.time()
            result["first_release_s"], _ = await _release(session, child.url, kid, akv)
            result["first_release_timeline"] = timeline = stack.timeline(since)
            if timeline:
                result["first_upstream_ms"] = timeline[0]["at_ms"]
            result["first_release_maa_calls"] = stack.count("maa.attest")
            stack.clear_requests()
            result["second_release_s"], _ = await _release(session, child.url, kid, akv)
            result["second_release_maa_calls"] = stack.count("maa.attest")
            result["rss_after_first_release_mib"] = rss_mib(child.pid)
    except BaseException:
        await child.stop()
        raise
    return child


async def _measure_warm(child: _Child, components: _Components, options: BenchOptions) -> dict[str, Any]:
    """Warm /key/release through the sidecar process vs the raw Key Vault release round trip, interleaved."""
    stack = components.stack
    kid, akv = stack.rsa_key
    url = f"https://{akv}/keys/{kid}/release?api-version={KV_API_VERSION}"
    headers = {"Authorization": f"Bearer {await components.bearer()}"}
    body = {"target": components.last_token, "enc": ENC}
    context = ssl.create_default_context(cafile=stack.settings.ca_file)
    warm: list[float] = []
    raw: list[float] = []
    async with (
        aiohttp.ClientSession() as sidecar_session,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as vault_session,
    ):

        async def raw_release() -> float:
            started = time.perf_counter()
            async with vault_session.post(url, json=body, headers=headers) as response:
                await response.read()
            if response.status != 200:
                raise RuntimeError(f"raw Key Vault release answered HTTP {response.status}")
            return time.perf_counter() - started

        await raw_release()  # untimed: the TLS handshake
        for _ in range(options.warm_samples):
            warm.append((await _release(sidecar_session, child.url, kid, akv))[0])
            raw.append(await raw_release())
    return {"warm_release_s": warm, "keyvault_round_trip_s": raw}


async def _status_profile(url: str, pid: int, options: BenchOptions) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=options.status_concurrency)) as session:

        async def get(_: int) -> bool:
            async with session.get(f"{url}/status") as response:
                await response.read()
                return response.status == 200

        await _hammer(get, 100, options.status_concurrency)  # untimed: open the connections
        _, latencies, failures = await _hammer(get, options.status_latency_requests, 1)
        cpu_before = cpu_seconds(pid)
        wall, _, more_failures = await _hammer(get, options.status_requests, options.status_concurrency)
        cpu_used = cpu_seconds(pid) - cpu_before
    if failures or more_failures:
        raise RuntimeError(f"{url}/status failed {failures + more_failures} times under load")
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": sorted(latencies)[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        "rps": options.status_requests / wall,
        "cpu_us_per_request": cpu_used / options.status_requests * 1e6,
        "server_cpu_utilisation": cpu_used / wall if wall > 0 else 0.0,
    }


async def _measure_status(child: _Child, stack: _Stack, options: BenchOptions) -> dict[str, Any]:
    bare = await _spawn_child("bare", stack.state_dir)
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        bare_rss = rss_mib(bare.pid)
        bare_profile = await _status_profile(bare.url, bare.pid, options)
        sidecar_profile = await _status_profile(child.url, child.pid, options)
    finally:
        await bare.stop()
    return {"sidecar": sidecar_profile, "bare": bare_profile, "bare_idle_rss_mib": bare_rss}


async def _measure_in_process(stack: _Stack) -> dict[str, Any]:
    kid, akv = stack.rsa_key
    started = time.perf_counter()
    sidecar = await _start_in_process(stack)
    try:
        url = f"http://127.0.0.1:{sidecar.port}"
        async with aiohttp.ClientSession() as session:
            ready_at = await _wait_ready(session, url)
            await asyncio.sleep(SETTLE_SECONDS)
            stack.clear_requests()
            since = time.time()
            first, _ = await _release(session, url, kid, akv)
            timeline = stack.timeline(since)
    finally:
        await sidecar.stop()
    result: dict[str, Any] = {"inprocess_start_to_ready_s": ready_at - started, "inprocess_first_release_s": first}
    if timeline:
        result["inprocess_first_upstream_ms"] = timeline[0]["at_ms"]
    return result


async def _measure_concurrent(options: BenchOptions) -> dict[str, Any]:
    """N identical releases at once against a cold in-process sidecar: upstream calls and wall time."""
    async with _open_stack(options.latencies, KV_EVERY_REQUEST) as stack:
        kid, akv = stack.rsa_key
        sidecar = await _start_in_process(stack)
        try:
            url = f"http://127.0.0.1:{sidecar.port}"
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                await _wait_ready(session, url)
                await asyncio.sleep(SETTLE_SECONDS)
                stack.clear_requests()
                started = time.perf_counter()
                outcomes = await asyncio.gather(
                    *(_release(session, url, kid, akv) for _ in range(options.concurrent_releases))
                )
                wall = time.perf_counter() - started
        finally:
            await sidecar.stop()
        return {
            "requests": options.concurrent_releases,
            "wall_s": wall,
            "distinct_keys": len({key for _, key in outcomes}),
            "maa_attest_calls": stack.count("maa.attest"),
            "keyvault_release_calls": stack.count("keyvault.release", 200),
            "keyvault_challenges": stack.count("keyvault.release", 401),
            "identity_token_calls": stack.count("entra.token"),
        }


async def _one_run(options: BenchOptions, index: int, progress: TextIO) -> dict[str, Any]:
    """One run: the every-request stack, then the fault-only stack, then the concurrency stack."""
    sections = options.sections
    result: dict[str, Any] = {"run": index + 1}
    if sections & {"first", "warm", "status", "inprocess"}:
        progress.write(f"[SIMULATED] run {index + 1}: fresh sidecar process, baselines\n")
        async with _open_stack(options.latencies, KV_EVERY_REQUEST) as stack:
            child = await _measure_fresh_process(stack, result)
            try:
                if sections & {"first", "warm"}:
                    async with _Components.open(stack) as components:
                        if "first" in sections:
                            result["critical_path"] = await components.critical_path()
                            result["go_sequential"] = await components.go_sequential()
                        if "warm" in sections:
                            result["warm"] = await _measure_warm(child, components, options)
                if "status" in sections:
                    progress.write(f"[SIMULATED] run {index + 1}: /status vs a bare aiohttp handler\n")
                    result["status"] = await _measure_status(child, stack, options)
            finally:
                await child.stop()
            if "inprocess" in sections:
                result.update(await _measure_in_process(stack))
    if "fault_only" in sections:
        progress.write(f"[SIMULATED] run {index + 1}: Key Vault latency on authenticated requests only\n")
        async with _open_stack(options.latencies, KV_FAULT_ONLY) as stack:
            fault_only: dict[str, Any] = {}
            child = await _measure_fresh_process(stack, fault_only)
            await child.stop()
            async with _Components.open(stack) as components:
                fault_only["critical_path"] = await components.critical_path()
            result["fault_only"] = fault_only
    if "concurrent" in sections:
        progress.write(f"[SIMULATED] run {index + 1}: {options.concurrent_releases} concurrent releases\n")
        result["concurrent"] = await _measure_concurrent(options)
    return result


async def measure_soak(options: BenchOptions, progress: TextIO) -> dict[str, Any]:
    """Mixed /status and warm /key/release requests against a sidecar process; RSS before and after."""
    total = options.soak_requests
    progress.write(f"[SIMULATED] soak: {total} requests against a sidecar process\n")
    async with _open_stack(None, None, demo_keys=True) as stack:
        child = await _spawn_child("sidecar", stack.state_dir, stack.child_config())
        try:
            connector = aiohttp.TCPConnector(limit=options.soak_concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:
                await _wait_ready(session, child.url)
                rss_ready = rss_mib(child.pid)
                every = options.soak_release_every
                keys = stack.keys

                async def one(index: int) -> bool:
                    if index % every == 0:
                        kid, akv = keys[(index // every) % len(keys)]
                        body = {"kid": kid, "akv_endpoint": akv}
                        async with session.post(f"{child.url}/key/release", json=body) as response:
                            await response.read()
                            return response.status == 200
                    async with session.get(f"{child.url}/status") as response:
                        await response.read()
                        return response.status == 200

                warm_up = max(10 * every * len(keys), total // 50)
                _, _, warm_failures = await _hammer(one, warm_up, options.soak_concurrency)
                await asyncio.sleep(1.0)
                rss_before = rss_mib(child.pid)
                samples: list[tuple[float, float]] = []
                sampling = asyncio.Event()

                async def sample() -> None:
                    started = time.perf_counter()
                    while not sampling.is_set():
                        samples.append((round(time.perf_counter() - started, 1), rss_mib(child.pid)))
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(sampling.wait(), 2.0)

                sampler = asyncio.ensure_future(sample())
                wall, latencies, failures = await _hammer(one, total, options.soak_concurrency)
                sampling.set()
                await sampler
                await asyncio.sleep(1.0)
                rss_after = rss_mib(child.pid)
        finally:
            await child.stop()
    return {
        "requests": total,
        "release_share": 1 / options.soak_release_every,
        "keys": [kid for kid, _ in stack.keys],
        "concurrency": options.soak_concurrency,
        "warm_up_requests": warm_up,
        "wall_s": wall,
        "rps": total / wall if wall > 0 else 0.0,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
        "failures": failures + warm_failures,
        "rss_ready_mib": rss_ready,
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_after,
        "rss_growth_mib": rss_after - rss_before,
        "rss_samples": samples,
    }


async def run_bench(options: BenchOptions | None = None, *, progress: TextIO | None = None) -> BenchReport:
    """Run every selected section ``options.runs`` times (the soak once) and compute the figures."""
    options = options or BenchOptions()
    out = progress if progress is not None else sys.stderr
    _preload_sdks()
    runs = [await _one_run(options, index, out) for index in range(options.runs)]
    soak = await measure_soak(options, out) if "soak" in options.sections and options.soak_requests else None
    figures = compute_figures(runs, soak, options)
    return BenchReport(options, figures, runs, soak, _notes(runs, options))


# --- figures ----------------------------------------------------------------------------------------


def _values(runs: Iterable[Mapping[str, Any]], *path: str) -> tuple[float, ...]:
    found = []
    for run in runs:
        value: Any = run
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            found.append(float(value))
    return tuple(found)


def _per_run(
    runs: Sequence[Mapping[str, Any]], compute: Callable[[Mapping[str, Any]], float | None]
) -> tuple[float, ...]:
    values = []
    for run in runs:
        with contextlib.suppress(KeyError, TypeError, ZeroDivisionError, statistics.StatisticsError):
            value = compute(run)
            if value is not None:
                values.append(float(value))
    return tuple(values)


def _steps(runs: Sequence[Mapping[str, Any]], part: str, steps: Sequence[str]) -> str:
    """``"report 2 ms, maa 160 ms, ..."``: the median of each step of a baseline across runs."""
    shown = [
        f"{step} {statistics.median(values) * 1000:.0f} ms"
        for step in steps
        if (values := _values(runs, part, f"{step}_s"))
    ]
    return "steps (medians): " + ", ".join(shown) if shown else ""


def _median_ms(run: Mapping[str, Any], section: str, name: str) -> float:
    return float(statistics.median(run[section][name])) * 1000


def compute_figures(
    runs: Sequence[Mapping[str, Any]], soak: Mapping[str, Any] | None, options: BenchOptions
) -> list[Figure]:
    """The table rows, in order. Ratios are computed per run (same-run baselines), then summarised."""
    figures: list[Figure] = []

    def add(key: str, label: str, unit: str, samples: Iterable[float], goal: Goal | None = None, **extra: str) -> None:
        values = tuple(samples)
        if values:
            role = "measure" if goal is not None else extra.get("role", "info")
            figures.append(Figure(key, label, unit, values, goal, role, extra.get("note", "")))

    def ms(*path: str) -> list[float]:
        return [value * 1000 for value in _values(runs, *path)]

    half_second = Goal("<=", 500.0, "≤ 500 ms")
    rss_goal = Goal("<=", 60.0, "≤ 60 MiB")
    ratio_goal = Goal("<=", 1.15, "≤ 1.15×")
    one_and_half = Goal("<=", 1.5, "≤ 1.5×")
    faster = Goal(">=", 1.0, "> 1× (faster)")

    # Start-up and memory.
    add(
        "start_to_ready_process",
        "start → ready, sidecar process (exec → /status 200)",
        "ms",
        ms("process_start_to_ready_s"),
        half_second,
    )
    add(
        "start_to_ready_inprocess",
        "start → ready, in-process (start_sidecar → /status 200)",
        "ms",
        ms("inprocess_start_to_ready_s"),
        half_second,
    )
    add(
        "idle_rss",
        "idle RSS, sidecar process, ready, before any release",
        "MiB",
        _values(runs, "idle_rss_mib"),
        rss_goal,
    )
    add(
        "bare_rss",
        "idle RSS, bare aiohttp /status app process (the floor)",
        "MiB",
        _values(runs, "status", "bare_idle_rss_mib"),
        role="baseline",
    )
    add(
        "rss_after_first_release",
        "RSS, sidecar process, after the first release (SDKs loaded)",
        "MiB",
        _values(runs, "rss_after_first_release_mib"),
        rss_goal,
    )

    # The first release against its same-run baselines.
    add(
        "first_release_process",
        "first release, fresh sidecar process (KV latency on every request)",
        "ms",
        ms("first_release_s"),
    )
    add(
        "first_upstream",
        "first release: local work before its first upstream request (fresh process)",
        "ms",
        _values(runs, "first_upstream_ms"),
    )
    add(
        "first_upstream_inprocess",
        "first release: local work before its first upstream request (in-process)",
        "ms",
        _values(runs, "inprocess_first_upstream_ms"),
    )
    add(
        "critical_path",
        "critical path: report + MAA + Key Vault, measured same run",
        "ms",
        ms("critical_path", "total_s"),
        role="baseline",
        note=_steps(runs, "critical_path", ("report", "maa", "keyvault")),
    )
    add(
        "first_release_ratio",
        "first release ÷ critical path (fresh process, KV latency on every request)",
        "×",
        _per_run(runs, lambda r: r["first_release_s"] / r["critical_path"]["total_s"]),
        ratio_goal,
    )
    add(
        "first_release_ratio_fault_only",
        "first release ÷ critical path (fresh process, KV latency on authenticated requests only)",
        "×",
        _per_run(runs, lambda r: r["fault_only"]["first_release_s"] / r["fault_only"]["critical_path"]["total_s"]),
        ratio_goal,
    )
    add(
        "first_release_inprocess",
        "first release, in-process sidecar (SDK modules already imported)",
        "ms",
        ms("inprocess_first_release_s"),
    )
    add(
        "first_release_ratio_inprocess",
        "first release ÷ critical path (in-process, KV latency on every request)",
        "×",
        _per_run(runs, lambda r: r["inprocess_first_release_s"] / r["critical_path"]["total_s"]),
        ratio_goal,
    )
    add(
        "go_sequential",
        "Go-style sequential, uncached: keygen + report + MAA + identity + KV",
        "ms",
        ms("go_sequential", "total_s"),
        role="baseline",
        note=_steps(runs, "go_sequential", ("keygen", "report", "maa", "identity", "keyvault")),
    )
    add(
        "speedup_vs_go",
        "speed-up: Go-style sequential ÷ first release (fresh process)",
        "×",
        _per_run(runs, lambda r: r["go_sequential"]["total_s"] / r["first_release_s"]),
        faster,
    )
    add(
        "speedup_vs_go_inprocess",
        "speed-up: Go-style sequential ÷ first release (in-process)",
        "×",
        _per_run(runs, lambda r: r["go_sequential"]["total_s"] / r["inprocess_first_release_s"]),
        faster,
    )
    add(
        "second_release_maa_calls",
        "second release: MAA attest calls",
        "calls",
        _values(runs, "second_release_maa_calls"),
        Goal("==", 0, "0"),
    )

    # Warm releases.
    add(
        "warm_release",
        "warm /key/release, sidecar process (token cached)",
        "ms",
        _per_run(runs, lambda r: _median_ms(r, "warm", "warm_release_s")),
    )
    add(
        "keyvault_round_trip",
        "Key Vault release round trip alone (raw HTTPS POST)",
        "ms",
        _per_run(runs, lambda r: _median_ms(r, "warm", "keyvault_round_trip_s")),
        role="baseline",
    )
    add(
        "warm_overhead",
        "warm release − Key Vault round trip (medians)",
        "ms",
        _per_run(
            runs, lambda r: _median_ms(r, "warm", "warm_release_s") - _median_ms(r, "warm", "keyvault_round_trip_s")
        ),
        Goal("<=", 5.0, "≤ 5 ms"),
    )

    # /status against a bare aiohttp handler.
    add(
        "status_p50_sidecar",
        "/status p50 latency, sidecar process (1 connection)",
        "ms",
        _values(runs, "status", "sidecar", "p50_ms"),
    )
    add(
        "status_p50_bare",
        "/status p50 latency, bare aiohttp handler",
        "ms",
        _values(runs, "status", "bare", "p50_ms"),
        role="baseline",
    )
    add(
        "status_latency_ratio",
        "/status latency: sidecar ÷ bare",
        "×",
        _per_run(runs, lambda r: r["status"]["sidecar"]["p50_ms"] / r["status"]["bare"]["p50_ms"]),
        one_and_half,
    )
    add(
        "status_rps_sidecar",
        f"/status req/s, sidecar ({options.status_concurrency} connections)",
        "req/s",
        _values(runs, "status", "sidecar", "rps"),
    )
    add(
        "status_rps_bare",
        "/status req/s, bare aiohttp handler",
        "req/s",
        _values(runs, "status", "bare", "rps"),
        role="baseline",
    )
    add(
        "status_rps_ratio",
        "/status throughput: bare ÷ sidecar",
        "×",
        _per_run(runs, lambda r: r["status"]["bare"]["rps"] / r["status"]["sidecar"]["rps"]),
        one_and_half,
    )
    add(
        "status_cpu_ratio",
        "/status server CPU per request: sidecar ÷ bare",
        "×",
        _per_run(
            runs, lambda r: r["status"]["sidecar"]["cpu_us_per_request"] / r["status"]["bare"]["cpu_us_per_request"]
        ),
        one_and_half,
    )

    # Identical concurrent releases share one flight.
    n = options.concurrent_releases
    add(
        "concurrent_maa_calls",
        f"{n} concurrent identical releases: MAA attest calls",
        "calls",
        _values(runs, "concurrent", "maa_attest_calls"),
        Goal("==", 1, "1"),
    )
    add(
        "concurrent_kv_calls",
        f"{n} concurrent identical releases: Key Vault release calls (authenticated)",
        "calls",
        _values(runs, "concurrent", "keyvault_release_calls"),
        Goal("==", 1, "1"),
    )
    add(
        "concurrent_kv_challenges",
        f"{n} concurrent identical releases: Key Vault 401 challenges",
        "calls",
        _values(runs, "concurrent", "keyvault_challenges"),
    )
    add(
        "concurrent_wall",
        f"{n} concurrent identical releases: wall time (in-process)",
        "ms",
        ms("concurrent", "wall_s"),
    )

    if soak is not None:
        label = f"soak, {soak['requests']} requests ({soak['release_share']:.0%} warm releases)"
        add("soak_rss_before", f"{label}: RSS before", "MiB", [soak["rss_before_mib"]])
        add("soak_rss_after", f"{label}: RSS after", "MiB", [soak["rss_after_mib"]])
        add("soak_rss_growth", f"{label}: RSS growth", "MiB", [soak["rss_growth_mib"]], Goal("<", 5.0, "< 5 MiB"))
        add("soak_failures", f"{label}: failed requests", "requests", [soak["failures"]], Goal("==", 0, "0"))
    return figures


def _notes(runs: Sequence[Mapping[str, Any]], options: BenchOptions) -> list[str]:
    notes = [
        f"injected latencies: {options.latencies.describe()}",
        "headline Key Vault mode 'every_request': the harness delays every request the vault emulator receives, "
        "the 401 challenge included (a real vault's challenge costs a real round trip); the emulator's own "
        "keyvault.release fault delays only requests that passed the bearer check ('fault_only' rows)",
        "fresh-process figures include first-use imports (azure-identity, azure-keyvault-keys) and per-process "
        "caches; in-process figures run after those modules were imported",
        "MAA /certs, Entra discovery and the vault's own fetch of MAA's keys carry no injected latency",
    ]
    utilisation = [
        value
        for run in runs
        for value in _values([run], "status", "sidecar", "server_cpu_utilisation")
        + _values([run], "status", "bare", "server_cpu_utilisation")
    ]
    if utilisation and max(utilisation) < 0.8:
        notes.append(
            f"/status req/s is client-bound: the servers used at most {max(utilisation):.0%} of a core under "
            "load, so compare server CPU per request rather than req/s"
        )
    timelines = [run["first_release_timeline"] for run in runs if run.get("first_release_timeline")]
    if timelines:
        middle = timelines[len(timelines) // 2]
        rendered = ", ".join(f"+{row['at_ms']:.0f} ms {row['route']} {row['status']}" for row in middle)
        notes.append(f"first-release upstream arrivals (fresh process, one run): {rendered}")
    return notes


# --- presentation -----------------------------------------------------------------------------------


def _number(value: float, unit: str) -> str:
    if unit in ("calls", "requests"):
        return f"{value:.0f}"
    if unit == "×":
        return f"{value:.2f}×"
    if unit == "req/s":
        return f"{value:.0f} req/s"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    digits = 3 if abs(value) < 1 else 2 if abs(value) < 10 else 1
    return f"{value:.{digits}f} {unit}"


def _value_text(figure: Figure) -> str:
    spread = figure.spread
    text = _number(spread.median, figure.unit)
    if spread.n > 1 and spread.maximum != spread.minimum:
        low, high = _number(spread.minimum, figure.unit), _number(spread.maximum, figure.unit)
        text += f" [{low.split()[0]}–{high.split()[0]}]"
    return text


def _verdict_text(figure: Figure) -> str:
    if figure.goal is None:
        return figure.role
    ratio = figure.goal.ratio(figure.spread.median)
    return figure.verdict if ratio is None else f"{figure.verdict} ({ratio:.2f} of goal)"


def format_table(report: BenchReport) -> str:
    """The human table: figure | value (median [min–max]) | goal | ratio/verdict, with the banner."""
    header = ("figure", "value (median [min–max])", "goal", "ratio/verdict")
    rows = [(f.label, _value_text(f), f.goal.text if f.goal else "—", _verdict_text(f)) for f in report.figures]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    rule = "-+-".join("-" * width for width in widths)
    lines = [
        f"*** {SIMULATED_BANNER} ***",
        f"skr bench: {report.options.runs} run(s); {report.options.latencies.describe()}",
        "",
        " | ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)),
        rule,
    ]
    lines += [" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.append("")
    lines += [f"note: {note}" for note in report.notes]
    for figure in report.figures:
        if figure.note:
            lines.append(f"note: {figure.label}: {figure.note}")
    return "\n".join(lines) + "\n"


# --- entry points -----------------------------------------------------------------------------------


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """``--runs N``, ``--quick`` and ``--soak-requests N`` as :class:`BenchOptions`."""
    overrides: dict[str, Any] = {}
    runs = getattr(args, "runs", None)
    if runs is not None:
        overrides["runs"] = int(runs)
    soak = getattr(args, "soak_requests", None)
    if soak is not None:
        overrides["soak_requests"] = int(soak)
    return BenchOptions.quick(**overrides) if getattr(args, "quick", False) else BenchOptions(**overrides)


def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Entry point for ``skr bench`` (called by :mod:`skr.shell.cli`)."""
    try:
        options = options_from_args(args)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    sys.stderr.write(f"*** {SIMULATED_BANNER} ***\n")
    try:
        report = asyncio.run(run_bench(options))
    except RuntimeError as exc:
        sys.stderr.write(f"[SIMULATED] bench failed: {exc}\n")
        return EXIT_INTERNAL
    out.write(format_table(report))
    json_path = getattr(args, "json", None)
    if json_path:
        Path(json_path).write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        out.write(f"[SIMULATED] results written to {json_path}\n")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
