"""How ``auto`` chooses a storage driver and how drivers are found by name; no disk access."""

from __future__ import annotations

from pathlib import Path

import pytest

from prism.core.errors import ConfigError
from prism.storage import DRIVERS, Storage, driver_class
from prism.storage._probe import choose_driver

ROOT = Path("/data")


def test_btrfs_with_its_tool_gets_snapshots() -> None:
    choice = choose_driver(ROOT, "btrfs", btrfs_tool=True, reflink_failure=None)
    assert choice.kind == "btrfs"
    assert "btrfs at /data" in choice.reason


def test_btrfs_without_its_tool_falls_back_to_reflink_and_says_why() -> None:
    choice = choose_driver(ROOT, "btrfs", btrfs_tool=False, reflink_failure=None)
    assert choice.kind == "reflink"
    assert "btrfs command is missing" in choice.reason


def test_a_filesystem_that_can_ficlone_gets_reflink() -> None:
    choice = choose_driver(ROOT, "xfs", btrfs_tool=False, reflink_failure=None)
    assert choice.kind == "reflink"
    assert choice.reason == "xfs at /data supports FICLONE"


def test_a_filesystem_that_cannot_ficlone_gets_copy_with_the_probe_error() -> None:
    choice = choose_driver(
        ROOT, "ext2/ext3", btrfs_tool=False, reflink_failure="FICLONE failed: Not supported"
    )
    assert choice.kind == "copy"
    assert choice.reason == "ext2/ext3 at /data cannot reflink: FICLONE failed: Not supported"


@pytest.mark.parametrize("kind", ["btrfs", "reflink", "copy"])
def test_each_registered_driver_satisfies_the_storage_protocol(kind: str) -> None:
    cls = driver_class(kind)
    storage = cls(ROOT)  # type: ignore[call-arg]
    assert isinstance(storage, Storage)
    assert storage.name == kind
    assert storage.atomic is (kind == "btrfs")


def test_zfs_has_a_registry_slot() -> None:
    assert "zfs" in DRIVERS


def test_an_unknown_driver_is_a_config_error_listing_the_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        driver_class("ext4")
    assert caught.value.hint is not None
    assert "auto" in caught.value.hint
    assert "reflink" in caught.value.hint


def test_a_driver_that_cannot_be_imported_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(DRIVERS, "broken", "prism.storage.does_not_exist:Nope")
    with pytest.raises(ConfigError, match="'broken' is not available"):
        driver_class("broken")
