"""The ``skr`` command line as a user runs it: help, exit codes, doctor, release and dev.

Why: init containers, probes and deployment scripts act on exit codes and on the lines a command
prints, so those are an interface as much as the HTTP API is. Every command runs as a child
process (``python -m skr``) with an environment cleaned of SKR_*/AZURE_* variables.

This machine has no SEV-SNP hardware, and ``skr release`` / ``skr serve`` / ``skr report`` have no
simulated mode (only ``skr dev`` has), so their contract here is the fail-closed one: exit code 3
and a message naming the device, and nothing sent anywhere.
"""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from skr.shell.config import SETTINGS
from tests.blackbox.conftest import (
    DevProcess,
    assert_error,
    child_environment,
    running_dev,
    skr_command,
)

COMMAND_TIMEOUT = 120.0
EXIT_OK, EXIT_FAILED_CHECK, EXIT_USAGE, EXIT_PLATFORM = 0, 1, 2, 3
DEVICE = "/dev/sev-guest"
DOCTOR_LINE = re.compile(r"^\[(OK  |WARN|FAIL)\] (?P<name>[a-zA-Z][a-zA-Z -]*): \S.*$")
no_device = pytest.mark.skipif(os.path.exists(DEVICE), reason=f"{DEVICE} exists: this machine is SEV-SNP hardware")


def run_skr(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        skr_command(*args),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        env=env or child_environment({"COLUMNS": "200"}),
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        check=False,
    )


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    with running_dev(tmp_path_factory.mktemp("skr-dev-cli")) as process:
        yield process


def _stack_flags(dev: DevProcess) -> list[str]:
    """Flags that point a production command at the running dev stack's emulators."""
    maa, kv, hsm = dev.host("maa"), dev.host("keyvault"), dev.host("managedhsm")
    return [
        "--maa-endpoint", maa,
        "--akv-endpoint", kv,
        "--allowed-maa-endpoints", maa,
        "--allowed-akv-endpoints", f"{kv},{hsm}",
        "--managed-hsm-hosts", hsm,
        "--ca-file", dev.ca_file,
        "--thim-url", dev.emulator_url("imds"),
        "--kds-url", dev.emulator_url("kds"),
        "--azcache-url", dev.emulator_url("certcache"),
        "--security-context-dir", str(dev.state_dir / "security-context"),
    ]  # fmt: skip


def _stack_env(dev: DevProcess) -> dict[str, str]:
    state = dev.state
    return child_environment(
        {
            "AZURE_AUTHORITY_HOST": state["entra_authority"],
            "AZURE_TENANT_ID": state["tenant_id"],
            "AZURE_CLIENT_ID": state["client_id"],
            "AZURE_FEDERATED_TOKEN_FILE": state["federated_token_file"],
        }
    )


def _doctor_lines(stdout: str) -> dict[str, list[str]]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "doctor printed nothing"
    by_name: dict[str, list[str]] = {}
    for line in lines:
        match = DOCTOR_LINE.match(line)
        assert match is not None, f"not a doctor line: {line!r}"
        by_name.setdefault(match.group("name"), []).append(line)
    return by_name


# --- help -----------------------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    result = run_skr("--help")
    assert result.returncode == EXIT_OK, result.stderr
    for command in ("serve", "release", "report", "verify", "dev", "doctor"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.M), command


def test_version() -> None:
    result = run_skr("--version")
    assert result.returncode == EXIT_OK
    assert re.fullmatch(r"skr \d+\.\d+\.\d+\S*\n", result.stdout)


def test_serve_help_lists_every_setting_with_its_variable_and_flag() -> None:
    result = run_skr("serve", "--help")
    assert result.returncode == EXIT_OK, result.stderr
    for setting in SETTINGS:
        assert setting.env in result.stdout, setting.env
        assert setting.flag in result.stdout, setting.flag


def test_release_help_names_its_own_options() -> None:
    result = run_skr("release", "--help")
    assert result.returncode == EXIT_OK, result.stderr
    for option in ("--kid", "--out", "--format", "--timeout", "--akv-endpoint", "--maa-endpoint"):
        assert option in result.stdout


