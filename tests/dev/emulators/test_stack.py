"""The whole emulated estate: attest at MAA, release from Key Vault and Managed HSM with the real
Azure SDKs using workload identity and managed identity tokens, the state document, the CLI."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity import ManagedIdentityCredential
from azure.identity.aio import WorkloadIdentityCredential
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.aio import KeyClient as AsyncKeyClient
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from skr.snp.report import Product
from skr_dev.emulators.faults import Fault, FaultKind
from skr_dev.emulators.maa import build_attest_request_body, verify_uvm_endorsement
from skr_dev.emulators.stack import EmulatorStack, StackConfig, default_release_policy
from skr_dev.emulators.tls import TestCertificateAuthority
from skr_dev.simulated.amd import SimulatedAmd

from .conftest import b64url_json

REPO_ROOT = Path(__file__).resolve().parents[2]


def _runtime() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid="wrapping-key", key_ops=["encrypt"])
    return json.dumps({"keys": [jwk]}).encode()


async def _maa_token(stack: EmulatorStack, *, host_data: bytes | None = None) -> str:
    runtime = _runtime()
    fields: dict[str, Any] = {} if host_data is None else {"host_data": host_data}
    report = stack.sign_report(hashlib.sha256(runtime).digest() + bytes(32), **fields)
    body = build_attest_request_body(
        report, stack.platform.vcek_pem_chain(), runtime, nonce=7, uvm_endorsement=stack.uvm_endorsement()
    )
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=stack.ca.client_ssl_context())) as session,
        session.post(f"{stack.maa.url}/attest/SevSnpVm?api-version=2022-08-01", data=body) as response,
    ):
        answer = await response.json()
        assert response.status == 200, answer
        token: str = answer["token"]
        return token


def _set_env(stack: EmulatorStack, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in stack.environment().items():
        monkeypatch.setenv(name, value)


async def test_release_from_both_vaults_with_workload_identity(
    emulator_stack: EmulatorStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_env(emulator_stack, monkeypatch)
    token = await _maa_token(emulator_stack)
    assert b64url_json(token.split(".")[1])["x-ms-sevsnpvm-hostdata"] == emulator_stack.host_data.hex()
    credential = WorkloadIdentityCredential(connection_verify=str(emulator_stack.ca_file))
    try:
        for vault in (emulator_stack.keyvault, emulator_stack.managedhsm):
            assert vault is not None
            client = AsyncKeyClient(
                vault.url, credential, verify_challenge_resource=False, connection_verify=str(emulator_stack.ca_file)
            )
            try:
                result = await client.release_key("demo-rsa", token)
            finally:
                await client.close()
            payload = b64url_json(result.value.split(".")[1])
            assert payload["request"]["kid"].startswith(f"{vault.url}/keys/demo-rsa")
            assert payload["response"]["key"]["key"]["key_hsm"]
    finally:
        await credential.close()
    assert any(r.route == "entra.token" for r in emulator_stack.entra.requests)


async def test_release_with_managed_identity_sync_sdk(
    emulator_stack: EmulatorStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_env(emulator_stack, monkeypatch)
    monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE")  # otherwise ManagedIdentityCredential uses workload identity
    token = await _maa_token(emulator_stack)
    assert emulator_stack.keyvault is not None
    url = emulator_stack.keyvault.url

    def release() -> str:
        credential = ManagedIdentityCredential(client_id=emulator_stack.config.managed_identity_client_id)
        client = KeyClient(
            url, credential, verify_challenge_resource=False, connection_verify=str(emulator_stack.ca_file)
        )
        return client.release_key("demo-rsa", token).value

    value = await asyncio.to_thread(release)
    assert value.count(".") == 2
    assert [r.route for r in emulator_stack.imds.requests] == ["imds.token"]


async def test_release_denied_for_another_policy(
    emulator_stack: EmulatorStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_env(emulator_stack, monkeypatch)
    token = await _maa_token(emulator_stack, host_data=hashlib.sha256(b"another policy").digest())
    credential = WorkloadIdentityCredential(connection_verify=str(emulator_stack.ca_file))
    assert emulator_stack.keyvault is not None
    client = AsyncKeyClient(
        emulator_stack.keyvault.url,
        credential,
        verify_challenge_resource=False,
        connection_verify=str(emulator_stack.ca_file),
    )
    try:
        with pytest.raises(HttpResponseError) as caught:
            await client.release_key("demo-rsa", token)
    finally:
        await client.close()
        await credential.close()
    assert caught.value.status_code == 403
    assert "x-ms-sevsnpvm-hostdata" in str(caught.value)


async def test_stack_faults_are_shared(emulator_stack: EmulatorStack) -> None:
    emulator_stack.faults.add(Fault(FaultKind.ERROR_503, "maa.attest", times=1))
    with pytest.raises(AssertionError):
        await _maa_token(emulator_stack)
    assert await _maa_token(emulator_stack)
    assert [r.status for r in emulator_stack.maa.requests] == [503, 200]


async def test_state_document(emulator_stack: EmulatorStack, tmp_path: Path) -> None:
    state = emulator_stack.state()
    for name in (
        "maa_url",
        "keyvault_url",
        "managedhsm_url",
        "entra_authority",
        "imds_url",
        "ca_file",
        "tenant_id",
        "client_id",
        "federated_token_file",
        "host_data",
        "keys",
    ):
        assert state[name], name
    assert state["imds_url"].startswith("http://127.0.0.1:")
    assert all(state[k].startswith("https://127.0.0.1:") for k in ("maa_url", "keyvault_url", "entra_authority"))
    assert state["keys"] == [
        {"name": "demo-rsa", "vault_url": state["keyvault_url"], "kty": "RSA-HSM"},
        {"name": "demo-rsa", "vault_url": state["managedhsm_url"], "kty": "RSA-HSM"},
    ]
    assert bytes.fromhex(state["host_data"]) == hashlib.sha256(emulator_stack.config.security_policy).digest()
    path = emulator_stack.write_state(tmp_path / "state.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == state
    assert Path(state["ca_file"]).read_bytes() == emulator_stack.ca.ca_pem
    assert "SIMULATED" in state["simulated"]


async def test_security_context_directory(emulator_stack: EmulatorStack, tmp_path: Path) -> None:
    directory = emulator_stack.write_security_context(tmp_path / "security-context-1")
    policy = base64.b64decode((directory / "security-policy-base64").read_text())
    assert hashlib.sha256(policy).digest() == emulator_stack.host_data
    thim = json.loads(base64.b64decode((directory / "host-amd-cert-base64").read_text()))
    assert thim == emulator_stack.platform.thim_json()
    endorsement = base64.b64decode((directory / "reference-info-base64").read_text())
    verified = verify_uvm_endorsement(
        endorsement,
        measurement=emulator_stack.measurement,
        trusted_root_fingerprints={emulator_stack.uvm_signer.root_fingerprint},
        now=dt.datetime.now(dt.UTC),
    )
    assert verified.launch_measurement == emulator_stack.measurement.hex()


async def test_seeding_variants(emulator_ca: TestCertificateAuthority, emulator_platform: SimulatedAmd) -> None:
    custom_policy = default_release_policy("https://maa.example", bytes(32))
    async with EmulatorStack(
        {
            "keys": [
                {"name": "custom", "vault": "keyvault", "release_policy": custom_policy},
                {"name": "plain", "vault": "managedhsm", "kty": "oct-HSM", "release_policy": None},
            ]
        },
        ca=emulator_ca,
        platform=emulator_platform,
    ) as stack:
        assert [(k["name"], k["kty"]) for k in stack.keys] == [("custom", "RSA-HSM"), ("plain", "oct-HSM")]
        with pytest.raises(ValueError, match="release_policy"):
            await stack.seed([{"name": "bad", "release_policy": "nope"}])
        with pytest.raises(ValueError, match="not running"):
            await stack.seed([{"name": "x", "vault": "elsewhere"}])
        state_dir = stack.state_dir
        assert state_dir.exists()
    assert not state_dir.exists()  # the stack cleaned up the directory it created


async def test_without_vaults(emulator_ca: TestCertificateAuthority, emulator_platform: SimulatedAmd) -> None:
    async with EmulatorStack({"vaults": False}, ca=emulator_ca, platform=emulator_platform) as stack:
        assert stack.keyvault is None
        assert stack.state()["keyvault_url"] is None
        assert set(stack.emulators()) == {"entra", "imds", "maa", "kds", "certcache"}
        with pytest.raises(ValueError, match="not running"):
            await stack.seed([{"name": "k"}])
    assert not stack.running
    with pytest.raises(RuntimeError):
        stack.environment()


def test_config_parsing() -> None:
    config = StackConfig.from_mapping(
        {
            "product": "genoa",
            "compliance_status": "azure-signed-katacc-uvm",
            "security_policy": "package x",
            "faults": [{"kind": "latency", "endpoint": "maa.attest", "delay": 0.15}],
            "ports": {"maa": 0},
            "keys": [{"name": "k"}],
        }
    )
    assert config.product is Product.GENOA
    assert config.faults[0].kind is FaultKind.LATENCY
    assert config.host_data == hashlib.sha256(b"package x").digest()
    assert StackConfig.from_json(b'{"vaults": false}').vaults is False
    for bad in (
        {"unknown": 1},
        {"product": "Venice"},
        {"vaults": "yes"},
        {"tenant_id": ""},
        {"ports": {"maa": 70000}},
        {"ports": {"nope": 1}},
        {"keys": [{"kty": "RSA"}]},
        {"faults": [{"kind": "explode"}]},
        {"security_policy": 5},
    ):
        with pytest.raises(ValueError):
            StackConfig.from_mapping(bad)
    with pytest.raises(ValueError):
        StackConfig.from_json(b"[]")


def test_python_m_skr_emulators(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    config = tmp_path / "stack.json"
    config.write_text(json.dumps({"keys": [{"name": "cli-key", "vault": "keyvault"}]}))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "skr_dev.emulators", "--config", str(config), "--state-file", str(state_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while not state_file.exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else b""
            assert time.monotonic() < deadline, "the emulators did not start"
            time.sleep(0.1)
        state = json.loads(state_file.read_text())
        assert state["keys"] == [{"name": "cli-key", "vault_url": state["keyvault_url"], "kty": "RSA-HSM"}]
        import ssl
        import urllib.request

        context = ssl.create_default_context(cafile=state["ca_file"])
        with urllib.request.urlopen(f"{state['maa_url']}/.well-known/openid-configuration", context=context) as r:
            assert json.loads(r.read())["jwks_uri"] == f"{state['maa_url']}/certs"
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert json.loads(stdout)["maa_url"] == state["maa_url"]
    assert b"SIMULATED" in stderr


def test_python_m_skr_emulators_rejects_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "stack.json"
    config.write_text(json.dumps({"product": "Venice"}))
    result = subprocess.run(
        [sys.executable, "-m", "skr_dev.emulators", "--config", str(config)],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert b"product" in result.stderr
