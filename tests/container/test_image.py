"""Checks of the container image and its build inputs.

The static checks (Dockerfile, build context, pinned dependencies, CI script) run everywhere. The
image checks need rootful podman and a built image, which the normal test run does not have, so
they are skipped unless SKR_IMAGE names an image: .ci/container builds it, sets SKR_IMAGE and runs
this file. Containers run on the host network only (no bridge, no port mapping) and are probed
over 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("SKR_IMAGE", "")
# The `dev` target: the production runtime plus the SIMULATED stand-ins (skr-dev), for `skr dev` only.
DEV_IMAGE = os.environ.get("SKR_DEV_IMAGE", "")

needs_image = pytest.mark.skipif(not IMAGE, reason="SKR_IMAGE is not set (.ci/container builds the image and sets it)")
needs_dev_image = pytest.mark.skipif(
    not DEV_IMAGE, reason="SKR_DEV_IMAGE is not set (.ci/container builds the dev target and sets it)"
)

RUN_TIMEOUT = 120.0
DEV_READY_TIMEOUT = 90.0
# Throw-away containers need no health probe (and podman logs an error when it cannot hand the
# probe timer to systemd, which these machines lack); the dev container keeps it and is probed by hand.
NO_HEALTH = ("--no-healthcheck",)


def podman(*args: str, timeout: float = RUN_TIMEOUT, check: bool = False) -> subprocess.CompletedProcess[str]:
    podman_path = shutil.which("podman")
    assert podman_path, "podman is not installed"
    result = subprocess.run(
        [podman_path, *args], capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def run_image(
    *args: str, entrypoint: str | None = None, user: str | None = None, image: str = IMAGE
) -> subprocess.CompletedProcess[str]:
    """One throw-away container: host network, read-only root, tmpfs /tmp (as deployed)."""
    options = ["run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp", *NO_HEALTH]
    if entrypoint is not None:
        options += ["--entrypoint", entrypoint]
    if user is not None:
        options += ["--user", user]
    return podman(*options, image, *args)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def image_inspect() -> dict[str, Any]:
    inspected = json.loads(podman("image", "inspect", IMAGE, check=True).stdout)
    assert isinstance(inspected[0], dict)
    return inspected[0]


@pytest.fixture(scope="module")
def image_config(image_inspect: dict[str, Any]) -> dict[str, Any]:
    config = image_inspect["Config"]
    assert isinstance(config, dict)
    return config


# --- 1. fail closed without SEV-SNP ------------------------------------------------------------------


@needs_image
def test_serve_without_device_exits_with_platform_code_naming_the_device() -> None:
    result = podman(
        "run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp", *NO_HEALTH,
        "-e", f"SKR_PORT={free_port()}", IMAGE, "serve",
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 3, output  # README: 3 = platform unavailable
    assert "/dev/sev-guest" in output
    assert "configfs" in output.lower()


# --- 2. the simulated stack in the image answers the host over loopback ----------------------------


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _wait_for_state(name: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEV_READY_TIMEOUT
    while time.monotonic() < deadline:
        state = podman("exec", name, "cat", "/tmp/state.json", timeout=30)
        if state.returncode == 0 and state.stdout.strip():
            try:
                document = json.loads(state.stdout)
            except json.JSONDecodeError:
                pass  # written while we read it; try again
            else:
                assert isinstance(document, dict)
                return document
        running = podman("container", "inspect", name, "--format", "{{.State.Running}}", timeout=30)
        if running.stdout.strip() != "true":
            logs = podman("logs", name, timeout=30)
            pytest.fail(f"skr dev exited before writing its state file:\n{logs.stdout}\n{logs.stderr}")
        time.sleep(0.5)
    pytest.fail("skr dev wrote no state file in time")


@pytest.fixture(scope="module")
def dev_container() -> Iterator[tuple[str, dict[str, Any]]]:
    name = f"skr-ci-dev-{uuid.uuid4().hex[:8]}"
    port = free_port()
    podman(
        "run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
        "-e", f"SKR_PORT={port}", DEV_IMAGE, "dev", "--port", str(port), "--state-file", "/tmp/state.json",
        check=True,
    )  # fmt: skip
    try:
        state = _wait_for_state(name)
        status_url = state["sidecar_url"].rstrip("/") + "/status"
        deadline = time.monotonic() + DEV_READY_TIMEOUT
        while _http("GET", status_url)[0] != 200:
            if time.monotonic() > deadline:
                pytest.fail("the sidecar in the dev container never became ready")
            time.sleep(0.5)
        yield name, state
    finally:
        podman("rm", "-f", "-t", "0", name)
        assert podman("container", "exists", name).returncode == 1, "the dev container was not removed"


@needs_dev_image
def test_dev_sidecar_listens_on_host_loopback(dev_container: tuple[str, dict[str, Any]]) -> None:
    _, state = dev_container
    assert urlsplit(state["sidecar_url"]).hostname == "127.0.0.1"
    assert state["keys"], "skr dev announced no demo keys"


@needs_dev_image
def test_dev_releases_every_demo_key_to_the_host(dev_container: tuple[str, dict[str, Any]]) -> None:
    _, state = dev_container
    maa_host = urlsplit(state["maa_url"]).netloc
    for key in state["keys"]:
        body = {"maa_endpoint": maa_host, "akv_endpoint": urlsplit(key["vault_url"]).netloc, "kid": key["name"]}
        status, answer = _http("POST", state["sidecar_url"].rstrip("/") + "/key/release", body)
        assert status == 200, (key, answer)
        jwk = json.loads(answer["key"])  # the Go sidecar's shape: the JWK as a JSON string
        expected = key["kty"].removesuffix("-HSM")
        assert jwk["kty"] == expected
        private_member = {"oct": "k", "RSA": "d", "EC": "d"}[expected]
        assert jwk[private_member]


@needs_dev_image
def test_healthcheck_passes_on_a_running_sidecar(dev_container: tuple[str, dict[str, Any]]) -> None:
    name, _ = dev_container
    result = podman("healthcheck", "run", name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_dev_image
def test_dev_self_test_succeeds_read_only() -> None:
    result = run_image("dev", "--self-test", "--port", str(free_port()), image=DEV_IMAGE)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_image
def test_production_image_has_no_stand_ins() -> None:
    """The default target ships no simulated platform and no emulators; `skr dev` says how to get them."""
    result = run_image("dev", "--self-test", "--port", str(free_port()))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output  # README: 2 = usage or configuration error
    assert "./devstack" in output and "Traceback" not in output
    probe = run_image("-I", "-c", "import importlib.util as u; print(u.find_spec('skr_dev'))", entrypoint="python3")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "None"


# --- 3. not root ---------------------------------------------------------------------------------------


@needs_image
def test_runs_as_numeric_non_root_user(image_config: dict[str, Any]) -> None:
    assert image_config["User"] == "65532:65532"
    result = run_image("-u", entrypoint="id")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) == 65532


# --- 4. nothing of the build in the runtime image ----------------------------------------------------

_BUILD_LEFTOVERS = """
import importlib.util, json, os, shutil
tools = ["gcc", "cc", "c++", "g++", "cpp", "ld", "as", "make", "clang", "pip", "pip3"]
paths = ["/usr/include/linux/sev-guest.h", "/usr/include/python3.11/Python.h", "/root/.cache/pip",
         "/run/secrets/ca", "/opt/build", "/src"]