# --- usage errors: exit 2 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["no-such-command"],
        ["release"],
        ["release", "--kid", "k", "--out", "{tmp}", "--format", "xml"],
        ["release", "--kid", "k", "--out", "{tmp}", "--timeout", "0"],
        ["release", "--kid", "a/b/c", "--out", "{tmp}"],
        ["serve", "--port", "not-a-port"],
        ["serve", "--log-level", "loud"],
        ["serve", "--ca-file", "{tmp}/no-such-ca.pem"],
        ["dev", "--fault", "nonsense"],
        ["dev", "--fault", "maa.attest:no_such_kind"],
        ["verify"],
    ],
    ids=lambda args: " ".join(args) or "(none)",
)
def test_usage_errors_exit_2(tmp_path: Path, args: Sequence[str]) -> None:
    result = run_skr(*(arg.format(tmp=tmp_path) for arg in args))
    assert result.returncode == EXIT_USAGE, (result.stdout, result.stderr)
    assert "error" in result.stderr.lower()
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # a usage error writes nothing


# --- no platform: exit 3 ----------------------------------------------------------------------------


@no_device
def test_serve_without_device_exits_3_naming_it(tmp_path: Path) -> None:
    result = run_skr("serve", "--port", "0", "--configfs-root", str(tmp_path / "no-configfs"))
    assert result.returncode == EXIT_PLATFORM, (result.stdout, result.stderr)
    assert DEVICE in result.stderr
    assert "listening" not in result.stderr + result.stdout


@no_device
def test_serve_names_the_device_path_it_was_given(tmp_path: Path) -> None:
    device = tmp_path / "sev-guest-elsewhere"
    result = run_skr("serve", "--port", "0", "--configfs-root", str(tmp_path / "none"), "--device-path", str(device))
    assert result.returncode == EXIT_PLATFORM, (result.stdout, result.stderr)
    assert str(device) in result.stderr


@no_device
def test_serve_logs_its_configuration_and_misspelt_variables_before_failing(tmp_path: Path) -> None:
    device = tmp_path / "absent-sev-guest"
    env = child_environment({"COLUMNS": "200", "SKR_PROT": "9000"})
    configfs = str(tmp_path / "none")
    result = run_skr("serve", "--port", "0", "--configfs-root", configfs, "--device-path", str(device), env=env)
    assert result.returncode == EXIT_PLATFORM, (result.stdout, result.stderr)
    config_at = result.stderr.find("effective configuration")
    assert config_at >= 0 and str(device) in result.stderr[config_at:]
    assert "SKR_PROT is not a known setting and is ignored; did you mean SKR_PORT?" in result.stderr
    assert config_at < result.stderr.rfind(str(device))  # the configuration comes before the failure


@no_device
def test_report_without_device_exits_3() -> None:
    result = run_skr("report", "--runtime-data", "aGVsbG8=")
    assert result.returncode == EXIT_PLATFORM, (result.stdout, result.stderr)
    assert DEVICE in result.stderr
    assert result.stdout == ""


@no_device
def test_release_against_dev_stack_exits_3_and_sends_nothing(dev: DevProcess, tmp_path: Path) -> None:
    before = dev.recorded_requests()
    out = tmp_path / "keys"
    result = run_skr(
        "release", "--kid", "demo-rsa", "--kid", "demo-ec", "--out", str(out), "--timeout", "30",
        *_stack_flags(dev), env=_stack_env(dev),
    )  # fmt: skip
    assert result.returncode == EXIT_PLATFORM, (result.stdout, result.stderr)
    assert DEVICE in result.stderr
    assert not out.exists() or list(out.iterdir()) == []
    assert dev.recorded_requests() == before  # no device, no attestation, no token, no vault call


# --- doctor -----------------------------------------------------------------------------------------


@no_device
def test_doctor_prints_one_line_per_check_and_fails_without_device() -> None:
    result = run_skr("doctor")
    assert result.returncode == EXIT_FAILED_CHECK, (result.stdout, result.stderr)
    lines = _doctor_lines(result.stdout)
    assert {"platform", "security context", "certificate sources", "identity", "endpoints", "allow-list"} <= set(lines)
    assert all(len(found) == 1 for found in lines.values())
    (platform,) = lines["platform"]
    assert platform.startswith("[FAIL]") and DEVICE in platform and "fix:" in platform


