"""Storage drivers on real btrfs and reflink-capable XFS (``tools/sysenv/filesystems.sh``).

Each test works in its own directory under the mount and removes it afterwards, so tests can
run in any order and in parallel. Owner checks chown the parent to ``nobody`` first: Prism runs
as root while Postgres does not, and a clone owned by root would not start.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from prism.core.errors import StorageError
from prism.core.names import MAIN_BRANCH
from prism.storage import Storage, open_storage
from prism.storage._probe import is_btrfs_subvolume
from prism.storage.btrfs import BtrfsStorage
from prism.storage.copy import CopyStorage
from prism.storage.reflink import ReflinkStorage
from tests.storage_trees import fill_sample_tree, snapshot_tree
from tests.sysenv import BTRFS_MOUNT, XFS_MOUNT, require_command, require_mount, require_root


def _nobody() -> tuple[int, int]:
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


async def _destroy_all(store: Storage) -> None:
    for branch in store.list():
        await store.destroy(branch)


@pytest.fixture
async def btrfs_root() -> AsyncIterator[Path]:
    """A fresh directory on the test btrfs; every subvolume in it is deleted afterwards."""
    require_mount(BTRFS_MOUNT, "btrfs")
    require_command("btrfs")
    root = BTRFS_MOUNT / f"test-{uuid.uuid4().hex[:12]}"
    root.mkdir()
    try:
        yield root
    finally:
        await _destroy_all(BtrfsStorage(root))
        shutil.rmtree(root)


@pytest.fixture
def xfs_root() -> Iterator[Path]:
    """A fresh directory on the test XFS (made with reflink=1), removed afterwards."""
    require_mount(XFS_MOUNT, "xfs")
    root = XFS_MOUNT / f"test-{uuid.uuid4().hex[:12]}"
    root.mkdir()
    try:
        yield root
    finally:
        shutil.rmtree(root)


async def _main_owned_by_nobody(store: Storage) -> Path:
    parent = await store.create(MAIN_BRANCH)
    fill_sample_tree(parent, owner=_nobody())
    return parent


async def _assert_clone_preserves_and_isolates(store: Storage) -> Path:
    """Clone main and check what every driver promises: same tree, owner kept, 0700, apart."""
    parent = await _main_owned_by_nobody(store)
    child = await store.clone(MAIN_BRANCH, "feature")
    assert snapshot_tree(child) == snapshot_tree(parent)
    info = child.stat()
    assert (info.st_uid, info.st_gid) == _nobody()
    assert info.st_mode & 0o777 == 0o700
    (child / "PG_VERSION").write_text("child\n")
    (parent / "postgresql.conf").write_text("parent\n")
    assert (parent / "PG_VERSION").read_text() == "18\n"
    assert (child / "postgresql.conf").read_text() == "port = 5432\n"
    assert store.list() == [MAIN_BRANCH, "feature"]
    return child


# --- btrfs -------------------------------------------------------------------------------------


async def test_btrfs_create_makes_a_private_subvolume(btrfs_root: Path) -> None:
    store = BtrfsStorage(btrfs_root)
    path = await store.create(MAIN_BRANCH)
    assert path == btrfs_root / "master"
    assert is_btrfs_subvolume(path)
    assert path.stat().st_mode & 0o777 == 0o700
    assert not is_btrfs_subvolume(btrfs_root)


async def test_btrfs_clone_is_a_snapshot_keeping_owner_and_mode(btrfs_root: Path) -> None:
    store = BtrfsStorage(btrfs_root)
    child = await _assert_clone_preserves_and_isolates(store)
    assert is_btrfs_subvolume(child)
    assert not is_btrfs_subvolume(store.branches_dir)  # branches/ stays a plain directory
    assert store.usage_bytes("feature") is None


async def test_btrfs_destroy_deletes_the_subvolume(btrfs_root: Path) -> None:
    store = BtrfsStorage(btrfs_root)
    await store.create(MAIN_BRANCH)
    await store.clone(MAIN_BRANCH, "feature")
    await store.destroy("feature")
    await store.destroy("feature")  # already gone: fine
    assert store.list() == [MAIN_BRANCH]


async def test_btrfs_keeps_a_deleted_subvolume_for_undelete_until_purged(btrfs_root: Path) -> None:
    store = BtrfsStorage(btrfs_root)
    await store.create(MAIN_BRANCH)
    child = await store.clone(MAIN_BRANCH, "feature")
    (child / "mine").write_text("kept\n")
    assert await store.trash("feature", "t0k3n")
    assert store.list() == [MAIN_BRANCH] and await store.trashed() == [("feature", "t0k3n")]
    assert await store.sweep() == []  # a restart keeps it
    assert await store.untrash("feature", "t0k3n")
    assert (store.path("feature") / "mine").read_text() == "kept\n"
    assert is_btrfs_subvolume(store.path("feature"))
    assert await store.trash("feature", "t0k3n")
    await store.purge("feature", "t0k3n")
    assert await store.trashed() == [] and store.list() == [MAIN_BRANCH]


async def test_btrfs_refuses_to_snapshot_a_plain_master_and_says_how_to_convert(
    btrfs_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (btrfs_root / "master").mkdir(mode=0o700)
    with caplog.at_level(logging.WARNING):
        store = await open_storage("btrfs", btrfs_root)
    assert "not a btrfs subvolume" in caplog.text
    with pytest.raises(StorageError, match="can only snapshot subvolumes") as caught:
        await store.clone(MAIN_BRANCH, "feature")
    assert caught.value.hint is not None
    assert "btrfs subvolume create" in caught.value.hint
    assert not store.exists("feature")


async def test_btrfs_snapshot_of_a_directory_being_written_is_one_instant(
    btrfs_root: Path,
) -> None:
    """A writer creates ``file-i`` and only then logs ``i``: any instant has a file per entry.

    A file-by-file copy can see the log after files it copied earlier were written, so this
    invariant is exactly what atomicity buys. The log is fsynced like Postgres' WAL: a snapshot
    is crash-consistent, so data still only in the page cache may be missing from it.
    """
    store = BtrfsStorage(btrfs_root)
    parent = await store.create(MAIN_BRANCH)
    stop, running = threading.Event(), threading.Event()

    def write_until_stopped() -> int:
        i = 0
        with open(parent / "log", "a") as log:
            while not stop.is_set():
                (parent / f"file-{i}").write_bytes(os.urandom(4096))
                log.write(f"{i}\n")
                log.flush()
                os.fsync(log.fileno())
                running.set()
                i += 1
        return i

    snapshots = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, write_until_stopped)
        assert await trio.to_thread.run_sync(running.wait, 10), "the writer never started"
        for n in range(5):
            snapshots.append(await store.clone(MAIN_BRANCH, f"snap-{n}"))
            await trio.sleep(0.02)
        stop.set()

    for snapshot in snapshots:
        logged = [int(line) for line in (snapshot / "log").read_text().split()]
        assert logged
        assert all((snapshot / f"file-{i}").exists() for i in logged)


async def test_auto_picks_btrfs_on_btrfs(
    btrfs_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="prism.storage"):
        store = await open_storage("auto", btrfs_root)
    assert isinstance(store, BtrfsStorage)
    assert f"storage: btrfs (btrfs at {btrfs_root}" in caplog.text


# --- reflink on XFS ----------------------------------------------------------------------------


async def test_reflink_clone_keeps_owner_and_mode_on_xfs(xfs_root: Path) -> None:
    store = await open_storage("reflink", xfs_root)
    await _assert_clone_preserves_and_isolates(store)


async def test_reflink_clone_shares_extents_instead_of_copying(xfs_root: Path) -> None:
    store = await open_storage("reflink", xfs_root)
    parent = await store.create(MAIN_BRANCH)
    (parent / "relation").write_bytes(os.urandom(64 << 20))
    os.sync()
    free_before = shutil.disk_usage(xfs_root).free
    await store.clone(MAIN_BRANCH, "feature")
    os.sync()
    assert free_before - shutil.disk_usage(xfs_root).free < 8 << 20


async def test_reflink_refresh_subdir_on_xfs(xfs_root: Path) -> None:
    store = await open_storage("reflink", xfs_root)
    parent = await _main_owned_by_nobody(store)
    child = await store.clone(MAIN_BRANCH, "feature")
    (parent / "pg_wal" / "000000010000000000000002").write_bytes(b"later wal")
    await store.refresh_subdir(MAIN_BRANCH, "feature", "pg_wal")
    assert snapshot_tree(child / "pg_wal") == snapshot_tree(parent / "pg_wal")


async def test_auto_picks_reflink_on_xfs(xfs_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="prism.storage"):
        store = await open_storage("auto", xfs_root)
    assert isinstance(store, ReflinkStorage)
    assert f"storage: reflink (xfs at {xfs_root} supports FICLONE)" in caplog.text


# --- copy, as root -----------------------------------------------------------------------------


async def test_copy_clone_keeps_owner_when_prism_runs_as_root(tmp_path: Path) -> None:
    require_root()
    await _assert_clone_preserves_and_isolates(CopyStorage(tmp_path / "root"))
