"""`skr release` (init-container mode) against the emulators, with the simulated platform injected."""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from skr.core.crypto import export_private_jwk
from skr.errors import EXIT_OK, EXIT_RELEASE_DENIED, EXIT_UPSTREAM, ConfigError
from skr.shell.initcontainer import ReleaseJob, parse_kids, run_release, write_atomically
from skr_dev.devstack import DevStack
from skr_dev.emulators.faults import Fault, FaultKind


@pytest.fixture
async def dev() -> AsyncIterator[DevStack]:
    stack = await DevStack.start(port=0, settings_overrides={"akv_timeout": 3.0, "maa_timeout": 3.0})
    yield stack
    await stack.stop()


async def _release(dev: DevStack, job: ReleaseJob, **settings: object) -> int:
    return await run_release(
        replace(dev.settings, **settings),
        job,
        platform=dev.platform,
        environ=dev.environ,
        amd_roots=dev.emulators.platform.trusted_roots(),
    )


async def test_every_key_written_in_each_format_with_mode_0600(dev: DevStack, tmp_path: Path) -> None:
    out = tmp_path / "keys"
    assert await _release(dev, ReleaseJob(kids=("demo-rsa", "demo-ec"), out=out, fmt="pem")) == EXIT_OK
    for name in ("demo-rsa", "demo-ec"):
        path = out / f"{name}.pem"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert await _release(dev, ReleaseJob(kids=("demo-rsa",), out=out, fmt="jwk")) == EXIT_OK
    assert json.loads((out / "demo-rsa.json").read_text())["kty"] == "RSA"
    assert await _release(dev, ReleaseJob(kids=("demo-rsa",), out=out, fmt="raw")) == EXIT_OK
    serialization.load_der_private_key((out / "demo-rsa.bin").read_bytes(), password=None)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


async def test_oct_key_to_a_single_file_as_raw(dev: DevStack, tmp_path: Path) -> None:
    target = tmp_path / "secret.key"
    job = ReleaseJob(kids=("demo-oct",), out=target, fmt="raw")
    assert await _release(dev, job, akv_endpoint=dev.settings.allowed_akv_endpoints[1]) == EXIT_OK
    assert len(target.read_bytes()) == 32


async def test_transient_failures_are_retried_until_they_clear(dev: DevStack, tmp_path: Path) -> None:
    dev.emulators.faults.add(Fault(FaultKind.ERROR_503, endpoint="keyvault.release", times=6))
    job = ReleaseJob(kids=("demo-rsa",), out=tmp_path, timeout=60)
    assert await _release(dev, job) == EXIT_OK
    assert (tmp_path / "demo-rsa.json").exists()


async def test_permanent_failures_stop_at_once_with_their_exit_code(dev: DevStack, tmp_path: Path) -> None:
    job = ReleaseJob(kids=("no-such-key",), out=tmp_path, timeout=60)
    assert await _release(dev, job) == EXIT_RELEASE_DENIED  # key_not_found is a release failure
    assert not list(tmp_path.iterdir())


async def test_deadline_gives_the_upstream_exit_code(dev: DevStack, tmp_path: Path) -> None:
    dev.emulators.faults.add(Fault(FaultKind.ERROR_503, endpoint="keyvault.release"))
    job = ReleaseJob(kids=("demo-rsa", "demo-ec"), out=tmp_path, timeout=4)
    assert await _release(dev, job) == EXIT_UPSTREAM
    assert not list(tmp_path.iterdir())  # exit non-zero means the gate stays closed


def test_pem_is_refused_for_oct_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pem is for RSA and EC"):
        export_private_jwk({"kty": "oct", "k": "AAAA"}, "pem")


def test_write_atomically_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_atomically(path, b"first")
    write_atomically(path, b"second")
    assert path.read_bytes() == b"second" and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_parse_kids() -> None:
    assert parse_kids(["a,b", "c"]) == ("a", "b", "c")
    with pytest.raises(ConfigError):
        parse_kids([" , "])
