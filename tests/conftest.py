"""Shared test fixtures: the location of the real vectors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


FETCH_HINT = "python3 tools/fetch_vectors.py --from SOURCE DIR"


def real_data_dir() -> Path:
    """The directory of real SEV-SNP / Azure vectors: SKR_TESTDATA, else ../shared/testdata/real beside the clone."""
    env = os.environ.get("SKR_TESTDATA")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "testdata" / "real"


def specs_dir() -> Path:
    """The published Azure REST specs: SKR_SPECS, else ../shared/specs beside the clone."""
    env = os.environ.get("SKR_SPECS")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "specs"


def missing_vectors_hint() -> str | None:
    """One line naming what is missing and how to get it, or None when both sets are present."""
    missing = [
        f"{name} ({path})"
        for name, path, marker in (
            ("SKR_TESTDATA", real_data_dir(), "expected.json"),
            ("SKR_SPECS", specs_dir(), "keyvault/api-versions.json"),
        )
        if not (path / marker).is_file()
    ]
    if not missing:
        return None
    return (
        f"test vectors not found: {', '.join(missing)}; put ../shared beside the clone, or run {FETCH_HINT} "
        "and set SKR_TESTDATA=DIR/testdata/real SKR_SPECS=DIR/specs"
    )


def pytest_configure(config: pytest.Config) -> None:
    """Stop at once, before collection (test modules read vectors at import), with the one-line hint."""
    hint = missing_vectors_hint()
    if hint is not None:
        pytest.exit(hint, returncode=4)


@pytest.fixture(scope="session")
def real_data() -> Path:
    return real_data_dir()
