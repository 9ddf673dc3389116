"""select_provider: configfs-tsm first, then /dev/sev-guest, else PlatformUnavailableError."""

from __future__ import annotations

from pathlib import Path

import pytest

from skr.errors import PlatformUnavailableError
from skr.snp.configfs import ConfigfsTsmProvider
from skr.snp.device import SevGuestDevice
from skr.snp.provider import select_provider
from skr_dev.simulated.amd import SimulatedAmd
from tests.snp.conftest import MountTsm, signing_generator

CHAR_DEVICE = "/dev/null"  # a character device that opens read-write, like /dev/sev-guest


def test_configfs_is_preferred_when_usable(mount_tsm: MountTsm, amd: SimulatedAmd) -> None:
    fs = mount_tsm(signing_generator(amd))
    provider = select_provider(configfs_root=fs.mountpoint, sev_guest_path=CHAR_DEVICE)
    assert isinstance(provider, ConfigfsTsmProvider)
    assert provider.name == "configfs-tsm"
    assert provider.root == fs.mountpoint
    assert fs.entries() == []  # the probe cleaned up


def test_sev_guest_when_configfs_is_absent(tmp_path: Path) -> None:
    provider = select_provider(configfs_root=tmp_path / "none", sev_guest_path=CHAR_DEVICE)
    assert isinstance(provider, SevGuestDevice)
    assert provider.name == "sev-guest"
    assert provider.path == CHAR_DEVICE


def test_configfs_of_another_tee_falls_through_to_sev_guest(mount_tsm: MountTsm, amd: SimulatedAmd) -> None:
    fs = mount_tsm(signing_generator(amd), provider="tdx_guest")
    provider = select_provider(configfs_root=fs.mountpoint, sev_guest_path=CHAR_DEVICE)
    assert isinstance(provider, SevGuestDevice)
    assert len(fs.log.created) == 1
    assert fs.entries() == []


def test_neither_names_every_path_tried(tmp_path: Path) -> None:
    root, device = tmp_path / "tsm" / "report", str(tmp_path / "sev-guest")
    with pytest.raises(PlatformUnavailableError) as caught:
        select_provider(configfs_root=root, sev_guest_path=device)
    assert caught.value.tried == (str(root), device)
    assert str(root) in caught.value.message
    assert device in caught.value.message


def test_a_regular_file_is_not_a_device_and_a_plain_directory_is_not_configfs(tmp_path: Path) -> None:
    fake_device = tmp_path / "sev-guest"
    fake_device.write_bytes(b"")
    fake_root = tmp_path / "report"
    fake_root.mkdir()
    with pytest.raises(PlatformUnavailableError) as caught:
        select_provider(configfs_root=fake_root, sev_guest_path=str(fake_device))
    assert "not a character device" in caught.value.message
    assert "provider does not exist" in caught.value.message
    assert list(fake_root.iterdir()) == []
