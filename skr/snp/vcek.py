"""AMD VCEK / VLEK certificates: loading them and reading AMD's X.509 extensions.

AMD puts the facts a report must be checked against into private extensions under
1.3.6.1.4.1.3704.1 (AMD KDS spec): the product name, the security patch levels (SPLs) the key was
derived for, the chip's hardware ID (VCEK) or the cloud provider's ID (VLEK). Their values are DER
(INTEGER, IA5String) except ``hwID``, which AMD ships as raw bytes; some certificates (e.g. the
``negative_forged_vcek_new.der`` vector) wrap it in a DER OCTET STRING, so both encodings are read.

The DER read here is deliberately tiny and strict: one definite-length TLV per extension value,
minimal INTEGER encodings, no trailing bytes. SPL values of 128 and above are encoded with a
leading zero byte (``02 02 00 d9``) and are decoded properly (go-sev-guest reads ``Value[2]`` and
gets 0 for them).

AMD VCEKs carry serial number 0. ``cryptography`` (50.x) warns about that on load and on reading
``serial_number`` (``CryptographyDeprecationWarning``: "Parsed a serial number which wasn't
positive ..."). :func:`serial_zero_warnings_suppressed` silences exactly that warning, around
exactly the calls that touch AMD certificates, instead of a process-wide filter that would hide the
same warning for every other certificate the process reads.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning

from skr.errors import VerificationError
from skr.snp.report import Product

__all__ = [
    "HWID_SIZE_TURIN",
    "HWID_SIZE_V0",
    "MAX_CERTIFICATE_SIZE",
    "AmdCertExtensions",
    "load_amd_der_certificate",
    "load_amd_pem_certificates",
    "parse_amd_extensions",
    "product_from_name",
    "serial_zero_warnings_suppressed",
]

_AMD_ARC: Final = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION: Final = x509.ObjectIdentifier(f"{_AMD_ARC}.1")
OID_PRODUCT_NAME: Final = x509.ObjectIdentifier(f"{_AMD_ARC}.2")
OID_BL_SPL: Final = x509.ObjectIdentifier(f"{_AMD_ARC}.3.1")
OID_TEE_SPL: Final = x509.ObjectIdentifier(f"{_AMD_ARC}.3.2")
OID_SNP_SPL: Final = x509.ObjectIdentifier(f"{_AMD_ARC}.3.3")
OID_UCODE_SPL: Final = x509.ObjectIdentifier(f"{_AMD_ARC}.3.8")
OID_FMC_SPL: Final = x509.ObjectIdentifier(f"{_AMD_ARC}.3.9")
OID_HWID: Final = x509.ObjectIdentifier(f"{_AMD_ARC}.4")
OID_CSP_ID: Final = x509.ObjectIdentifier(f"{_AMD_ARC}.5")

HWID_SIZE_V0: Final = 64  # struct version 0 (Milan, Genoa): the whole CHIP_ID
HWID_SIZE_TURIN: Final = 8  # struct version 1 (Turin): CHIP_ID[0:8]
MAX_CERTIFICATE_SIZE: Final = 16 * 1024  # real AMD certificates are 1.3-1.9 KiB
_MAX_EXTENSION_VALUE: Final = 1024

_SERIAL_WARNING: Final = r"Parsed a serial number which wasn't positive"
_TAG_INTEGER: Final = 0x02
_TAG_OCTET_STRING: Final = 0x04
_STRING_TAGS: Final = frozenset({0x0C, 0x13, 0x16})  # UTF8String, PrintableString, IA5String
_PRINTABLE_ASCII: Final = re.compile(r"[\x20-\x7e]*")


@contextlib.contextmanager
def serial_zero_warnings_suppressed() -> Iterator[None]:
    """Silence cryptography's "serial number wasn't positive" warning, and nothing else.

    AMD issues every VCEK and VLEK with serial number 0 (RFC 5280 wants a positive serial); the
    warning says nothing about the certificate's trustworthiness, which comes from the pinned AMD
    chain. Some CA bundles also carry a root with serial 0, where trust comes from the operator's
    store. Use this only around loading (or reading the serial of) such certificates.

    ``warnings.catch_warnings`` swaps process-global filter state (Python 3.11); the window is one
    certificate load, and another thread's warning raised inside it would see the same narrow
    filter (only this exact message is ignored), so nothing else can be hidden.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SERIAL_WARNING, category=CryptographyDeprecationWarning)
        yield