print(json.dumps({
    "tools": {t: shutil.which(t) for t in tools},
    "paths": {p: os.path.exists(p) for p in paths},
    "modules": {m: importlib.util.find_spec(m) is not None for m in ("pip", "setuptools")},
    "native": importlib.util.find_spec("skr.snp._snp_native") is not None,
}))
"""


@needs_image
def test_runtime_image_has_no_compiler_headers_pip_or_build_secrets() -> None:
    result = run_image("-c", _BUILD_LEFTOVERS, entrypoint="python3", user="0")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["tools"] == dict.fromkeys(found["tools"])
    assert not any(found["paths"].values()), found["paths"]
    assert not any(found["modules"].values()), found["modules"]
    assert found["native"], "the compiled /dev/sev-guest binding is missing"


# --- 5. image metadata ---------------------------------------------------------------------------------


@needs_image
def test_metadata_entrypoint_cmd_port_and_environment(image_config: dict[str, Any]) -> None:
    assert image_config["Entrypoint"] == ["skr"]
    assert image_config["Cmd"] == ["serve"]
    assert "8080/tcp" in image_config["ExposedPorts"]
    env = dict(item.split("=", 1) for item in image_config["Env"])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/tmp"
    assert env["PATH"].startswith("/opt/skr/bin:")


@needs_image
def test_healthcheck_probes_the_local_healthz(image_inspect: dict[str, Any]) -> None:
    # podman reports it beside Config (docker inside it); OCI-format images drop it entirely.
    healthcheck = image_inspect.get("Healthcheck") or image_inspect["Config"].get("Healthcheck")
    assert healthcheck, "no HEALTHCHECK: build with --format docker"
    test = healthcheck["Test"]
    assert test[0] == "CMD"
    assert "/healthz" in " ".join(test)
    assert "127.0.0.1" in " ".join(test)


# --- static: build inputs (no image needed) -------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            result.append([])
        assert result, "instruction before the first FROM"
        result[-1].append(instruction)
    return result


def test_dockerfile_builds_on_bookworm_slim_in_two_stages_with_production_as_default() -> None:
    build, runtime, dev, default = stages()
    assert build[0] == ("FROM", "debian:bookworm-slim AS build")
    assert runtime[0] == ("FROM", "debian:bookworm-slim AS runtime")
    assert dev[0] == ("FROM", "runtime AS dev")
    assert all("/opt/skr-dev" in args for kind, args in dev if kind == "COPY")
    assert default == [("FROM", "runtime")], "the default target must be the production runtime, unchanged"
    build_runs = " ".join(args for kind, args in build if kind == "RUN")
    for package in ("python3-venv", "python3-dev", "gcc", "linux-libc-dev"):
        assert f"{package}=" in build_runs, f"{package} must be installed and pinned in the build stage"
    assert "-r requirements.lock" in build_runs
    assert "-e ." not in build_runs and "--editable" not in build_runs


def test_runtime_stage_is_minimal_non_root_and_declares_its_interface() -> None:
    runtime = stages()[1]
    by_kind: dict[str, list[str]] = {}
    for kind, args in runtime:
        by_kind.setdefault(kind, []).append(args)
    runtime_runs = " ".join(by_kind["RUN"])
    for unwanted in ("gcc", "-dev", "pip install", "curl"):
        assert unwanted not in runtime_runs, f"the runtime stage installs {unwanted!r}"
    assert by_kind["USER"][-1] == "65532:65532"
    assert by_kind["EXPOSE"] == ["8080"]
    assert json.loads(by_kind["ENTRYPOINT"][-1]) == ["skr"]
    assert json.loads(by_kind["CMD"][-1]) == ["serve"]
    (healthcheck,) = by_kind["HEALTHCHECK"]
    assert "/healthz" in healthcheck
    assert by_kind["COPY"] == ["--from=build /opt/skr /opt/skr"], "the runtime gets the production venv only"
    env = " ".join(by_kind["ENV"])
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env


def test_pip_reaches_the_index_only_with_the_ca_secret_mounted() -> None:
    for kind, args in dockerfile_instructions():
        assert kind != "ADD", "use COPY"
        if kind == "RUN" and "pip install" in args and "--no-index" not in args:
            assert "--mount=type=secret,id=ca" in args, args
        if kind in ("COPY", "ENV", "ARG"):
            assert "cert" not in args.lower() and "/run/secrets" not in args, f"CA material in the image: {args}"


def test_build_context_is_an_allow_list_of_the_sources() -> None:
    lines = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "exclude everything, then allow the sources"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"requirements.lock", "pyproject.toml", "setup.py", "README.md", "native", "skr", "devstack"}
    assert {"**/*.so", "**/__pycache__"} <= set(lines)
    copied: set[str] = set()
    for kind, args in dockerfile_instructions():
        if kind == "COPY" and "--from=" not in args:
            copied.update(part.removeprefix("./").rstrip("/") for part in args.split()[:-1])
    assert copied <= allowed, f"COPY of files the context excludes: {copied - allowed}"


def test_requirements_lock_pins_every_runtime_dependency_compatibly() -> None:
    pins: dict[str, str] = {}
    for raw_line in (REPO_ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        name, separator, version = line.partition("==")
        assert separator and version and " " not in line, f"not an exact pin: {line!r}"
        pins[canonicalize_name(name)] = version
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {requirement.name}=={pins[name]}, outside {requirement.specifier}"
        )
    assert "skr" not in pins


def test_ci_container_script_parses() -> None:
    result = subprocess.run(
        ["bash", "-n", str(REPO_ROOT / ".ci" / "container")], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
