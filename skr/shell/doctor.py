"""``skr doctor``: diagnose the environment, one line per check, each failure with its fix.

Checks: the platform interfaces (configfs-tsm, /dev/sev-guest), the ACI security context, the
certificate sources, the identity variables, the configured endpoints (allow-listed, reachable over
TLS) and the clock (against the Date header of a reachable endpoint). Only configured endpoints are
contacted; nothing else leaves the machine.
"""

from __future__ import annotations

import asyncio
import enum
import os
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import aiohttp

from skr.core.collateral import SecurityContext
from skr.core.endpoints import Endpoint, EndpointKind
from skr.errors import SkrError
from skr.shell.config import Settings
from skr.shell.wiring import ssl_context
from skr.snp.provider import select_provider

__all__ = ["Check", "Status", "run_doctor"]

CLOCK_SKEW_LIMIT = 120.0


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    """One diagnosis line."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"[{self.status.value.upper():4}] {self.name}: {self.detail}"
        return f"{text} -> fix: {self.fix}" if self.fix and self.status is not Status.OK else text


def _platform(settings: Settings) -> Check:
    try:
        provider = select_provider(configfs_root=settings.configfs_root, sev_guest_path=settings.device_path)
    except SkrError as exc:
        return Check(
            "platform",
            Status.FAIL,
            exc.message,
            "run inside an SEV-SNP confidential pod (AKS runtimeClassName kata-cc, or Confidential ACI); "
            "for development without hardware use `skr dev`",
        )
    return Check("platform", Status.OK, f"SEV-SNP guest interface {getattr(provider, 'name', '?')}")


def _security_context(settings: Settings, environ: Mapping[str, str]) -> Check:
    env = (
        {**environ, "UVM_SECURITY_CONTEXT_DIR": settings.security_context_dir}
        if settings.security_context_dir
        else environ
    )
    try:
        context = SecurityContext.load(env)
    except SkrError as exc:
        return Check("security context", Status.FAIL, exc.message, "check the files in the security-context directory")
    if context is None:
        return Check(
            "security context",
            Status.WARN,
            "none found (normal on AKS; Confidential ACI provides /security-context-*)",
            "on AKS mount reference-info-base64 and set UVM_SECURITY_CONTEXT_DIR to get UVM endorsements",
        )
    parts = [name for name, value in (("policy", context.policy), ("host certificates", context.host_amd_cert),
                                      ("UVM endorsement", context.reference_info)) if value]  # fmt: skip
    return Check("security context", Status.OK, f"{context.source}: {', '.join(parts) or 'empty'}")


def _collateral(settings: Settings) -> Check:
    sources = ["certificate table"]
    sources += [name for name, url in (("THIM", settings.thim_url), ("AzCache", settings.azcache_url),
                                       ("AMD KDS", settings.kds_url)) if url]  # fmt: skip
    status = Status.OK if len(sources) > 1 else Status.WARN
    return Check("certificate sources", status, " > ".join(sources), "enable THIM or KDS (SKR_THIM_URL, SKR_KDS_URL)")


def _identity(settings: Settings, environ: Mapping[str, str]) -> Check:
    names = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE")
    present = [name for name in names if environ.get(name)]
    if len(present) == len(names):
        token_file = Path(environ["AZURE_FEDERATED_TOKEN_FILE"])
        if not token_file.is_file():
            return Check("identity", Status.FAIL, f"federated token file {token_file} is missing",
                         "label the pod azure.workload.identity/use=true and use the service account")  # fmt: skip
        return Check("identity", Status.OK, "workload identity (federated token file present)")
    if present:
        missing = ", ".join(sorted(set(names) - set(present)))
        detail = f"workload identity incomplete (missing {missing}); managed identity is used"
        return Check("identity", Status.WARN, detail, "set all three variables, or none")
    client = f" (client id {settings.identity_client_id})" if settings.identity_client_id else ""
    return Check("identity", Status.OK, f"managed identity through IMDS{client}, or access_token in requests")


async def _endpoint(session: aiohttp.ClientSession, settings: Settings, text: str, kind: EndpointKind) -> list[Check]:
    label = "MAA endpoint" if kind is EndpointKind.MAA else "Key Vault endpoint"
    try:
        endpoint = settings.allow_list().check(Endpoint.parse(text), kind)
    except SkrError as exc:
        return [Check(label, Status.FAIL, exc.message, "fix the endpoint or the allow-list")]
    started = time.time()
    try:
        async with session.get(endpoint.base_url + "/", timeout=aiohttp.ClientTimeout(total=5)) as response:
            date = response.headers.get("Date")
    except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
        return [Check(label, Status.FAIL, f"{endpoint} unreachable ({type(exc).__name__})",
                      "check DNS, egress rules and, for emulators, SKR_CA_FILE")]  # fmt: skip
    checks = [Check(label, Status.OK, f"{endpoint} reachable over TLS")]
    if date:
        skew = abs(parsedate_to_datetime(date).timestamp() - (started + time.time()) / 2)
        status = Status.OK if skew < CLOCK_SKEW_LIMIT else Status.FAIL
        checks.append(Check("clock", status, f"{skew:.1f} s from {endpoint}'s clock", "synchronise the node clock"))
    return checks


async def run_doctor(settings: Settings, environ: Mapping[str, str] | None = None) -> list[Check]:
    """Run every check; no check raises."""
    env = os.environ if environ is None else environ
    checks = [_platform(settings), _security_context(settings, env), _collateral(settings), _identity(settings, env)]
    targets = [(text, kind) for text, kind in ((settings.maa_endpoint, EndpointKind.MAA),
                                               (settings.akv_endpoint, EndpointKind.KEY_VAULT)) if text]  # fmt: skip
    if not targets:
        checks.append(Check("endpoints", Status.WARN, "no default endpoints configured; requests must name them",
                            "set SKR_MAA_ENDPOINT and SKR_AKV_ENDPOINT"))  # fmt: skip
    else:
        connector = aiohttp.TCPConnector(ssl=ssl_context(settings.ca_file))
        async with aiohttp.ClientSession(connector=connector) as session:
            results = await asyncio.gather(*(_endpoint(session, settings, text, kind) for text, kind in targets))
        for result in results:
            checks.extend(result)
    if not settings.allow_list().pinned:
        checks.append(Check("allow-list", Status.WARN, "Azure public-cloud suffixes (not pinned)",
                            "pin exact hosts with SKR_ALLOWED_MAA_ENDPOINTS / SKR_ALLOWED_AKV_ENDPOINTS"))  # fmt: skip
    return checks
