"""The GHCB certificate table returned with an extended report (SNP_GET_EXT_REPORT / auxblob).

Layout (GHCB spec, "SNP Extended Guest Request"): a sequence of 24-byte entries
``GUID[16] || offset u32 LE || length u32 LE`` terminated by an all-zero entry; offsets are relative
to the start of the table and point after the header. GUIDs are stored in RFC 4122 byte order (the
form ``uuid_parse`` produces, as AMD's and Google's tooling read them).

Known GUIDs: VCEK, VLEK, ASK, ARK and CRL. No separate ASVK GUID is documented (UNCONFIRMED): in a
VLEK table the signing CA arrives under the ASK GUID, and callers tell ASK from ASVK by the
certificate's subject.
"""

from __future__ import annotations

import enum
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from skr.errors import VerificationError

__all__ = [
    "MAX_TABLE_SIZE",
    "CertEntry",
    "CertKind",
    "CertificateTable",
    "build_certificate_table",
    "parse_certificate_table",
]

ENTRY_SIZE: Final = 24
MAX_TABLE_SIZE: Final = 4 * 1024 * 1024  # far above any real table (a few KiB); bounds memory
MAX_ENTRIES: Final = 64
MAX_CERT_SIZE: Final = 64 * 1024


class CertKind(enum.Enum):
    """What an entry holds, by GUID."""

    VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
    VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
    ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
    ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
    CRL = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")


_BY_GUID: Final = {kind.value: kind for kind in CertKind}


@dataclass(frozen=True, slots=True)
class CertEntry:
    """One table entry: its GUID, the kind when known, and the raw (DER) bytes."""

    guid: uuid.UUID
    data: bytes

    @property
    def kind(self) -> CertKind | None:
        return _BY_GUID.get(self.guid)


@dataclass(frozen=True, slots=True)
class CertificateTable:
    """A parsed certificate table. Unknown GUIDs are kept, never silently dropped."""

    entries: tuple[CertEntry, ...]

    def get(self, kind: CertKind) -> bytes | None:
        """The first entry of ``kind``, or ``None``."""
        for entry in self.entries:
            if entry.kind is kind:
                return entry.data
        return None

    def __bool__(self) -> bool:
        return bool(self.entries)


def parse_certificate_table(data: bytes) -> CertificateTable:
    """Parse a GHCB certificate table; an empty or all-zero blob is an empty table.

    Raises:
        VerificationError: truncated header, an entry pointing into the header or past the end,
            too many entries, or an oversized blob.
    """
    data = bytes(data)
    if len(data) > MAX_TABLE_SIZE:
        raise VerificationError(f"certificate table of {len(data)} bytes exceeds {MAX_TABLE_SIZE}")
    if not any(data):
        return CertificateTable(())
    raw_entries: list[tuple[uuid.UUID, int, int]] = []
    position = 0
    while True:
        if position + ENTRY_SIZE > len(data):
            raise VerificationError(f"certificate table header is truncated at 0x{position:x}")
        guid_bytes = data[position : position + 16]
        offset, length = struct.unpack_from("<II", data, position + 16)
        position += ENTRY_SIZE
        if not any(guid_bytes) and offset == 0 and length == 0:
            break
        if len(raw_entries) >= MAX_ENTRIES:
            raise VerificationError(f"certificate table has more than {MAX_ENTRIES} entries")
        raw_entries.append((uuid.UUID(bytes=guid_bytes), offset, length))
    entries = []
    for index, (guid, offset, length) in enumerate(raw_entries):
        if offset < position:
            raise VerificationError(f"certificate table entry {index} points into the header (0x{offset:x})")
        if offset + length > len(data):
            raise VerificationError(
                f"certificate table entry {index} (0x{offset:x}+{length}) runs past the end ({len(data)} bytes)"
            )
        if length > MAX_CERT_SIZE:
            raise VerificationError(f"certificate table entry {index} is {length} bytes (max {MAX_CERT_SIZE})")
        entries.append(CertEntry(guid=guid, data=data[offset : offset + length]))
    return CertificateTable(tuple(entries))


def build_certificate_table(entries: Iterable[tuple[CertKind | uuid.UUID, bytes]]) -> bytes:
    """Serialise entries into a table (header, zero terminator, then the blobs in order)."""
    items = [(k.value if isinstance(k, CertKind) else k, bytes(blob)) for k, blob in entries]
    header_size = ENTRY_SIZE * (len(items) + 1)
    header = bytearray()
    body = bytearray()
    for guid, blob in items:
        header += guid.bytes + struct.pack("<II", header_size + len(body), len(blob))
        body += blob
    header += bytes(ENTRY_SIZE)
    return bytes(header + body)
