"""ConfigfsTsmProvider against a FUSE filesystem with configfs-tsm's semantics (configfs_emulator)."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from skr.errors import (
    BadRequestError,
    ConfigError,
    DeviceBusyError,
    FirmwareError,
    PlatformUnavailableError,
)
from skr.snp.configfs import ConfigfsTsmProvider
from skr.snp.report import parse_report
from skr.snp.verify import verify_attestation
from skr_dev.simulated.amd import SimulatedAmd
from tests.snp.conftest import MountTsm, signing_generator

REPORT_DATA = hashlib.sha256(b"configfs nonce").digest() + bytes(32)
NOW = datetime.now(UTC)


def failing(code: int) -> object:
    def generate(inblob: bytes, privlevel: int) -> tuple[bytes, bytes]:
        raise OSError(code, os.strerror(code))

    return generate


def test_signed_report_with_certificates_and_entry_removed(mount_tsm: MountTsm, amd: SimulatedAmd) -> None:
    fs = mount_tsm(signing_generator(amd))
    evidence = ConfigfsTsmProvider(fs.mountpoint).get_report(REPORT_DATA)

    assert evidence.provider == "configfs-tsm"
    assert parse_report(evidence.report).report_data == REPORT_DATA
    assert evidence.certificates == amd.certificate_table()
    verified = verify_attestation(evidence.report, evidence.certificates, trusted=amd.trusted_roots(), now=NOW)
    assert verified.report.report_data == REPORT_DATA
    assert fs.log.generated == [(REPORT_DATA, 0)]
    assert len(fs.log.created) == 1
    assert fs.log.removed == fs.log.created
    assert fs.entries() == []
    assert os.listdir(fs.mountpoint) == []


def test_privlevel_is_written_as_ascii_decimal(mount_tsm: MountTsm, amd: SimulatedAmd) -> None:
    fs = mount_tsm(signing_generator(amd))
    evidence = ConfigfsTsmProvider(fs.mountpoint).get_report(REPORT_DATA, vmpl=3, with_certificates=False)
    assert parse_report(evidence.report).vmpl == 3
    assert fs.log.generated == [(REPORT_DATA, 3)]
    assert evidence.certificates == b""


def test_vmpl_below_the_floor_is_refused_and_the_entry_removed(mount_tsm: MountTsm, amd: SimulatedAmd) -> None:
    fs = mount_tsm(signing_generator(amd), privlevel_floor=2)
    with pytest.raises(FirmwareError, match="privlevel_floor") as caught:
        ConfigfsTsmProvider(fs.mountpoint).get_report(REPORT_DATA, vmpl=1)
    assert caught.value.errno == errno.EINVAL
    assert fs.log.generated == []
    assert fs.entries() == []


def test_other_provider_is_platform_unavailable(mount_tsm: MountTsm, amd: SimulatedAmd) -> None:
    fs = mount_tsm(signing_generator(amd), provider="tdx_guest")
    with pytest.raises(PlatformUnavailableError, match="tdx_guest") as caught:
        ConfigfsTsmProvider(fs.mountpoint).get_report(REPORT_DATA)
    assert caught.value.tried == (str(fs.mountpoint),)
    assert fs.log.generated == []
    assert fs.entries() == []


def test_no_registered_provider_is_platform_unavailable(mount_tsm: MountTsm, amd: SimulatedAmd) -> None:
    fs = mount_tsm(signing_generator(amd), provider=None)  # mkdir fails with ENXIO
    with pytest.raises(PlatformUnavailableError, match="no attestation provider"):
        ConfigfsTsmProvider(fs.mountpoint).get_report(REPORT_DATA)


def test_a_concurrent_writer_is_detected_and_the_request_repeated(mount_tsm: MountTsm, amd: SimulatedAmd) -> None:
    fs = mount_tsm(signing_generator(amd))
    fs.inject_foreign_writes(1)
    evidence = ConfigfsTsmProvider(fs.mountpoint).get_report(REPORT_DATA)
    assert parse_report(evidence.report).report_data == REPORT_DATA
    foreign = bytes(reversed(REPORT_DATA))
    assert fs.log.generated == [(foreign, 0), (REPORT_DATA, 0)]
    assert len(fs.log.created) == 2
    assert fs.entries() == []


def test_a_writer_that_never_stops_ends_in_device_busy(mount_tsm: MountTsm, amd: SimulatedAmd) -> None:
    fs = mount_tsm(signing_generator(amd))
    fs.inject_foreign_writes(100)
    with pytest.raises(DeviceBusyError, match="another writer"):
        ConfigfsTsmProvider(fs.mountpoint, generation_retries=2).get_report(REPORT_DATA)
    assert len(fs.log.created) == 3
    assert fs.entries() == []


@pytest.mark.parametrize(
    ("code", "error", "needle"),
    [
        (errno.EIO, FirmwareError, "read failed"),
        (errno.ENXIO, FirmwareError, "refused the report request"),
        (errno.EINVAL, FirmwareError, "INVALID_PARAM"),
        (errno.ENOTTY, FirmwareError, "VMPCK"),
        (errno.ETIMEDOUT, DeviceBusyError, "busy"),
    ],
)
def test_firmware_failures_map_to_typed_errors(
    mount_tsm: MountTsm, code: int, error: type[Exception], needle: str
) -> None:
    fs = mount_tsm(failing(code))
    with pytest.raises(error, match=needle) as caught:
        ConfigfsTsmProvider(fs.mountpoint).get_report(REPORT_DATA)
    assert type(caught.value) is error
    assert caught.value.errno == code  # type: ignore[attr-defined]
    assert fs.entries() == []


def test_report_for_other_report_data_is_refused(mount_tsm: MountTsm, amd: SimulatedAmd) -> None:
    fs = mount_tsm(lambda inblob, privlevel: (amd.sign_report(bytes(64)), b""))
    with pytest.raises(FirmwareError, match="does not carry the requested REPORT_DATA"):
        ConfigfsTsmProvider(fs.mountpoint).get_report(REPORT_DATA)


def test_concurrent_requests_each_get_their_own_report(mount_tsm: MountTsm, amd: SimulatedAmd) -> None:
    fs = mount_tsm(signing_generator(amd))
    provider = ConfigfsTsmProvider(fs.mountpoint)
    results: dict[int, bytes] = {}

    def worker(index: int) -> None:
        data = bytes([index]) * 64
        for _ in range(3):
            results[index] = parse_report(provider.get_report(data, with_certificates=False).report).report_data

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: bytes([i]) * 64 for i in range(6)}
    assert len(set(fs.log.created)) == len(fs.log.created) == 18
    assert fs.entries() == []


def test_probe_creates_and_removes_one_entry(mount_tsm: MountTsm, amd: SimulatedAmd) -> None:
    fs = mount_tsm(signing_generator(amd))
    ConfigfsTsmProvider(fs.mountpoint).probe()
    assert len(fs.log.created) == 1
    assert fs.log.removed == fs.log.created
    assert fs.log.generated == []


# --- without FUSE ---------------------------------------------------------------------------------


def test_missing_root_is_platform_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "no-configfs"
    with pytest.raises(PlatformUnavailableError) as caught:
        ConfigfsTsmProvider(root).get_report(REPORT_DATA)
    assert str(root) in caught.value.message
    assert caught.value.tried == (str(root),)


def test_a_plain_directory_is_not_configfs_and_is_left_clean(tmp_path: Path) -> None:
    # mkdir succeeds but no attributes appear: the provider must fail and remove its entry.
    with pytest.raises(FirmwareError, match="provider does not exist"):
        ConfigfsTsmProvider(tmp_path).get_report(REPORT_DATA)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("report_data", "vmpl"), [(REPORT_DATA[:63], 0), (REPORT_DATA, 4), (REPORT_DATA, -1)])
def test_bad_requests_are_rejected_before_touching_the_tree(tmp_path: Path, report_data: bytes, vmpl: int) -> None:
    with pytest.raises(BadRequestError):
        ConfigfsTsmProvider(tmp_path).get_report(report_data, vmpl=vmpl)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("retries", [-1, 6, True])
def test_bad_retry_option_is_a_config_error(retries: int) -> None:
    with pytest.raises(ConfigError):
        ConfigfsTsmProvider("/sys/kernel/config/tsm/report", generation_retries=retries)
