"""The examples are part of the product: they must be valid and must work.

Static checks: every YAML is a valid Kubernetes resource (kubernetes-validate's bundled schemas,
offline), every JSON parses, the ARM template is a Confidential container group with a documented
ccePolicy placeholder, shell scripts (including those embedded in manifests) pass ``-n``, and the
host-data tools agree with each other.

Dynamic checks: every example Python script runs green against a real ``skr dev`` stack (simulated
platform, emulators and sidecar on loopback), started once as a subprocess for this module.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"
RUN_TIMEOUT = 120.0
DEV_START_TIMEOUT = 90.0
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")
PLACEHOLDER_REGISTRY = "myregistry.azurecr.io/"
KATA_ENDORSEMENTS = "/opt/confidential-containers/share/kata-containers/reference-info-base64"


def _load_example_module(name: str) -> ModuleType:
    """Import an example script as a module without putting examples/ on sys.path."""
    spec = importlib.util.spec_from_file_location(f"skr_examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


release_policy = _load_example_module("release_policy")


def yaml_documents() -> list[tuple[Path, dict[str, Any]]]:
    documents = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document is not None:
                documents.append((path, document))
    return documents


def pod_specs() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, pod metadata, pod spec) of every workload in the AKS examples."""
    found = []
    for path, document in yaml_documents():
        if document["kind"] == "Pod":
            found.append((f"{path.name}:{document['metadata']['name']}", document["metadata"], document["spec"]))
        elif "template" in document.get("spec", {}):
            template = document["spec"]["template"]
            found.append((f"{path.name}:{document['metadata']['name']}", template["metadata"], template["spec"]))
    return found


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def run(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def run_example(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, str(EXAMPLES / script), *args])


# --- Kubernetes manifests -----------------------------------------------------------------------------


def test_there_are_manifests_for_both_aks_variants() -> None:
    names = {name.split(":")[0] for name, _, _ in pod_specs()}
    assert {"sidecar.yaml", "init-container.yaml"} <= names


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_yaml_is_a_valid_kubernetes_resource(version: str) -> None:
    documents = yaml_documents()
    assert documents
    for path, document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(REPO_ROOT)} ({document.get('kind')}): {exc.message} at {list(exc.path)}")


def test_aks_pods_are_confidential_with_workload_identity() -> None:
    accounts = {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d
        for _, d in yaml_documents()
        if d["kind"] == "ServiceAccount"
    }
    for name, metadata, spec in pod_specs():
        assert spec["runtimeClassName"] == "kata-cc", name
        assert metadata["labels"]["azure.workload.identity/use"] == "true", name
        account = accounts[(metadata.get("namespace", "skr-demo"), spec["serviceAccountName"])]
        assert account["metadata"]["annotations"]["azure.workload.identity/client-id"], name


def test_aks_containers_use_limits_pinned_tags_and_always_pull() -> None:
    for name, _, spec in pod_specs():
        for container in all_containers(spec):
            where = f"{name}/{container['name']}"
            assert container["imagePullPolicy"] == "Always", where
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1], f"{where}: untagged image"
            assert not image.endswith(":latest"), where
            assert "limits" in container["resources"], where
            assert "requests" not in container["resources"], f"{where}: kata-cc ignores requests"


def test_skr_containers_mount_endorsements_and_pin_endpoints() -> None:
    for name, _, spec in pod_specs():
        host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
        for container in all_containers(spec):
            if not container["image"].startswith(PLACEHOLDER_REGISTRY + "skr:"):
                continue
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env["UVM_SECURITY_CONTEXT_DIR"] == str(Path(KATA_ENDORSEMENTS).parent), name
            assert env["SKR_ALLOWED_MAA_ENDPOINTS"] and env["SKR_ALLOWED_AKV_ENDPOINTS"], name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert host_paths[mounts[KATA_ENDORSEMENTS]] == KATA_ENDORSEMENTS, name
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name


