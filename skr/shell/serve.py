"""``skr serve``: run the sidecar until SIGTERM/SIGINT.

Start-up order, so /status is honest and the first release is fast:

1. open the platform (configfs-tsm, else /dev/sev-guest); a missing device stops here with
   :class:`skr.errors.PlatformUnavailableError` naming the paths tried — there is no fake fallback;
2. refuse a non-loopback listen address unless ``unsafe_bind`` is set;
3. build the release core; the wrapping key starts generating in a worker thread;
4. listen at once (/status answers 503 with the reason until ready);
5. warm up in the background: one report and its collateral, retried with backoff until it works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from aiohttp import web

from skr.core.endpoints import is_loopback_host
from skr.errors import ConfigError, SkrError
from skr.primitives.retry import Backoff, RetrySchedule
from skr.shell.config import Settings, unknown_variables
from skr.shell.http_api import AppState, Metrics, SidecarRunner, create_app
from skr.shell.wiring import Runtime, build_runtime, utc_now

if TYPE_CHECKING:
    from skr.shell.grpc_api import GrpcServer
from skr.snp.device import ReportProvider
from skr.snp.provider import select_provider
from skr.snp.verify import TrustedRoots

__all__ = ["RunningSidecar", "check_bind_address", "run_serve", "start_sidecar"]

_logger = logging.getLogger(__name__)


def check_bind_address(host: str, *, unsafe: bool) -> None:
    """Loopback only, unless the operator explicitly accepts the risk."""
    if is_loopback_host(host):
        return
    if not unsafe:
        raise ConfigError(
            f"refusing to listen on non-loopback address {host!r}: the API has no authentication. "
            "Pass --unsafe-bind (SKR_UNSAFE_BIND=1) only if the network namespace is private to the pod."
        )
    _logger.warning("UNSAFE: listening on non-loopback address %s; anyone who can reach it can release keys", host)


@dataclass
class RunningSidecar:
    """A started sidecar: its runtime, app state, HTTP runner, gRPC server and warm-up task."""

    runtime: Runtime
    state: AppState
    runner: web.AppRunner | None
    warm_up: asyncio.Task[None]
    port: int
    grpc: GrpcServer | None = None

    @property
    def grpc_port(self) -> int | None:
        return self.grpc.port if self.grpc is not None else None

    async def stop(self) -> None:
        self.warm_up.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.warm_up
        if self.grpc is not None:
            await self.grpc.stop()
        if self.runner is not None:
            await self.runner.cleanup()
        await self.runtime.close()


async def _warm_up(state: AppState, runtime: Runtime) -> None:
    # No deadline and no attempt limit: the sidecar keeps trying (and stays not-ready) until it
    # works or is stopped, with waits of up to 0.5, 1, 2 … 30 s.
    schedule = RetrySchedule(Backoff(0.5, 30.0), clock=asyncio.get_running_loop().time)
    while True:
        try:
            await runtime.releaser.warm_up()
        except SkrError as exc:
            state.startup_error = f"{exc.code}: {exc.message}"
            delay = schedule.next_delay()
            if delay is None:  # unreachable without a deadline or attempt limit; fail closed if it ever is
                raise
            _logger.warning("warm-up failed (%s); retrying in %.1f s", exc.message, delay)
            await asyncio.sleep(delay)
            continue
        state.startup_error = None
        _logger.info("ready: wrapping key generated, report and collateral verified")
        return


async def start_sidecar(
    settings: Settings,
    *,
    platform: ReportProvider | None = None,
    environ: Mapping[str, str] | None = None,
    amd_roots: TrustedRoots | None = None,
    clock: Callable[[], datetime] = utc_now,
    simulated_banner: str | None = None,
) -> RunningSidecar:
    """Start the sidecar and return once it listens (it becomes ready in the background).

    The effective configuration is logged first, so a start-up failure that follows (bind address,
    missing device) is reported next to the values that caused it.
    """
    _logger.info("effective configuration: %s", settings.redacted())
    for warning in unknown_variables(environ):
        _logger.warning("%s", warning)
    check_bind_address(settings.host, unsafe=settings.unsafe_bind)
    provider = platform or select_provider(configfs_root=settings.configfs_root, sev_guest_path=settings.device_path)
    if not settings.allow_list().pinned:
        _logger.warning(
            "endpoint allow-list uses the Azure public-cloud suffixes; pin exact hosts with "
            "SKR_ALLOWED_MAA_ENDPOINTS and SKR_ALLOWED_AKV_ENDPOINTS"
        )
    runtime = await build_runtime(settings, platform=provider, environ=environ, amd_roots=amd_roots, clock=clock)
    metrics = Metrics()
    runtime.on_upstream.append(metrics.record_upstream)
    state = AppState(
        releaser=runtime.releaser,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        simulated_banner=simulated_banner,
    )
    grpc_only = settings.server_type == "grpc"
    runner: web.AppRunner | None = None
    port = settings.port
    if not grpc_only:
        runner, port = await _start_http(state, settings, runtime)
    grpc_port = settings.port if grpc_only else settings.grpc_port
    grpc_server = None
    if grpc_port >= 0:
        # Imported here: grpcio loads only when a gRPC port is configured.
        from skr.shell.grpc_api import GrpcState, start_grpc  # noqa: PLC0415

        try:
            grpc_server = await start_grpc(GrpcState(state), settings.host, grpc_port)
        except BaseException:
            if runner is not None:
                await runner.cleanup()
            await runtime.close()
            raise
        if grpc_only:
            port = grpc_server.port
    _logger.info("provider %s", getattr(provider, "name", "?"))
    task = asyncio.ensure_future(_warm_up(state, runtime))
    return RunningSidecar(runtime, state, runner, task, port, grpc_server)


async def _start_http(state: AppState, settings: Settings, runtime: Runtime) -> tuple[web.AppRunner, int]:
    runner = SidecarRunner(create_app(state), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await runtime.close()
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from None
    addresses = runner.addresses  # the bound socket tells the real port when 0 was asked for
    port = int(addresses[0][1]) if addresses else settings.port
    _logger.info("listening on http://%s:%d", settings.host, port)
    return runner, port


async def wait_for_stop_signal() -> None:
    """Return on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def run_serve(settings: Settings) -> None:
    """``skr serve``: run until a stop signal, then shut down cleanly."""
    sidecar = await start_sidecar(settings)
    try:
        await wait_for_stop_signal()
        _logger.info("stopping")
    finally:
        await sidecar.stop()
