"""Configuration: one frozen :class:`Settings`, built once, with a documented precedence.

Command-line flags > ``SKR_*`` environment variables > ``SkrSideCarArgs`` (the Go sidecar's base64
JSON, accepted for compatibility) and the Go sidecar's ``Port`` / ``LogLevel`` > defaults.

Every setting is declared once in :data:`SETTINGS` (name, variable, type, default, description);
the CLI flags, the README table and the redacted start-up log are all derived from it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from skr.core.endpoints import AllowList, Endpoint
from skr.errors import BadRequestError, ConfigError
from skr.primitives.encoding import b64_decode_lenient_padding

__all__ = ["SETTINGS", "Setting", "Settings", "load_settings", "parse_go_sidecar_args"]


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value < 65536:
        raise ValueError("port out of range")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive, finite number")
    return value


def _log_level(text: str) -> str:
    value = text.strip().lower()
    aliases = {"warn": "warning", "fatal": "critical", "panic": "critical", "trace": "debug"}
    value = aliases.get(value, value)
    if value not in ("debug", "info", "warning", "error", "critical"):
        raise ValueError("expected debug, info, warning, error or critical")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return text

    return parse


def _key_bits(text: str) -> int:
    value = int(text)
    if value not in (2048, 3072, 4096):
        raise ValueError("expected 2048, 3072 or 4096")
    return value


@dataclass(frozen=True, slots=True)
class Setting:
    """One configuration item: its field, environment variable, parser, default and meaning."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    secret: bool = False

    @property
    def env(self) -> str:
        return "SKR_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("host", str, "127.0.0.1", "address to listen on; non-loopback needs --unsafe-bind"),
    Setting("port", _port, 8080, "port to listen on (also the Go sidecar's Port variable)"),
    Setting("unsafe_bind", _bool, False, "allow a non-loopback listen address (logged as a warning)"),
    Setting("log_level", _log_level, "info", "debug, info, warning, error (also the Go sidecar's LogLevel)"),
    Setting("log_format", _choice("json", "text", "auto"), "auto", "json, text, or auto (json in containers)"),
    Setting("maa_endpoint", str, "", "default MAA instance for requests that name none"),
    Setting("akv_endpoint", str, "", "default Key Vault / Managed HSM for requests that name none"),
    Setting("allowed_maa_endpoints", _list, (), "exact MAA hosts allowed (comma list); else *.attest.azure.net"),
    Setting(
        "allowed_akv_endpoints",
        _list,
        (),
        "exact vault hosts allowed (comma list); else *.vault.azure.net, *.managedhsm.azure.net",
    ),
    Setting("managed_hsm_hosts", _list, (), "extra hosts to treat as Managed HSM (token scope)"),
    Setting("identity_client_id", str, "", "client id of a user-assigned managed identity"),
    Setting("ca_file", str, "", "extra CA bundle trusted for TLS and for release JWS chains (emulators)"),
    Setting("thim_url", str, "http://169.254.169.254", "IMDS base URL for THIM certificates; empty disables"),
    Setting("azcache_url", str, "https://global.acccache.azure.net", "Azure certificate cache; empty disables"),
    Setting("kds_url", str, "https://kdsintf.amd.com", "AMD KDS base URL; empty disables"),
    Setting("cert_cache_dir", str, "", "directory to cache VCEK chains on disk (e.g. /tmp/skr-certs)"),
    Setting("security_context_dir", str, "", "ACI security-context directory (else UVM_SECURITY_CONTEXT_DIR)"),
    Setting("configfs_root", str, "/sys/kernel/config/tsm/report", "configfs-tsm report directory"),
    Setting("device_path", str, "/dev/sev-guest", "SEV-SNP guest device"),
    Setting("wrapping_key_bits", _key_bits, 2048, "RSA wrapping key size: 2048, 3072 or 4096"),
    Setting("maa_api_version", str, "2022-08-01", "MAA api-version"),
    Setting("akv_api_version", str, "", "Key Vault api-version (empty: the SDK default)"),
    Setting("maa_timeout", _positive, 10.0, "seconds for one MAA call, retries included"),
    Setting("akv_timeout", _positive, 15.0, "seconds for one Key Vault release"),
    Setting("collateral_timeout", _positive, 10.0, "seconds for one certificate source"),
    Setting("released_key_ttl", float, 0.0, "seconds to cache released keys in memory (0: off)"),
    Setting("max_body_bytes", int, 65536, "largest accepted request body"),
)

