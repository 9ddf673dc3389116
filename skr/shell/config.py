"""Configuration: one frozen :class:`Settings`, built once, with a documented precedence.

Command-line flags > ``SKR_*`` environment variables > ``SkrSideCarArgs`` (the Go sidecar's base64
JSON, accepted for compatibility) and the Go sidecar's ``Port`` / ``LogLevel`` > defaults.

Every setting is declared once in :data:`SETTINGS` (name, variable, type, default, description);
the CLI flags, the README table and the redacted start-up log are all derived from it.
"""

from __future__ import annotations

import difflib
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

__all__ = [
    "RELEASE_FORMATS",
    "SETTINGS",
    "Kind",
    "Setting",
    "Settings",
    "kind_of",
    "load_settings",
    "parse_go_sidecar_args",
    "unknown_variables",
]

#: ``skr release --format`` -> key-file suffix. Declared here, beside the other options, so the CLI
#: can list the choices without importing the release machinery (aiohttp, the Azure SDKs) for ``--help``.
RELEASE_FORMATS: Final = {"jwk": "json", "pem": "pem", "raw": "bin"}


class Kind:
    """A setting's parser that also knows which values it accepts and how to say so.

    Why: the same rule must hold for text from the environment or flags *and* for values handed to
    :class:`Settings` directly (the settings API), and the message must read as the rule
    ("SKR_PORT must be an integer 0–65535, got 'abc'"), not as Python's parser wording.
    """

    __slots__ = ("accepts", "expect", "parse_text")

    def __init__(self, expect: str, parse_text: Callable[[str], Any], accepts: Callable[[Any], bool]) -> None:
        self.expect = expect
        self.parse_text = parse_text
        self.accepts = accepts

    def __call__(self, text: str) -> Any:
        try:
            value = self.parse_text(text)
        except (ValueError, OverflowError):
            raise ValueError(self.expect) from None
        if not self.accepts(value):
            raise ValueError(self.expect)
        return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int_range(low: int, high: int | None = None, note: str = "") -> Kind:
    bound = f"{low}–{high}" if high is not None else f"≥ {low}"
    return Kind(
        f"an integer {bound}{note}",
        lambda text: int(text.strip()),
        lambda v: _is_int(v) and v >= low and (high is None or v <= high),
    )


def _number(low: float, *, inclusive: bool) -> Kind:
    """A finite number above (or from) ``low``: ``nan`` and ``inf`` parse as floats but are refused."""
    word = "≥" if inclusive else ">"
    return Kind(
        f"a finite number {word} {low:g}",
        lambda text: float(text.strip()),
        lambda v: _is_finite(v) and (v >= low if inclusive else v > low),
    )


def _text_to_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


def _list_of_text(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
_LOG_ALIASES: Final = {"warn": "warning", "fatal": "critical", "panic": "critical", "trace": "debug"}


def _text_to_log_level(text: str) -> str:
    value = text.strip().lower()
    return _LOG_ALIASES.get(value, value)


def _choice(*options: Any) -> Kind:
    words = ", ".join(str(o) for o in options[:-1]) + f" or {options[-1]}"
    kind = type(options[0])
    return Kind(f"one of {words}", lambda text: kind(text.strip()), lambda v: v in options)


_bool: Final = Kind("a boolean (true/false, 1/0, yes/no, on/off)", _text_to_bool, lambda v: isinstance(v, bool))
_list: Final = Kind(
    "a comma-separated list",
    _list_of_text,
    lambda v: isinstance(v, tuple) and all(isinstance(i, str) for i in v),
)
_text: Final = Kind("text", str, lambda v: isinstance(v, str))
_port: Final = _int_range(0, 65535, " (0: any free port)")
_optional_port: Final = Kind(
    "an integer 0–65535 (0: any free port), or -1 / off for not listening",
    lambda text: -1 if text.strip().lower() in ("", "off", "-1") else int(text.strip()),
    lambda v: _is_int(v) and -1 <= v <= 65535,
)
_positive: Final = _number(0, inclusive=False)
_log_level: Final = Kind(f"one of {', '.join(_LOG_LEVELS)}", _text_to_log_level, lambda v: v in _LOG_LEVELS)
_key_bits: Final = _choice(2048, 3072, 4096)

# Plain types in SETTINGS get the same treatment as a Kind: an int must be an integer, a float finite.
_PLAIN: Final[dict[Any, Kind]] = {
    str: _text,
    int: Kind("an integer", lambda text: int(text.strip()), _is_int),
    float: Kind("a finite number", lambda text: float(text.strip()), _is_finite),
    bool: _bool,
}


def kind_of(setting: Setting) -> Kind:
    """The :class:`Kind` that parses and checks ``setting`` (plain ``int``/``float``/``str`` included)."""
    if isinstance(setting.parse, Kind):
        return setting.parse
    plain = _PLAIN.get(setting.parse)
    if plain is not None:
        return plain
    return Kind("a valid value", setting.parse, lambda _v: True)


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
    Setting("host", _text, "127.0.0.1", "address to listen on; non-loopback needs --unsafe-bind"),
    Setting("port", _port, 8080, "port to listen on (also the Go sidecar's Port variable)"),
    Setting("grpc_port", _optional_port, -1, "gRPC key-provider port (-1: off, 0: pick a free one)"),
    Setting(
        "server_type",
        _choice("http", "grpc"),
        "http",
        "grpc: serve only the gRPC key provider on --port, as the Go sidecar's ServerType/-server_type",
    ),
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
    Setting("released_key_ttl", _number(0, inclusive=True), 0.0, "seconds to cache released keys in memory (0: off)"),
    Setting("max_body_bytes", _int_range(1024), 65536, "largest accepted request body"),
)

_BY_NAME: Final = {setting.name: setting for setting in SETTINGS}


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration. Build it with :func:`load_settings`."""

    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int = -1
    server_type: str = "http"
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
        for setting in SETTINGS:
            value = getattr(self, setting.name)
            kind = kind_of(setting)
            if not kind.accepts(value):
                raise ConfigError(f"{setting.name} must be {kind.expect}, got {value!r}")
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
    for go_name, name in (("Port", "port"), ("LogLevel", "log_level"), ("ServerType", "server_type")):
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
    kind = kind_of(setting)
    try:
        return kind(text)
    except (ValueError, OverflowError):
        shown = text if len(text) <= 64 else text[:64] + "…"
        raise ConfigError(f"{source} must be {kind.expect}, got {shown!r}") from None


# Variables the test suite and the container checks read; they are deliberately not settings.
_NOT_SETTINGS: Final = frozenset({"SKR_IMAGE", "SKR_RUN_SLOW", "SKR_SOAK_REQUESTS", "SKR_SPECS", "SKR_TESTDATA"})


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Warnings for ``SKR_*`` variables that are no setting, each with the nearest known name.

    Why: a misspelt variable (``SKR_PROT``) is otherwise silently ignored and the default applies.
    Variables other parts of skr read on purpose (``SKR_TEST_*``, ``SKR_DEV_*``) are not settings
    and are left alone.
    """
    env = os.environ if environ is None else environ
    known = [setting.env for setting in SETTINGS]
    out = []
    for name in sorted(env):
        if not name.startswith("SKR_") or name in known or name in _NOT_SETTINGS:
            continue
        if name.startswith(("SKR_TEST_", "SKR_DEV_")):
            continue
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]}?" if near else ""
        out.append(f"{name} is not a known setting and is ignored{hint}")
    return out
