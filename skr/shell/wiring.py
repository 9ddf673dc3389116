"""Wiring: build the release core from :class:`skr.shell.config.Settings` and a report provider.

One place creates the shared TLS context and aiohttp session, the upstream clients, the identity,
the collateral resolver and the :class:`skr.core.release.KeyReleaser`, and one place closes them. The
CLI commands (``serve``, ``release``), ``skr dev`` and the benchmarks all come through here, so
what is measured and tested is what ships.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from azure.core.pipeline.transport import AioHttpTransport
from cryptography import x509

from skr.core.collateral import CollateralResolver, SecurityContext
from skr.core.identity import AzureIdentity
from skr.core.keyvault import VaultClient
from skr.core.maa import MaaClient
from skr.core.release import KeyReleaser, ReleaseOptions
from skr.core.upstream import RetryPolicy, Upstream
from skr.shell.config import Settings
from skr.snp.device import ReportProvider
from skr.snp.vcek import serial_zero_warnings_suppressed
from skr.snp.verify import TrustedRoots

__all__ = ["Runtime", "build_runtime", "system_trust_roots", "utc_now"]

_logger = logging.getLogger(__name__)

MAX_CA_FILE = 4 * 1024 * 1024


def utc_now() -> datetime:
    return datetime.now(UTC)


def _load_pem_file(path: str) -> list[x509.Certificate]:
    data = Path(path).read_bytes()
    if len(data) > MAX_CA_FILE:
        raise ValueError(f"{path} is larger than {MAX_CA_FILE} bytes")
    # Some CA bundles carry a root with serial number 0: a trust anchor's serial carries no trust.
    with serial_zero_warnings_suppressed():
        return x509.load_pem_x509_certificates(data)


def system_trust_roots() -> list[x509.Certificate]:
    """The system CA bundle as certificates (trust anchors for release JWS chains)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            try:
                return _load_pem_file(candidate)
            except ValueError:
                _logger.warning("system CA bundle %s could not be read", candidate)
    return []


def ssl_context(ca_file: str) -> ssl.SSLContext:
    """System roots, plus ``ca_file`` when set (the emulators' test CA)."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


@dataclass
class Runtime:
    """Everything a running sidecar owns; :meth:`close` releases it all."""

    settings: Settings
    session: aiohttp.ClientSession
    releaser: KeyReleaser
    identity: AzureIdentity
    on_upstream: list[Callable[[str, int | None, float], None]] = field(default_factory=list)

    async def close(self) -> None:
        await self.releaser.close()
        await self.identity.close()
        await self.session.close()


async def build_runtime(
    settings: Settings,
    *,
    platform: ReportProvider,
    environ: Mapping[str, str] | None = None,
    amd_roots: TrustedRoots | None = None,
    clock: Callable[[], datetime] = utc_now,
    one_shot: bool = False,
) -> Runtime:
    """Build the release core. ``amd_roots`` defaults to the pinned AMD roots.

    ``one_shot`` (``skr release``) skips what only a long-running sidecar uses: the spare wrapping key.
    """
    env = os.environ if environ is None else environ
    # azure-identity logs an unparsable token response, body (and so the token) included, at
    # WARNING. The sidecar owns this process's logging: keep that logger at ERROR and above.
    identity_logger = logging.getLogger("azure.identity")
    identity_logger.setLevel(max(logging.ERROR, identity_logger.getEffectiveLevel()))
    context = ssl_context(settings.ca_file)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, limit=64, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
    )
    listeners: list[Callable[[str, int | None, float], None]] = []

    def on_attempt(service: str, status: int | None, seconds: float) -> None:
        for listener in listeners:
            listener(service, status, seconds)

    def upstream(service: str, timeout: float, attempts: int = 3) -> Upstream:
        return Upstream(session, service, retry=RetryPolicy(attempts=attempts, timeout=timeout), on_attempt=on_attempt)

    collateral_timeout = settings.collateral_timeout
    security_context = SecurityContext.load(
        {**env, "UVM_SECURITY_CONTEXT_DIR": settings.security_context_dir} if settings.security_context_dir else env
    )
    if security_context is not None:
        _logger.info("ACI security context found at %s", security_context.source)
    collateral = CollateralResolver(
        trusted=amd_roots or TrustedRoots.amd(),
        clock=clock,
        security_context=security_context,
        thim=upstream("thim", collateral_timeout) if settings.thim_url else None,
        thim_url=settings.thim_url.rstrip("/") or None,
        azcache=upstream("azcache", collateral_timeout) if settings.azcache_url else None,
        azcache_url=settings.azcache_url.rstrip("/") or None,
        kds=upstream("kds", collateral_timeout, attempts=4) if settings.kds_url else None,
        kds_url=settings.kds_url.rstrip("/") or None,
        cache_dir=Path(settings.cert_cache_dir) if settings.cert_cache_dir else None,
    )

    def transport() -> AioHttpTransport:
        return AioHttpTransport(session=session, session_owner=False)

    identity = AzureIdentity(
        environ=env, transport=transport(), managed_identity_client_id=settings.identity_client_id or None
    )
    trusted_jws_roots = system_trust_roots()
    if settings.ca_file:
        trusted_jws_roots += _load_pem_file(settings.ca_file)
    releaser = KeyReleaser(
        platform=platform,
        collateral=collateral,
        maa=MaaClient(upstream("maa", settings.maa_timeout), clock=clock, api_version=settings.maa_api_version),
        vault=VaultClient(
            transport_factory=transport,
            trusted_roots=trusted_jws_roots,
            clock=clock,
            timeout=settings.akv_timeout,
            api_version=settings.akv_api_version or None,
            challenge_upstream=upstream("keyvault-challenge", settings.akv_timeout, attempts=1),
        ),
        identity=identity,
        allow=settings.allow_list(),
        clock=clock,
        options=ReleaseOptions(
            wrapping_key_bits=settings.wrapping_key_bits,
            released_key_ttl=timedelta(seconds=settings.released_key_ttl) if settings.released_key_ttl > 0 else None,
            identity_timeout=settings.akv_timeout,
            managed_hsm_hosts=settings.managed_hsm_netlocs(),
            prepare_successor=not one_shot,
        ),
        security_context=security_context,
        default_maa=settings.maa_endpoint or None,
        default_akv=settings.akv_endpoint or None,
    )
    runtime = Runtime(settings, session, releaser, identity, listeners)
    await releaser.start()
    return runtime
