"""The api-versions the real data planes publish, in one table each, with where they come from.

An emulator that refuses a version the real service accepts breaks real clients (the Azure CLI sends
``7.6-preview.2``, newer azure-keyvault-keys ``2026-01-01-preview``), and one that accepts any string
hides a client bug. So each emulator accepts exactly the published set and refuses the rest with the
service's error shape.

Source: the folders of Azure/azure-rest-api-specs (``specification/keyvault/data-plane/Microsoft.KeyVault/
{stable,preview}/<v>/keys.json`` — ``keyvault.json`` before 7.1 — and ``specification/attestation/
data-plane/{Microsoft.Attestation,Attestation}/{stable,preview}/<v>/attestation.json``), as listed in
shared/specs/{keyvault,attestation}/api-versions.json; tests/dev/emulators/test_api_versions.py checks
these tables against those files so the two cannot drift.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "KEYVAULT_API_VERSIONS",
    "KEYVAULT_RELEASE_API_VERSIONS",
    "MAA_SEVSNP_API_VERSIONS",
]

_KEYVAULT_STABLE: Final = (
    "2015-06-01", "2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-06-01", "2025-07-01",
)  # fmt: skip
_KEYVAULT_PREVIEW: Final = (
    "7.0", "7.1", "7.2-preview", "7.3-preview", "7.4-preview.1", "7.5-preview.1", "7.6-preview.1", "7.6-preview.2",
    "2025-06-01-preview", "2025-07-01-preview", "2026-01-01-preview",
)  # fmt: skip

KEYVAULT_API_VERSIONS: Final = frozenset(_KEYVAULT_STABLE + _KEYVAULT_PREVIEW)
"""Every Key Vault data-plane version published for the keys operations (Key Vault and Managed HSM alike)."""

KEYVAULT_RELEASE_API_VERSIONS: Final = frozenset(
    {"7.3-preview", "7.3", "7.4", "7.5", "7.6", "2025-06-01", "2025-07-01", "7.4-preview.1", "7.5-preview.1",
     "7.6-preview.1", "7.6-preview.2", "2025-06-01-preview", "2025-07-01-preview", "2026-01-01-preview"}
)  # fmt: skip
"""The versions whose spec has the ``release`` operation (first published in 7.3-preview).

UNCONFIRMED: what the real service answers to a release under an older version that it otherwise
accepts; the emulator refuses it with the same BadParameter shape as an unknown version.
"""

MAA_SEVSNP_API_VERSIONS: Final = frozenset(
    {"2020-10-01", "2022-08-01", "2022-09-01", "2022-09-01-preview", "2025-06-01", "2026-03-11-preview"}
)
"""The attestation api-versions whose spec defines AttestSevSnpVm (``POST /attest/SevSnpVm``)."""
