"""Shared test fixtures: the location of the real vectors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def real_data_dir() -> Path:
    """The directory of real SEV-SNP / Azure vectors (../shared/testdata/real beside the clone)."""
    env = os.environ.get("SKR_TESTDATA")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "testdata" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    path = real_data_dir()
    if not (path / "expected.json").is_file():
        pytest.fail(f"real test vectors not found at {path}; place ../shared beside the clone or set SKR_TESTDATA")
    return path
