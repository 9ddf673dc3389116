#!/usr/bin/env python3
"""Fetch the real test vectors and REST specs that the tests read, checked file by file against sha256.

The vectors (real SNP reports, AMD chains, an MAA token, a release JWS) and the published Azure REST
specs are public data that the repository does not carry (see their PROVENANCE.md files). A clone
with ``../shared`` beside it needs nothing; anyone else runs::

    python3 tools/fetch_vectors.py --from SOURCE DEST
    export SKR_TESTDATA=DEST/testdata/real SKR_SPECS=DEST/specs

SOURCE is a directory or an http(s) base URL holding ``testdata/real/...`` and ``specs/...`` (a copy
of the shared set, a mirror, or a local server). Every file named in tests/vectors.sha256 is fetched,
its sha256 compared with the manifest, and written only when it matches: a changed or truncated file
stops the fetch with the file's name and nothing half-written is left behind. Standard library only,
so it runs before the project is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

MANIFEST = Path(__file__).resolve().parent.parent / "tests" / "vectors.sha256"
MAX_FILE_BYTES = 4 * 1024 * 1024  # the largest vector is well under 1 MiB


class FetchError(Exception):
    """A file could not be fetched or did not match its manifest hash."""


def read_manifest(path: Path = MANIFEST) -> list[tuple[str, str]]:
    """(sha256 hex, relative path) pairs; paths are relative, without ``..``."""
    entries: list[tuple[str, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        parts = Path(name).parts
        if len(digest) != 64 or not name or name.startswith("/") or ".." in parts:
            raise FetchError(f"{path}:{number}: not a 'sha256  relative/path' line")
        entries.append((digest.lower(), name))
    return entries


def _read(source: str, name: str) -> bytes:
    if urllib.parse.urlsplit(source).scheme in ("http", "https"):
        url = source.rstrip("/") + "/" + urllib.parse.quote(name)
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - http(s) only, checked above
            data: bytes = response.read(MAX_FILE_BYTES + 1)
    else:
        with (Path(source) / name).open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise FetchError(f"{name}: larger than {MAX_FILE_BYTES} bytes")
    return data


def fetch(source: str, destination: Path, entries: list[tuple[str, str]]) -> int:
    """Fetch every entry into ``destination``; returns how many files were written."""
    written = 0
    for digest, name in entries:
        target = destination / name
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == digest:
            continue
        try:
            data = _read(source, name)
        except OSError as exc:
            raise FetchError(f"{name}: cannot fetch from {source}: {exc}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise FetchError(f"{name}: sha256 {actual} does not match the manifest's {digest}; nothing written")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", required=True, help="directory or http(s) base URL of the set")
    parser.add_argument("destination", type=Path, help="where to write testdata/real/ and specs/")
    args = parser.parse_args(argv)
    try:
        count = fetch(args.source, args.destination, read_manifest())
    except FetchError as exc:
        print(f"fetch_vectors: {exc}", file=sys.stderr)
        return 1
    root = args.destination.resolve()
    print(f"{count} file(s) written; all {len(read_manifest())} match tests/vectors.sha256")
    print(f"export SKR_TESTDATA={root / 'testdata' / 'real'} SKR_SPECS={root / 'specs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
