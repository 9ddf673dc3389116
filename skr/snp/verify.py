"""Verify an SEV-SNP attestation report against AMD's pinned certificate roots.

Trust comes only from the roots pinned here (:meth:`TrustedRoots.amd`, package data copied from AMD
KDS ``cert_chain`` answers) or from roots the caller hands in explicitly (the simulated platform in
``skr_dev`` hands in its own). Certificates that arrive with a report are hints: the signer
(VCEK or VLEK) is taken from them, but an ASK, ASVK or ARK among them must be byte-identical to the
pinned one or the report is refused.

The checks, in the order :func:`verify_attestation` performs them:

1. the report parses (size, version, reserved bytes), SIGNATURE_ALGO is 1 (ECDSA P-384 SHA-384),
   MASK_CHIP_KEY is clear (firmware leaves masked reports unsigned) and SIGNING_KEY names the VCEK
   or the VLEK;
2. the supplied certificates load (bounded in count and size) and one of them is a signer of the
   kind SIGNING_KEY names;
3. the product is determined, never assumed: from CPUID family/model (report v3+), from the
   signer's productName extension, and from the caller's hint; all that are present must agree.
   With none of them (a v2 report and a certificate without productName), the product whose
   pinned chain verifies the signer is used;
4. the signer is signed by the pinned ASK (VCEK) or ASVK (VLEK) of that product with RSASSA-PSS
   SHA-384 / MGF1-SHA-384 / salt 48 (the pinned ASK/ASVK and ARK were checked the same way when
   the roots were loaded, the ARK against itself);
5. supplied CA certificates carrying a pinned certificate's name equal the pinned certificate;
6. the signer, its CA and the ARK are valid at ``now``;
7. the report signature (ECDSA P-384 / SHA-384 over bytes 0x000..0x29F) verifies with the signer's
   key;
8. the signer's AMD extensions match the report: productName agrees with the product, the SPLs
   equal REPORTED_TCB decoded for the product, and a VCEK's hwID equals CHIP_ID (Turin: the first
   8 bytes, the rest zero). A CHIP_ID of all zeros means the host set MASK_CHIP_ID; the chip is
   then still bound through the VCEK key (derived from the chip's secret) and the result says
   ``chip_id_masked``. A VLEK must carry CSP_ID and no hwID.

Field policy (HOST_DATA, MEASUREMENT, minimum TCB, ...) is :mod:`skr.snp.validate`'s job.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from skr.errors import VerificationError
from skr.snp.certtable import CertKind, parse_certificate_table
from skr.snp.report import (
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    AttestationReport,
    Product,
    SigningKey,
    parse_report,
)
from skr.snp.vcek import (
    HWID_SIZE_TURIN,
    HWID_SIZE_V0,
    MAX_CERTIFICATE_SIZE,
    AmdCertExtensions,
    load_amd_der_certificate,
    load_amd_pem_certificates,
    parse_amd_extensions,
)

__all__ = [
    "AMD_PSS_PADDING",
    "MAX_CERTIFICATES",
    "MAX_CERTIFICATE_INPUT",
    "ProductRoots",
    "TrustedRoots",
    "VerifiedAttestation",
    "load_certificates",
    "verify_attestation",
    "verify_certificate_signature",
]

_logger = logging.getLogger(__name__)

MAX_CERTIFICATES: Final = 8  # a VCEK or VLEK, its ASK/ASVK, the ARK, with room to spare
MAX_CERTIFICATE_INPUT: Final = MAX_CERTIFICATES * MAX_CERTIFICATE_SIZE * 2  # PEM is ~4/3 of DER

AMD_PSS_PADDING: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
"""The one signature scheme AMD uses for ARK, ASK, ASVK, VCEK and VLEK certificates (pinned)."""

_SIGNER_COMMON_NAME: Final = {SigningKey.VCEK: "SEV-VCEK", SigningKey.VLEK: "SEV-VLEK"}
_ROOT_FILES: Final = {
    Product.MILAN: ("milan_ask_ark.pem", "milan_asvk_ark.pem"),
    Product.GENOA: ("genoa_ask_ark.pem", "genoa_asvk_ark.pem"),
    Product.TURIN: ("turin_ask_ark.pem", "turin_asvk_ark.pem"),
}


def _common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode("ascii", "replace")


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def verify_certificate_signature(certificate: x509.Certificate, issuer: x509.Certificate) -> None:
    """Check that ``issuer`` signed ``certificate`` the way AMD does, and nothing else.

    The scheme is pinned (RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48), not read from the
    certificate: a certificate that claims another algorithm is refused before any math.

    Raises:
        VerificationError: the issuer name differs, the algorithm is not RSASSA-PSS, the issuer key
            is not RSA, or the signature does not verify.
    """
    if certificate.issuer != issuer.subject:
        raise VerificationError(
            f"issuer {certificate.issuer.rfc4514_string()} is not {issuer.subject.rfc4514_string()}"
        )
    if certificate.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        raise VerificationError(
            f"signature algorithm {certificate.signature_algorithm_oid.dotted_string} is not RSASSA-PSS"
        )
    issuer_key = issuer.public_key()
    if not isinstance(issuer_key, rsa.RSAPublicKey):
        raise VerificationError("the issuing certificate's key is not RSA")
    try:
        issuer_key.verify(certificate.signature, certificate.tbs_certificate_bytes, AMD_PSS_PADDING, hashes.SHA384())
    except InvalidSignature:
        raise VerificationError("RSASSA-PSS SHA-384 signature does not verify") from None


@dataclass(frozen=True, slots=True)
class ProductRoots:
    """The pinned chain of one product: the ARK, the ASK (signs VCEKs), the ASVK (signs VLEKs)."""

    product: Product
    ark: x509.Certificate
    ask: x509.Certificate
    asvk: x509.Certificate | None

    def signing_ca(self, kind: SigningKey) -> x509.Certificate | None:
        """The CA that signs certificates of ``kind``."""
        return self.ask if kind is SigningKey.VCEK else self.asvk

    def certificates(self) -> tuple[x509.Certificate, ...]:
        return (self.ark, self.ask) + ((self.asvk,) if self.asvk is not None else ())


def _ca_name(kind: SigningKey) -> str:
    return "ASK" if kind is SigningKey.VCEK else "ASVK"


@dataclass(frozen=True, slots=True)
class TrustedRoots:
    """The trust anchors for report verification, per product.

    Build with :meth:`amd` (AMD's real roots) or :meth:`from_certificates`; both check every ARK
    self-signature and every ASK/ASVK signature before the object exists.
    """

    name: str
    by_product: tuple[ProductRoots, ...]

    @classmethod
    def amd(cls) -> TrustedRoots:
        """AMD's ARK, ASK and ASVK for Milan, Genoa and Turin, as shipped in ``skr/snp/roots``."""
        return _amd_roots()

    @classmethod
    def from_certificates(
        cls,
        chains: Mapping[Product, tuple[x509.Certificate, x509.Certificate, x509.Certificate | None]],
        *,
        name: str,
    ) -> TrustedRoots:
        """Roots from ``{product: (ark, ask, asvk_or_None)}``; checks the chain of each.

        Raises:
            VerificationError: an ARK is not self-signed or an ASK/ASVK is not signed by its ARK.
        """
        entries = []
        for product, (ark, ask, asvk) in chains.items():
            for label, certificate, issuer in (("ARK", ark, ark), ("ASK", ask, ark), ("ASVK", asvk, ark)):
                if certificate is None:
                    continue
                try:
                    verify_certificate_signature(certificate, issuer)
                except VerificationError as exc:
                    raise VerificationError(f"{name} {product.value} {label}: {exc.message}") from None
            entries.append(ProductRoots(product=product, ark=ark, ask=ask, asvk=asvk))
        if not entries:
            raise VerificationError(f"{name}: no roots given")
        return cls(name=name, by_product=tuple(entries))

    def products(self) -> tuple[Product, ...]:
        return tuple(entry.product for entry in self.by_product)

    def for_product(self, product: Product) -> ProductRoots:
        """The roots of ``product``.

        Raises:
            VerificationError: no roots are pinned for it.
        """
        for entry in self.by_product:
            if entry.product is product:
                return entry
        raise VerificationError(f"no {self.name} roots are pinned for {product.value}")


def _load_pinned_pair(filename: str) -> tuple[x509.Certificate, x509.Certificate]:
    pem = resources.files("skr.snp").joinpath("roots", filename).read_bytes()
    certificates = load_amd_pem_certificates(pem, max_count=2)
    if len(certificates) != 2:
        raise VerificationError(f"pinned root file {filename} must hold exactly two certificates")
    return certificates[0], certificates[1]


@functools.lru_cache(maxsize=1)
def _amd_roots() -> TrustedRoots:
    chains: dict[Product, tuple[x509.Certificate, x509.Certificate, x509.Certificate | None]] = {}
    for product, (ask_file, asvk_file) in _ROOT_FILES.items():
        ask, ark = _load_pinned_pair(ask_file)
        asvk, ark_again = _load_pinned_pair(asvk_file)
        if _der(ark) != _der(ark_again):
            raise VerificationError(f"pinned {product.value} ARK differs between {ask_file} and {asvk_file}")
        chains[product] = (ark, ask, asvk)
    return TrustedRoots.from_certificates(chains, name="AMD")


# --- certificate input ----------------------------------------------------------------------------


def _der_element_end(data: bytes, start: int) -> int:
    """End offset of the DER SEQUENCE starting at ``start`` (definite length, at most 3 length bytes)."""
    if start + 2 > len(data) or data[start] != 0x30:
        raise VerificationError(f"certificate DER does not start a SEQUENCE at byte {start}")
    first = data[start + 1]
    if first < 0x80:
        return start + 2 + first
    count = first & 0x7F
    if count == 0 or count > 3 or start + 2 + count > len(data):
        raise VerificationError(f"certificate DER has an unsupported length at byte {start}")
    length = int.from_bytes(data[start + 2 : start + 2 + count], "big")
    return start + 2 + count + length


def _split_der(data: bytes) -> list[bytes] | None:
    """Concatenated DER certificates, or ``None`` when ``data`` is not laid out as such."""
    pieces: list[bytes] = []
    position = 0
    while position < len(data):
        try:
            end = _der_element_end(data, position)
        except VerificationError:
            return None
        if end > len(data):
            return None
        if len(pieces) >= MAX_CERTIFICATES:
            raise VerificationError(f"more than {MAX_CERTIFICATES} certificates supplied")
        pieces.append(data[position:end])
        position = end
    return pieces


def load_certificates(data: bytes | str | Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """Load certificates given as PEM text, concatenated DER, a GHCB table, or x509 objects.

    The format is recognised by content: ``-----BEGIN`` is PEM, a leading SEQUENCE tag (0x30) that
    splits cleanly into DER elements is DER, anything else must be a GHCB certificate table
    (whose GUIDs never start with 0x30 for the kinds AMD defines). Table entries that are not
    certificates (the CRL, unknown GUIDs) are skipped.

    Raises:
        VerificationError: too many or too large certificates, or bytes in none of the formats.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    if not isinstance(data, bytes | bytearray | memoryview):
        certificates = tuple(data)
        if len(certificates) > MAX_CERTIFICATES:
            raise VerificationError(f"more than {MAX_CERTIFICATES} certificates supplied")
        for certificate in certificates:
            if not isinstance(certificate, x509.Certificate):
                raise VerificationError("certificates must be x509.Certificate objects")
        return certificates
    data = bytes(data)
    if len(data) > MAX_CERTIFICATE_INPUT:
        raise VerificationError(f"certificate input of {len(data)} bytes exceeds {MAX_CERTIFICATE_INPUT}")
    stripped = data.lstrip()
    if stripped.startswith(b"-----BEGIN"):
        return tuple(load_amd_pem_certificates(stripped, max_count=MAX_CERTIFICATES))
    if data[:1] == b"\x30":
        pieces = _split_der(data)
        if pieces is not None:
            return tuple(load_amd_der_certificate(piece) for piece in pieces)
    table = parse_certificate_table(data)
    blobs = [
        entry.data
        for entry in table.entries
        if entry.kind in (CertKind.VCEK, CertKind.VLEK, CertKind.ASK, CertKind.ARK)
    ]
    if len(blobs) > MAX_CERTIFICATES:
        raise VerificationError(f"more than {MAX_CERTIFICATES} certificates supplied")
    return tuple(load_amd_der_certificate(blob) for blob in blobs)


# --- verification ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedAttestation:
    """A report whose signature and AMD chain verified.

    ``chain`` is (signer, ASK or ASVK, ARK), the latter two being the pinned certificates.
    ``chip_id_masked`` is true when CHIP_ID was all zeros, so no hwID was compared: the host set
    MASK_CHIP_ID, or the report is VLEK-signed with a zero CHIP_ID (a VLEK has no hwID; the one real
    VLEK report has CHIP_ID zero; whether firmware always zeroes it for VLEKs is UNCONFIRMED).
    """

    report: AttestationReport
    product: Product
    signer: x509.Certificate
    signer_kind: SigningKey
    extensions: AmdCertExtensions
    chain: tuple[x509.Certificate, x509.Certificate, x509.Certificate]
    roots_name: str
    chip_id_masked: bool


def _select_signer(report: AttestationReport, certificates: Sequence[x509.Certificate]) -> x509.Certificate:
    kind = report.signing_key
    wanted = _SIGNER_COMMON_NAME[kind]
    candidates = [
        c for c in certificates if isinstance(c.public_key(), ec.EllipticCurvePublicKey) and _common_name(c) == wanted
    ]
    if not candidates:
        others = sorted(
            {_common_name(c) for c in certificates if isinstance(c.public_key(), ec.EllipticCurvePublicKey)}
        )
        found = f" (found: {', '.join(others)})" if others else ""
        raise VerificationError(
            f"report is signed by the {kind.name} (SIGNING_KEY={int(kind)}) "
            f"but no {kind.name} certificate was supplied{found}"
        )
    if len(candidates) == 1:
        return candidates[0]
    for candidate in candidates:
        if _report_signature_ok(report, candidate):
            return candidate
    raise VerificationError(
        f"report signature does not verify with any of the {len(candidates)} supplied {kind.name} certificates"
    )


def _report_signature_ok(report: AttestationReport, signer: x509.Certificate) -> bool:
    key = signer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        return False
    r, s = report.signature_integers()
    if r == 0 or s == 0:
        return False
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes(), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return False
    return True


def _determine_product(
    report: AttestationReport,
    extensions: AmdCertExtensions,
    hint: Product | None,
    signer: x509.Certificate,
    trusted: TrustedRoots,
) -> Product:
    kind_name = report.signing_key.name
    claims: list[tuple[str, Product]] = []
    if report.version >= 3:
        from_cpuid = report.product_from_cpuid()
        if from_cpuid is None:
            raise VerificationError(
                f"report CPUID family 0x{report.cpuid_fam_id:02x} model 0x{report.cpuid_mod_id:02x} "
                "is not a known product"
            )
        claims.append(("report CPUID", from_cpuid))
    if extensions.product_name is not None:
        from_name = extensions.product()
        if from_name is None:
            raise VerificationError(f"{kind_name} productName {extensions.product_name!r} is not a known product")
        claims.append((f"{kind_name} productName {extensions.product_name!r}", from_name))
    if hint is not None:
        claims.append(("the requested product", hint))
    if claims:
        source, product = claims[0]
        for other_source, other in claims[1:]:
            if other is not product:
                raise VerificationError(f"{source} says {product.value} but {other_source} says {other.value}")
        return product
    # No claim at all: the product whose pinned CA signed the signer (tried in a fixed order).
    for entry in trusted.by_product:
        ca = entry.signing_ca(report.signing_key)
        if ca is None:
            continue
        try:
            verify_certificate_signature(signer, ca)
        except VerificationError:
            continue
        return entry.product
    raise VerificationError(
        f"{kind_name} is not signed by any pinned {trusted.name} {_ca_name(report.signing_key)} and names no product"
    )


def _check_validity(label: str, certificate: x509.Certificate, now: datetime) -> None:
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    if now < not_before:
        raise VerificationError(
            f"{label} is not valid before {not_before.isoformat()} (verification time {now.isoformat()})"
        )
    if now > not_after:
        raise VerificationError(f"{label} expired at {not_after.isoformat()} (verification time {now.isoformat()})")


def _check_extensions(report: AttestationReport, product: Product, extensions: AmdCertExtensions) -> bool:
    """Step 8; returns whether CHIP_ID was masked."""
    kind = report.signing_key.name
    parts = report.reported_tcb.decode(product)
    expected = {
        "bootloader": ("blSPL", parts.bootloader),
        "tee": ("teeSPL", parts.tee),
        "snp": ("snpSPL", parts.snp),
        "microcode": ("ucodeSPL", parts.microcode),
    }
    if product is Product.TURIN:
        assert parts.fmc is not None
        expected["fmc"] = ("fmcSPL", parts.fmc)
    spls = extensions.spls()
    mismatches = []
    for component, (extension_name, reported) in expected.items():
        certified = spls[component]
        if certified is None:
            raise VerificationError(f"{kind} has no {extension_name} extension")
        if certified != reported:
            mismatches.append(f"REPORTED_TCB {component}={reported} does not match {kind} {extension_name}={certified}")
    if mismatches:
        raise VerificationError("; ".join(mismatches))

    if report.signing_key is SigningKey.VLEK:
        if extensions.hwid is not None:
            raise VerificationError("VLEK carries a hwID extension; a VLEK is not chip-specific")
        if extensions.csp_id is None:
            raise VerificationError("VLEK has no CSP_ID extension")
        return not any(report.chip_id)

    expected_size, expected_struct = (HWID_SIZE_TURIN, 1) if product is Product.TURIN else (HWID_SIZE_V0, 0)
    if extensions.struct_version is not None and extensions.struct_version != expected_struct:
        raise VerificationError(
            f"VCEK structVersion {extensions.struct_version} is not {expected_struct} as {product.value} uses"
        )
    if extensions.hwid is None:
        raise VerificationError("VCEK has no hwID extension")
    if len(extensions.hwid) != expected_size:
        raise VerificationError(f"VCEK hwID is {len(extensions.hwid)} bytes; {product.value} uses {expected_size}")
    if not any(report.chip_id):
        return True  # MASK_CHIP_ID: nothing to compare; the VCEK key itself is chip-derived
    if report.chip_id[:expected_size] != extensions.hwid or any(report.chip_id[expected_size:]):
        raise VerificationError(f"CHIP_ID {report.chip_id.hex()} does not match VCEK hwID {extensions.hwid.hex()}")
    return False


def verify_attestation(
    report: bytes | AttestationReport,
    certificates: bytes | str | Sequence[x509.Certificate],
    *,
    trusted: TrustedRoots,
    now: datetime,
    product: Product | None = None,
) -> VerifiedAttestation:
    """Verify ``report`` (signature, AMD chain to ``trusted``, certificate/report binding).

    ``certificates`` hold the VCEK or VLEK and optionally its ASK/ASVK and ARK (PEM, concatenated
    DER, a GHCB certificate table, or x509 objects). ``now`` must be timezone-aware. ``product``
    is an optional hint that must agree with what the report and certificate say.

    Raises:
        ReportFormatError: the report bytes are malformed.
        VerificationError: any check in the module docstring fails; the message names it.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")

    # (1) the report itself
    parsed = report if isinstance(report, AttestationReport) else parse_report(report)
    if parsed.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise VerificationError(
            f"SIGNATURE_ALGO is {parsed.signature_algo}; only 1 (ECDSA P-384 with SHA-384) is accepted"
        )
    if parsed.mask_chip_key:
        raise VerificationError("report has MASK_CHIP_KEY set: the firmware did not sign it")
    if parsed.signing_key not in _SIGNER_COMMON_NAME:
        raise VerificationError(f"report SIGNING_KEY is {parsed.signing_key.name}: no key signed it")
    try:
        return _verify_signed_report(parsed, certificates, trusted=trusted, now=now, product=product)
    except (ValueError, UnsupportedAlgorithm) as exc:
        # cryptography parses certificate fields lazily and raises these for malformed ones
        raise VerificationError(f"a supplied certificate is malformed: {exc}") from None


def _verify_signed_report(
    parsed: AttestationReport,
    certificates: bytes | str | Sequence[x509.Certificate],
    *,
    trusted: TrustedRoots,
    now: datetime,
    product: Product | None,
) -> VerifiedAttestation:
    """Steps 2..8 of :func:`verify_attestation`."""
    kind = parsed.signing_key
    kind_name = kind.name

    # (2) the supplied certificates and the signer among them
    supplied = load_certificates(certificates)
    if not supplied:
        raise VerificationError("no certificates supplied")
    signer = _select_signer(parsed, supplied)
    extensions = parse_amd_extensions(signer)

    # (3) the product
    detected = _determine_product(parsed, extensions, product, signer, trusted)
    roots = trusted.for_product(detected)
    ca = roots.signing_ca(kind)
    ca_label = _ca_name(kind)
    if ca is None:
        raise VerificationError(f"no {trusted.name} {detected.value} ASVK is pinned; cannot verify a VLEK")

    # (4) the signer chains to the pinned CA (which chains to the pinned ARK)
    try:
        verify_certificate_signature(signer, ca)
    except VerificationError as exc:
        raise VerificationError(
            f"{kind_name} is not signed by the pinned {detected.value} {ca_label} ({trusted.name}): {exc.message}"
        ) from None

    # (5) supplied CA certificates are only hints; one that names a pinned certificate must be it
    pinned_by_subject = {cert.subject: cert for cert in roots.certificates()}
    for certificate in supplied:
        pinned = pinned_by_subject.get(certificate.subject)
        if pinned is not None and _der(pinned) != _der(certificate):
            raise VerificationError(
                f"supplied certificate {_common_name(certificate)} does not match the pinned "
                f"{_common_name(pinned)} ({trusted.name})"
            )

    # (6) validity at `now`
    _check_validity(kind_name, signer, now)
    _check_validity(f"{detected.value} {ca_label}", ca, now)
    _check_validity(f"{detected.value} ARK", roots.ark, now)

    # (7) the report signature
    key = signer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationError(f"{kind_name} key is not ECDSA P-384")
    if not _report_signature_ok(parsed, signer):
        raise VerificationError(f"report signature does not verify with the {kind_name}")

    # (8) the certificate describes this report
    chip_id_masked = _check_extensions(parsed, detected, extensions)

    _logger.debug("verified %s report signed by the %s (%s roots)", detected.value, kind_name, trusted.name)
    return VerifiedAttestation(
        report=parsed,
        product=detected,
        signer=signer,
        signer_kind=kind,
        extensions=extensions,
        chain=(signer, ca, roots.ark),
        roots_name=trusted.name,
        chip_id_masked=chip_id_masked,
    )
