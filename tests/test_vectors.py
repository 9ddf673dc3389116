"""A fresh clone can get the vectors: the fetcher checks every file, and without them the run stops in one line."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, real_data_dir, specs_dir

sys.path.insert(0, str(REPO_ROOT / "tools"))
import fetch_vectors


def _mirror(tmp_path: Path) -> Path:
    """A copy of the shared set in the layout the fetcher reads (testdata/real, specs)."""
    root = tmp_path / "mirror"
    shutil.copytree(real_data_dir(), root / "testdata" / "real")
    shutil.copytree(specs_dir(), root / "specs")
    return root


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = _mirror(tmp_path)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_manifest_matches_the_shared_set() -> None:
    entries = fetch_vectors.read_manifest()
    assert len(entries) >= 70
    for digest, name in entries:
        base = real_data_dir().parent.parent if name.startswith("testdata/") else specs_dir().parent
        assert hashlib.sha256((base / name).read_bytes()).hexdigest() == digest, name


def test_fetch_over_loopback_http_writes_every_file_checked(served: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = served
    destination = tmp_path / "fetched"
    assert fetch_vectors.main(["--from", url, str(destination)]) == 0
    for digest, name in fetch_vectors.read_manifest():
        assert hashlib.sha256((destination / name).read_bytes()).hexdigest() == digest
    assert fetch_vectors.fetch(url, destination, fetch_vectors.read_manifest()) == 0  # already complete


def test_a_changed_file_stops_the_fetch_and_writes_nothing(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    victim = root / "testdata" / "real" / "expected.json"
    victim.write_bytes(victim.read_bytes() + b" ")
    destination = tmp_path / "fetched"
    entries = [e for e in fetch_vectors.read_manifest() if e[1] == "testdata/real/expected.json"]
    with pytest.raises(fetch_vectors.FetchError, match=r"expected\.json: sha256 .* does not match"):
        fetch_vectors.fetch(url, destination, entries)
    assert not (destination / "testdata" / "real").exists() or not any((destination / "testdata" / "real").iterdir())


def test_manifest_refuses_paths_outside_the_destination(tmp_path: Path) -> None:
    bad = tmp_path / "manifest"
    bad.write_text("0" * 64 + "  ../etc/passwd\n")
    with pytest.raises(fetch_vectors.FetchError, match="not a 'sha256  relative/path' line"):
        fetch_vectors.read_manifest(bad)


def test_without_vectors_the_run_stops_at_once_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "SKR_TESTDATA": str(tmp_path / "none"), "SKR_SPECS": str(tmp_path / "none")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/core"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 4, output
    hint_lines = [line for line in output.splitlines() if "test vectors not found" in line]
    assert len(hint_lines) == 1, output
    assert "SKR_TESTDATA" in hint_lines[0] and "tools/fetch_vectors.py" in hint_lines[0]
    assert "Traceback" not in output and "collected" not in output
