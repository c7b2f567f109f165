"""Disk use on real copy-on-write storage: what a branch holds alone vs shares with its parent."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from prism.core.diskrules import DiskReserve
from prism.core.names import MAIN_BRANCH
from prism.storage.btrfs import BtrfsStorage
from prism.storage.budget import DiskBudget
from prism.storage.diskuse import measure
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


async def test_btrfs_subvolumes_and_the_data_dir_are_one_file_system_to_the_budget(
    btrfs_root: Path,  # noqa: F811
) -> None:
    """Each subvolume has a device number of its own; the budget must still see one file
    system (one reserve, one ballast), and hold a clone against it."""
    store = BtrfsStorage(btrfs_root)
    await store.create(MAIN_BRANCH)
    await store.clone(MAIN_BRANCH, "feature")
    budget = DiskBudget(
        storage=store, data_dir=btrfs_root, reserve=DiskReserve.parse("1MiB"), archives=False
    )
    (fs,) = budget.filesystems()
    assert fs.kind == "btrfs" and set(fs.roles) == {"main", "branches", "data"}
    view = budget.view()["filesystems"][0]
    assert 0 < view["free"] <= view["total"] and view["level"] == "ok"
    (await budget.hold_clone(MAIN_BRANCH, running=False, what="test")).release()


async def test_zfs_datasets_of_one_pool_are_one_file_system_to_the_budget(
    zfs_store: ZfsStorage,  # noqa: F811
) -> None:
    await zfs_store.create(MAIN_BRANCH)
    await zfs_store.clone(MAIN_BRANCH, "feature")
    budget = DiskBudget(
        storage=zfs_store,
        data_dir=zfs_store.root,
        reserve=DiskReserve.parse("1MiB"),
        archives=False,
    )
    main = budget.filesystem("main")
    assert main.kind in ("zfs", "fuse.zfs") and main.key.startswith("zfs:")
    assert budget.filesystem("branches") == main  # a clone lands in main's pool
