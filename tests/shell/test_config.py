"""Configuration precedence, the Go sidecar's variables, and validation."""

from __future__ import annotations

import base64
import json
from dataclasses import fields

import pytest

from skr.errors import ConfigError
from skr.shell.config import SETTINGS, Settings, load_settings, parse_go_sidecar_args, unknown_variables


def _go_args(document: dict[str, object]) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


def test_settings_table_and_dataclass_agree() -> None:
    declared = {s.name: s.default for s in SETTINGS}
    assert declared == {f.name: f.default for f in fields(Settings)}


def test_defaults() -> None:
    settings = load_settings({}, {})
    assert (settings.host, settings.port, settings.log_level) == ("127.0.0.1", 8080, "info")
    assert settings.kds_url == "https://kdsintf.amd.com"


def test_precedence_flags_over_env_over_go_args() -> None:
    env = {
        "SkrSideCarArgs": _go_args({"identity": {"client_id": "from-go"}}),
        "Port": "9000",
        "LogLevel": "Warning",
        "SKR_PORT": "9100",
    }
    settings = load_settings({}, env)
    assert settings.port == 9100 and settings.log_level == "warning" and settings.identity_client_id == "from-go"
    env["SKR_IDENTITY_CLIENT_ID"] = "from-env"
    assert load_settings({}, env).identity_client_id == "from-env"
    flagged = load_settings({"port": 9200, "identity_client_id": "from-flag"}, env)
    assert flagged.port == 9200 and flagged.identity_client_id == "from-flag"


@pytest.mark.parametrize(
    ("certcache", "field", "value"),
    [
        ({"endpoint_type": "AMD", "endpoint": "kdsintf.amd.com/vcek/v1", "tee_type": "Milan"}, "kds_url", "https://kdsintf.amd.com"),
        ({"endpoint_type": "AzCache", "endpoint": "global.acccache.azure.net", "tee_type": "SevSnpVM",
          "api_version": "api-version=2020-10-15-preview", "client_id": "clientId=ConfidentialACI"},
         "azcache_url", "https://global.acccache.azure.net"),
        ({"endpoint_type": "LocalTHIM", "endpoint": "169.254.169.254/metadata/THIM/amd/certification"},
         "thim_url", "http://169.254.169.254"),
    ],
)  # fmt: skip
def test_go_sidecar_certcache_forms(certcache: dict[str, str], field: str, value: str) -> None:
    assert parse_go_sidecar_args(_go_args({"certcache": certcache}))[field] == value


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SKR_PORT": "http"}, "SKR_PORT"),
        ({"SKR_PORT": "70000"}, "SKR_PORT"),
        ({"LogLevel": "loud"}, "LogLevel"),
        ({"SKR_WRAPPING_KEY_BITS": "1024"}, "SKR_WRAPPING_KEY_BITS"),
        ({"SKR_UNSAFE_BIND": "maybe"}, "SKR_UNSAFE_BIND"),
        ({"SkrSideCarArgs": "not base64!"}, "SkrSideCarArgs"),
        ({"SkrSideCarArgs": _go_args({"certcache": {"endpoint_type": "Other", "endpoint": "x"}})}, "endpoint_type"),
        ({"SKR_CA_FILE": "/nonexistent/ca.pem"}, "ca_file"),
    ],
)
def test_bad_values_name_their_source(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings({}, env)


def test_allow_list_includes_defaults_when_pinned() -> None:
    settings = load_settings(
        {}, {"SKR_ALLOWED_MAA_ENDPOINTS": "a.attest.azure.net", "SKR_MAA_ENDPOINT": "b.attest.azure.net",
             "SKR_ALLOWED_AKV_ENDPOINTS": "127.0.0.1:9443"}
    )  # fmt: skip
    allow = settings.allow_list()
    assert allow.maa_hosts == {"a.attest.azure.net", "b.attest.azure.net"} and allow.pinned


def test_redacted_view_lists_every_setting() -> None:
    assert set(load_settings({}, {}).redacted()) == {s.name for s in SETTINGS}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SKR_PORT": "abc"}, "SKR_PORT must be an integer 0–65535 (0: any free port), got 'abc'"),
        ({"SKR_PORT": "99999"}, "SKR_PORT must be an integer 0–65535 (0: any free port), got '99999'"),
        ({"SKR_RELEASED_KEY_TTL": "nan"}, "SKR_RELEASED_KEY_TTL must be a finite number ≥ 0, got 'nan'"),
        ({"SKR_MAA_TIMEOUT": "inf"}, "SKR_MAA_TIMEOUT must be a finite number > 0, got 'inf'"),
        ({"SKR_MAA_TIMEOUT": "1e999"}, "SKR_MAA_TIMEOUT must be a finite number > 0, got '1e999'"),
        ({"SKR_MAX_BODY_BYTES": "12"}, "SKR_MAX_BODY_BYTES must be an integer ≥ 1024, got '12'"),
        ({"SKR_LOG_FORMAT": "xml"}, "SKR_LOG_FORMAT must be one of json, text or auto, got 'xml'"),
        ({"SKR_WRAPPING_KEY_BITS": "1024"}, "SKR_WRAPPING_KEY_BITS must be one of 2048, 3072 or 4096, got '1024'"),
    ],
)
def test_bad_values_say_the_rule_not_python(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, env)
    assert str(caught.value.message) == message
    assert "invalid literal" not in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"port": 99999}, "port must be an integer 0–65535"),
        ({"wrapping_key_bits": 1024}, "wrapping_key_bits must be one of 2048, 3072 or 4096"),
        ({"released_key_ttl": float("nan")}, "released_key_ttl must be a finite number ≥ 0"),
        ({"akv_timeout": float("inf")}, "akv_timeout must be a finite number > 0"),
        ({"log_level": "loud"}, "log_level must be one of debug"),
        ({"port": True}, "port must be an integer"),
    ],
)
def test_the_settings_api_enforces_the_same_rules(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**overrides)  # type: ignore[arg-type]


def test_unknown_variables_are_named_with_the_nearest_setting() -> None:
    warnings = unknown_variables({"SKR_PROT": "9000", "SKR_PORT": "1", "SKR_TEST_HARDWARE": "1", "SKR_ZZZQQQ": "x"})
    assert warnings == [
        "SKR_PROT is not a known setting and is ignored; did you mean SKR_PORT?",
        "SKR_ZZZQQQ is not a known setting and is ignored",
    ]


@pytest.mark.parametrize("hosts", [";", ":", "https://vault.example/path"])
def test_bad_managed_hsm_host_is_an_operator_fault(hosts: str) -> None:
    """The host list is configuration, so a bad entry is a ConfigError, not a client's BadRequestError."""
    loaded = load_settings(environ={"SKR_MANAGED_HSM_HOSTS": hosts})
    with pytest.raises(ConfigError, match="managed_hsm_hosts"):
        loaded.managed_hsm_netlocs()
