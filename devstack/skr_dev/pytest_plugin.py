"""pytest fixtures for the Azure emulators (registered as the ``skr_emulators`` pytest11 plugin).

Why: users test their own code against skr's emulators exactly like skr's own tests do: real
HTTPS on loopback, the real Azure SDKs, a simulated SEV-SNP chip. Install skr and the fixtures are
available (or add ``pytest_plugins = ["skr_dev.pytest_plugin"]`` to a root conftest.py).

Fixtures (async ones need pytest-asyncio; they are function-scoped so each test gets fresh state
and its own event loop; the CA and the simulated chip are session-scoped because they are slow
to generate and immutable):

* ``emulator_ca`` (session) :class:`~skr_dev.emulators.tls.TestCertificateAuthority`
* ``emulator_ca_file`` (session) ``Path`` of the CA's root certificate (for ``connection_verify``)
* ``emulator_platform`` (session) a Milan :class:`~skr_dev.simulated.amd.SimulatedAmd`
* ``entra_emulator`` a started :class:`~skr_dev.emulators.entra.EntraEmulator` with the workload identity
  ``DEFAULT_CLIENT_ID`` and a client secret app (``SECRET_CLIENT_ID`` / ``SECRET_CLIENT_SECRET``)
* ``workload_identity_env`` sets ``AZURE_AUTHORITY_HOST/TENANT_ID/CLIENT_ID/FEDERATED_TOKEN_FILE``
  for ``entra_emulator`` (monkeypatch; undone after the test) and returns them
* ``imds_emulator`` a started :class:`~skr_dev.emulators.imds.ImdsEmulator` (user-assigned identity
  ``DEFAULT_MANAGED_IDENTITY_CLIENT_ID``, THIM from ``emulator_platform``)
* ``maa_emulator`` a started :class:`~skr_dev.emulators.maa.MaaEmulator` trusting the simulated roots
* ``kds_emulator`` / ``certcache_emulator`` started KDS / AzCache emulators for ``emulator_platform``
* ``emulator_stack`` a started :class:`~skr_dev.emulators.stack.EmulatorStack` (every emulator,
  including Key Vault and Managed HSM, one demo key ``demo-rsa`` in each vault bound to the
  stack's default release policy)

Example::

    async def test_release(emulator_stack, monkeypatch):
        for name, value in emulator_stack.environment().items():
            monkeypatch.setenv(name, value)
        ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import pytest
import pytest_asyncio

from skr.snp.report import Product
from skr_dev.emulators.entra import DEFAULT_CLIENT_ID, EntraEmulator
from skr_dev.emulators.imds import DEFAULT_MANAGED_IDENTITY_CLIENT_ID, ImdsEmulator
from skr_dev.emulators.kds import CertCacheEmulator, KdsEmulator
from skr_dev.emulators.maa import MaaEmulator
from skr_dev.emulators.stack import EmulatorStack
from skr_dev.emulators.tls import TestCertificateAuthority
from skr_dev.simulated.amd import SimulatedAmd

__all__ = [
    "SECRET_CLIENT_ID",
    "SECRET_CLIENT_SECRET",
    "certcache_emulator",
    "emulator_ca",
    "emulator_ca_file",
    "emulator_platform",
    "emulator_stack",
    "entra_emulator",
    "imds_emulator",
    "kds_emulator",
    "maa_emulator",
    "workload_identity_env",
]

SECRET_CLIENT_ID: Final = "5ec2e700-0000-4000-8000-00000000c5ec"
SECRET_CLIENT_SECRET: Final = "emulator-client-secret-NOT-A-SECRET"


@pytest.fixture(scope="session")
def emulator_ca() -> TestCertificateAuthority:
    """One test CA for the whole session (RSA key generation is slow)."""
    return TestCertificateAuthority.create("pytest skr emulators")


@pytest.fixture(scope="session")
def emulator_ca_file(emulator_ca: TestCertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA's root certificate as a PEM file."""
    return emulator_ca.write_ca_file(tmp_path_factory.mktemp("emulator-ca"))


@pytest.fixture(scope="session")
def emulator_platform() -> SimulatedAmd:
    """A simulated Milan chip (VCEK-signed reports)."""
    return SimulatedAmd.create(Product.MILAN)


@pytest_asyncio.fixture
async def entra_emulator(emulator_ca: TestCertificateAuthority) -> AsyncIterator[EntraEmulator]:
    """A running Entra ID emulator (workload identity DEFAULT_CLIENT_ID, secret client SECRET_CLIENT_ID)."""
    entra = EntraEmulator()
    entra.add_workload_identity(DEFAULT_CLIENT_ID)
    entra.add_client_secret(SECRET_CLIENT_ID, SECRET_CLIENT_SECRET)
    async with entra.running(ca=emulator_ca):
        yield entra


@pytest.fixture
def workload_identity_env(
    entra_emulator: EntraEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Point azure-identity's workload identity at ``entra_emulator`` (env vars, undone afterwards)."""
    token_file = entra_emulator.write_federated_token_file(tmp_path / "azure-identity-token", DEFAULT_CLIENT_ID)
    env = {
        "AZURE_AUTHORITY_HOST": entra_emulator.url,
        "AZURE_TENANT_ID": entra_emulator.tenant_id,
        "AZURE_CLIENT_ID": DEFAULT_CLIENT_ID,
        "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest_asyncio.fixture
async def imds_emulator(entra_emulator: EntraEmulator, emulator_platform: SimulatedAmd) -> AsyncIterator[ImdsEmulator]:
    """A running IMDS (plain HTTP) with one user-assigned identity and THIM collateral."""
    imds = ImdsEmulator(entra_emulator, identities=[DEFAULT_MANAGED_IDENTITY_CLIENT_ID], platform=emulator_platform)
    async with imds.running():
        yield imds


@pytest_asyncio.fixture
async def maa_emulator(emulator_ca: TestCertificateAuthority) -> AsyncIterator[MaaEmulator]:
    """A running MAA emulator trusting the simulated AMD roots of every product."""
    maa = MaaEmulator()
    async with maa.running(ca=emulator_ca):
        yield maa


@pytest_asyncio.fixture
async def kds_emulator(
    emulator_ca: TestCertificateAuthority, emulator_platform: SimulatedAmd
) -> AsyncIterator[KdsEmulator]:
    """A running AMD KDS emulator serving ``emulator_platform``."""
    kds = KdsEmulator([emulator_platform])
    async with kds.running(ca=emulator_ca):
        yield kds


@pytest_asyncio.fixture
async def certcache_emulator(
    emulator_ca: TestCertificateAuthority, emulator_platform: SimulatedAmd
) -> AsyncIterator[CertCacheEmulator]:
    """A running Azure certificate cache emulator serving ``emulator_platform``."""
    cache = CertCacheEmulator([emulator_platform])
    async with cache.running(ca=emulator_ca):
        yield cache


@pytest_asyncio.fixture
async def emulator_stack(
    emulator_ca: TestCertificateAuthority, emulator_platform: SimulatedAmd, tmp_path: Path
) -> AsyncIterator[EmulatorStack]:
    """Every emulator running, with a ``demo-rsa`` key in the Key Vault and in the Managed HSM."""
    stack = EmulatorStack(
        {
            "keys": [
                {"name": "demo-rsa", "vault": "keyvault", "kty": "RSA-HSM"},
                {"name": "demo-rsa", "vault": "managedhsm", "kty": "RSA-HSM"},
            ]
        },
        state_dir=tmp_path / "emulator-stack",
        ca=emulator_ca,
        platform=emulator_platform,
    )
    async with stack:
        yield stack
