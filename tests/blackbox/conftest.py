"""Black-box harness: ``skr dev`` as a child process, driven over real HTTP on loopback only.

Why: the unit and integration suites call skr's code in-process; these tests see skr exactly as a
user does — a command started from a shell, a state file, a port, JSON over a socket, an exit code
and a log. Nothing of skr is imported to drive it; the only skr knowledge used is the documented
state file (design.md §3) and the emulators' documented admin API (``/_emulator/requests``,
``/_emulator/faults``).

One ``skr dev`` is started per test module (``dev`` fixture) and always stopped with SIGTERM, then
SIGKILL if it does not exit. Tests that arm emulator faults use ``clean_faults`` so no fault
outlives its test.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
HTTP_TIMEOUT = 60.0
# The emulators of the state file, by the name their admin API and route names use.
EMULATOR_URL_FIELDS = {
    "entra": "entra_authority",
    "imds": "imds_url",
    "maa": "maa_url",
    "kds": "kds_url",
    "certcache": "certcache_url",
    "keyvault": "keyvault_url",
    "managedhsm": "managedhsm_url",
}
SIMULATED_HEADER = "X-SKR-Simulated"


# --- HTTP -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpResult:
    """One complete HTTP exchange as the client saw it."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def require_loopback(url: str) -> None:
    """Every URL these tests touch must name a loopback address (the suite's hard rule)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host != "localhost":
        assert ipaddress.ip_address(host).is_loopback, f"refusing non-loopback URL {url}"


def http(
    method: str,
    url: str,
    *,
    body: bytes | Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> HttpResult:
    """Send one request (no proxies, no redirects followed for us) and return whatever came back."""
    require_loopback(url)
    data = json.dumps(body).encode() if isinstance(body, Mapping) else body
    all_headers = {"Content-Type": "application/json"} if data is not None else {}
    all_headers.update(headers or {})
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            return HttpResult(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return HttpResult(error.code, error.headers, error.read())


def assert_simulated(result: HttpResult) -> None:
    """Every response of ``skr dev`` says SIMULATED and carries a request id."""
    assert "SIMULATED" in (result.headers.get(SIMULATED_HEADER) or ""), dict(result.headers)
    request_id = result.headers.get("X-Request-Id") or ""
    assert 0 < len(request_id) <= 64, dict(result.headers)


def assert_error(result: HttpResult, status: int, code: str) -> dict[str, Any]:
    """The API's one error shape: ``{"error": str, "code": str}`` (+ ``warning`` in dev), right status."""
    assert result.status == status, (result.status, result.body)
    assert (result.headers.get("Content-Type") or "").startswith("application/json")
    body = result.json()
    assert isinstance(body, dict), body
    assert set(body) == {"error", "code", "warning"}, body
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and body["error"].strip(), body
    assert isinstance(body["warning"], str) and "SIMULATED" in body["warning"], body
    assert_simulated(result)
    return body


def b64(data: bytes) -> str:
    """Standard base64, as the Go sidecar documents ``runtime_data``."""
    return base64.b64encode(data).decode("ascii")


def netloc(url: str) -> str:
    """``host:port`` of a URL: how requests name the emulated endpoints."""
    return urllib.parse.urlsplit(url).netloc


# --- the dev stack as a process -----------------------------------------------------------------


# Variables that would configure the child behind the test's back: proxies (loopback traffic must
# never be proxied), skr's own settings and the Go sidecar's, Azure identity and the ACI context.
_INHERITED_NEVER = ("http_proxy", "https_proxy", "all_proxy", "skrsidecarargs", "port", "loglevel")


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without anything that configures skr, proxies, identity or ACI."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in _INHERITED_NEVER
        and not (k.startswith("SKR_") and k != "SKR_TESTDATA")
        and not k.startswith(("AZURE_", "UVM_"))
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    env["PYTHONUNBUFFERED"] = "1"
    # The tree under test, whatever copy of skr the interpreter has installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO_ROOT), env.get("PYTHONPATH"))))
    env.update(extra or {})
    return env


def skr_command(*args: str) -> list[str]:
    """``python -m skr ARGS`` with this interpreter (the installed ``skr`` script may be another venv's)."""
    return [sys.executable, "-m", "skr", *args]