def test_init_container_writes_into_a_memory_volume_the_app_reads() -> None:
    (name, _, spec), *_ = [p for p in pod_specs() if p[0].startswith("init-container.yaml")]
    volumes = {v["name"]: v for v in spec["volumes"]}
    (init,) = spec["initContainers"]
    assert init["args"][0] == "release"
    out_dir = init["args"][init["args"].index("--out") + 1]
    init_mount = next(m for m in init["volumeMounts"] if m["mountPath"] == out_dir)
    assert volumes[init_mount["name"]]["emptyDir"]["medium"] == "Memory", name
    app_mounts = [m for c in spec["containers"] for m in c["volumeMounts"] if m["name"] == init_mount["name"]]
    assert app_mounts and all(m.get("readOnly") for m in app_mounts), name


# --- JSON, ARM template, policies ------------------------------------------------------------------------


def test_every_json_parses() -> None:
    paths = sorted(EXAMPLES.rglob("*.json"))
    assert paths
    for path in paths:
        json.loads(path.read_text(encoding="utf-8"))


def test_arm_template_is_a_confidential_group_with_a_documented_policy_placeholder() -> None:
    template = json.loads((EXAMPLES / "aci" / "template.json").read_text(encoding="utf-8"))
    (group,) = [r for r in template["resources"] if r["type"] == "Microsoft.ContainerInstance/containerGroups"]
    properties = group["properties"]
    assert properties["sku"] == "Confidential"
    assert properties["confidentialComputeProperties"]["ccePolicy"] == ""  # acipolicygen fills it in
    assert "acipolicygen" in template["metadata"]["description"]
    assert "ccePolicy" in group["comments"]
    assert "acipolicygen" in (EXAMPLES / "aci" / "README.md").read_text(encoding="utf-8")
    assert "ipAddress" not in properties, "the sidecar must not be exposed"
    images = {c["name"]: c["properties"]["image"] for c in properties["containers"]}
    assert set(images) == {"skr", "app"}
    parameters = json.loads((EXAMPLES / "aci" / "parameters.json").read_text(encoding="utf-8"))["parameters"]
    required = {name for name, p in template["parameters"].items() if "defaultValue" not in p}
    assert required <= set(parameters), "parameters.json lacks a required parameter"
    assert set(parameters) <= set(template["parameters"])


@pytest.mark.parametrize(
    ("platform", "template"), [("aci", "aci-release-policy.json"), ("aks", "aks-release-policy.json")]
)
def test_policy_templates_are_what_the_generator_writes(platform: str, template: str) -> None:
    host_data = "ab" * 32
    generated = release_policy.build_release_policy(
        maa_endpoint="sharedeus.eus.attest.azure.net",
        host_data=host_data,
        compliance_status=release_policy.COMPLIANCE_STATUS[platform],
    )
    text = (EXAMPLES / "policies" / template).read_text(encoding="utf-8")
    document = json.loads(text)
    (authority,) = document["anyOf"]
    authority["authority"] = "https://sharedeus.eus.attest.azure.net"
    for condition in authority["allOf"]:
        if condition["claim"] == "x-ms-sevsnpvm-hostdata":
            assert condition["equals"].startswith("<"), "the template's host data must be a placeholder"
            condition["equals"] = host_data
    assert document == generated


def _kata_yaml_with_policy(tmp_path: Path, policy: bytes) -> Path:
    source = (EXAMPLES / "aks-kata-cc" / "sidecar.yaml").read_text(encoding="utf-8")
    annotated = source.replace(
        "    metadata:\n      labels:",
        f"    metadata:\n      annotations:\n        {release_policy.KATA_POLICY_ANNOTATION}: "
        f"{base64.b64encode(policy).decode()}\n      labels:",
        1,
    )
    assert annotated != source
    path = tmp_path / "sidecar.yaml"
    path.write_text(annotated, encoding="utf-8")
    return path


