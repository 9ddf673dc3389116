"""SIMULATED SEV-SNP PLATFORM — NOT FOR PRODUCTION.

A fake AMD key hierarchy (ARK -> ASK -> VCEK/VLEK) that signs attestation reports exactly the way
AMD's firmware does, so developers and tests can exercise skr without SEV-SNP hardware. Nothing in
production code imports this package (ruff TID251 enforces it); it is reachable only through the
explicit developer command ``skr dev`` and through tests, and every output it produces says that
the platform is simulated.
"""

SIMULATED_BANNER = "SIMULATED SEV-SNP PLATFORM - NOT A REAL TEE - DO NOT USE FOR REAL SECRETS"