@no_device
def test_doctor_against_dev_stack_checks_endpoints_identity_and_context(dev: DevProcess) -> None:
    result = run_skr("doctor", *_stack_flags(dev), env=_stack_env(dev))
    assert result.returncode == EXIT_FAILED_CHECK, (result.stdout, result.stderr)  # only the device fails
    lines = _doctor_lines(result.stdout)
    failed = [line for found in lines.values() for line in found if line.startswith("[FAIL]")]
    assert [line.split(":")[0] for line in failed] == ["[FAIL] platform"]
    for name in ("MAA endpoint", "Key Vault endpoint", "identity", "security context", "certificate sources"):
        assert lines[name][0].startswith("[OK  ]"), lines[name]
    assert dev.host("maa") in lines["MAA endpoint"][0] and dev.host("keyvault") in lines["Key Vault endpoint"][0]
    assert "workload identity" in lines["identity"][0]
    assert all(line.startswith("[OK  ]") for line in lines["clock"])
    assert "allow-list" not in lines  # pinned hosts: no warning


def test_doctor_never_contacts_an_endpoint_outside_the_allow_list(dev: DevProcess) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen(4)
        trap.setblocking(False)
        named = f"127.0.0.1:{trap.getsockname()[1]}"
        # No --allowed-akv-endpoints: vault hosts must then end in the Azure suffixes. (A configured
        # default endpoint is itself allowed once exact hosts are pinned, so it cannot be the trap.)
        flags = ["--akv-endpoint", named, "--maa-endpoint", dev.host("maa"), "--ca-file", dev.ca_file]
        result = run_skr("doctor", *flags, env=_stack_env(dev))
        readable, _, _ = select.select([trap], [], [], 0.5)
    assert not readable, "doctor connected to an endpoint outside the allow-list"
    lines = _doctor_lines(result.stdout)
    (vault,) = lines["Key Vault endpoint"]
    assert vault.startswith("[FAIL]") and named in vault and "allow-list" in vault
    assert result.returncode == EXIT_FAILED_CHECK


# --- dev --------------------------------------------------------------------------------------------


def test_dev_self_test_releases_every_demo_key() -> None:
    result = run_skr("dev", "--self-test", "--port", "0")
    assert result.returncode == EXIT_OK, (result.stdout, result.stderr[-3000:])
    for name, kty in (("demo-rsa", "RSA"), ("demo-ec", "EC"), ("demo-oct", "oct")):
        assert re.search(
            rf"^\[SIMULATED\] released {name} from https://127\.0\.0\.1:\d+: kty={kty} ", result.stdout, re.M
        )
    assert "SIMULATED SEV-SNP PLATFORM" in result.stdout and "SIMULATED" in result.stderr


def test_dev_fault_flag_arms_the_emulators_and_sigterm_stops_cleanly(tmp_path: Path) -> None:
    process = DevProcess(tmp_path, faults=["keyvault.release:error_500"]).start()
    try:
        armed = process.emulator("keyvault", "GET", "/_emulator/faults").json()["faults"]
        assert [(f["kind"], f["endpoint"], f["times"]) for f in armed] == [("error_500", "keyvault.release", None)]
        failed = process.api("POST", "/key/release", {"kid": "demo-rsa", "akv_endpoint": process.host("keyvault")})
        assert_error(failed, 502, "upstream_unavailable")
        other = process.api("POST", "/key/release", {"kid": "demo-oct", "akv_endpoint": process.host("managedhsm")})
        assert other.status == 200, other.body  # the fault names the Key Vault only
        state_dir = process.state_dir
        assert (state_dir / "ca.pem").is_file()
    finally:
        returncode = process.stop()
    assert returncode == EXIT_OK, process.log_tail()
    assert not state_dir.exists(), "SIGTERM left the stack's temporary directory behind"
    assert "[SIMULATED] stopping" in process.log_text()
    assert "Traceback" not in process.log_text()


def test_dev_refuses_a_busy_port_with_exit_2(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        result = run_skr("dev", "--port", str(busy.getsockname()[1]), "--state-file", str(tmp_path / "state.json"))
    assert result.returncode == EXIT_USAGE, (result.stdout, result.stderr[-3000:])
    assert "cannot listen" in result.stderr
    assert not (tmp_path / "state.json").exists()
