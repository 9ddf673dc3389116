"""The named base64 decoders: round trips, and the one difference between strict and lenient."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skr.errors import VerificationError
from skr.primitives.encoding import (
    EncodingError,
    b64_decode_lenient_alphabet,
    b64_decode_lenient_padding,
    b64_decode_strict,
    b64_encode,
    b64url_decode_strict,
    b64url_encode,
)


@given(st.binary(max_size=512))
def test_round_trips(data: bytes) -> None:
    assert b64url_decode_strict(b64url_encode(data)) == data
    assert b64url_decode_strict(b64url_encode(data) + "=" * (-len(b64url_encode(data)) % 4)) == data  # padded too
    assert b64_decode_strict(b64_encode(data)) == data
    assert b64_decode_lenient_padding(b64_encode(data)) == data
    assert b64_decode_lenient_alphabet(b64_encode(data)) == data
    assert b64_decode_lenient_alphabet(b64url_encode(data)) == data  # URL-safe and unpadded accepted


@given(st.binary(min_size=1, max_size=256))
def test_encoders_are_the_standard_forms(data: bytes) -> None:
    assert b64_encode(data) == base64.b64encode(data).decode()
    assert "=" not in b64url_encode(data) and "+" not in b64url_encode(data) and "/" not in b64url_encode(data)


@given(st.binary(min_size=1, max_size=256))
def test_lenient_padding_is_exactly_the_stdlib_rule(data: bytes) -> None:
    # The call sites that used base64.b64decode(validate=True) accept the very same texts.
    for text in (b64_encode(data), b64_encode(data).rstrip("="), b64_encode(data) + "=", " " + b64_encode(data)):
        try:
            expected: bytes | None = base64.b64decode(text, validate=True)
        except ValueError:
            expected = None
        try:
            got: bytes | None = b64_decode_lenient_padding(text)
        except EncodingError:
            got = None
        assert got == expected


@pytest.mark.parametrize("text", ["YWJj=", "YQ", "YQ=", "Y Q==", "YQ==\n", "-_8=", "YQ==YQ=="])
def test_strict_standard_refuses_what_it_should(text: str) -> None:
    with pytest.raises(EncodingError):
        b64_decode_strict(text)


def test_surplus_padding_is_the_named_leniency() -> None:
    assert b64_decode_lenient_padding("YWJj=") == b"abc"
    with pytest.raises(EncodingError):
        b64_decode_strict("YWJj=")


@pytest.mark.parametrize("text", ["ab+c", "ab/c", "YQ==\n", "Y", "YQ=", "YWJj=", "ab cd"])
def test_strict_url_refuses_other_alphabets_whitespace_and_bad_lengths(text: str) -> None:
    with pytest.raises(EncodingError):
        b64url_decode_strict(text)


def test_size_bound_and_caller_error_class() -> None:
    with pytest.raises(VerificationError, match="token is too large"):
        b64url_decode_strict("A" * 100, what="token", max_bytes=10, error=VerificationError)
    with pytest.raises(VerificationError, match="not base64url text"):
        b64url_decode_strict(b"\xff", what="x", error=VerificationError)


def test_messages_never_echo_the_value() -> None:
    with pytest.raises(EncodingError) as info:
        b64_decode_lenient_alphabet("s3cr3t!!", what="runtime_data")
    assert "s3cr3t" not in str(info.value)