class DevProcess:
    """``skr dev --port 0 --state-file FILE`` running in the background; output captured to a file."""

    def __init__(self, workdir: Path, *, log_level: str = "info", faults: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.state_file = workdir / "state.json"
        self.log_file = workdir / "skr-dev.log"
        self.args = ["dev", "--port", "0", "--state-file", str(self.state_file), "--log-level", log_level]
        for fault in faults:
            self.args += ["--fault", fault]
        self.process: subprocess.Popen[bytes] | None = None
        self.state: dict[str, Any] = {}
        self.returncode: int | None = None

    # life cycle

    def start(self) -> DevProcess:
        """Start, wait for a complete state file, then for ``GET /status`` to answer 200."""
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                skr_command(*self.args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=child_environment(),
            )
        try:
            self.state = self._wait_for_state()
            self._wait_for_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _alive_or_fail(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"skr dev exited with {self.process.returncode} during start-up:\n{self.log_tail()}")

    def _wait_for_state(self) -> dict[str, Any]:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            self._alive_or_fail()
            with contextlib.suppress(OSError, ValueError):
                document = json.loads(self.state_file.read_text(encoding="utf-8"))
                if isinstance(document, dict) and document.get("sidecar_url"):
                    return document
            time.sleep(0.05)
        pytest.fail(f"skr dev wrote no complete state file within {STARTUP_TIMEOUT} s:\n{self.log_tail()}")

    def _wait_for_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            self._alive_or_fail()
            with contextlib.suppress(OSError):
                if http("GET", self.url + "/status", timeout=5).status == 200:
                    return
            time.sleep(0.05)
        pytest.fail(f"skr dev never became ready within {STARTUP_TIMEOUT} s:\n{self.log_tail()}")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after a grace period; returns the exit code (idempotent)."""
        if self.process is None:
            raise RuntimeError("not started")
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        self.returncode = self.process.returncode
        return self.returncode

    # what the state file says

    @property
    def url(self) -> str:
        url = str(self.state["sidecar_url"])
        require_loopback(url)
        return url

    @property
    def ca_file(self) -> str:
        return str(self.state["ca_file"])

    @property
    def state_dir(self) -> Path:
        """The stack's temporary directory (it holds the CA file); removed on a clean stop."""
        return Path(self.ca_file).parent

    @property
    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def emulator_url(self, name: str) -> str:
        url = str(self.state[EMULATOR_URL_FIELDS[name]])
        require_loopback(url)
        return url

    def host(self, name: str) -> str:
        """How a request names an emulated service: ``127.0.0.1:PORT``."""
        return netloc(self.emulator_url(name))

    def key(self, name: str) -> dict[str, Any]:
        return next(k for k in self.state["keys"] if k["name"] == name)

    # talking to it

    def api(self, method: str, path: str, body: bytes | Mapping[str, Any] | None = None, **kwargs: Any) -> HttpResult:
        return http(method, self.url + path, body=body, **kwargs)

    def emulator(self, name: str, method: str, path: str, body: Mapping[str, Any] | None = None) -> HttpResult:
        return http(method, self.emulator_url(name) + path, body=body, context=self.tls)

    def arm_fault(self, name: str, fault: Mapping[str, Any]) -> None:
        """Arm one fault through emulator ``name``'s admin API."""
        result = self.emulator(name, "POST", "/_emulator/faults", fault)
        assert result.status == 201, result.body

    def clear_faults(self) -> None:
        for name in EMULATOR_URL_FIELDS:
            result = self.emulator(name, "DELETE", "/_emulator/faults")
            assert result.status == 200, result.body

    def recorded_requests(self) -> dict[str, list[dict[str, Any]]]:
        """Every emulator's request log (``GET /_emulator/requests``), by emulator name."""
        logs = {}
        for name in EMULATOR_URL_FIELDS:
            result = self.emulator(name, "GET", "/_emulator/requests")
            assert result.status == 200, result.body
            logs[name] = result.json()["requests"]
        return logs

    # its output

    def log_text(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def running_dev(workdir: Path, **kwargs: Any) -> Iterator[DevProcess]:
    process = DevProcess(workdir, **kwargs).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    """One ``skr dev`` for the whole module, at debug log level."""
    with running_dev(tmp_path_factory.mktemp("skr-dev"), log_level="debug") as process:
        yield process


@pytest.fixture
def clean_faults(dev: DevProcess) -> Iterator[DevProcess]:
    """The module's stack with no fault armed before or after the test."""
    dev.clear_faults()
    yield dev
    dev.clear_faults()


# --- identities and keys, through the emulators the state file names -----------------------------


def entra_access_token(dev: DevProcess, resource: str = "https://vault.azure.net") -> str:
    """An access token from the Entra emulator for the stack's workload identity (client assertion)."""
    state = dev.state
    assertion = Path(state["federated_token_file"]).read_text(encoding="utf-8").strip()
    form = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": state["client_id"],
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
            "scope": f"{resource}/.default",
        }
    ).encode()
    result = http(
        "POST",
        f"{dev.emulator_url('entra')}/{state['tenant_id']}/oauth2/v2.0/token",
        body=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        context=dev.tls,
    )
    assert result.status == 200, result.body
    token = result.json()["access_token"]
    assert isinstance(token, str) and token.count(".") == 2
    return token


def release_policy(dev: DevProcess, *, host_data: str) -> dict[str, Any]:
    """A Confidential-ACI release policy bound to the stack's MAA and the given HOST_DATA (hex)."""
    return {
        "version": "1.0.0",
        "anyOf": [
            {
                "authority": dev.state["maa_url"],
                "allOf": [
                    {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
                    {"claim": "x-ms-sevsnpvm-hostdata", "equals": host_data},
                ],
            }
        ],
    }


def create_exportable_rsa_key(dev: DevProcess, name: str, policy: Mapping[str, Any]) -> str:
    """Create an exportable RSA-HSM key in the Key Vault emulator with the real azure-keyvault-keys SDK."""
    from azure.identity import WorkloadIdentityCredential
    from azure.keyvault.keys import KeyClient, KeyReleasePolicy

    state = dev.state
    credential = WorkloadIdentityCredential(
        tenant_id=state["tenant_id"],
        client_id=state["client_id"],
        token_file_path=state["federated_token_file"],
        authority=state["entra_authority"],
        connection_verify=dev.ca_file,
    )
    client = KeyClient(
        dev.emulator_url("keyvault"),
        credential,
        verify_challenge_resource=False,  # a loopback vault cannot pass the DNS resource check
        connection_verify=dev.ca_file,
    )
    with credential, client:
        key = client.create_rsa_key(
            name,
            size=2048,
            hardware_protected=True,
            exportable=True,
            release_policy=KeyReleasePolicy(json.dumps(policy).encode()),
        )
    assert key.id is not None
    return key.id
