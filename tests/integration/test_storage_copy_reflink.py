"""The copy driver in a temp dir, ``auto`` on the local filesystem, and reflink's refusal there.

No root needed. The filesystem under ``tmp_path`` is whatever this machine has (ext4, tmpfs,
overlay); tests that depend on it being unable to reflink say so and skip otherwise.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from prism.core.errors import StorageError
from prism.core.names import MAIN_BRANCH
from prism.storage import open_storage
from prism.storage._probe import filesystem_type, probe_reflink
from prism.storage.copy import CopyStorage
from prism.storage.reflink import ReflinkStorage
from tests.storage_trees import fill_sample_tree, snapshot_tree


@pytest.fixture
async def storage(tmp_path: Path) -> CopyStorage:
    """A copy driver whose main branch holds the sample tree."""
    store = CopyStorage(tmp_path / "root")
    fill_sample_tree(await store.create(MAIN_BRANCH))
    return store


def leftovers(store: CopyStorage) -> list[str]:
    """Everything under the root that is not a branch: staging dirs a failure left behind."""
    found = [p.name for p in store.root.iterdir() if p.name.startswith(".")]
    if store.branches_dir.exists():
        found += [p.name for p in store.branches_dir.iterdir() if p.name.startswith(".")]
    return found


async def test_create_makes_an_empty_private_directory(tmp_path: Path) -> None:
    store = CopyStorage(tmp_path / "root")
    path = await store.create("fresh")
    assert path == tmp_path / "root" / "branches" / "fresh"
    assert list(path.iterdir()) == []
    assert path.stat().st_mode & 0o777 == 0o700
    with pytest.raises(StorageError, match="already exists"):
        await store.create("fresh")


async def test_clone_copies_contents_modes_timestamps_and_symlinks(storage: CopyStorage) -> None:
    child = await storage.clone(MAIN_BRANCH, "feature")
    assert child == storage.root / "branches" / "feature"
    assert snapshot_tree(child) == snapshot_tree(storage.path(MAIN_BRANCH))
    assert storage.list() == [MAIN_BRANCH, "feature"]


async def test_clone_is_private_even_if_the_parent_is_not(storage: CopyStorage) -> None:
    storage.path(MAIN_BRANCH).chmod(0o755)
    child = await storage.clone(MAIN_BRANCH, "feature")
    assert child.stat().st_mode & 0o777 == 0o700


async def test_writes_to_child_and_parent_stay_apart(storage: CopyStorage) -> None:
    child = await storage.clone(MAIN_BRANCH, "feature")
    parent = storage.path(MAIN_BRANCH)
    (child / "PG_VERSION").write_text("child\n")
    (parent / "postgresql.conf").write_text("parent\n")
    (child / "only-in-child").touch()
    assert (parent / "PG_VERSION").read_text() == "18\n"
    assert (child / "postgresql.conf").read_text() == "port = 5432\n"
    assert not (parent / "only-in-child").exists()


async def test_destroy_removes_the_branch_and_tolerates_a_missing_one(
    storage: CopyStorage,
) -> None:
    await storage.clone(MAIN_BRANCH, "feature")
    await storage.destroy("feature")
    assert not storage.exists("feature")
    assert storage.list() == [MAIN_BRANCH]
    await storage.destroy("feature")


async def test_list_skips_staging_directories_and_stray_files(storage: CopyStorage) -> None:
    storage.branches_dir.mkdir()
    (storage.branches_dir / ".half.partial").mkdir()
    (storage.branches_dir / "notes.txt").touch()
    (storage.branches_dir / "b").mkdir()
    (storage.branches_dir / "a").mkdir()
    assert storage.list() == [MAIN_BRANCH, "a", "b"]


async def test_clone_of_a_missing_parent_fails_and_leaves_nothing(storage: CopyStorage) -> None:
    with pytest.raises(StorageError, match="'ghost'") as caught:
        await storage.clone("ghost", "feature")
    assert caught.value.hint
    assert not storage.exists("feature")
    assert leftovers(storage) == []


async def test_clone_never_overwrites_an_existing_child(storage: CopyStorage) -> None:
    await storage.clone(MAIN_BRANCH, "feature")
    (storage.path("feature") / "mine").touch()
    with pytest.raises(StorageError, match="already exists"):
        await storage.clone(MAIN_BRANCH, "feature")
    assert (storage.path("feature") / "mine").exists()


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Make every write past ``limit`` bytes fail with EFBIG, for this process and its children.

    A "full disk" that works without root and hits ``cp`` halfway through a copy. SIGXFSZ is
    ignored here so that the test process itself would only see an error.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


async def test_clone_that_fails_halfway_removes_the_partial_copy(storage: CopyStorage) -> None:
    parent = storage.path(MAIN_BRANCH)
    (parent / "zz-big").write_bytes(b"x" * (4 << 20))  # fails; smaller files copy fine
    with file_size_limit(1 << 20), pytest.raises(StorageError) as caught:
        await storage.clone(MAIN_BRANCH, "feature")
    # subprocess restores SIGXFSZ's default in the child, so cp dies of it mid-copy
    assert "SIGXFSZ" in caught.value.message
    assert not storage.exists("feature")
    assert leftovers(storage) == []


async def test_cancelled_clone_removes_the_partial_copy(storage: CopyStorage) -> None:
    parent = storage.path(MAIN_BRANCH)
    for i in range(64):
        (parent / f"data-{i}").write_bytes(os.urandom(1 << 20))
    with trio.move_on_after(0.02) as scope:
        await storage.clone(MAIN_BRANCH, "feature")
    assert scope.cancelled_caught, "clone finished before the test could cancel it"
    assert not storage.exists("feature")
    assert leftovers(storage) == []


def _churn(directory: Path, stop: threading.Event) -> None:
    """Make and remove files and directories in ``directory`` until ``stop``, as a live
    server's ``pg_wal/archive_status`` and temporary files come and go."""
    round_ = 0
    while not stop.is_set():
        made = directory / f"dir{round_}" / "sub"
        made.mkdir(parents=True)
        (made / "z").write_bytes(b"z")
        files = [directory / f"f{round_}-{i}" for i in range(20)]
        for file in files:
            file.write_bytes(b"y")
        for file in files:
            file.unlink()
        shutil.rmtree(directory / f"dir{round_}")
        round_ += 1


