"""Collateral: the VCEK/VLEK certificate that signed a report, and the ACI security context.

Sources are tried in a fixed order (design.md §5.3), each yielding *candidate* certificates:

1. the extended report's certificate table / configfs ``auxblob``;
2. the Confidential ACI security-context directory (``host-amd-cert-base64``) or the legacy
   ``UVM_HOST_AMD_CERTIFICATE`` variable;
3. Azure THIM through IMDS (``/metadata/THIM/amd/certification``);
4. the Azure certificate cache (``acccache``), by CHIP_ID and REPORTED_TCB;
5. AMD KDS, by hwID and the report's TCB, for the product the report names.

A candidate is accepted only if :func:`skr.snp.verify.verify_attestation` succeeds with it: the
signature verifies, the chain ends in the pinned AMD roots, hwID matches CHIP_ID and the VCEK's SPLs
match REPORTED_TCB. A VCEK for another TCB (THIM lagging behind a firmware update) is therefore
skipped and the next source asked. The product is taken from the report (v3+) or from the
certificate that verifies, never assumed. The chain sent to MAA is built from the verified signer
and the *pinned* ASK/ASVK and ARK.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization

from skr.core.upstream import Upstream
from skr.errors import CollateralUnavailableError, SkrError, UpstreamError, VerificationError
from skr.primitives.encoding import b64_decode_lenient_padding
from skr.snp.certtable import CertKind, parse_certificate_table
from skr.snp.report import AttestationReport, Product, SigningKey, parse_report
from skr.snp.verify import TrustedRoots, VerifiedAttestation, verify_attestation

__all__ = [
    "Collateral",
    "CollateralResolver",
    "SecurityContext",
    "ThimCertificates",
    "parse_thim_json",
]

_logger = logging.getLogger(__name__)

MAX_CONTEXT_FILE: Final = 1024 * 1024
THIM_PATH: Final = "/metadata/THIM/amd/certification"
_Fetch = Callable[[], Awaitable[bytes | None]]
AZCACHE_QUERY: Final = "api-version=2020-10-15-preview&clientId=ConfidentialACI"


@dataclass(frozen=True, slots=True)
class ThimCertificates:
    """The THIM JSON (IMDS or ACI ``host-amd-cert-base64``): VCEK, its ASK+ARK, and its TCB."""

    vcek_pem: bytes
    chain_pem: bytes
    tcbm: str


def parse_thim_json(data: bytes) -> ThimCertificates:
    """Parse ``{"vcekCert","tcbm","certificateChain","cacheControl"}`` (field case tolerated)."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise VerificationError("THIM certificate JSON is not valid JSON") from None
    if not isinstance(document, dict):
        raise VerificationError("THIM certificate JSON is not an object")
    fields = {key.lower(): value for key, value in document.items()}
    vcek, chain, tcbm = fields.get("vcekcert"), fields.get("certificatechain", ""), fields.get("tcbm", "")
    if not isinstance(vcek, str) or "BEGIN CERTIFICATE" not in vcek:
        raise VerificationError("THIM certificate JSON has no vcekCert PEM")
    if not isinstance(chain, str) or not isinstance(tcbm, str):
        raise VerificationError("THIM certificate JSON has malformed certificateChain or tcbm")
    return ThimCertificates(vcek.encode(), chain.encode(), tcbm)


def _b64_file(path: Path) -> bytes | None:
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_CONTEXT_FILE:
        raise VerificationError(f"{path} is larger than {MAX_CONTEXT_FILE} bytes")
    try:
        text = path.read_text(encoding="ascii", errors="strict")
    except UnicodeDecodeError:
        raise VerificationError(f"{path} is not base64 text") from None
    return _b64(text, str(path))


def _b64(text: str, what: str) -> bytes:
    try:
        return b64_decode_lenient_padding("".join(text.split()))
    except ValueError:
        raise VerificationError(f"{what} is not standard base64") from None


