"""Disk use on real copy-on-write storage: what a branch holds alone vs shares with its parent."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from prism.diskuse import measure
from prism.names import MAIN_BRANCH
from prism.storage.btrfs import BtrfsStorage
from prism.storage.zfs import ZfsStorage
from tests.system.test_storage_btrfs_xfs import btrfs_root  # noqa: F401 (a fixture)
from tests.system.test_storage_zfs import zfs_store  # noqa: F401 (a fixture)

_SHARED = 3_000_000
_OWN = 200_000


def _write(path: Path, size: int) -> None:
    path.write_bytes(os.urandom(size))


async def test_btrfs_branch_reports_its_own_bytes_apart_from_the_shared(
    btrfs_root: Path,  # noqa: F811
) -> None:
    store = BtrfsStorage(btrfs_root)
    _write(await store.create(MAIN_BRANCH) / "base", _SHARED)
    child = await store.clone(MAIN_BRANCH, "feature")
    _write(child / "new", _OWN)
    os.sync()  # extents are shared/exclusive once written out, which a checkpoint also does
    use = await measure(store, "feature")
    assert use.basis == "btrfs filesystem du"
    assert use.shared is not None and use.shared >= _SHARED
    assert use.own is not None and _OWN <= use.own < _SHARED
    assert use.total == use.own + use.shared


async def test_zfs_clone_reports_used_as_own_and_the_origin_data_as_shared(
    zfs_store: ZfsStorage,  # noqa: F811
) -> None:
    _write(await zfs_store.create(MAIN_BRANCH) / "base", _SHARED)
    child = await zfs_store.clone(MAIN_BRANCH, "feature")
    _write(child / "new", _OWN)
    os.sync()
    # used/referenced are updated when a transaction group commits (zfs-fuse has no
    # `zpool sync`): wait for the child's own write to show.
    for _ in range(120):
        use = await measure(zfs_store, "feature")
        if use.own is not None and use.own >= _OWN:
            break
        await trio.sleep(0.5)
    assert use.basis == "zfs used/referenced"
    assert use.own is not None and _OWN <= use.own < _SHARED
    assert use.shared is not None and use.shared >= _SHARED * 0.9  # compression may trim it
