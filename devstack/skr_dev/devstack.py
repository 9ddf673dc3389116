"""``skr dev``: the whole stack on loopback — SIMULATED platform, Azure emulators and the sidecar.

For developers without SEV-SNP hardware or Azure: one command starts a simulated SEV-SNP chip,
emulators of MAA, Key Vault, Managed HSM, Entra ID, IMDS/THIM, AMD KDS and the Azure certificate
cache, and the real sidecar (``skr serve``'s code) wired to them, seeds demo keys whose release
policies match the simulated HOST_DATA, prints curl commands that work as pasted, and optionally
writes a state file so outside tools (the real Azure SDKs, curl, your tests) can reach every part.

NOTHING HERE IS A TEE. Every response carries an ``X-SKR-Simulated`` header and a ``warning`` field,
and every log line and printed line says SIMULATED.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from skr.core.endpoints import Endpoint
from skr.errors import EXIT_INTERNAL, EXIT_OK, ConfigError
from skr.shell.config import Settings
from skr.shell.initcontainer import write_atomically
from skr.shell.logs import configure_logging
from skr.shell.serve import RunningSidecar, start_sidecar, wait_for_stop_signal
from skr_dev import SIMULATED_BANNER
from skr_dev.emulators.faults import Fault, FaultKind
from skr_dev.emulators.stack import EmulatorStack
from skr_dev.simulated.platform import SimulatedPlatform

__all__ = ["DEMO_KEYS", "DevStack", "main", "parse_fault"]

_logger = logging.getLogger(__name__)

DEMO_KEYS: tuple[dict[str, Any], ...] = (
    {"name": "demo-rsa", "vault": "keyvault", "kty": "RSA-HSM", "size": 2048},
    {"name": "demo-ec", "vault": "keyvault", "kty": "EC-HSM", "crv": "P-256"},
    {"name": "demo-oct", "vault": "managedhsm", "kty": "oct-HSM", "size": 256},
)


def parse_fault(text: str) -> Fault:
    """``ENDPOINT:KIND[=VALUE][:times=N]``, e.g. ``maa.attest:latency=0.15`` or ``keyvault.*:error_503:times=2``."""
    parts = text.split(":")
    if len(parts) < 2:
        raise ConfigError(f"--fault {text!r}: expected ENDPOINT:KIND[=VALUE][:times=N]")
    endpoint, kind_text, *rest = parts
    kind_name, _, value = kind_text.partition("=")
    try:
        kind = FaultKind(kind_name.strip().lower())
        fields: dict[str, Any] = {"kind": kind, "endpoint": endpoint.strip() or "*"}
        if value:
            if kind is FaultKind.RATE_LIMIT:
                fields["retry_after"] = int(value)
            else:
                fields["delay"] = float(value)
        for extra in rest:
            key, _, number = extra.partition("=")
            if key != "times":
                raise ValueError(f"unknown option {key!r}")
            fields["times"] = int(number)
        return Fault(**fields)
    except ValueError as exc:
        kinds = ", ".join(k.value for k in FaultKind)
        raise ConfigError(f"--fault {text!r}: {exc} (kinds: {kinds})") from None


@dataclass
class DevStack:
    """The emulators plus a sidecar wired to them."""

    emulators: EmulatorStack
    sidecar: RunningSidecar
    platform: SimulatedPlatform
    settings: Settings
    environ: dict[str, str]

    @property
    def sidecar_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar.port}"

    def state(self) -> dict[str, Any]:
        return {"sidecar_url": self.sidecar_url, **self.emulators.state()}

    @classmethod
    async def start(
        cls,
        *,
        port: int = 8080,
        faults: Sequence[Fault] = (),
        keys: Sequence[dict[str, Any]] = DEMO_KEYS,
        state_dir: Path | None = None,
        stack_config: dict[str, Any] | None = None,
        settings_overrides: dict[str, Any] | None = None,
    ) -> DevStack:
        config = {**(stack_config or {}), "faults": [f.to_json() for f in faults], "keys": list(keys)}
        emulators = EmulatorStack(config, state_dir=state_dir)
        await emulators.start()
        try:
            platform = SimulatedPlatform(
                emulators.platform, host_data=emulators.host_data, measurement=emulators.measurement
            )
            context_dir = emulators.write_security_context(emulators.state_dir / "security-context")
            state = emulators.state()
            hosts = {name: Endpoint.parse(state[f"{name}_url"]).netloc for name in ("maa", "keyvault", "managedhsm")}
            wiring: dict[str, Any] = {
                "port": port,
                "maa_endpoint": hosts["maa"],
                "akv_endpoint": hosts["keyvault"],
                "allowed_maa_endpoints": (hosts["maa"],),
                "allowed_akv_endpoints": (hosts["keyvault"], hosts["managedhsm"]),
                "managed_hsm_hosts": (hosts["managedhsm"],),
                "ca_file": state["ca_file"],
                "thim_url": state["imds_url"],
                "azcache_url": state["certcache_url"],
                "kds_url": state["kds_url"],
                "security_context_dir": str(context_dir),
            }
            settings = Settings(**{**wiring, **(settings_overrides or {})})
            environ = {**os.environ, **emulators.environment()}
            sidecar = await start_sidecar(
                settings,
                platform=platform,
                environ=environ,
                amd_roots=emulators.platform.trusted_roots(),
                simulated_banner=SIMULATED_BANNER,
            )
        except BaseException:
            await emulators.stop()
            raise
        return cls(emulators, sidecar, platform, settings, environ)

    async def stop(self) -> None:
        await self.sidecar.stop()
        await self.emulators.stop()


def write_state_file(path: Path, state: dict[str, Any]) -> None:
    """Write the state JSON once, atomically, mode 0600: readers see all of it or nothing."""
    write_atomically(path, json.dumps(state, indent=2).encode() + b"\n")


def curl_commands(dev: DevStack) -> list[str]:
    """Commands that work as pasted while the stack runs."""
    url = dev.sidecar_url
    commands = [f"curl -s {url}/status"]
    state = dev.state()
    for key in state["keys"]:
        body = {"kid": key["name"], "akv_endpoint": Endpoint.parse(key["vault_url"]).netloc}
        commands.append(f"curl -s {url}/key/release -d {shlex.quote(json.dumps(body, separators=(',', ':')))}")
    commands.append(f'curl -s {url}/attest/raw -d \'{{"runtime_data":"aGVsbG8="}}\'')
    return commands


async def self_test(dev: DevStack, out: TextIO) -> bool:
    """Release every demo key through the sidecar over HTTP, exactly as an application would."""
    ok = True
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(f"{dev.sidecar_url}/status") as response:
                if response.status == 200:
                    break
            await asyncio.sleep(0.05)
        for key in dev.state()["keys"]:
            body = {"kid": key["name"], "akv_endpoint": Endpoint.parse(key["vault_url"]).netloc}
            async with session.post(f"{dev.sidecar_url}/key/release", json=body) as response:
                document = await response.json()
            if response.status != 200:
                ok = False
                out.write(f"[SIMULATED] FAILED {key['name']}: {response.status} {document.get('code')}\n")
                continue
            jwk = json.loads(document["key"])
            fingerprint = hashlib.sha256(json.dumps(jwk, sort_keys=True).encode()).hexdigest()[:16]
            out.write(
                f"[SIMULATED] released {key['name']} from {key['vault_url']}: kty={jwk['kty']} "
                f"members={','.join(sorted(jwk))} fingerprint={fingerprint}\n"
            )
    return ok


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    faults = [parse_fault(text) for text in args.fault]
    dev = await DevStack.start(port=args.port, faults=faults, settings_overrides={"log_level": args.log_level})
    try:
        if args.state_file:
            write_state_file(Path(args.state_file), dev.state())
        out.write(f"\n*** {SIMULATED_BANNER} ***\n")
        out.write(f"[SIMULATED] sidecar: {dev.sidecar_url}\n")
        for name, value in dev.state().items():
            if name.endswith("_url") or name in ("ca_file", "host_data"):
                out.write(f"[SIMULATED]   {name}: {value}\n")
        out.write("[SIMULATED] try:\n")
        for command in curl_commands(dev):
            out.write(f"  {command}\n")
        out.flush()
        if args.self_test:
            return EXIT_OK if await self_test(dev, out) else EXIT_INTERNAL
        await wait_for_stop_signal()
        out.write("[SIMULATED] stopping\n")
        return EXIT_OK
    finally:
        await dev.stop()


def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Entry point for ``skr dev`` (called by :mod:`skr.shell.cli`)."""
    configure_logging(args.log_level, "text", banner="SIMULATED")
    _logger.warning("%s", SIMULATED_BANNER)
    return asyncio.run(_run(args, out))
