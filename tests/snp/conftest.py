"""Fixtures for the platform I/O tests: the seccomp-emulated /dev/sev-guest and the FUSE configfs-tsm.

Both emulators answer with reports signed by the simulated AMD chip (skr_dev.simulated.amd), so what
the providers return can be verified by skr.snp.verify exactly like real evidence.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skr.snp.report import Product
from skr_dev.simulated.amd import SimulatedAmd
from tests.snp.configfs_emulator import FuseUnavailable, Generator, TsmConfigfs
from tests.snp.sevguest_emulator import (
    Command,
    DerivedKeyRequest,
    Reply,
    ReportRequest,
    Request,
    key_response,
    probe_seccomp_listener,
    report_response,
)


@pytest.fixture(scope="session")
def seccomp_supported() -> None:
    """Probe once whether the kernel gives out seccomp listeners; skip the emulator tests if not."""
    reason = probe_seccomp_listener()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def amd() -> SimulatedAmd:
    return SimulatedAmd.create(Product.MILAN)


@pytest.fixture
def device_path(tmp_path: Path) -> Path:
    """The emulated device: an ordinary file the shim can open read-write."""
    path = tmp_path / "sev-guest"
    path.write_bytes(b"")
    return path


def simulated_derived_key(request: DerivedKeyRequest) -> bytes:
    """Stand-in for the firmware's key derivation: a hash of every field, so tests see them all."""
    fields = struct.pack(
        "<IQIIQ",
        request.root_key_select,
        request.guest_field_select,
        request.vmpl,
        request.guest_svn,
        request.tcb_version,
    )
    return hashlib.sha256(b"simulated VCEK derived key" + fields).digest()


class FirmwareResponder:
    """Plays firmware + hypervisor for the sev-guest emulator.

    Replies queued in ``script`` are returned first, in order; after that every report request
    gets a report signed by the simulated chip for the requested REPORT_DATA and VMPL (with the
    chip's certificate table on extended requests) and every key request a derived key.
    """

    def __init__(self, amd: SimulatedAmd, *, certificates: bytes | None = None) -> None:
        self.amd = amd
        self.certificates = amd.certificate_table() if certificates is None else certificates
        self.script: list[Reply] = []
        self._signed: dict[tuple[bytes, int], bytes] = {}

    def signed_report(self, report_data: bytes, vmpl: int) -> bytes:
        key = (report_data, vmpl)
        if key not in self._signed:
            self._signed[key] = self.amd.sign_report(report_data, vmpl=vmpl)
        return self._signed[key]

    def __call__(self, command: Command, request: Request) -> Reply:
        if self.script:
            return self.script.pop(0)
        if isinstance(request, DerivedKeyRequest):
            return Reply(message=key_response(simulated_derived_key(request)))
        assert isinstance(request, ReportRequest)
        report = self.signed_report(request.user_data, request.vmpl)
        certificates = self.certificates if command is Command.EXT_REPORT else b""
        return Reply(message=report_response(report), certificates=certificates)


@pytest.fixture
def firmware(amd: SimulatedAmd) -> FirmwareResponder:
    return FirmwareResponder(amd)


def signing_generator(amd: SimulatedAmd) -> Generator:
    """configfs ``report_new`` stand-in: a signed report for (inblob, privlevel) plus the cert table."""

    def generate(inblob: bytes, privlevel: int) -> tuple[bytes, bytes]:
        return amd.sign_report(inblob, vmpl=privlevel), amd.certificate_table()

    return generate


MountTsm = Callable[..., TsmConfigfs]


@pytest.fixture
def mount_tsm(tmp_path: Path) -> Iterator[MountTsm]:
    """Factory: mount a configfs-tsm look-alike (FUSE) at a fresh directory; unmounted afterwards."""
    mounted: list[TsmConfigfs] = []

    def mount(generator: Generator, **options: object) -> TsmConfigfs:
        root = tmp_path / f"tsm-report-{len(mounted)}"
        root.mkdir()
        fs = TsmConfigfs(root, generator, **options)  # type: ignore[arg-type]
        try:
            fs.mount()
        except FuseUnavailable as exc:
            pytest.skip(f"configfs-tsm emulation needs FUSE: {exc}")
        mounted.append(fs)
        return fs

    yield mount
    for fs in mounted:
        fs.close()
    for fs in mounted:
        assert not fs.log.errors, f"the configfs emulator failed: {fs.log.errors!r}"
