"""The real Azure SDKs against the vault emulators: azure-identity credentials from emu-core's Entra
emulator, azure-keyvault-keys (sync and async) creating, importing and releasing keys on both
flavours with MAA-emulator tokens, the JWS checked with skr.core.jose and the key unwrapped with
``cryptography``.

Clients are configured only with the CA file (``connection_verify``), the standard environment
(``AZURE_AUTHORITY_HOST`` etc., set by the ``sdk_stack`` fixture) and ``verify_challenge_resource=False``
(azure-facts §4.2: the resource check cannot pass on 127.0.0.1). Each emulator listens on its own
port, so the SDK's process-wide challenge cache (keyed by netloc) never mixes vaults.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime

import aiohttp
import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity import WorkloadIdentityCredential
from azure.identity.aio import WorkloadIdentityCredential as AsyncWorkloadIdentityCredential
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyExportEncryptionAlgorithm, KeyReleasePolicy, KeyType
from azure.keyvault.keys.aio import KeyClient as AsyncKeyClient
from cryptography.hazmat.primitives.asymmetric import rsa

from skr.core import jose
from skr_dev.emulators.faults import Fault, FaultKind
from skr_dev.emulators.keyvault import Flavour, KeyVaultEmulator
from tests.dev.emulators.vault_fixtures import *  # noqa: F403  (pytest fixtures)
from tests.dev.emulators.vault_fixtures import (
    HOSTDATA,
    SdkStack,
    aci_policy,
    assert_released_key_matches,
    b64url,
    new_runtime_key,
    sevsnp_claims,
)

ALGORITHMS = [
    KeyExportEncryptionAlgorithm.ckm_rsa_aes_key_wrap,
    KeyExportEncryptionAlgorithm.rsa_aes_key_wrap_256,
    KeyExportEncryptionAlgorithm.rsa_aes_key_wrap_384,
]


def _policy(stack: SdkStack, **overrides: str) -> KeyReleasePolicy:
    return KeyReleasePolicy(json.dumps(aci_policy(stack.maa.issuer, **overrides)).encode())


def _verify(vault: KeyVaultEmulator, jws: str) -> jose.ReleasePayload:
    return jose.verify_release_jws(
        jws, trusted_roots=[vault.ca.root_certificate], vault_host="127.0.0.1", now=datetime.now(UTC)
    )


def _sync_client(stack: SdkStack, vault: KeyVaultEmulator) -> KeyClient:
    credential = WorkloadIdentityCredential(connection_verify=str(stack.ca_file))
    return KeyClient(vault.url, credential, verify_challenge_resource=False, connection_verify=str(stack.ca_file))


async def test_async_client_rsa_hsm_on_key_vault_every_enc(sdk_stack: SdkStack) -> None:
    vault = sdk_stack.keyvault
    credential = AsyncWorkloadIdentityCredential(connection_verify=str(sdk_stack.ca_file))
    async with (
        credential,
        AsyncKeyClient(
            vault.url, credential, verify_challenge_resource=False, connection_verify=str(sdk_stack.ca_file)
        ) as client,
    ):
        created = await client.create_rsa_key(
            "sdk-rsa", size=2048, hardware_protected=True, exportable=True, release_policy=_policy(sdk_stack)
        )
        assert created.key_type == KeyType.rsa_hsm
        assert created.properties.exportable is True
        assert created.properties.release_policy is not None
        assert json.loads(created.properties.release_policy.encoded_policy) == aci_policy(sdk_stack.maa.issuer)
        fetched = await client.get_key("sdk-rsa")
        assert fetched.id == created.id and fetched.key.n == created.key.n
        for algorithm in ALGORITHMS:
            runtime = new_runtime_key(f"wrap-{algorithm.value}")
            result = await client.release_key(
                "sdk-rsa", sdk_stack.attestation_token(runtime), algorithm=algorithm, nonce="sdk-nonce"
            )
            payload = _verify(vault, result.value)
            assert payload.request.enc == algorithm.value and payload.request.nonce == "sdk-nonce"
            assert payload.key.kid == created.id
            assert payload.key.n == created.key.n
            # Same exponent, different bytes: KV's release payload sends AAEAAQ, its get sends AQAB.
            assert int.from_bytes(payload.key.e, "big") == int.from_bytes(created.key.e, "big") == 65537
            assert_released_key_matches(payload, runtime.private_key)
    routes = [record.route for record in vault.requests]
    # one unauthenticated challenge, then authenticated calls only (the challenge is cached per netloc)
    assert [r.status for r in vault.requests].count(401) == 1
    assert routes.count("keyvault.release") == len(ALGORITHMS)
    # the release went to the empty-version path, as the SDK sends it
    assert any(record.path == "/keys/sdk-rsa//release" for record in vault.requests)


async def test_sync_client_ec_and_oct_on_managed_hsm(sdk_stack: SdkStack) -> None:
    vault = sdk_stack.managedhsm
    client = _sync_client(sdk_stack, vault)
    policy = _policy(sdk_stack)
    ec_key = await asyncio.to_thread(
        client.create_ec_key, "sdk-ec", curve="P-384", hardware_protected=True, exportable=True, release_policy=policy
    )
    assert ec_key.key_type == KeyType.ec_hsm and ec_key.key.crv == "P-384"
    oct_bytes = bytes(range(100, 132))
    imported = await asyncio.to_thread(
        client.import_key,
        "sdk-oct",
        JsonWebKey(kty=KeyType.oct_hsm, k=oct_bytes),
        hardware_protected=True,
        exportable=True,
        release_policy=policy,
    )
    assert imported.key_type == KeyType.oct_hsm
    for name in ("sdk-ec", "sdk-oct"):
        for algorithm in ALGORITHMS:
            runtime = new_runtime_key()
            result = await asyncio.to_thread(
                client.release_key, name, sdk_stack.attestation_token(runtime), algorithm=algorithm
            )
            payload = _verify(vault, result.value)
            assert payload.key.key_hsm.enc == algorithm.value
            released = assert_released_key_matches(
                payload, runtime.private_key, oct_bytes=oct_bytes if name == "sdk-oct" else None
            )
            if name == "sdk-ec":
                assert payload.key.x == ec_key.key.x and payload.key.y == ec_key.key.y
            else:
                assert released == oct_bytes
    await asyncio.to_thread(client.close)


async def test_sync_import_rsa_on_key_vault_and_release_by_version(sdk_stack: SdkStack) -> None:
    vault = sdk_stack.keyvault
    client = _sync_client(sdk_stack, vault)
    private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    numbers = private.private_numbers()

    def raw(value: int) -> bytes:
        return value.to_bytes((value.bit_length() + 7) // 8, "big")

    jwk = JsonWebKey(
        kty=KeyType.rsa,
        n=raw(numbers.public_numbers.n),
        e=raw(numbers.public_numbers.e),
        d=raw(numbers.d),
        p=raw(numbers.p),
        q=raw(numbers.q),
        dp=raw(numbers.dmp1),
        dq=raw(numbers.dmq1),
        qi=raw(numbers.iqmp),
    )
    imported = await asyncio.to_thread(
        client.import_key,
        "sdk-imported",
        jwk,
        hardware_protected=True,
        exportable=True,
        release_policy=_policy(sdk_stack),
    )
    assert imported.key_type == KeyType.rsa_hsm
    runtime = new_runtime_key()
    result = await asyncio.to_thread(
        client.release_key, "sdk-imported", sdk_stack.attestation_token(runtime), version=imported.properties.version
    )
    payload = _verify(vault, result.value)
    assert payload.request.kid == imported.id
    target = assert_released_key_matches(payload, runtime.private_key)
    from cryptography.hazmat.primitives import serialization

    released = serialization.load_der_private_key(target, password=None)
    assert isinstance(released, rsa.RSAPrivateKey)
    assert released.private_numbers() == numbers
    await asyncio.to_thread(client.close)


async def test_release_with_a_token_from_a_real_attest_call(sdk_stack: SdkStack) -> None:
    """Simulated SNP report → MAA emulator /attest/SevSnpVm → token → SDK release → unwrap."""
    from skr_dev.emulators.maa import build_attest_request_body
    from skr_dev.simulated.amd import SimulatedAmd

    policy_bytes = b"package policy\ndefault allow := true\n"
    host_data = hashlib.sha256(policy_bytes).digest()
    vault = sdk_stack.managedhsm
    client = _sync_client(sdk_stack, vault)
    await asyncio.to_thread(
        client.create_rsa_key,
        "attested",
        size=2048,
        hardware_protected=True,
        exportable=True,
        release_policy=_policy(sdk_stack, **{"x-ms-sevsnpvm-hostdata": host_data.hex()}),
    )
    runtime = new_runtime_key()
    runtime_data = json.dumps({"keys": [runtime.jwk]}).encode()
    amd = SimulatedAmd.create()
    report = amd.sign_report(hashlib.sha256(runtime_data).digest() + bytes(32), host_data=host_data)
    body = build_attest_request_body(report, amd.vcek_pem_chain(), runtime_data, nonce=12345678901234567890)
    connector = aiohttp.TCPConnector(ssl=sdk_stack.ca.client_ssl_context())
    url = f"{sdk_stack.maa.url}/attest/SevSnpVM?api-version=2020-10-01"
    async with aiohttp.ClientSession(connector=connector) as session, session.post(url, data=body) as response:
        assert response.status == 200, await response.text()
        token = (await response.json())["token"]
    result = await asyncio.to_thread(client.release_key, "attested", token)
    payload = _verify(vault, result.value)
    assert payload.request.enc == "CKM_RSA_AES_KEY_WRAP"
    assert_released_key_matches(payload, runtime.private_key)
    await asyncio.to_thread(client.close)


@pytest.mark.parametrize("flavour", [Flavour.KEY_VAULT, Flavour.MANAGED_HSM])
async def test_policy_refusal_reaches_the_sdk_naming_the_claim(sdk_stack: SdkStack, flavour: Flavour) -> None:
    vault = sdk_stack.vault(flavour)
    client = _sync_client(sdk_stack, vault)
    await asyncio.to_thread(
        client.create_ec_key, "guarded", hardware_protected=True, exportable=True, release_policy=_policy(sdk_stack)
    )
    token = sdk_stack.attestation_token(new_runtime_key(), **{"x-ms-sevsnpvm-is-debuggable": True})
    with pytest.raises(HttpResponseError) as info:
        await asyncio.to_thread(client.release_key, "guarded", token)
    assert info.value.status_code == 403
    assert info.value.error is not None and info.value.error.code == "Forbidden"
    assert "claim 'x-ms-sevsnpvm-is-debuggable'" in str(info.value.message)
    expired = str(sdk_stack.maa.issue_token(sevsnp_claims(new_runtime_key()), lifetime=-60))
    with pytest.raises(HttpResponseError, match="cannot be verified") as info:
        await asyncio.to_thread(client.release_key, "guarded", expired)
    assert info.value.status_code == 403
    await asyncio.to_thread(client.close)


async def test_sdk_errors_for_missing_keys_and_rules(sdk_stack: SdkStack) -> None:
    client = _sync_client(sdk_stack, sdk_stack.keyvault)
    with pytest.raises(ResourceNotFoundError) as missing:
        await asyncio.to_thread(client.get_key, "absent")
    assert missing.value.error is not None and missing.value.error.code == "KeyNotFound"
    with pytest.raises(HttpResponseError, match=r"AKV\.SKR\.1006"):
        await asyncio.to_thread(client.create_rsa_key, "soft", exportable=True, release_policy=_policy(sdk_stack))
    with pytest.raises(HttpResponseError, match=r"AKV\.SKR\.1004"):
        await asyncio.to_thread(client.create_rsa_key, "nopolicy", hardware_protected=True, exportable=True)
    with pytest.raises(HttpResponseError, match="only supported by Managed HSM"):
        await asyncio.to_thread(
            client.create_oct_key, "oct", hardware_protected=True, exportable=True, release_policy=_policy(sdk_stack)
        )
    await asyncio.to_thread(client.close)


async def test_sdk_survives_a_transient_release_fault(sdk_stack: SdkStack) -> None:
    vault = sdk_stack.keyvault
    vault.faults.add(Fault(FaultKind.ERROR_503, endpoint="keyvault.release", retry_after=0, times=1))
    credential = AsyncWorkloadIdentityCredential(connection_verify=str(sdk_stack.ca_file))
    async with (
        credential,
        AsyncKeyClient(
            vault.url, credential, verify_challenge_resource=False, connection_verify=str(sdk_stack.ca_file)
        ) as client,
    ):
        await client.create_ec_key("flaky", hardware_protected=True, exportable=True, release_policy=_policy(sdk_stack))
        runtime = new_runtime_key()
        result = await client.release_key("flaky", sdk_stack.attestation_token(runtime))
        assert_released_key_matches(_verify(vault, result.value), runtime.private_key)
    statuses = [r.status for r in vault.requests if r.route == "keyvault.release"]
    assert statuses == [503, 200]  # the SDK's retry policy went around the fault


async def test_entra_token_faults_surface_as_authentication_errors(sdk_stack: SdkStack) -> None:
    vault = sdk_stack.managedhsm
    sdk_stack.entra.faults.add(Fault(FaultKind.BAD_SIGNATURE, endpoint="entra.token", times=1))
    client = _sync_client(sdk_stack, vault)
    with pytest.raises(ClientAuthenticationError):
        await asyncio.to_thread(client.get_key, "anything")
    assert [r.status for r in vault.requests] == [401, 401]  # challenge, then the forged token
    await asyncio.to_thread(client.close)


@pytest.mark.parametrize("flavour", [Flavour.KEY_VAULT, Flavour.MANAGED_HSM])
async def test_managed_identity_credentials_sync_and_async(
    sdk_stack: SdkStack, flavour: Flavour, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ManagedIdentityCredential via emu-core's IMDS emulator (tokens signed by the Entra emulator)."""
    from azure.identity import ManagedIdentityCredential
    from azure.identity.aio import ManagedIdentityCredential as AsyncManagedIdentityCredential

    from skr_dev.emulators.imds import ImdsEmulator

    client_id = "5a7e0000-0000-4000-8000-0000000000d5"
    imds = ImdsEmulator(sdk_stack.entra, identities=[client_id])
    await imds.start()
    # Without the workload-identity variables, ManagedIdentityCredential goes to IMDS (azure-facts §4.5).
    for name in ("AZURE_AUTHORITY_HOST", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url)
    vault = sdk_stack.vault(flavour)
    try:
        credential = ManagedIdentityCredential(client_id=client_id, connection_verify=str(sdk_stack.ca_file))
        client = KeyClient(
            vault.url, credential, verify_challenge_resource=False, connection_verify=str(sdk_stack.ca_file)
        )
        await asyncio.to_thread(
            client.create_ec_key, "mi-key", hardware_protected=True, exportable=True, release_policy=_policy(sdk_stack)
        )
        await asyncio.to_thread(client.close)
        async_credential = AsyncManagedIdentityCredential(client_id=client_id, connection_verify=str(sdk_stack.ca_file))
        async with (
            async_credential,
            AsyncKeyClient(
                vault.url, async_credential, verify_challenge_resource=False, connection_verify=str(sdk_stack.ca_file)
            ) as async_client,
        ):
            runtime = new_runtime_key()
            result = await async_client.release_key("mi-key", sdk_stack.attestation_token(runtime))
            assert_released_key_matches(_verify(vault, result.value), runtime.private_key)
        resources = {r.query for r in imds.requests if r.route == "imds.token"}
        assert any(flavour.resource in q.replace("%3A", ":").replace("%2F", "/") for q in resources), resources
    finally:
        await imds.stop()


def test_fixture_helpers_are_consistent() -> None:
    jwk = new_runtime_key().jwk
    assert jwk["key_ops"] == ["encrypt"] and jwk["kty"] == "RSA"
    assert len(HOSTDATA) == 64 and b64url(b"\xff") == "_w"
