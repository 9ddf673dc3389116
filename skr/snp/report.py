"""The SEV-SNP attestation report ABI (AMD SEV-SNP Firmware ABI spec, ATTESTATION_REPORT).

Untrusted bytes are parsed once, here, into a frozen :class:`AttestationReport`. Parsing checks the
exact size, the version range and every reserved (must-be-zero) range, and names the hex offset of
the first offending byte. Serialising a parsed report gives back the same bytes, so the signed
region can always be recomputed from the parsed value.

Report versions 2, 3 and 5 are understood:

* v2: the original layout; bytes 0x188..0x18A are reserved.
* v3: adds CPUID family / model / stepping at 0x188..0x18A.
* v5: adds LAUNCH_MIT_VECTOR (0x1F8) and CURRENT_MIT_VECTOR (0x200).

Version 4 and anything newer than 5 are rejected: a report whose layout we do not know is never
guessed at (fail closed). Whether firmware ever emitted version 4 reports is UNCONFIRMED.

The TCB_VERSION layout depends on the product (Milan/Genoa vs Turin), which a v2 report does not
carry; :class:`TcbVersion` therefore keeps the raw value and decodes on request.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, fields
from typing import Any, Final

from skr.errors import ReportFormatError

__all__ = [
    "REPORT_SIZE",
    "SIGNATURE_ALGO_ECDSA_P384_SHA384",
    "SIGNED_LENGTH",
    "SUPPORTED_VERSIONS",
    "AttestationReport",
    "GuestPolicy",
    "PlatformInfo",
    "Product",
    "SigningKey",
    "TcbParts",
    "TcbVersion",
    "parse_report",
    "product_from_cpuid",
]

REPORT_SIZE: Final = 0x4A0
SIGNED_LENGTH: Final = 0x2A0
SIGNATURE_OFFSET: Final = 0x2A0
SIGNATURE_COMPONENT_SIZE: Final = 72  # r and s are 72-byte little-endian fields (P-384 uses 48)
SUPPORTED_VERSIONS: Final = frozenset({2, 3, 5})
SIGNATURE_ALGO_ECDSA_P384_SHA384: Final = 1


class Product(enum.Enum):
    """AMD EPYC generation; decides the TCB layout and which AMD root signs the chain."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"


class SigningKey(enum.IntEnum):
    """Which key signed the report (flags bits 2..4 at 0x48)."""

    VCEK = 0
    VLEK = 1
    NONE = 7


def product_from_cpuid(family: int, model: int) -> Product | None:
    """Map CPUID family/model (report v3+) to a product; ``None`` when unknown or absent (v2).

    Family 0x19 models 0x00-0x0F are Milan, 0x10-0x1F and 0xA0-0xAF Genoa (AMD KDS serves the
    Siena/Bergamo class under "Genoa"), and family 0x1A is Turin.
    """
    if family == 0x19:
        if model <= 0x0F:
            return Product.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return Product.GENOA
        return None
    if family == 0x1A:
        return Product.TURIN
    return None


