"""GHCB certificate table parsing and building."""

from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skr.errors import VerificationError
from skr.snp.certtable import CertKind, build_certificate_table, parse_certificate_table
from tests.conftest import real_data_dir


def test_round_trip_with_real_certificates() -> None:
    vcek = (real_data_dir() / "trustee/milan_v2_vcek.der").read_bytes()
    vlek = (real_data_dir() / "trustee/vlek_milan.der").read_bytes()
    table = build_certificate_table([(CertKind.VCEK, vcek), (CertKind.VLEK, vlek), (CertKind.ARK, b"ark")])
    parsed = parse_certificate_table(table)
    assert parsed.get(CertKind.VCEK) == vcek
    assert parsed.get(CertKind.VLEK) == vlek
    assert parsed.get(CertKind.ARK) == b"ark"
    assert parsed.get(CertKind.ASK) is None
    assert [e.kind for e in parsed.entries] == [CertKind.VCEK, CertKind.VLEK, CertKind.ARK]


def test_guid_wire_bytes_are_rfc4122_order() -> None:
    table = build_certificate_table([(CertKind.VCEK, b"x")])
    assert table[:16] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")


def test_empty_and_zero_blobs_are_empty_tables() -> None:
    assert not parse_certificate_table(b"")
    assert not parse_certificate_table(bytes(4096))


def test_unknown_guids_are_kept() -> None:
    other = uuid.uuid4()
    parsed = parse_certificate_table(build_certificate_table([(other, b"blob")]))
    assert parsed.entries[0].guid == other
    assert parsed.entries[0].kind is None


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (CertKind.VCEK.value.bytes + struct.pack("<II", 48, 10), "truncated"),
        (CertKind.VCEK.value.bytes + struct.pack("<II", 8, 1) + bytes(24) + b"x", "points into the header"),
        (CertKind.VCEK.value.bytes + struct.pack("<II", 48, 100) + bytes(24) + b"x", "runs past the end"),
    ],
)
def test_malformed_tables_are_rejected(blob: bytes, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        parse_certificate_table(blob)


@given(st.binary(max_size=512))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        parse_certificate_table(data)
    except VerificationError:
        pass


@given(st.lists(st.tuples(st.sampled_from(list(CertKind)), st.binary(max_size=300)), max_size=6))
def test_build_then_parse_is_the_identity(entries: list[tuple[CertKind, bytes]]) -> None:
    parsed = parse_certificate_table(build_certificate_table(entries))
    if not entries:
        return
    assert [(e.kind, e.data) for e in parsed.entries] == entries