def test_host_data_tools_agree_on_the_decoded_policy_digest(tmp_path: Path) -> None:
    policy = b"package agent_policy\n\ndefault CreateContainerRequest := true\n" + os.urandom(64)
    expected = hashlib.sha256(policy).hexdigest()
    pod = _kata_yaml_with_policy(tmp_path, policy)
    script = run(["bash", str(EXAMPLES / "aks-kata-cc" / "host-data.sh"), str(pod)])
    assert script.returncode == 0, script.stderr
    assert script.stdout.strip() == expected
    assert release_policy.host_data_of(release_policy.policy_from_file(pod)) == expected
    template = json.loads((EXAMPLES / "aci" / "template.json").read_text(encoding="utf-8"))
    template["resources"][0]["properties"]["confidentialComputeProperties"]["ccePolicy"] = base64.b64encode(
        policy
    ).decode()
    arm = tmp_path / "template.json"
    arm.write_text(json.dumps(template), encoding="utf-8")
    assert release_policy.host_data_of(release_policy.policy_from_file(arm)) == expected
    generated = run_example(
        "release_policy.py", "--platform", "aks", "--maa-endpoint", "x.attest.azure.net", "--policy-file", str(pod)
    )
    assert generated.returncode == 0, generated.stderr
    assert expected in generated.stdout


def test_host_data_tools_refuse_a_yaml_without_policy() -> None:
    pod = EXAMPLES / "aks-kata-cc" / "sidecar.yaml"
    script = run(["bash", str(EXAMPLES / "aks-kata-cc" / "host-data.sh"), str(pod)])
    assert script.returncode == 1
    assert "katapolicygen" in script.stderr
    arm = EXAMPLES / "aci" / "template.json"
    with pytest.raises(release_policy.PolicyInputError, match="az confcom"):
        release_policy.policy_from_file(arm)
    generated = run_example("release_policy.py", "--maa-endpoint", "x.attest.azure.net", "--host-data", "12")
    assert generated.returncode == 2
    assert "64 hex" in generated.stderr


# --- shell ------------------------------------------------------------------------------------------------


def embedded_scripts() -> list[tuple[str, str]]:
    """The ``sh -c`` scripts of the manifests and the ARM template."""
    scripts = []
    for name, _, spec in pod_specs():
        for container in all_containers(spec):
            if container.get("command", [])[:2] == ["/bin/sh", "-c"]:
                scripts.append((f"{name}/{container['name']}", "\n".join(container["args"])))
    template = json.loads((EXAMPLES / "aci" / "template.json").read_text(encoding="utf-8"))
    for container in template["resources"][0]["properties"]["containers"]:
        command = container["properties"].get("command", [])
        if command[:2] == ["/bin/sh", "-c"]:
            scripts.append((f"template.json/{container['name']}", command[2]))
    return scripts


def test_shell_scripts_parse() -> None:
    scripts = sorted(EXAMPLES.rglob("*.sh"))
    assert scripts
    for path in scripts:
        result = run(["bash", "-n", str(path)])
        assert result.returncode == 0, f"{path}: {result.stderr}"
    embedded = embedded_scripts()
    assert len(embedded) >= 3
    for name, script in embedded:
        result = run(["sh", "-n", "-c", script])
        assert result.returncode == 0, f"{name}: {result.stderr}"


# --- decrypt.py offline --------------------------------------------------------------------------------


