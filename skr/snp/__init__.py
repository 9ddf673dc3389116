"""The SEV-SNP platform: report ABI, certificate table, verification, validation and device access.

* :mod:`skr.snp.report`    parse / serialise ATTESTATION_REPORT (pure)
* :mod:`skr.snp.certtable` the GHCB certificate table of extended reports (pure)
* :mod:`skr.snp.verify`    signature and AMD chain verification against pinned roots (pure)
* :mod:`skr.snp.validate`  field policy over a verified report (pure)
* :mod:`skr.snp.device`    the ``/dev/sev-guest`` ioctl binding and configfs-tsm (I/O)
* :mod:`skr.snp.provider`  picks the platform interface present on this machine (I/O)
"""

from skr.snp.report import AttestationReport, Product, SigningKey, parse_report

__all__ = ["AttestationReport", "Product", "SigningKey", "parse_report"]
