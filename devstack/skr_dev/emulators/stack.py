"""The whole emulated Azure estate in one object: every emulator, one CA, one simulated SEV-SNP chip.

Why: ``skr dev``, end-to-end tests and users' own test suites need MAA, Key Vault, Managed HSM,
Entra ID, IMDS/THIM, AMD KDS and the Azure certificate cache together, wired to trust each other
(Key Vault trusts the MAA emulator's tokens and the Entra emulator's keys; MAA trusts the simulated
chip's AMD roots), with demo keys created at start-up from a small configuration.

SIMULATED: nothing here is a TEE or a real Azure service. Everything listens on 127.0.0.1 only.

Configuration (a mapping or JSON; every field optional)::

    {
      "product": "Milan",                       # Milan | Genoa | Turin (the simulated chip)
      "tenant_id": "...", "client_id": "...",   # the workload identity (federated token file)
      "managed_identity_client_id": "...",      # the IMDS user-assigned identity
      "compliance_status": "azure-compliant-uvm",
      "require_uvm_endorsement": false,
      "security_policy": "<text>",              # HOST_DATA = sha256(policy bytes)
      "vaults": true,                           # start the Key Vault and Managed HSM emulators
      "trust_amd_roots": false,                 # MAA also accepts real AMD evidence
      "faults": [{"kind": "latency", "endpoint": "maa.attest", "delay": 0.15}],
      "ports": {"maa": 0, "keyvault": 0, ...},  # fixed ports (0 = any free port)
      "keys": [{"name": "demo-rsa", "vault": "keyvault", "kty": "RSA-HSM",
                "release_policy": "default"}]   # "default" = the stack's own MAA + HOST_DATA policy
    }

Usage::

    async with EmulatorStack({"keys": [{"name": "k1"}]}) as stack:
        report = stack.sign_report(hashlib.sha256(runtime_json).digest() + bytes(32))
        print(stack.state())          # urls, ca_file, tenant/client ids, token file, host_data, keys
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from skr.shell.initcontainer import write_atomically
from skr.snp.report import Product
from skr.snp.verify import TrustedRoots
from skr_dev import SIMULATED_BANNER
from skr_dev.emulators import keyvault as kv
from skr_dev.emulators.entra import DEFAULT_CLIENT_ID, DEFAULT_TENANT_ID, EntraEmulator, WorkloadIdentity
from skr_dev.emulators.faults import Fault, FaultSet
from skr_dev.emulators.imds import DEFAULT_MANAGED_IDENTITY_CLIENT_ID, ImdsEmulator, ManagedIdentity
from skr_dev.emulators.kds import CertCacheEmulator, KdsEmulator
from skr_dev.emulators.maa import COMPLIANCE_ACI, MICROSOFT_UVM_ROOT_FINGERPRINT, MaaEmulator, UvmEndorsementSigner
from skr_dev.emulators.server import HostedEmulator
from skr_dev.emulators.tls import TestCertificateAuthority
from skr_dev.simulated.amd import SimulatedAmd, simulated_trusted_roots

__all__ = [
    "DEFAULT_MEASUREMENT",
    "DEFAULT_SECURITY_POLICY",
    "EMULATOR_NAMES",
    "EmulatorStack",
    "StackConfig",
    "default_release_policy",
]

DEFAULT_SECURITY_POLICY: Final = (
    b'package policy\n\napi_version := "0.10.0"\nframework_version := "0.2.3"\n\n'
    b"# skr dev: SIMULATED confidential container policy (not enforced by anything)\n"
    b'mount_device := {"allowed": true}\nexec_in_container := {"allowed": true}\n'
)
"""The demo security policy; HOST_DATA of simulated reports is its sha256."""
DEFAULT_MEASUREMENT: Final = hashlib.sha384(b"skr dev simulated UVM").digest()
"""MEASUREMENT of simulated reports (and what the simulated UVM endorsement endorses)."""
EMULATOR_NAMES: Final = ("entra", "imds", "maa", "kds", "certcache", "keyvault", "managedhsm")
_MAX_CONFIG: Final = 256 * 1024
_KNOWN_FIELDS: Final = frozenset(
    {
        "product",
        "tenant_id",
        "client_id",
        "managed_identity_client_id",
        "compliance_status",
        "require_uvm_endorsement",
        "security_policy",
        "vaults",
        "trust_amd_roots",
        "faults",
        "ports",
        "keys",
    }
)


def default_release_policy(maa_url: str, host_data: bytes, compliance_status: str = COMPLIANCE_ACI) -> dict[str, Any]:
    """A Confidential-ACI style release policy bound to ``maa_url`` and HOST_DATA (azure-facts §3.4)."""
    return {
        "version": "1.0.0",
        "anyOf": [
            {
                "authority": maa_url,
                "allOf": [
                    {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
                    {"claim": "x-ms-compliance-status", "equals": compliance_status},
                    {"claim": "x-ms-sevsnpvm-hostdata", "equals": host_data.hex()},
                    {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"},
                ],
            }
        ],
    }


@dataclass(frozen=True, slots=True)
class StackConfig:
    """What the stack starts with. Build from JSON with :meth:`from_mapping`."""

    product: Product = Product.MILAN
    tenant_id: str = DEFAULT_TENANT_ID
    client_id: str = DEFAULT_CLIENT_ID
    managed_identity_client_id: str = DEFAULT_MANAGED_IDENTITY_CLIENT_ID
    compliance_status: str = COMPLIANCE_ACI
    require_uvm_endorsement: bool = False
    security_policy: bytes = DEFAULT_SECURITY_POLICY
    vaults: bool = True
    trust_amd_roots: bool = False
    faults: tuple[Fault, ...] = ()
    ports: Mapping[str, int] = field(default_factory=dict)
    keys: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> StackConfig:
        """Parse the JSON form (see the module docstring); raises ValueError on anything odd."""
        unknown = set(data) - _KNOWN_FIELDS
        if unknown:
            raise ValueError(f"unknown stack configuration fields: {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        if "product" in data:
            try:
                kwargs["product"] = Product(str(data["product"]).capitalize())
            except ValueError:
                raise ValueError("product must be Milan, Genoa or Turin") from None
        for name in ("tenant_id", "client_id", "managed_identity_client_id", "compliance_status"):
            if name in data:
                if not isinstance(data[name], str) or not data[name]:
                    raise ValueError(f"{name} must be a non-empty string")
                kwargs[name] = data[name]
        for name in ("require_uvm_endorsement", "vaults", "trust_amd_roots"):
            if name in data:
                if not isinstance(data[name], bool):
                    raise ValueError(f"{name} must be true or false")
                kwargs[name] = data[name]
        if "security_policy" in data:
            policy = data["security_policy"]
            if not isinstance(policy, str | bytes) or not policy:
                raise ValueError("security_policy must be a non-empty string")
            kwargs["security_policy"] = policy.encode() if isinstance(policy, str) else policy
        if "faults" in data:
            if not isinstance(data["faults"], list):
                raise ValueError("faults must be a list")
            kwargs["faults"] = tuple(Fault.from_json(item) for item in data["faults"])
        if "ports" in data:
            ports = data["ports"]
            if not isinstance(ports, Mapping) or any(
                name not in EMULATOR_NAMES
                or isinstance(port, bool)
                or not isinstance(port, int)
                or not 0 <= port < 65536
                for name, port in ports.items()
            ):
                raise ValueError(f"ports must map emulator names ({', '.join(EMULATOR_NAMES)}) to port numbers")
            kwargs["ports"] = dict(ports)
        if "keys" in data:
            keys = data["keys"]
            if not isinstance(keys, list) or not all(
                isinstance(k, Mapping) and isinstance(k.get("name"), str) for k in keys
            ):
                raise ValueError("keys must be a list of objects with a 'name'")
            kwargs["keys"] = tuple(keys)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> StackConfig:
        if len(text) > _MAX_CONFIG:
            raise ValueError("stack configuration is too large")
        data = json.loads(text)
        if not isinstance(data, Mapping):
            raise ValueError("stack configuration must be a JSON object")
        return cls.from_mapping(data)

    @property
    def host_data(self) -> bytes:
        return hashlib.sha256(self.security_policy).digest()


class EmulatorStack:
    """Every emulator on loopback, sharing one test CA, one FaultSet and one simulated chip."""

    def __init__(
        self,
        config: StackConfig | Mapping[str, Any] | None = None,
        *,
        state_dir: Path | None = None,
        ca: TestCertificateAuthority | None = None,
        platform: SimulatedAmd | None = None,
    ) -> None:
        if config is None:
            config = StackConfig()
        elif not isinstance(config, StackConfig):
            config = StackConfig.from_mapping(config)
        self.config = config
        self._owns_state_dir = state_dir is None
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="skr-emulators-"))
        self.ca = ca or TestCertificateAuthority.create("skr dev (SIMULATED)")
        self.faults = FaultSet(config.faults)
        self.platform = platform or SimulatedAmd.create(config.product)
        self.uvm_signer = UvmEndorsementSigner()
        self.entra = EntraEmulator(tenant_id=config.tenant_id, faults=self.faults)
        self.workload_identity: WorkloadIdentity = self.entra.add_workload_identity(
            config.client_id, namespace="default", service_account="skr"
        )
        self.imds = ImdsEmulator(
            self.entra,
            identities=[ManagedIdentity(config.managed_identity_client_id)],
            platform=self.platform,
            faults=self.faults,
        )
        roots: list[TrustedRoots] = [simulated_trusted_roots((self.platform.product,))]
        if config.trust_amd_roots:
            roots.append(TrustedRoots.amd())
        self.maa = MaaEmulator(
            faults=self.faults,
            trusted_roots=roots,
            require_uvm_endorsement=config.require_uvm_endorsement,
            uvm_root_fingerprints={self.uvm_signer.root_fingerprint, MICROSOFT_UVM_ROOT_FINGERPRINT},
            compliance_status=config.compliance_status,
        )
        self.kds = KdsEmulator([self.platform], faults=self.faults)
        self.certcache = CertCacheEmulator([self.platform], faults=self.faults)
        self.keyvault: kv.KeyVaultEmulator | None = None
        self.managedhsm: kv.KeyVaultEmulator | None = None
        self.keys: list[dict[str, Any]] = []
        self.ca_file: Path | None = None
        self.federated_token_file: Path | None = None
        self._started: list[HostedEmulator] = []

    def __repr__(self) -> str:
        return f"EmulatorStack({SIMULATED_BANNER}; product={self.config.product.value}, started={self.running})"

    @property
    def running(self) -> bool:
        return bool(self._started)

    @property
    def host_data(self) -> bytes:
        """HOST_DATA of simulated reports: sha256 of the configured security policy."""
        return self.config.host_data

    @property
    def measurement(self) -> bytes:
        return DEFAULT_MEASUREMENT

    def emulators(self) -> dict[str, HostedEmulator]:
        """The emulators by name (vaults only when started)."""
        found: dict[str, HostedEmulator] = {
            "entra": self.entra,
            "imds": self.imds,
            "maa": self.maa,
            "kds": self.kds,
            "certcache": self.certcache,
        }
        if self.keyvault is not None:
            found["keyvault"] = self.keyvault
        if self.managedhsm is not None:
            found["managedhsm"] = self.managedhsm
        return found

    # --- life cycle -------------------------------------------------------------------------------

    async def start(self) -> EmulatorStack:
        """Start every emulator, write the CA and federated token files, create the configured keys."""
        if self._started:
            raise RuntimeError("the stack is already running")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.ca.write_ca_file(self.state_dir)
        try:
            for emulator in (self.entra, self.imds, self.maa, self.kds, self.certcache):
                await emulator.start(ca=self.ca, port=self.config.ports.get(emulator.name, 0))
                self._started.append(emulator)
            self.federated_token_file = self.entra.write_federated_token_file(
                self.state_dir / "azure-identity-token", self.workload_identity.client_id, lifetime=24 * 3600
            )
            if self.config.vaults:
                await self._start_vaults()
            if self.config.keys:
                await self.seed(self.config.keys)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start_vaults(self) -> None:
        trust = kv.AccessTokenTrust.from_entra(self.entra)
        for flavour in (kv.Flavour.KEY_VAULT, kv.Flavour.MANAGED_HSM):
            config = kv.KeyVaultConfig(
                flavour=flavour,
                tenant_id=self.config.tenant_id,
                access_tokens=trust,
                trusted_attestation_issuers=(self.maa.url,),
                issuer_ca_file=self.ca_file,
            )
            vault = kv.KeyVaultEmulator(config, ca=self.ca, faults=self.faults)
            await vault.start(port=self.config.ports.get(flavour.value, 0))
            self._started.append(vault)
            if flavour is kv.Flavour.KEY_VAULT:
                self.keyvault = vault
            else:
                self.managedhsm = vault

    async def stop(self) -> None:
        """Stop every emulator (idempotent); removes the state directory if the stack created it."""
        started, self._started = self._started, []
        for emulator in reversed(started):
            with contextlib.suppress(Exception):
                await emulator.stop()
        if self._owns_state_dir and self.state_dir.exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)

    async def __aenter__(self) -> EmulatorStack:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- keys -------------------------------------------------------------------------------------

    def default_release_policy(self) -> dict[str, Any]:
        """The release policy ``"default"`` stands for: this stack's MAA, compliance status and HOST_DATA."""
        return default_release_policy(self.maa.url, self.host_data, self.config.compliance_status)

    async def seed(self, keys: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Create keys in the vault emulators (``{"name", "vault", "kty", "size", "crv", "release_policy",
        "exportable", "immutable"}``); returns ``{name, vault_url, kty, version}`` entries."""
        created = []
        for entry in keys:
            vault_name = entry.get("vault", "keyvault")
            vault = {"keyvault": self.keyvault, "managedhsm": self.managedhsm}.get(vault_name)
            if vault is None:
                raise ValueError(f"key {entry.get('name')!r}: vault {vault_name!r} is not running")
            policy = entry.get("release_policy", "default")
            if policy == "default":
                policy = self.default_release_policy()
            if policy is not None and not isinstance(policy, Mapping):
                raise ValueError(f"key {entry.get('name')!r}: release_policy must be an object, 'default' or null")
            kty = str(entry.get("kty", "RSA-HSM"))
            size = entry.get("size", entry.get("key_size"))
            seed = kv.SeedKey(
                name=str(entry["name"]),
                kty=kty,
                size=size if isinstance(size, int) else None,
                crv=entry.get("crv") if isinstance(entry.get("crv"), str) else None,
                release_policy=policy,
                exportable=bool(entry.get("exportable", policy is not None)),
                immutable=bool(entry.get("immutable", False)),
            )
            (version,) = await vault.seed([seed])
            record = {"name": seed.name, "vault_url": vault.url, "kty": kty, "version": version}
            self.keys.append(record)
            created.append(record)
        return created

    # --- simulated evidence -------------------------------------------------------------------------

    def sign_report(self, report_data: bytes, **fields: Any) -> bytes:
        """A report from the simulated chip with the stack's HOST_DATA and MEASUREMENT by default."""
        fields.setdefault("host_data", self.host_data)
        fields.setdefault("measurement", self.measurement)
        return self.platform.sign_report(report_data, **fields)

    def uvm_endorsement(self) -> bytes:
        """A simulated UVM endorsement (COSE_Sign1) of :attr:`measurement`, trusted by the stack's MAA."""
        return self.uvm_signer.sign(self.measurement)

    def write_security_context(self, directory: Path) -> Path:
        """Write an ACI security-context directory (``security-policy-base64``, ``host-amd-cert-base64``,
        ``reference-info-base64``; standard base64, azure-facts §5.4) and return it."""
        directory.mkdir(parents=True, exist_ok=True)
        files = {
            "security-policy-base64": self.config.security_policy,
            "host-amd-cert-base64": json.dumps(self.platform.thim_json()).encode(),
            "reference-info-base64": self.uvm_endorsement(),
        }
        for name, content in files.items():
            (directory / name).write_text(base64.b64encode(content).decode("ascii"), encoding="ascii")
        return directory

    # --- what clients need ---------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """Environment variables pointing azure-identity at the emulators (workload identity + IMDS)."""
        if not self.running or self.ca_file is None or self.federated_token_file is None:
            raise RuntimeError("the stack is not running")
        return {
            "AZURE_AUTHORITY_HOST": self.entra.url,
            "AZURE_TENANT_ID": self.config.tenant_id,
            "AZURE_CLIENT_ID": self.workload_identity.client_id,
            "AZURE_FEDERATED_TOKEN_FILE": str(self.federated_token_file),
            "AZURE_POD_IDENTITY_AUTHORITY_HOST": self.imds.url,
            "REQUESTS_CA_BUNDLE": str(self.ca_file),
            "SSL_CERT_FILE": str(self.ca_file),
        }

    def state(self) -> dict[str, Any]:
        """The ``skr dev`` state document (minus ``sidecar_url``, which the sidecar adds)."""
        if not self.running or self.ca_file is None:
            raise RuntimeError("the stack is not running")
        return {
            "simulated": SIMULATED_BANNER,
            "product": self.config.product.value,
            "maa_url": self.maa.url,
            "keyvault_url": self.keyvault.url if self.keyvault is not None else None,
            "managedhsm_url": self.managedhsm.url if self.managedhsm is not None else None,
            "entra_authority": self.entra.url,
            "imds_url": self.imds.url,
            "kds_url": self.kds.url,
            "certcache_url": self.certcache.url,
            "ca_file": str(self.ca_file),
            "tenant_id": self.config.tenant_id,
            "client_id": self.workload_identity.client_id,
            "managed_identity_client_id": self.config.managed_identity_client_id,
            "federated_token_file": str(self.federated_token_file),
            "host_data": self.host_data.hex(),
            "measurement": self.measurement.hex(),
            "compliance_status": self.config.compliance_status,
            "keys": [{"name": k["name"], "vault_url": k["vault_url"], "kty": k["kty"]} for k in self.keys],
        }

    def write_state(self, path: Path) -> Path:
        """Write :meth:`state` as JSON (mode 0600, atomically) and return ``path``."""
        write_atomically(path, json.dumps(self.state(), indent=2).encode() + b"\n")
        return path