def load_amd_der_certificate(der: bytes) -> x509.Certificate:
    """Load one DER certificate (size-bounded), without the serial-0 warning.

    Raises:
        VerificationError: oversized or unparsable.
    """
    if len(der) > MAX_CERTIFICATE_SIZE:
        raise VerificationError(f"certificate of {len(der)} bytes exceeds {MAX_CERTIFICATE_SIZE}")
    try:
        with serial_zero_warnings_suppressed():
            return x509.load_der_x509_certificate(bytes(der))
    except (ValueError, x509.InvalidVersion) as exc:  # a corrupt version field is not a ValueError
        raise VerificationError(f"certificate is not valid DER X.509: {exc}") from None


def load_amd_pem_certificates(pem: bytes, *, max_count: int) -> list[x509.Certificate]:
    """Load every certificate of a PEM bundle (count-bounded), without the serial-0 warning.

    Raises:
        VerificationError: no certificate, too many, or an unparsable one.
    """
    if pem.count(b"-----BEGIN") > max_count:
        raise VerificationError(f"more than {max_count} certificates supplied")
    try:
        with serial_zero_warnings_suppressed():
            certificates = x509.load_pem_x509_certificates(bytes(pem))
    except (ValueError, x509.InvalidVersion) as exc:
        raise VerificationError(f"certificate PEM is not valid: {exc}") from None
    for certificate in certificates:
        if len(certificate.public_bytes(serialization.Encoding.DER)) > MAX_CERTIFICATE_SIZE:
            raise VerificationError(f"a certificate exceeds {MAX_CERTIFICATE_SIZE} bytes")
    return certificates


@dataclass(frozen=True, slots=True)
class AmdCertExtensions:
    """AMD's extensions of a VCEK or VLEK; ``None`` where the certificate lacks one.

    ``hwid`` is 64 bytes (struct version 0: Milan, Genoa) or 8 bytes (struct version 1: Turin),
    whichever encoding the certificate used. VLEKs have ``csp_id`` and no ``hwid``.
    """

    struct_version: int | None
    product_name: str | None
    bootloader: int | None
    tee: int | None
    snp: int | None
    microcode: int | None
    fmc: int | None
    hwid: bytes | None
    csp_id: str | None

    def spls(self) -> dict[str, int | None]:
        """The SPLs under the names :class:`skr.snp.report.TcbParts` uses."""
        return {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
            "fmc": self.fmc,
        }

    def product(self) -> Product | None:
        """The product named by ``productName`` ("Milan-B0" -> Milan), ``None`` if absent/unknown."""
        return product_from_name(self.product_name) if self.product_name is not None else None


def product_from_name(name: str) -> Product | None:
    """Map a KDS product name ("Milan", "Milan-B0", "Genoa", "Turin-A0") to a :class:`Product`.

    The part before the first hyphen is the product; the rest is the stepping. Unknown names give
    ``None``, never a guess.
    """
    base = name.split("-", 1)[0]
    for product in Product:
        if product.value == base:
            return product
    return None


def _read_tlv(value: bytes, what: str) -> tuple[int, bytes]:
    """Split a single definite-length DER TLV that must span ``value`` exactly."""
    if len(value) < 2:
        raise VerificationError(f"{what}: DER value is truncated")
    tag, first = value[0], value[1]
    if first < 0x80:
        length, header = first, 2
    elif first in (0x81, 0x82):
        count = first & 0x7F
        if len(value) < 2 + count:
            raise VerificationError(f"{what}: DER length is truncated")
        length = int.from_bytes(value[2 : 2 + count], "big")
        header = 2 + count
        if length < 0x80 or (count == 2 and length < 0x100):
            raise VerificationError(f"{what}: DER length is not minimally encoded")
    else:
        raise VerificationError(f"{what}: unsupported DER length form 0x{first:02x}")
    if header + length != len(value):
        raise VerificationError(f"{what}: DER length {length} does not match the {len(value) - header} bytes present")
    return tag, value[header:]


