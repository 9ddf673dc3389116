#!/usr/bin/env python3
"""Create (or import) an exportable HSM key that only your attested workload can release.

The key gets a release policy (see ``release_policy.py``) whose authority is your MAA instance and
whose ``x-ms-sevsnpvm-hostdata`` is the SHA-256 of your workload's decoded security policy, so Key
Vault / Managed HSM hands it only to a TEE started with exactly that policy.

    # Key Vault Premium: RSA-HSM or EC-HSM. Managed HSM also: oct-HSM.
    python3 create_key.py --vault-url https://myvault.vault.azure.net --name mykey --kty RSA-HSM \\
        --maa-endpoint sharedeus.eus.attest.azure.net --platform aks \\
        --policy-file aks-kata-cc/sidecar.yaml

Credentials come from ``DefaultAzureCredential`` (az login, environment, workload or managed
identity); the caller needs "Key Vault Crypto Officer" (or the Managed HSM equivalent).

``--import`` generates the key material here and imports it instead of creating it inside the HSM.
Prefer creation: an imported key existed outside an HSM. Import is for a key you must bring, e.g.
one that already encrypts data.

Against the local simulated stack: ``--state-file state.json`` (from ``skr dev --state-file``)
supplies the vault URL, MAA endpoint, host data, the emulators' CA and a workload-identity
credential for the Entra emulator.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError
from azure.identity import DefaultAzureCredential, WorkloadIdentityCredential
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyReleasePolicy, KeyVaultKey
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from release_policy import (
    COMPLIANCE_STATUS,
    PolicyInputError,
    build_release_policy,
    host_data_of,
    policy_from_file,
)

KEY_TYPES = ("RSA-HSM", "EC-HSM", "oct-HSM")
CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
DEFAULT_SIZE = {"RSA-HSM": 2048, "oct-HSM": 256}


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _int_bytes(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big")


def generate_jwk(kty: str, *, size: int | None, curve: str) -> JsonWebKey:
    """Fresh private key material as the SDK's JsonWebKey (for --import). Never logged."""
    if kty == "RSA-HSM":
        private = rsa.generate_private_key(public_exponent=65537, key_size=size or DEFAULT_SIZE[kty])
        numbers = private.private_numbers()
        public = numbers.public_numbers
        return JsonWebKey(
            kty=kty,
            n=_int_bytes(public.n),
            e=_int_bytes(public.e),
            d=_int_bytes(numbers.d),
            p=_int_bytes(numbers.p),
            q=_int_bytes(numbers.q),
            dp=_int_bytes(numbers.dmp1),
            dq=_int_bytes(numbers.dmq1),
            qi=_int_bytes(numbers.iqmp),
        )
    if kty == "EC-HSM":
        ec_private = ec.generate_private_key(CURVES[curve])
        ec_numbers = ec_private.private_numbers()
        length = (ec_private.curve.key_size + 7) // 8
        return JsonWebKey(
            kty=kty,
            crv=curve,
            x=_int_bytes(ec_numbers.public_numbers.x, length),
            y=_int_bytes(ec_numbers.public_numbers.y, length),
            d=_int_bytes(ec_numbers.private_value, length),
        )
    bits = size or DEFAULT_SIZE[kty]
    if bits not in (128, 192, 256):
        raise PolicyInputError("oct-HSM keys are 128, 192 or 256 bits")
    return JsonWebKey(kty=kty, k=os.urandom(bits // 8))


def create_or_import(
    client: KeyClient,
    *,
    name: str,
    kty: str,
    size: int | None,
    curve: str,
    policy: dict[str, Any],
    immutable: bool,
    import_material: bool,
) -> KeyVaultKey:
    release_policy = KeyReleasePolicy(json.dumps(policy).encode(), immutable=immutable or None)
    if import_material:
        return client.import_key(
            name,
            generate_jwk(kty, size=size, curve=curve),
            hardware_protected=True,
            exportable=True,
            release_policy=release_policy,
        )
    common: dict[str, Any] = {"hardware_protected": True, "exportable": True, "release_policy": release_policy}
    if kty == "RSA-HSM":
        return client.create_rsa_key(name, size=size or DEFAULT_SIZE[kty], **common)
    if kty == "EC-HSM":
        return client.create_ec_key(name, curve=curve, **common)
    return client.create_oct_key(name, size=size or DEFAULT_SIZE[kty], **common)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create or import an exportable HSM key with a release policy.")
    parser.add_argument("--vault-url", help="https://<vault>.vault.azure.net or https://<hsm>.managedhsm.azure.net")
    parser.add_argument("--name", required=True, help="key name")
    parser.add_argument("--kty", choices=KEY_TYPES, default="RSA-HSM", help="key type (default RSA-HSM)")
    parser.add_argument("--size", type=int, help="RSA: 2048/3072/4096 (default 2048); oct: 128/192/256 (256)")
    parser.add_argument("--curve", choices=sorted(CURVES), default="P-256", help="EC curve (default P-256)")
    parser.add_argument("--maa-endpoint", help="MAA instance: the policy's authority")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--policy-file", type=Path, help="security policy: base64, ARM template or Kubernetes YAML")
    source.add_argument("--host-data", help="SHA-256 (hex) of the decoded security policy")
    source.add_argument("--release-policy", type=Path, help="a complete release policy JSON to use as is")
    parser.add_argument("--platform", choices=sorted(COMPLIANCE_STATUS), default="aci", help="sets the UVM claim")
    parser.add_argument("--compliance-status", help="override x-ms-compliance-status")
    parser.add_argument("--immutable", action="store_true", help="make the release policy immutable (irreversible)")
    parser.add_argument("--import", dest="import_material", action="store_true", help="import local key material")
    parser.add_argument("--state-file", type=Path, help="use the emulators of `skr dev --state-file`")
    args = parser.parse_args(argv)

    try:
        state: dict[str, Any] = json.loads(args.state_file.read_text(encoding="utf-8")) if args.state_file else {}
        default_vault = state.get("managedhsm_url") if args.kty == "oct-HSM" else state.get("keyvault_url")
        vault_url = args.vault_url or default_vault
        maa_endpoint = args.maa_endpoint or urlsplit(state.get("maa_url", "")).netloc
        if not vault_url or not maa_endpoint:
            parser.error("--vault-url and --maa-endpoint are required (or --state-file)")
        if args.release_policy:
            policy = json.loads(args.release_policy.read_text(encoding="utf-8"))
        else:
            if args.policy_file:
                host_data = host_data_of(policy_from_file(args.policy_file))
            elif args.host_data or state.get("host_data"):
                host_data = args.host_data or state["host_data"]
            else:
                parser.error("one of --policy-file, --host-data or --release-policy is required")
            policy = build_release_policy(
                maa_endpoint=maa_endpoint,
                host_data=host_data,
                compliance_status=args.compliance_status
                or state.get("compliance_status")
                or COMPLIANCE_STATUS[args.platform],
            )
    except (PolicyInputError, OSError, ValueError, KeyError) as exc:
        print(f"create_key: {exc}", file=sys.stderr)
        return 2

    client_options: dict[str, Any] = {}
    credential: WorkloadIdentityCredential | DefaultAzureCredential
    if state:
        # The emulators' certificates chain to a local test CA; trust it for this client only.
        client_options["connection_verify"] = state["ca_file"]
        credential = WorkloadIdentityCredential(
            tenant_id=state["tenant_id"],
            client_id=state["client_id"],
            token_file_path=state["federated_token_file"],
            authority=state["entra_authority"],
            connection_verify=state["ca_file"],
        )
    else:
        credential = DefaultAzureCredential()
    # The SDK checks that the challenge's resource matches the vault's DNS name, which an IP
    # address never does; only loopback (emulator) vaults skip that check.
    client = KeyClient(vault_url, credential, verify_challenge_resource=not _is_loopback(vault_url), **client_options)
    try:
        key = create_or_import(
            client,
            name=args.name,
            kty=args.kty,
            size=args.size,
            curve=args.curve,
            policy=policy,
            immutable=args.immutable,
            import_material=args.import_material,
        )
    except (AzureError, PolicyInputError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        print(f"create_key: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    finally:
        client.close()
        credential.close()
    host_data = next(
        (
            c["equals"]
            for a in policy["anyOf"]
            for c in a.get("allOf", [])
            if c.get("claim") == "x-ms-sevsnpvm-hostdata"
        ),
        "?",
    )
    kty = getattr(key.key_type, "value", key.key_type)
    print(f"{'imported' if args.import_material else 'created'} {key.id} ({kty})")
    print(f"release policy: authority {policy['anyOf'][0]['authority']}, host data {host_data}")
    vault_host = urlsplit(vault_url).netloc
    request = {"maa_endpoint": maa_endpoint, "akv_endpoint": vault_host, "kid": args.name}
    sidecar = state.get("sidecar_url", "localhost:8080").removeprefix("http://").rstrip("/")
    print(f"release it from the pod: curl -s {sidecar}/key/release -d '{json.dumps(request)}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