def _rsa_jwk_files(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()

    def member(value: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    public = {"kty": "RSA", "n": member(private.public_numbers.n), "e": member(private.public_numbers.e)}
    full = dict(
        public,
        d=member(private.d),
        p=member(private.p),
        q=member(private.q),
        dp=member(private.dmp1),
        dq=member(private.dmq1),
        qi=member(private.iqmp),
    )
    public_path, private_path = tmp_path / "public.json", tmp_path / "private.json"
    public_path.write_text(json.dumps(public), encoding="utf-8")
    private_path.write_text(json.dumps(full), encoding="utf-8")
    return public_path, private_path


def test_decrypt_round_trips_with_jwk_files_and_detects_tampering(tmp_path: Path) -> None:
    public, private = _rsa_jwk_files(tmp_path)
    plaintext = tmp_path / "plain.bin"
    plaintext.write_bytes(os.urandom(5000))
    envelope, recovered = tmp_path / "envelope.json", tmp_path / "recovered.bin"
    common = ["--kid", "mykey"]
    encrypted = run_example(
        "decrypt.py", "encrypt", "--jwk", str(public), *common, "--in", str(plaintext), "--out", str(envelope)
    )
    assert encrypted.returncode == 0, encrypted.stderr
    assert "encrypted 5000 bytes of plaintext" in encrypted.stdout
    assert json.loads(envelope.read_text())["alg"] == "RSA-OAEP-256+A256GCM"
    refused = run_example(
        "decrypt.py", "decrypt", "--jwk", str(public), *common, "--in", str(envelope), "--out", str(recovered)
    )
    assert refused.returncode == 1
    assert "private key" in refused.stderr
    decrypted = run_example(
        "decrypt.py", "decrypt", "--jwk", str(private), *common, "--in", str(envelope), "--out", str(recovered)
    )
    assert decrypted.returncode == 0, decrypted.stderr
    assert "decrypted 5000 bytes of plaintext" in decrypted.stdout  # not the envelope's size
    assert recovered.read_bytes() == plaintext.read_bytes()
    assert recovered.stat().st_mode & 0o077 == 0
    document = json.loads(envelope.read_text())
    document["kid"] = "another-key"  # the header is authenticated
    envelope.write_text(json.dumps(document))
    tampered = run_example(
        "decrypt.py", "decrypt", "--jwk", str(private), *common, "--in", str(envelope), "--out", str(recovered)
    )
    assert tampered.returncode == 1
    assert "altered" in tampered.stderr


# --- against a running skr dev ------------------------------------------------------------------------


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if importlib.util.find_spec("skr_dev.devstack") is None:
        pytest.skip("skr dev (skr_dev.devstack) is not available")
    directory = tmp_path_factory.mktemp("skr-dev")
    state_file, log_file = directory / "state.json", directory / "dev.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "skr", "dev", "--port", "0", "--state-file", str(state_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=directory,
        )
    try:
        deadline = time.monotonic() + DEV_START_TIMEOUT
        state: dict[str, Any] | None = None
        while state is None:
            if process.poll() is not None:
                pytest.fail(f"skr dev exited with {process.returncode}:\n{log_file.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                pytest.fail(f"skr dev wrote no state file in time:\n{log_file.read_text(errors='replace')}")
            try:
                state = json.loads(state_file.read_text(encoding="utf-8"))
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.2)
        assert state is not None
        while _http("GET", state["sidecar_url"].rstrip("/") + "/status")[0] != 200:
            if time.monotonic() > deadline:
                pytest.fail("the dev sidecar never became ready")
            time.sleep(0.2)
        state["state_file"] = str(state_file)
        yield state
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _released_secret_members(state: dict[str, Any], key: dict[str, Any]) -> list[str]:
    body = {
        "maa_endpoint": urlsplit(state["maa_url"]).netloc,
        "akv_endpoint": urlsplit(key["vault_url"]).netloc,
        "kid": key["name"],
    }
    status, answer = _http("POST", state["sidecar_url"].rstrip("/") + "/key/release", body)
    assert status == 200, answer
    jwk = json.loads(answer["key"])
    return [jwk[m] for m in ("k", "d", "p", "q") if m in jwk]


def test_app_releases_and_uses_every_demo_key_without_printing_it(dev_stack: dict[str, Any]) -> None:
    assert dev_stack["keys"]
    for key in dev_stack["keys"]:
        result = run_example("app.py", "--state-file", dev_stack["state_file"], "--kid", key["name"])
        assert result.returncode == 0, result.stderr
        assert f"released {key['name']}" in result.stdout
        for secret in _released_secret_members(dev_stack, key):
            assert secret not in result.stdout + result.stderr


def test_app_reports_a_missing_key_with_the_sidecar_code(dev_stack: dict[str, Any]) -> None:
    result = run_example(
        "app.py", "--state-file", dev_stack["state_file"], "--kid", f"no-such-key-{uuid.uuid4().hex[:6]}"
    )
    assert result.returncode == 1
    assert "key_not_found" in result.stderr


@pytest.mark.parametrize(
    ("kty", "vault", "extra"),
    [
        ("RSA-HSM", "keyvault_url", []),
        ("EC-HSM", "keyvault_url", ["--curve", "P-384"]),
        ("oct-HSM", "managedhsm_url", []),
        ("RSA-HSM", "keyvault_url", ["--import"]),
        ("oct-HSM", "managedhsm_url", ["--import", "--size", "128"]),
    ],
)
def test_create_key_binds_a_new_key_that_the_sidecar_then_releases(
    dev_stack: dict[str, Any], kty: str, vault: str, extra: list[str]
) -> None:
    name = f"example-{kty.lower()}-{uuid.uuid4().hex[:8]}"
    created = run_example(
        "create_key.py", "--state-file", dev_stack["state_file"], "--name", name, "--kty", kty, *extra
    )
    assert created.returncode == 0, created.stderr
    assert dev_stack["host_data"].lower() in created.stdout
    vault_host = urlsplit(dev_stack[vault]).netloc
    released = run_example(
        "app.py", "--state-file", dev_stack["state_file"], "--kid", name, "--akv-endpoint", vault_host
    )
    assert released.returncode == 0, released.stderr
    assert kty.removesuffix("-HSM") in released.stdout


def test_create_key_for_another_policy_is_not_released(dev_stack: dict[str, Any], tmp_path: Path) -> None:
    other_policy = tmp_path / "other-policy.b64"
    other_policy.write_text(base64.b64encode(b"package other\n").decode(), encoding="utf-8")
    name = f"example-other-{uuid.uuid4().hex[:8]}"
    created = run_example(
        "create_key.py", "--state-file", dev_stack["state_file"], "--name", name, "--policy-file", str(other_policy)
    )
    assert created.returncode == 0, created.stderr
    refused = run_example("app.py", "--state-file", dev_stack["state_file"], "--kid", name)
    assert refused.returncode == 1
    assert "release_denied" in refused.stderr
    assert "x-ms-sevsnpvm-hostdata" in refused.stderr


def test_decrypt_round_trips_through_the_sidecar(dev_stack: dict[str, Any], tmp_path: Path) -> None:
    kinds = {str(k["kty"]).removesuffix("-HSM"): k["name"] for k in dev_stack["keys"]}
    usable = [kinds[kind] for kind in ("oct", "RSA") if kind in kinds]
    assert usable, "skr dev offers no oct or RSA demo key"
    for kid in usable:
        plaintext, envelope, recovered = tmp_path / f"{kid}.txt", tmp_path / f"{kid}.enc", tmp_path / f"{kid}.out"
        plaintext.write_bytes(b"attested eyes only\n" * 100)
        common = ["--state-file", dev_stack["state_file"], "--kid", kid]
        encrypted = run_example("decrypt.py", "encrypt", *common, "--in", str(plaintext), "--out", str(envelope))
        assert encrypted.returncode == 0, encrypted.stderr
        decrypted = run_example("decrypt.py", "decrypt", *common, "--in", str(envelope), "--out", str(recovered))
        assert decrypted.returncode == 0, decrypted.stderr
        assert recovered.read_bytes() == plaintext.read_bytes()


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("sh") is None, reason="needs sh and curl")
def test_the_manifest_app_script_gets_the_key_from_the_sidecar(dev_stack: dict[str, Any], tmp_path: Path) -> None:
    """The shell app of sidecar.yaml, pointed at the dev sidecar's port instead of 8080."""
    (script,) = [s for name, s in embedded_scripts() if name.startswith("sidecar.yaml")]
    port = urlsplit(dev_stack["sidecar_url"]).port
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "sleep").write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")  # `exec sleep infinity` ends the test
    (shims / "sleep").chmod(0o755)
    key = dev_stack["keys"][0]
    env = dict(
        os.environ,
        PATH=f"{shims}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        MAA_ENDPOINT=urlsplit(dev_stack["maa_url"]).netloc,
        AKV_ENDPOINT=urlsplit(key["vault_url"]).netloc,
        KEY_NAME=key["name"],
    )
    result = run(["sh", "-c", script.replace("localhost:8080", f"127.0.0.1:{port}")], env=env)
    assert result.returncode == 0, result.stderr
    assert f"key {key['name']} released" in result.stdout
    for secret in _released_secret_members(dev_stack, key):
        assert secret not in result.stdout + result.stderr
