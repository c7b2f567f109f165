"""Reading what btrfs and ZFS say about a branch's own and shared bytes."""

from __future__ import annotations

import pytest

from prism.core.errors import StorageError
from prism.storage.diskuse import DiskUse, parse_btrfs_du, parse_zfs_used_referenced


def test_btrfs_du_gives_exclusive_as_own_and_set_shared_as_shared() -> None:
    output = (
        "     Total   Exclusive  Set shared  Filename\n"
        "  41234432      524288    40710144  /srv/prism/branches/feature\n"
    )
    assert parse_btrfs_du(output) == DiskUse(524288, 40710144, 41234432, "btrfs filesystem du")


def test_zfs_used_is_own_and_the_rest_of_referenced_is_shared() -> None:
    assert parse_zfs_used_referenced("212992\n41234432\n") == DiskUse(
        212992, 41021440, 41234432, "zfs used/referenced"
    )


@pytest.mark.parametrize("output", ["", "Total Exclusive\n", "a b c d\nx y z w\n"])
def test_unexpected_btrfs_output_is_a_storage_error(output: str) -> None:
    with pytest.raises(StorageError, match="unexpected output"):
        parse_btrfs_du(output)


def test_unexpected_zfs_output_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="unexpected output"):
        parse_zfs_used_referenced("-\n")
