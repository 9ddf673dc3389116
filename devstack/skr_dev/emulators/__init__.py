"""LOCAL EMULATORS OF AZURE SERVICES — FOR DEVELOPMENT AND TESTS ONLY.

Faithful stand-ins for Microsoft Azure Attestation, Key Vault / Managed HSM, Entra ID, IMDS/THIM and
the AMD certificate services, built from the documented wire formats so that the real Azure SDKs
talk to them unchanged. They listen on loopback only. No production module imports this package.
"""