def _without_churn(tree: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    return {path: info for path, info in tree.items() if not path.startswith("churn")}


async def test_files_and_directories_vanishing_during_a_clone_are_left_out(
    storage: CopyStorage, caplog: pytest.LogCaptureFixture
) -> None:
    parent = storage.path(MAIN_BRANCH)
    for i in range(300):
        (parent / "base" / f"stable-{i}").write_bytes(b"s")
    churning = parent / "churn"
    churning.mkdir()
    stable = _without_churn(snapshot_tree(parent))
    stop = threading.Event()
    caplog.set_level(logging.DEBUG, logger="prism.storage._tree")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, _churn, churning, stop)
        try:
            for i in range(20):
                child = await storage.clone(MAIN_BRANCH, f"b{i}")
                assert _without_churn(snapshot_tree(child)) == stable
                await storage.destroy(f"b{i}")
        finally:
            stop.set()
    assert "vanished while copied" in caplog.text, "nothing vanished: the test proved nothing"
    assert leftovers(storage) == []


async def test_refresh_subdir_replaces_only_that_subdirectory(storage: CopyStorage) -> None:
    child = await storage.clone(MAIN_BRANCH, "feature")
    parent = storage.path(MAIN_BRANCH)
    (parent / "pg_wal" / "000000010000000000000001").write_bytes(b"new wal")
    (parent / "pg_wal" / "000000010000000000000002").write_bytes(b"next segment")
    (parent / "PG_VERSION").write_text("changed in parent\n")
    (child / "pg_wal" / "stale").touch()

    await storage.refresh_subdir(MAIN_BRANCH, "feature", "pg_wal")

    assert snapshot_tree(child / "pg_wal") == snapshot_tree(parent / "pg_wal")
    assert (child / "PG_VERSION").read_text() == "18\n"
    assert sorted(p.name for p in child.iterdir() if p.name.startswith(".")) == []


async def test_refresh_of_a_missing_subdir_fails_and_keeps_the_child(
    storage: CopyStorage,
) -> None:
    child = await storage.clone(MAIN_BRANCH, "feature")
    with pytest.raises(StorageError, match="does not exist"):
        await storage.refresh_subdir(MAIN_BRANCH, "feature", "pg_nothing")
    assert (child / "pg_wal").is_dir()


async def test_copy_usage_is_the_full_size_of_the_clone(storage: CopyStorage) -> None:
    (storage.path(MAIN_BRANCH) / "blob").write_bytes(os.urandom(1 << 20))
    await storage.clone(MAIN_BRANCH, "feature")
    usage = storage.usage_bytes("feature")
    assert usage is not None
    assert usage >= (1 << 20) + 64 * 1024
    assert storage.usage_bytes("absent") is None


async def _require_no_reflink(path: Path) -> str:
    """The reflink probe's refusal at ``path``, or skip where this machine's /tmp can reflink."""
    reason = await probe_reflink(path)  # creates path
    if reason is None or await filesystem_type(path) == "btrfs":
        pytest.skip(f"{path} is on a filesystem that can reflink; this test needs one that cannot")
    return reason


async def test_auto_chooses_copy_where_reflink_is_impossible_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await _require_no_reflink(tmp_path)
    fstype = await filesystem_type(tmp_path)
    with caplog.at_level(logging.INFO, logger="prism.storage"):
        store = await open_storage("auto", tmp_path / "root")
    assert store.name == "copy"
    assert f"storage: copy ({fstype} at {tmp_path / 'root'} cannot reflink" in caplog.text
    assert list((tmp_path / "root").iterdir()) == []  # the probe cleans up its temp files


async def test_reflink_refuses_to_open_on_a_filesystem_without_reflinks(tmp_path: Path) -> None:
    reason = await _require_no_reflink(tmp_path)
    with pytest.raises(StorageError) as caught:
        await open_storage("reflink", tmp_path / "root")
    assert reason in caught.value.message
    assert caught.value.hint is not None
    assert "reflink=1" in caught.value.hint


async def test_reflink_clone_never_falls_back_to_a_full_copy(tmp_path: Path) -> None:
    await _require_no_reflink(tmp_path)
    store = ReflinkStorage(tmp_path / "root")  # skipping open_storage's check on purpose
    fill_sample_tree(await store.create(MAIN_BRANCH))
    with pytest.raises(StorageError, match="failed to clone") as caught:
        await store.clone(MAIN_BRANCH, "feature")
    assert caught.value.hint is not None
    assert "reflink" in caught.value.hint
    assert not store.exists("feature")
    assert store.list() == [MAIN_BRANCH]