@dataclass(frozen=True, slots=True)
class SecurityContext:
    """What the Confidential ACI / AKS host hands the container about its own launch.

    ``policy`` is the decoded security policy (HOST_DATA = sha256 of it), ``host_amd_cert`` the
    THIM JSON the host fetched, ``reference_info`` the UVM endorsement (COSE_Sign1).
    """

    source: str
    policy: bytes | None = None
    host_amd_cert: ThimCertificates | None = None
    reference_info: bytes | None = None

    @classmethod
    def load(cls, environ: Mapping[str, str], *, root: Path = Path("/")) -> SecurityContext | None:
        """Read ``$UVM_SECURITY_CONTEXT_DIR`` (or ``/security-context-*``), else the legacy variables."""
        directory = environ.get("UVM_SECURITY_CONTEXT_DIR")
        candidates = [Path(directory)] if directory else sorted(root.glob("security-context-*"))
        for path in candidates:
            if path.is_dir():
                return cls._from_dir(path)
        legacy = {
            name: environ.get(name)
            for name in ("UVM_SECURITY_POLICY", "UVM_HOST_AMD_CERTIFICATE", "UVM_REFERENCE_INFO")
        }
        if any(legacy.values()):
            policy, cert, reference = (_b64(value, name) if value else None for name, value in legacy.items())
            return cls(
                source="UVM_* environment variables",
                policy=policy,
                host_amd_cert=parse_thim_json(cert) if cert else None,
                reference_info=reference,
            )
        return None

    @classmethod
    def _from_dir(cls, path: Path) -> SecurityContext:
        cert = _b64_file(path / "host-amd-cert-base64")
        return cls(
            source=str(path),
            policy=_b64_file(path / "security-policy-base64"),
            host_amd_cert=parse_thim_json(cert) if cert else None,
            reference_info=_b64_file(path / "reference-info-base64"),
        )


@dataclass(frozen=True, slots=True)
class Collateral:
    """A verified report and the chain to send with it (signer, pinned ASK/ASVK, pinned ARK, PEM)."""

    verified: VerifiedAttestation
    chain_pem: bytes
    source: str

    @property
    def product(self) -> Product:
        return self.verified.product


def _chain_pem(verified: VerifiedAttestation) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in verified.chain)


