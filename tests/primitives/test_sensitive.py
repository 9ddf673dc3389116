"""Sensitive: never shows its value, and compares and hashes consistently (by identity)."""

from __future__ import annotations

import pickle

import pytest

from skr.primitives.sensitive import Sensitive


def test_equal_values_are_distinct_wrappers_and_hash_consistently() -> None:
    first, second = Sensitive(b"key"), Sensitive(b"key")
    assert first == first and hash(first) == hash(first)
    assert first != second  # no value equality, so no hash of the value is needed
    assert len({first, second}) == 2 and len({first, first}) == 1
    assert {first: 1}[first] == 1


def test_unhashable_values_can_still_be_wrapped_and_used_as_keys() -> None:
    jwk = Sensitive({"kty": "oct", "k": "c2VjcmV0"})
    assert {jwk}  # identity hash: the dict inside is never hashed


def test_value_never_shows() -> None:
    secret = Sensitive("hunter2", label="password")
    for text in (repr(secret), str(secret), f"{secret}", f"{secret:>20}"):
        assert "hunter2" not in text and "password" in text
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(secret)
