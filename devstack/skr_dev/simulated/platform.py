"""A SIMULATED report provider: the :class:`skr.snp.device.ReportProvider` of `skr dev` and tests.

It signs reports with a :class:`skr_dev.simulated.amd.SimulatedAmd` chip, so the whole release path runs
without SEV-SNP hardware. Every evidence it returns is labelled ``simulated``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from skr.snp.device import RawEvidence, validate_report_request
from skr_dev import SIMULATED_BANNER
from skr_dev.simulated.amd import SimulatedAmd

__all__ = ["SimulatedPlatform"]


@dataclass
class SimulatedPlatform:
    """Reports with chosen launch values; ``include_certificates=False`` mimics hosts without a table."""

    amd: SimulatedAmd
    host_data: bytes = bytes(32)
    measurement: bytes | None = None
    policy: int = 0x30000
    version: int = 3
    include_certificates: bool = True
    name: str = "simulated"
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def get_report(self, report_data: bytes, *, vmpl: int = 0, with_certificates: bool = True) -> RawEvidence:
        data = validate_report_request(report_data, vmpl)
        with self._lock:
            self.calls += 1
        report = self.amd.sign_report(
            data,
            version=self.version,
            host_data=self.host_data,
            measurement=self.measurement,
            policy=self.policy,
            vmpl=vmpl,
        )
        table = self.amd.certificate_table() if with_certificates and self.include_certificates else b""
        return RawEvidence(report=report, certificates=table, provider=self.name)

    def __repr__(self) -> str:
        return f"SimulatedPlatform({SIMULATED_BANNER}; {self.amd.product.value})"