class CollateralResolver:
    """Finds, verifies and caches the signing certificate of the platform's reports."""

    def __init__(
        self,
        *,
        trusted: TrustedRoots,
        clock: Callable[[], datetime],
        security_context: SecurityContext | None = None,
        thim: Upstream | None = None,
        thim_url: str | None = None,
        azcache: Upstream | None = None,
        azcache_url: str | None = None,
        kds: Upstream | None = None,
        kds_url: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self._trusted = trusted
        self._clock = clock
        self._context = security_context
        self._thim, self._thim_url = thim, thim_url
        self._azcache, self._azcache_url = azcache, azcache_url
        self._kds, self._kds_url = kds, kds_url
        self._cache_dir = cache_dir
        self._memory: dict[tuple[bytes, int, SigningKey], bytes] = {}
        self._lock = asyncio.Lock()

    @property
    def sources(self) -> list[str]:
        """The configured sources, in the order they are asked (for ``skr doctor`` and logs)."""
        names = ["certificate table"]
        if self._context and self._context.host_amd_cert:
            names.append(f"security context ({self._context.source})")
        names += [
            name
            for name, enabled in (
                ("THIM", self._thim is not None),
                ("Azure certificate cache", self._azcache is not None),
                ("AMD KDS", self._kds is not None),
            )
            if enabled
        ]
        return names

    async def resolve(self, report_bytes: bytes, certificate_table: bytes = b"") -> Collateral:
        """Return verified collateral for ``report_bytes`` or raise CollateralUnavailableError.

        Raises:
            ReportFormatError: the report itself is malformed (no source can help).
            CollateralUnavailableError: no source produced a certificate that verifies; the message
                lists what each source said.
        """
        report = parse_report(report_bytes)
        key = (report.chip_id, report.reported_tcb.raw, report.signing_key)
        problems: list[str] = []
        cached = self._memory.get(key) or self._read_disk(key)
        if cached is not None:
            collateral = self._try(report, cached, "cache", problems)
            if collateral is not None:
                return collateral
        async with self._lock:
            for name, fetch in self._fetchers(report, certificate_table):
                try:
                    candidate = await fetch()
                except (UpstreamError, VerificationError) as exc:
                    problems.append(f"{name}: {exc.message}")
                    continue
                if candidate is None:
                    continue
                collateral = self._try(report, candidate, name, problems)
                if collateral is not None:
                    self._memory[key] = collateral.chain_pem
                    self._write_disk(key, collateral.chain_pem)
                    return collateral
        detail = "; ".join(problems) if problems else "no source is configured or available"
        raise CollateralUnavailableError(f"no VCEK/VLEK certificate verifies this report ({detail})")

    def _try(self, report: AttestationReport, certificates: bytes, name: str, problems: list[str]) -> Collateral | None:
        try:
            verified = verify_attestation(report, certificates, trusted=self._trusted, now=self._clock())
        except SkrError as exc:
            _logger.info("collateral from %s rejected: %s", name, exc.message)
            problems.append(f"{name}: {exc.message}")
            return None
        _logger.debug("collateral from %s verifies (%s)", name, verified.product.value)
        return Collateral(verified, _chain_pem(verified), name)

    def _fetchers(self, report: AttestationReport, table: bytes) -> list[tuple[str, _Fetch]]:
        fetchers: list[tuple[str, _Fetch]] = [("certificate table", lambda: _from_table(table))]
        context = self._context
        if context is not None and context.host_amd_cert is not None:
            thim = context.host_amd_cert
            fetchers.append((f"security context ({context.source})", lambda: _done(thim.vcek_pem + thim.chain_pem)))
        if report.signing_key is SigningKey.VCEK:
            if self._thim is not None and self._thim_url:
                fetchers.append(("THIM", self._fetch_thim))
            if self._azcache is not None and self._azcache_url:
                fetchers.append(("Azure certificate cache", lambda: self._fetch_azcache(report)))
            if self._kds is not None and self._kds_url:
                fetchers.append(("AMD KDS", lambda: self._fetch_kds(report)))
        return fetchers

    async def _fetch_thim(self) -> bytes | None:
        assert self._thim is not None
        response = await self._thim.request("GET", f"{self._thim_url}{THIM_PATH}", headers={"Metadata": "true"})
        if response.status != 200:
            raise UpstreamError(f"THIM answered HTTP {response.status}", service="thim", status=response.status)
        thim = parse_thim_json(response.body)
        return thim.vcek_pem + thim.chain_pem

    async def _fetch_azcache(self, report: AttestationReport) -> bytes | None:
        assert self._azcache is not None
        path = f"/SevSnpVM/certificates/{report.chip_id.hex()}/{report.reported_tcb.raw:x}"
        url = f"{self._azcache_url}{path}?{AZCACHE_QUERY}"
        response = await self._azcache.request("GET", url)
        if response.status != 200:
            raise UpstreamError(f"answered HTTP {response.status}", service="azcache", status=response.status)
        return response.body

    async def _fetch_kds(self, report: AttestationReport) -> bytes | None:
        assert self._kds is not None
        detected = report.product_from_cpuid()
        if detected is not None:
            products = [detected]
        elif not any(report.chip_id[8:]):
            products = [Product.TURIN]
        else:  # v2 reports predate Turin; ask for each candidate and let verification decide.
            products = [Product.MILAN, Product.GENOA]
        problems = []
        for product in products:
            response = await self._kds.request("GET", self._kds_vcek_url(report, product))
            if response.status == 200:
                return response.body
            problems.append(f"{product.value}: HTTP {response.status}")
        raise UpstreamError(f"no VCEK ({', '.join(problems)})", service="kds")

    def _kds_vcek_url(self, report: AttestationReport, product: Product) -> str:
        tcb = report.reported_tcb.decode(product)
        hwid = report.chip_id[:8] if product is Product.TURIN else report.chip_id
        query = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
        if tcb.fmc is not None:
            query += f"&fmcSPL={tcb.fmc}"
        return f"{self._kds_url}/vcek/v1/{product.value}/{hwid.hex()}?{query}"

    # --- optional disk cache ---------------------------------------------------------------------

    def _disk_path(self, key: tuple[bytes, int, SigningKey]) -> Path | None:
        if self._cache_dir is None:
            return None
        chip, tcb, kind = key
        return self._cache_dir / f"{kind.name.lower()}-{chip.hex()[:32]}-{tcb:016x}.pem"

    def _read_disk(self, key: tuple[bytes, int, SigningKey]) -> bytes | None:
        path = self._disk_path(key)
        if path is None or not path.is_file() or path.stat().st_size > MAX_CONTEXT_FILE:
            return None
        return path.read_bytes()

    def _write_disk(self, key: tuple[bytes, int, SigningKey], pem: bytes) -> None:
        path = self._disk_path(key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
                handle.write(pem)
            os.replace(handle.name, path)
        except OSError as exc:
            _logger.warning("could not write the certificate cache %s: %s", path, exc.strerror)


async def _done(value: bytes | None) -> bytes | None:
    return value


async def _from_table(table: bytes) -> bytes | None:
    if not table:
        return None
    parsed = parse_certificate_table(table)
    blobs = [parsed.get(kind) for kind in (CertKind.VCEK, CertKind.VLEK, CertKind.ASK, CertKind.ARK)]
    ders = [blob for blob in blobs if blob]
    if not ders:
        return None
    # verify_attestation accepts concatenated DER; keep only certificates, the CRL is not needed here.
    return b"".join(ders)