def _der_unsigned_integer(value: bytes, what: str, *, maximum: int) -> int:
    tag, content = _read_tlv(value, what)
    if tag != _TAG_INTEGER:
        raise VerificationError(f"{what}: expected a DER INTEGER, found tag 0x{tag:02x}")
    if not content:
        raise VerificationError(f"{what}: empty DER INTEGER")
    if len(content) > 1 and ((content[0] == 0x00 and content[1] < 0x80) or (content[0] == 0xFF and content[1] >= 0x80)):
        raise VerificationError(f"{what}: DER INTEGER is not minimally encoded")
    number = int.from_bytes(content, "big", signed=True)
    if not 0 <= number <= maximum:
        raise VerificationError(f"{what}: value {number} is outside 0..{maximum}")
    return number


def _der_string(value: bytes, what: str) -> str:
    tag, content = _read_tlv(value, what)
    if tag not in _STRING_TAGS:
        raise VerificationError(f"{what}: expected a DER string, found tag 0x{tag:02x}")
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError:
        raise VerificationError(f"{what}: not ASCII") from None
    if not _PRINTABLE_ASCII.fullmatch(text):
        raise VerificationError(f"{what}: contains control characters")
    return text


def _hwid(value: bytes) -> bytes:
    """Raw hwID (64 or 8 bytes), or the same wrapped in a DER OCTET STRING.

    The two cannot be confused: a raw 64/8-byte value is never a complete OCTET STRING TLV whose
    content is 64/8 bytes (that needs 66/10 bytes).
    """
    sizes = (HWID_SIZE_V0, HWID_SIZE_TURIN)
    if len(value) in sizes:
        return bytes(value)
    if value[:1] == bytes([_TAG_OCTET_STRING]):
        try:
            _tag, content = _read_tlv(value, "hwID")
        except VerificationError:
            content = b""
        if len(content) in sizes:
            return bytes(content)
    raise VerificationError(
        f"hwID is {len(value)} bytes: neither {HWID_SIZE_V0} or {HWID_SIZE_TURIN} raw bytes "
        "nor a DER OCTET STRING holding them"
    )


def parse_amd_extensions(certificate: x509.Certificate) -> AmdCertExtensions:
    """Read AMD's extensions from a VCEK/VLEK.

    Raises:
        VerificationError: an AMD extension is present but malformed (wrong DER type, trailing
            bytes, an SPL outside 0..255, a hwID of the wrong size).
    """
    values: dict[x509.ObjectIdentifier, bytes] = {}
    try:
        extensions = certificate.extensions
    except ValueError as exc:  # duplicate or malformed standard extensions
        raise VerificationError(f"certificate extensions are malformed: {exc}") from None
    for extension in extensions:
        if isinstance(extension.value, x509.UnrecognizedExtension):
            raw = extension.value.value
            if len(raw) > _MAX_EXTENSION_VALUE:
                raise VerificationError(f"extension {extension.oid.dotted_string} is oversized")
            values[extension.oid] = raw

    def integer(oid: x509.ObjectIdentifier, name: str, maximum: int = 0xFF) -> int | None:
        raw = values.get(oid)
        return None if raw is None else _der_unsigned_integer(raw, name, maximum=maximum)

    def string(oid: x509.ObjectIdentifier, name: str) -> str | None:
        raw = values.get(oid)
        return None if raw is None else _der_string(raw, name)

    hwid_raw = values.get(OID_HWID)
    return AmdCertExtensions(
        struct_version=integer(OID_STRUCT_VERSION, "structVersion", 0xFFFF),
        product_name=string(OID_PRODUCT_NAME, "productName"),
        bootloader=integer(OID_BL_SPL, "blSPL"),
        tee=integer(OID_TEE_SPL, "teeSPL"),
        snp=integer(OID_SNP_SPL, "snpSPL"),
        microcode=integer(OID_UCODE_SPL, "ucodeSPL"),
        fmc=integer(OID_FMC_SPL, "fmcSPL"),
        hwid=None if hwid_raw is None else _hwid(hwid_raw),
        csp_id=string(OID_CSP_ID, "CSP_ID"),
    )