@dataclass(frozen=True, slots=True)
class TcbParts:
    """A TCB_VERSION decoded for one product: the security patch levels of each component."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None  # Turin only
    reserved: bytes

    def as_dict(self) -> dict[str, int]:
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


@dataclass(frozen=True, slots=True)
class TcbVersion:
    """A raw 64-bit TCB_VERSION (little-endian in the report)."""

    raw: int

    def decode(self, product: Product) -> TcbParts:
        """Decode per product: Milan/Genoa BL=0 TEE=1 SNP=6 UCODE=7; Turin FMC=0 BL=1 TEE=2 SNP=3 UCODE=7."""
        b = self.raw.to_bytes(8, "little")
        if product is Product.TURIN:
            return TcbParts(bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0], reserved=b[4:7])
        return TcbParts(bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7], fmc=None, reserved=b[2:6])

    @classmethod
    def encode(
        cls, product: Product, *, bootloader: int, tee: int, snp: int, microcode: int, fmc: int = 0
    ) -> TcbVersion:
        """Inverse of :meth:`decode` (reserved bytes zero)."""
        b = bytearray(8)
        if product is Product.TURIN:
            b[0], b[1], b[2], b[3], b[7] = fmc, bootloader, tee, snp, microcode
        else:
            if fmc:
                raise ValueError("only Turin TCBs carry an FMC level")
            b[0], b[1], b[6], b[7] = bootloader, tee, snp, microcode
        return cls(int.from_bytes(b, "little"))

    def tcbm(self) -> str:
        """The 16-hex-digit big-endian display used by Azure THIM (``tcbm``) and the AzCache URL."""
        return f"{self.raw:016X}"


_POLICY_RESERVED_MBO: Final = 1 << 17
_POLICY_KNOWN_BITS: Final = (1 << 26) - 1  # bits 0..25 are defined (ABI 1.57); 26..63 reserved


@dataclass(frozen=True, slots=True)
class GuestPolicy:
    """The guest policy the VM was launched with (report offset 0x08)."""

    raw: int

    def _bit(self, n: int) -> bool:
        return bool(self.raw >> n & 1)

    @property
    def abi_minor(self) -> int:
        return self.raw & 0xFF

    @property
    def abi_major(self) -> int:
        return self.raw >> 8 & 0xFF

    @property
    def smt_allowed(self) -> bool:
        return self._bit(16)

    @property
    def migrate_ma(self) -> bool:
        """A migration agent may be associated with the guest."""
        return self._bit(18)

    @property
    def debug(self) -> bool:
        """The host may debug (read) the guest: such a VM is not confidential."""
        return self._bit(19)

    @property
    def single_socket(self) -> bool:
        return self._bit(20)

    @property
    def cxl_allowed(self) -> bool:
        return self._bit(21)

    @property
    def mem_aes_256_xts(self) -> bool:
        return self._bit(22)

    @property
    def rapl_disabled(self) -> bool:
        return self._bit(23)

    @property
    def ciphertext_hiding(self) -> bool:
        return self._bit(24)

    @property
    def page_swap_disabled(self) -> bool:
        return self._bit(25)

    def flags(self) -> list[str]:
        """Names of the set flag bits, in bit order (RESERVED_MBO is bit 17)."""
        names = {
            16: "SMT",
            17: "RESERVED_MBO",
            18: "MIGRATE_MA",
            19: "DEBUG",
            20: "SINGLE_SOCKET",
            21: "CXL_ALLOW",
            22: "MEM_AES_256_XTS",
            23: "RAPL_DIS",
            24: "CIPHERTEXT_HIDING",
            25: "PAGE_SWAP_DISABLE",
        }
        return [name for bit, name in names.items() if self._bit(bit)]


@dataclass(frozen=True, slots=True)
class PlatformInfo:
    """Platform state at report time (offset 0x40). Bits 5+ follow ABI 1.57 (UNCONFIRMED beyond it)."""

    raw: int

    def flags(self) -> list[str]:
        names = {
            0: "SMT_EN",
            1: "TSME_EN",
            2: "ECC_EN",
            3: "RAPL_DIS",
            4: "CIPHERTEXT_HIDING_EN",
            5: "ALIAS_CHECK_COMPLETE",
        }
        return [name for bit, name in names.items() if self.raw >> bit & 1]

    @property
    def smt_enabled(self) -> bool:
        return bool(self.raw & 1)


# (field name, offset, format): "<I"/"<Q"/"B" are integers, an int is a byte string of that length.
_Layout = tuple[tuple[str, int, str | int], ...]
_LAYOUT: Final[_Layout] = (
    ("version", 0x000, "<I"),
    ("guest_svn", 0x004, "<I"),
    ("policy", 0x008, "<Q"),
    ("family_id", 0x010, 16),
    ("image_id", 0x020, 16),
    ("vmpl", 0x030, "<I"),
    ("signature_algo", 0x034, "<I"),
    ("current_tcb", 0x038, "<Q"),
    ("platform_info", 0x040, "<Q"),
    ("flags", 0x048, "<I"),
    ("report_data", 0x050, 64),
    ("measurement", 0x090, 48),
    ("host_data", 0x0C0, 32),
    ("id_key_digest", 0x0E0, 48),
    ("author_key_digest", 0x110, 48),
    ("report_id", 0x140, 32),
    ("report_id_ma", 0x160, 32),
    ("reported_tcb", 0x180, "<Q"),
    ("cpuid_fam_id", 0x188, "B"),
    ("cpuid_mod_id", 0x189, "B"),
    ("cpuid_step", 0x18A, "B"),
    ("chip_id", 0x1A0, 64),
    ("committed_tcb", 0x1E0, "<Q"),
    ("current_build", 0x1E8, "B"),
    ("current_minor", 0x1E9, "B"),
    ("current_major", 0x1EA, "B"),
    ("committed_build", 0x1EC, "B"),
    ("committed_minor", 0x1ED, "B"),
    ("committed_major", 0x1EE, "B"),
    ("launch_tcb", 0x1F0, "<Q"),
    ("launch_mit_vector", 0x1F8, "<Q"),
    ("current_mit_vector", 0x200, "<Q"),
    ("signature_r", SIGNATURE_OFFSET, SIGNATURE_COMPONENT_SIZE),
    ("signature_s", SIGNATURE_OFFSET + SIGNATURE_COMPONENT_SIZE, SIGNATURE_COMPONENT_SIZE),
)

# Reserved (must-be-zero) ranges as half-open [start, end), with the versions they apply to.
_ALL: Final = SUPPORTED_VERSIONS
_RESERVED: Final[tuple[tuple[int, int, frozenset[int]], ...]] = (
    (0x04C, 0x050, _ALL),
    (0x188, 0x18B, frozenset({2})),  # CPUID FMS from v3
    (0x18B, 0x1A0, _ALL),
    (0x1EB, 0x1EC, _ALL),
    (0x1EF, 0x1F0, _ALL),
    (0x1F8, 0x208, frozenset({2, 3})),  # mitigation vectors from v5
    (0x208, 0x2A0, _ALL),
    (SIGNATURE_OFFSET + 2 * SIGNATURE_COMPONENT_SIZE, REPORT_SIZE, _ALL),
)
_FLAGS_RESERVED_MASK: Final = ~0x1F & 0xFFFFFFFF


def _check_zero(data: bytes, start: int, end: int, what: str) -> None:
    chunk = data[start:end]
    if any(chunk):
        first = start + next(i for i, b in enumerate(chunk) if b)
        raise ReportFormatError(
            f"{what} 0x{start:03x}..0x{end - 1:03x} must be zero (first non-zero byte at 0x{first:03x})"
        )


@dataclass(frozen=True, slots=True)
class AttestationReport:
    """A parsed SEV-SNP ATTESTATION_REPORT. Byte fields are exactly as in the report."""

    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: PlatformInfo
    author_key_en: bool
    mask_chip_key: bool
    signing_key: SigningKey
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_fam_id: int
    cpuid_mod_id: int
    cpuid_step: int
    chip_id: bytes
    committed_tcb: TcbVersion
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: TcbVersion
    launch_mit_vector: int
    current_mit_vector: int
    signature_r: bytes
    signature_s: bytes

    def __post_init__(self) -> None:
        # Constructed values (the simulated platform builds reports too) obey the same rules as
        # parsed ones, so to_bytes() can never emit a report parse_report() would refuse.
        if self.version not in SUPPORTED_VERSIONS:
            raise ReportFormatError(f"unsupported report version {self.version} (supported: 2, 3, 5)")
        for name, _offset, fmt in _LAYOUT:
            if isinstance(fmt, int) and len(getattr(self, name)) != fmt:
                raise ReportFormatError(f"{name} must be {fmt} bytes")
        if self.version < 3 and (self.cpuid_fam_id or self.cpuid_mod_id or self.cpuid_step):
            raise ReportFormatError("a v2 report has no CPUID fields (0x188..0x18a reserved)")
        if self.version < 5 and (self.launch_mit_vector or self.current_mit_vector):
            raise ReportFormatError("mitigation vectors exist only from report version 5 (0x1f8..0x207)")

    # --- derived views ---------------------------------------------------------------------------

    @property
    def flags(self) -> int:
        """The raw 32-bit word at 0x48."""
        return int(self.author_key_en) | int(self.mask_chip_key) << 1 | int(self.signing_key) << 2

    @property
    def current_version(self) -> str:
        return f"{self.current_major}.{self.current_minor}.{self.current_build}"

    @property
    def committed_version(self) -> str:
        return f"{self.committed_major}.{self.committed_minor}.{self.committed_build}"

    def product_from_cpuid(self) -> Product | None:
        """The product named by the report itself (v3+); ``None`` for v2 or an unknown CPU."""
        if self.version < 3:
            return None
        return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    def signature_integers(self) -> tuple[int, int]:
        """(r, s) as integers, decoded from their little-endian fields."""
        return int.from_bytes(self.signature_r, "little"), int.from_bytes(self.signature_s, "little")

    # --- serialisation ---------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The exact 1184 report bytes (reserved ranges zero)."""
        out = bytearray(REPORT_SIZE)
        for name, offset, fmt in _LAYOUT:
            value = self._wire_value(name)
            if isinstance(fmt, int):
                out[offset : offset + fmt] = value
            else:
                struct.pack_into(fmt, out, offset, value)
        return bytes(out)

    def signed_bytes(self) -> bytes:
        """Bytes 0x000..0x29F: what the ECDSA P-384 signature covers."""
        return self.to_bytes()[:SIGNED_LENGTH]

    def _wire_value(self, name: str) -> Any:
        value = self.flags if name == "flags" else getattr(self, name)
        if isinstance(value, TcbVersion | GuestPolicy | PlatformInfo):
            return value.raw
        return value

    def as_dict(self, product: Product | None = None) -> dict[str, Any]:
        """Every field as JSON-ready values (hex for bytes); TCBs decoded when a product is known."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bytes):
                out[f.name] = value.hex()
            elif isinstance(value, TcbVersion):
                out[f.name] = {"raw": f"0x{value.raw:016x}"}
                if product is not None:
                    out[f.name].update(value.decode(product).as_dict())
            elif isinstance(value, GuestPolicy):
                out[f.name] = {
                    "raw": f"0x{value.raw:x}",
                    "abi_major": value.abi_major,
                    "abi_minor": value.abi_minor,
                    "flags": value.flags(),
                }
            elif isinstance(value, PlatformInfo):
                out[f.name] = {"raw": f"0x{value.raw:x}", "flags": value.flags()}
            elif isinstance(value, SigningKey):
                out[f.name] = value.name
            else:
                out[f.name] = value
        out["current_version"] = self.current_version
        out["committed_version"] = self.committed_version
        detected = self.product_from_cpuid()
        out["cpuid_product"] = detected.value if detected else None
        return out


def parse_report(data: bytes) -> AttestationReport:
    """Parse and structurally check a 1184-byte SEV-SNP attestation report.

    Raises:
        ReportFormatError: wrong size, unsupported version, a non-zero reserved byte (with its hex
            offset), reserved policy or flag bits, or an unknown signing-key value.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ReportFormatError("a report must be bytes")
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        raise ReportFormatError(f"a report is exactly {REPORT_SIZE} bytes, got {len(data)}")
    (version,) = struct.unpack_from("<I", data, 0)
    if version not in SUPPORTED_VERSIONS:
        raise ReportFormatError(f"unsupported report version {version} at 0x000 (supported: 2, 3, 5)")
    for start, end, versions in _RESERVED:
        if version in versions:
            _check_zero(data, start, end, "reserved bytes")

    raw: dict[str, Any] = {}
    for name, offset, fmt in _LAYOUT:
        if isinstance(fmt, int):
            raw[name] = data[offset : offset + fmt]
        else:
            (raw[name],) = struct.unpack_from(fmt, data, offset)

    policy = raw["policy"]
    if not policy & _POLICY_RESERVED_MBO:
        raise ReportFormatError("guest policy bit 17 (reserved, must be one) is zero at 0x008")
    if policy & ~_POLICY_KNOWN_BITS:
        raise ReportFormatError(f"guest policy 0x{policy:016x} at 0x008 sets reserved bits 26..63")

    flags = raw.pop("flags")
    if flags & _FLAGS_RESERVED_MASK:
        raise ReportFormatError(f"flags 0x{flags:08x} at 0x048 set reserved bits 5..31")
    try:
        signing_key = SigningKey(flags >> 2 & 0x7)
    except ValueError:
        raise ReportFormatError(f"flags at 0x048 name an unknown signing key {flags >> 2 & 0x7}") from None

    for name in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        raw[name] = TcbVersion(raw[name])
    raw["policy"] = GuestPolicy(policy)
    raw["platform_info"] = PlatformInfo(raw["platform_info"])
    return AttestationReport(
        author_key_en=bool(flags & 1),
        mask_chip_key=bool(flags & 2),
        signing_key=signing_key,
        **raw,
    )