_BY_NAME: Final = {setting.name: setting for setting in SETTINGS}


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration. Build it with :func:`load_settings`."""

    host: str = "127.0.0.1"
    port: int = 8080
    unsafe_bind: bool = False
    log_level: str = "info"
    log_format: str = "auto"
    maa_endpoint: str = ""
    akv_endpoint: str = ""
    allowed_maa_endpoints: tuple[str, ...] = ()
    allowed_akv_endpoints: tuple[str, ...] = ()
    managed_hsm_hosts: tuple[str, ...] = ()
    identity_client_id: str = ""
    ca_file: str = ""
    thim_url: str = "http://169.254.169.254"
    azcache_url: str = "https://global.acccache.azure.net"
    kds_url: str = "https://kdsintf.amd.com"
    cert_cache_dir: str = ""
    security_context_dir: str = ""
    configfs_root: str = "/sys/kernel/config/tsm/report"
    device_path: str = "/dev/sev-guest"
    wrapping_key_bits: int = 2048
    maa_api_version: str = "2022-08-01"
    akv_api_version: str = ""
    maa_timeout: float = 10.0
    akv_timeout: float = 15.0
    collateral_timeout: float = 10.0
    released_key_ttl: float = 0.0
    max_body_bytes: int = 65536

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ConfigError("max_body_bytes must be at least 1024")
        if self.ca_file and not Path(self.ca_file).is_file():
            raise ConfigError(f"ca_file {self.ca_file!r} does not exist")

    def allow_list(self) -> AllowList:
        """The endpoint allow-list; default endpoints are always allowed."""
        maa = list(self.allowed_maa_endpoints)
        akv = list(self.allowed_akv_endpoints)
        if maa and self.maa_endpoint:
            maa.append(self.maa_endpoint)
        if akv and self.akv_endpoint:
            akv.append(self.akv_endpoint)
        try:
            return AllowList.from_hosts(maa=maa, vault=akv)
        except Exception as exc:
            raise ConfigError(f"invalid allow-list entry: {exc}") from None

    def managed_hsm_netlocs(self) -> frozenset[str]:
        """The extra Managed HSM hosts; a bad entry is the operator's fault, so a ConfigError."""
        try:
            return frozenset(Endpoint.parse(h).netloc for h in self.managed_hsm_hosts)
        except BadRequestError as exc:
            raise ConfigError(f"invalid managed_hsm_hosts entry: {exc}") from None

    def redacted(self) -> dict[str, Any]:
        """The configuration as logged at start-up (no secret is ever a setting, but be explicit)."""
        return {f.name: ("<redacted>" if _BY_NAME[f.name].secret else getattr(self, f.name)) for f in fields(self)}


def parse_go_sidecar_args(encoded: str) -> dict[str, Any]:
    """Map the Go sidecar's ``SkrSideCarArgs`` (standard base64 of JSON) onto setting names.

    ``certcache.endpoint_type`` AMD → kds_url, AzCache → azcache_url, LocalTHIM → thim_url (the Go
    sidecar's endpoints carry no scheme); ``identity.client_id`` → identity_client_id.
    """
    try:
        document = json.loads(b64_decode_lenient_padding(encoded.strip()))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ConfigError("SkrSideCarArgs is not base64-encoded JSON") from None
    if not isinstance(document, dict):
        raise ConfigError("SkrSideCarArgs must be a JSON object")
    out: dict[str, Any] = {}
    certcache = document.get("certcache") or {}
    if isinstance(certcache, dict) and certcache.get("endpoint"):
        endpoint = str(certcache["endpoint"]).strip().rstrip("/")
        kind = str(certcache.get("endpoint_type", "")).lower()
        if kind == "amd":
            host = endpoint.removesuffix("/vcek/v1")
            out["kds_url"] = host if "://" in host else f"https://{host}"
        elif kind == "azcache":
            out["azcache_url"] = endpoint if "://" in endpoint else f"https://{endpoint}"
        elif kind == "localthim":
            host = endpoint.split("/metadata/", 1)[0]
            out["thim_url"] = host if "://" in host else f"http://{host}"
        else:
            raise ConfigError(f"SkrSideCarArgs certcache.endpoint_type {kind!r} is not AMD, AzCache or LocalTHIM")
    identity = document.get("identity") or {}
    if isinstance(identity, dict) and identity.get("client_id"):
        out["identity_client_id"] = str(identity["client_id"])
    return out


def load_settings(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Merge the sources by precedence and validate every value once.

    Raises:
        ConfigError: a value does not parse; the message names the variable or flag.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if env.get("SkrSideCarArgs"):
        values.update(parse_go_sidecar_args(env["SkrSideCarArgs"]))
    for go_name, name in (("Port", "port"), ("LogLevel", "log_level")):
        if env.get(go_name):
            values[name] = _parse(_BY_NAME[name], env[go_name], go_name)
    for setting in SETTINGS:
        if setting.env in env:
            values[setting.name] = _parse(setting, env[setting.env], setting.env)
    for name, value in (flags or {}).items():
        if value is None or name not in _BY_NAME:
            continue
        setting = _BY_NAME[name]
        values[name] = _parse(setting, value, setting.flag) if isinstance(value, str) else value
    return Settings(**values)


def _parse(setting: Setting, text: str, source: str) -> Any:
    try:
        return setting.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
