"""What a server is started with beyond Prism's own settings, from the point-in-time windows
through the manager into ``Runtime.start``: on the fakes, under MockClock."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import trio
import trio.testing

from prism.branches.pitr import PointInTime
from prism.core.events import EventBus
from prism.core.names import MAIN_BRANCH
from prism.core.values import BranchPattern
from prism.durable.journal import Journal
from prism.runtime.base import Runtime, Share
from prism.runtime.docker import CONTAINER_ARCHIVE, CONTAINER_PATHS, seen_in_container
from tests.fakes import FakeRuntime, FakeSourceTools, FakeStorage, InlineStateStore
from tests.manager_kit import open_manager


def _point_in_time(tmp_path: Path, storage: FakeStorage) -> PointInTime:
    journal = Journal(InlineStateStore(tmp_path / "windows.db"))
    return PointInTime(
        tmp_path / "prism",
        storage,
        EventBus(),
        journal=journal,
        branches=BranchPattern.parse(MAIN_BRANCH),
    )


async def test_a_branch_that_keeps_wal_starts_archiving_into_its_own_archive(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    storage = FakeStorage(tmp_path / "data")
    storage.path(MAIN_BRANCH).mkdir(parents=True)
    windows = _point_in_time(tmp_path, storage)
    async with open_manager(tmp_path, storage=storage, server_extras=windows) as (
        manager,
        _,
        runtime,
    ):
        archive = windows.archive_of(MAIN_BRANCH).directory
        assert archive.is_dir()
        assert runtime.shared[MAIN_BRANCH] == (archive,)
        settings = runtime.started_with[MAIN_BRANCH]
        assert settings["archive_mode"] == "on"
        assert f"{archive}/%f" in settings["archive_command"]
        # A branch that keeps no WAL is given nothing.
        await manager.create("feat")
        assert runtime.started_with["feat"] == {} and runtime.shared["feat"] == ()


async def test_a_branch_recovering_to_a_time_reads_its_parents_archive_and_live_wal(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    storage = FakeStorage(tmp_path / "data")
    storage.path(MAIN_BRANCH).mkdir(parents=True)
    windows = _point_in_time(tmp_path, storage)
    async with open_manager(tmp_path, storage=storage, server_extras=windows) as (
        manager,
        _,
        runtime,
    ):
        await manager.create("past")
        await manager.stop("past")
        # What ``PointInTime.clone`` leaves: a clone that recovers at its next start.
        storage.path("past").mkdir(parents=True)
        (storage.path("past") / "recovery.signal").write_text("")
        await manager.start("past")
        archive = windows.archive_of(MAIN_BRANCH).directory
        live = storage.path(MAIN_BRANCH) / "pg_wal"
        assert runtime.shared["past"] == (archive, live)
        restore = runtime.started_with["past"]["restore_command"]
        assert f"{archive}/%f" in restore and f"{live}/%f" in restore
        assert "archive_command" not in runtime.started_with["past"]


def test_a_container_sees_the_same_directories_at_fixed_paths(tmp_path: Path) -> None:
    storage = FakeStorage(tmp_path / "data")
    storage.path(MAIN_BRANCH).mkdir(parents=True)
    (storage.path(MAIN_BRANCH) / "recovery.signal").write_text("")
    windows = _point_in_time(tmp_path, storage)
    windows.archive_of("parent").directory.mkdir(parents=True)
    extras = windows.server_extras(MAIN_BRANCH, storage.path(MAIN_BRANCH), "parent")
    settings, mounts = extras.resolve(seen_in_container)
    assert [(m.source, m.target, m.read_only) for m in mounts] == [
        (windows.archive_of(MAIN_BRANCH).directory, str(CONTAINER_ARCHIVE), False),
        (windows.archive_of("parent").directory, str(CONTAINER_PATHS[Share.RESTORE_ARCHIVE]), True),
        (storage.path("parent") / "pg_wal", str(CONTAINER_PATHS[Share.RESTORE_WAL]), True),
    ]
    assert str(tmp_path) not in settings["archive_command"] + settings["restore_command"]
    assert f"{CONTAINER_ARCHIVE}/%f" in settings["archive_command"]
    assert f"{PurePosixPath(CONTAINER_PATHS[Share.RESTORE_WAL])}/%f" in settings["restore_command"]


async def test_the_fake_runtime_offers_source_tools_like_the_real_ones(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    assert isinstance(runtime, Runtime)
    tools = await runtime.source_tools(tmp_path / "source", source_host="db.example")
    assert isinstance(tools, FakeSourceTools)
    programs = await tools.for_major(17, what="the source")
    done = await programs.run("psql", ["--version"], env={})
    assert done.returncode == 0 and tools.runs == [("psql", "--version")]
    assert runtime.source_tools_asked == [(tmp_path / "source", "db.example")]
