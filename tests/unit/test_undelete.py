"""The undelete window on the fake tier: a deleted branch comes back whole (data, parent link,
policies), also after a restart and after a crash on either side of its rename; the name may
be reused meanwhile; the window ends in a purge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio.testing

from prism.branches.policy import BranchPolicy
from prism.branches.trash import TrashEntry, due_for_purge, latest, restored_with
from prism.core.errors import BranchExists, BranchNotFound, LimitExceeded, StorageError
from prism.core.events import Event
from prism.durable.intents import DeleteIntent, UndeleteIntent
from prism.durable.state import BranchRecord, StateError, utcnow
from tests.fakes import FakeStorage
from tests.manager_kit import open_manager

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _entry(
    name: str, token: str, minutes: int, *, parent: str = "main", batch: str = ""
) -> TrashEntry:
    return TrashEntry(
        token, name, parent, T0, T0 + timedelta(minutes=minutes), batch or token, BranchPolicy(), 10
    )


def test_purge_is_due_after_the_window_oldest_first() -> None:
    entries = [_entry("b", "2", 10), _entry("a", "1", 5), _entry("c", "3", 50)]
    due = due_for_purge(entries, now=T0 + timedelta(minutes=70), window=3600)
    assert [e.name for e in due] == ["a", "b"]


def test_undelete_brings_back_what_the_same_delete_took_below_it_parents_first() -> None:
    kid = _entry("kid", "1", 1, parent="top", batch="x")
    grandkid = _entry("gk", "0", 0, parent="kid", batch="x")
    top = _entry("top", "2", 2, batch="x")
    other = _entry("other", "3", 2, parent="top", batch="y")
    entries = [grandkid, kid, top, other]
    assert [e.name for e in restored_with(entries, top)] == ["top", "kid", "gk"]
    assert [e.name for e in restored_with(entries, kid)] == ["kid", "gk"]
    assert latest([*entries, _entry("top", "9", 30)], "top") == _entry("top", "9", 30)


async def test_undelete_round_trip_keeps_data_parent_and_policies(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    clock = FakeClock()
    async with open_manager(tmp_path, clock=clock) as (manager, storage, _):
        await manager.create("tmpl")
        await manager.create("feat", "tmpl")
        expires = T0 + timedelta(days=3)
        await manager.set_policy("feat", expires_at=expires, on_create="SELECT 1")
        storage.sizes["feat"] = 4096
        seen: list[Event] = []
        manager.events.add_listener(seen.append)

        assert await manager.delete("feat") == ["feat"]
        assert manager.get("feat") is None and not storage.exists("feat")
        [kept] = manager.trash.list()
        assert (kept.name, kept.parent, kept.deleted_at) == ("feat", "tmpl", T0)
        assert kept.purge_at(manager.trash.window) == T0 + timedelta(hours=1)
        assert "feat" not in [r.name for r in await manager.state.all()]

        assert await manager.undelete("feat") == ["feat"]
        branch = manager.require("feat")
        assert (branch.parent, branch.status.value) == ("tmpl", "stopped")
        assert storage.exists("feat") and storage.sizes["feat"] == 4096
        policy = manager.policy("feat")
        assert (policy.expires_at, policy.on_create) == (expires, "SELECT 1")
        assert manager.trash.list() == []
        assert "feat" in [r.name for r in await manager.state.all()]
        assert [e["type"] for e in seen if e["type"] in ("deleted", "undeleted")] == [
            "deleted",
            "undeleted",
        ]
        assert seen[-1]["expiry_cleared"] is False


async def test_a_deleted_branch_is_still_kept_after_a_restart(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    storage = FakeStorage(tmp_path / "data")
    async with open_manager(tmp_path, storage=storage) as (manager, _, _):
        await manager.create("feat", protected=False)
        await manager.set_policy("feat", on_create="SELECT 2")
        await manager.delete("feat")
    async with open_manager(tmp_path, storage=storage) as (manager, _, _):
        assert [e.name for e in manager.trash.list()] == ["feat"]
        assert manager.get("feat") is None
        await manager.undelete("feat")
        assert manager.policy("feat").on_create == "SELECT 2"
        assert manager.require("feat").parent == "main"


async def test_a_delete_with_children_is_undone_as_a_whole(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path) as (manager, storage, _):
        await manager.create("top")
        await manager.create("kid", "top")
        await manager.create("gk", "kid")
        assert await manager.delete("top", with_children=True) == ["gk", "kid", "top"]
        with pytest.raises(BranchNotFound, match='its parent "top" no longer exists'):
            await manager.undelete("kid")
        assert await manager.undelete("top") == ["top", "kid", "gk"]
        assert manager.children("top") == ["kid"] and manager.children("kid") == ["gk"]
        assert {"top", "kid", "gk"} <= storage.branches


async def test_a_new_branch_may_take_the_name_and_undelete_then_refuses(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path) as (manager, _, _):
        await manager.create("dev")
        await manager.delete("dev")
        await manager.create("dev")
        with pytest.raises(BranchExists, match='cannot undelete branch "dev"'):
            await manager.undelete("dev")
        await manager.delete("dev")
        # Two deleted "dev"s: the last one comes back, the first waits on.
        assert len(manager.trash.list()) == 2
        await manager.undelete("dev")
        assert len(manager.trash.list()) == 1


async def test_the_window_ends_in_a_purge_and_undelete_says_so(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    clock = FakeClock()
    async with open_manager(tmp_path, clock=clock, undelete_window=600) as (manager, storage, _):
        await manager.create("old")
        storage.sizes["old"] = 100
        await manager.delete("old")
        clock.advance(600)
        with pytest.raises(BranchNotFound, match=r"undelete window .* passed"):
            await manager.undelete("old")
        seen: list[Event] = []
        manager.events.add_listener(seen.append)
        assert await manager.trash.purge_due() == ["old"]
        assert storage.deleted == {} and storage.free == 100
        assert seen[-1]["type"] == "purged" and "window passed" in seen[-1]["reason"]
        with pytest.raises(BranchNotFound, match='no deleted branch "old"'):
            await manager.undelete("old")


async def test_no_window_frees_a_deleted_branch_at_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path, undelete_window=0) as (manager, storage, _):
        await manager.create("gone")
        await manager.delete("gone")
        assert manager.trash.list() == [] and storage.deleted == {}


async def test_a_failed_move_to_the_trash_leaves_the_branch_in_place(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path) as (manager, storage, _):
        await manager.create("stuck")
        storage.fail["trash"] = StorageError("rename refused")
        with pytest.raises(StorageError):
            await manager.delete("stuck")
        assert manager.require("stuck").status.value == "stopped"
        assert manager.trash.list() == [] and await manager.journal.entries() == []


@pytest.mark.parametrize("renamed", [False, True])
async def test_recovery_finishes_or_undoes_a_delete_cut_short(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, renamed: bool
) -> None:
    storage = FakeStorage(tmp_path / "data")
    async with open_manager(tmp_path, storage=storage) as (manager, _, _):
        await manager.create("feat")
        await manager.set_policy("feat", on_create="SELECT 3")
        # What a kill after the trash row (and, if ``renamed``, after the rename) leaves.
        entry = TrashEntry(
            "cafe01", "feat", "main", T0, utcnow(), "cafe01", manager.policy("feat"), None
        )
        await manager.journal.record(DeleteIntent("feat", "cafe01"))
        await manager.trash.store.add(entry)
        if renamed:
            await storage.trash("feat", "cafe01")
    async with open_manager(tmp_path, storage=storage) as (manager, _, _):
        assert await manager.journal.entries() == []
        if renamed:
            assert manager.get("feat") is None
            assert [e.name for e in manager.trash.list()] == ["feat"]
            await manager.undelete("feat")
        else:
            assert manager.trash.list() == []
        assert manager.policy("feat").on_create == "SELECT 3"
        assert storage.exists("feat")


@pytest.mark.parametrize("renamed", [False, True])
async def test_recovery_finishes_or_undoes_an_undelete_cut_short(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, renamed: bool
) -> None:
    storage = FakeStorage(tmp_path / "data")
    async with open_manager(tmp_path, storage=storage) as (manager, _, _):
        await manager.create("feat")
        await manager.delete("feat")
        [entry] = manager.trash.list()
        await manager.journal.record(UndeleteIntent("feat", entry.token))
        await manager.state.put(BranchRecord("feat", "main", T0, T0, "stopped"))
        if renamed:
            await storage.untrash("feat", entry.token)
    async with open_manager(tmp_path, storage=storage) as (manager, _, _):
        assert await manager.journal.entries() == []
        assert (manager.get("feat") is not None) is renamed
        assert (manager.trash.list() == []) is renamed


async def test_the_sweep_purges_kept_data_no_entry_owns(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    storage = FakeStorage(tmp_path / "data")
    storage.deleted["lost", "0000aa"] = 7
    async with open_manager(tmp_path, storage=storage) as (manager, _, _):
        assert storage.deleted == {} and storage.free == 7
        assert manager.trash.list() == []


async def test_undelete_counts_against_max_branches_and_a_failure_keeps_it_in_the_trash(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path, max_branches=2) as (manager, storage, _):
        await manager.create("first")
        await manager.delete("first")
        await manager.create("second")
        with pytest.raises(LimitExceeded):
            await manager.undelete("first")
        await manager.delete("second")
        storage.fail["untrash"] = StorageError("rename refused")
        with pytest.raises(StorageError, match="rename refused"):
            await manager.undelete("first")
        assert manager.get("first") is None
        assert "first" not in [r.name for r in await manager.state.all()]
        assert await manager.journal.entries() == []
        del storage.fail["untrash"]
        assert await manager.undelete("first") == ["first"]


async def test_on_a_full_disk_a_delete_frees_the_branch_at_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state file may refuse the trash's row when the disk is full; deleting must still
    work there (it is how space is got back), so the data is freed instead of kept."""
    async with open_manager(tmp_path) as (manager, storage, _):
        await manager.create("big")
        storage.sizes["big"] = 1000

        async def disk_full(entry: TrashEntry) -> None:
            raise StateError("cannot update the trash in prism.db: database or disk is full")

        monkeypatch.setattr(manager.trash.store, "add", disk_full)
        seen: list[Event] = []
        manager.events.add_listener(seen.append)
        assert await manager.delete("big") == ["big"]
        assert manager.get("big") is None and storage.free == 1000
        assert manager.trash.list() == [] and storage.deleted == {}
        assert await manager.journal.entries() == []
        assert [e.get("undelete_until") for e in seen if e["type"] == "deleted"] == [None]
