"""skr: guest-side SEV-SNP attestation and secure key release for confidential containers.

Public modules:

* :mod:`skr.errors`      the exception hierarchy and its HTTP / exit-code mapping
* :mod:`skr.snp`         the SEV-SNP platform: report ABI, certificate table, verification, device
* :mod:`skr.primitives.sensitive`   the redacting wrapper for secrets

``skr_dev`` (simulated AMD platform) and ``skr_dev.emulators`` (local stand-ins for Azure) are for
developers and tests only; no production module imports them.
"""

__version__ = "0.1.0"
