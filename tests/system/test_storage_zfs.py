"""The ZFS storage driver on a real pool (``tools/sysenv/zfs.sh``: zfs-fuse, file-backed).

Each test gets its own dataset under ``<pool>/prism`` and its own storage root, and destroys
both afterwards, so tests run in any order and in parallel.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from prism.core.errors import BranchConflict, StorageError
from prism.core.names import MAIN_BRANCH
from prism.storage import open_storage
from prism.storage.zfs import ZfsStorage
from tests.sysenv import ZFS_POOL, require_command, require_root, unavailable
from tests.system.test_storage_btrfs_xfs import _assert_clone_preserves_and_isolates

PARENT_DATASET = f"{ZFS_POOL}/prism"


def _zfs(*args: str) -> str:
    return subprocess.run(["zfs", *args], check=True, capture_output=True, text=True).stdout.strip()


def _snapshots(dataset: str) -> list[str]:
    output = _zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", dataset)
    return output.splitlines()


@pytest.fixture
async def zfs_store() -> AsyncIterator[ZfsStorage]:
    """A ZfsStorage on a fresh dataset and root; everything in both is destroyed afterwards."""
    require_root()
    require_command("zfs")
    listed = await trio.run_process(
        ["zfs", "list", PARENT_DATASET], check=False, capture_stdout=True, capture_stderr=True
    )
    if listed.returncode != 0:
        unavailable(f"ZFS dataset {PARENT_DATASET} missing; run tools/sysenv/zfs.sh as root")
    dataset = f"{PARENT_DATASET}/t{uuid.uuid4().hex[:10]}"
    _zfs("create", "-o", "mountpoint=none", dataset)
    root = Path(tempfile.mkdtemp(prefix="prism-zfs-"))
    store = ZfsStorage(root, dataset)
    try:
        yield store
    finally:
        # Children before parents: the driver refuses to delete a branch that has clones.
        for branch in reversed(store.list()):
            await store.destroy(branch)
        await trio.run_process(["zfs", "destroy", "-r", dataset], check=False)
        shutil.rmtree(root, ignore_errors=True)


async def test_zfs_create_makes_a_private_dataset_at_the_layout_path(
    zfs_store: ZfsStorage,
) -> None:
    path = await zfs_store.create(MAIN_BRANCH)
    assert path == zfs_store.root / "master"
    master = zfs_store.dataset_of(MAIN_BRANCH)
    assert _zfs("get", "-H", "-o", "value", "mountpoint,mounted", master).split() == [
        str(path),
        "yes",
    ]
    assert path.stat().st_mode & 0o777 == 0o700
    assert zfs_store.list() == [MAIN_BRANCH]


async def test_zfs_clone_is_a_snapshot_clone_keeping_owner_mode_and_isolation(
    zfs_store: ZfsStorage,
) -> None:
    started = time.monotonic()
    child = await _assert_clone_preserves_and_isolates(zfs_store)
    assert time.monotonic() - started < 10
    origin = _zfs("get", "-H", "-o", "value", "origin", zfs_store.dataset_of("feature"))
    master, _, snapshot = origin.partition("@")
    assert master == zfs_store.dataset_of(MAIN_BRANCH)
    assert snapshot.startswith("prism-feature-")
    assert child == zfs_store.root / "branches" / "feature"


async def test_zfs_destroy_removes_the_clone_and_its_origin_snapshot(
    zfs_store: ZfsStorage,
) -> None:
    await zfs_store.create(MAIN_BRANCH)
    await zfs_store.clone(MAIN_BRANCH, "feature")
    assert len(_snapshots(zfs_store.dataset_of(MAIN_BRANCH))) == 1

    await zfs_store.destroy("feature")
    await zfs_store.destroy("feature")  # already gone: fine

    assert zfs_store.list() == [MAIN_BRANCH]
    assert not zfs_store.path("feature").exists()
    assert _snapshots(zfs_store.dataset_of(MAIN_BRANCH)) == []


async def test_zfs_refuses_to_delete_a_branch_that_has_clones(zfs_store: ZfsStorage) -> None:
    await zfs_store.create(MAIN_BRANCH)
    await zfs_store.clone(MAIN_BRANCH, "parent")
    await zfs_store.clone("parent", "child")
    (zfs_store.path("child") / "data").write_text("kept\n")

    with pytest.raises(BranchConflict, match=r"cloned from it \(child\)") as caught:
        await zfs_store.destroy("parent")
    assert caught.value.hint is not None and "delete those branches first" in caught.value.hint
    with pytest.raises(BranchConflict, match="parent"):
        await zfs_store.destroy(MAIN_BRANCH)
    assert zfs_store.list() == [MAIN_BRANCH, "child", "parent"]
    assert (zfs_store.path("child") / "data").read_text() == "kept\n"

    await zfs_store.destroy("child")
    await zfs_store.destroy("parent")
    assert zfs_store.list() == [MAIN_BRANCH]


async def test_zfs_keeps_deleted_datasets_for_undelete_until_purged(
    zfs_store: ZfsStorage,
) -> None:
    """A parent and its child deleted together (``with_children``): both renamed aside, put
    back mounted with their data, and purged child first with their origin snapshots."""
    await zfs_store.create(MAIN_BRANCH)
    await zfs_store.clone(MAIN_BRANCH, "parent")
    await zfs_store.clone("parent", "child")
    (zfs_store.path("child") / "data").write_text("kept\n")

    assert await zfs_store.trash("child", "aa01")
    assert await zfs_store.trash("parent", "bb02")
    assert zfs_store.list() == [MAIN_BRANCH]
    assert sorted(await zfs_store.trashed()) == [("child", "aa01"), ("parent", "bb02")]
    assert await zfs_store.sweep() == []  # a restart keeps them

    assert await zfs_store.untrash("parent", "bb02")
    assert await zfs_store.untrash("child", "aa01")
    assert (zfs_store.path("child") / "data").read_text() == "kept\n"
    assert zfs_store.list() == [MAIN_BRANCH, "child", "parent"]

    assert await zfs_store.trash("child", "aa01")
    assert await zfs_store.trash("parent", "bb02")
    await zfs_store.purge("child", "aa01")
    await zfs_store.purge("parent", "bb02")
    assert await zfs_store.trashed() == []
    assert _snapshots(zfs_store.dataset_of(MAIN_BRANCH)) == []


async def test_open_storage_zfs_names_a_missing_dataset_and_how_to_create_it() -> None:
    require_root()
    require_command("zfs")
    with pytest.raises(StorageError, match="does not exist") as caught:
        await open_storage("zfs", Path("/nonexistent"), dataset=f"{ZFS_POOL}/no-such-dataset")
    assert caught.value.hint is not None and "zfs create" in caught.value.hint


async def test_zfs_refuses_a_master_dataset_mounted_elsewhere(zfs_store: ZfsStorage) -> None:
    elsewhere = Path(tempfile.mkdtemp(prefix="prism-zfs-elsewhere-")) / "master"
    master = zfs_store.dataset_of(MAIN_BRANCH)
    _zfs("create", "-o", f"mountpoint={elsewhere}", master)
    try:
        with pytest.raises(StorageError, match="Prism expects it at") as caught:
            await open_storage("zfs", zfs_store.root, dataset=zfs_store.dataset)
        assert caught.value.hint == f"zfs set mountpoint={zfs_store.path(MAIN_BRANCH)} {master}"
    finally:
        await zfs_store.destroy(MAIN_BRANCH)
        shutil.rmtree(elsewhere.parent, ignore_errors=True)
