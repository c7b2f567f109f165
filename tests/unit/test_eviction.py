"""Eviction under disk pressure: the order (trash, expired, idle by own bytes), who is never
taken, and the executor on the fake tier with a fake clock and fake free space."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio.testing

from prism.branches.eviction import Candidate, Reclaimer, Tier, plan_eviction
from prism.branches.policy import BranchPolicy
from prism.branches.trash import TrashEntry
from prism.core.errors import BranchConflict
from prism.core.events import Event
from tests.fakes import FakeStorage
from tests.manager_kit import open_manager
from tests.unit.test_undelete import FakeClock

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _sizes(storage: FakeStorage) -> Callable[[str], Awaitable[int | None]]:
    """Own bytes as the fake storage holds them (the disk-use cache measures real paths)."""

    async def own_bytes(name: str) -> int | None:
        return storage.sizes.get(name, 0)

    return own_bytes


def _ago(minutes: int) -> datetime:
    return NOW - timedelta(minutes=minutes)


def _trashed(name: str, minutes: int, size: int) -> Candidate:
    entry = TrashEntry(name, name, "main", _ago(999), _ago(minutes), name, BranchPolicy(), size)
    return Candidate(name, size, _ago(minutes), trash=entry)


def test_the_trash_goes_first_then_expired_then_the_largest_idle() -> None:
    candidates = [
        Candidate("small", 10, _ago(500)),
        Candidate("big", 1000, _ago(5)),
        Candidate("late", 50, _ago(1), expires_at=_ago(1)),
        Candidate("early", 50, _ago(1), expires_at=_ago(60)),
        Candidate("not-yet", 5000, _ago(1), expires_at=NOW + timedelta(hours=1)),
        _trashed("newer", 10, 5),
        _trashed("older", 90, 5),
    ]
    plan = plan_eviction(candidates, 10**9, NOW)
    assert [(e.candidate.name, e.tier) for e in plan] == [
        ("older", Tier.TRASH),
        ("newer", Tier.TRASH),
        ("early", Tier.EXPIRED),
        ("late", Tier.EXPIRED),
        ("not-yet", Tier.IDLE),
        ("big", Tier.IDLE),
        ("small", Tier.IDLE),
    ]
    assert "expired at 2026-12-07T11:00:00Z" in plan[2].reason
    assert "purged" in plan[4].reason and "not kept for undelete" in plan[4].reason


def test_never_main_a_protected_branch_one_in_use_or_one_with_children() -> None:
    candidates = [
        Candidate("main", 10**6, _ago(500)),
        Candidate("guarded", 10**6, _ago(500), protected=True, expires_at=_ago(5)),
        Candidate("busy", 10**6, _ago(500), sessions=1, expires_at=_ago(5)),
        Candidate("parent", 10**6, _ago(500), has_children=True),
        Candidate("fair", 1, _ago(500)),
    ]
    assert [e.candidate.name for e in plan_eviction(candidates, 10**9, NOW)] == ["fair"]


def test_the_plan_stops_once_the_known_bytes_reach_the_need() -> None:
    candidates = [
        _trashed("unknown", 50, 0),
        Candidate("a", 300, _ago(1)),
        Candidate("b", 200, _ago(1)),
        Candidate("c", 100, _ago(1)),
        Candidate("mystery", None, _ago(1)),
    ]
    names = [e.candidate.name for e in plan_eviction(candidates, 450, NOW)]
    assert names == ["unknown", "a", "b"]
    assert plan_eviction(candidates, 0, NOW) == []
    # Unknown sizes go last among the idle: they may free nothing.
    assert [e.candidate.name for e in plan_eviction(candidates, 10**9, NOW)][-1] == "mystery"


async def test_reclaim_frees_in_order_until_the_fake_disk_has_room(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    clock = FakeClock()
    async with open_manager(tmp_path, clock=clock) as (manager, storage, _):
        # Named so that by name or by age alone the small one would go first.
        for name in ("deleted", "expiring", "a-small", "z-large", "guarded", "in-use"):
            await manager.create(name, protected=name == "guarded")
        storage.sizes.update(deleted=100, expiring=200, guarded=10**6)
        storage.sizes.update({"a-small": 10, "z-large": 5000})
        storage.sizes["in-use"] = 10**6
        await manager.delete("deleted")
        await manager.set_policy("expiring", expires_at=clock.now - timedelta(minutes=1))
        session = await manager.admit("in-use", "client")
        seen: list[Event] = []
        manager.events.add_listener(seen.append)
        reclaimer = Reclaimer(
            manager, free_bytes=lambda: storage.free, own_bytes=_sizes(storage), clock=clock
        )

        freed = await reclaimer.reclaim(1000)

        assert freed == 5300 and storage.free == 5300
        evicted = [(e["branch"], e["tier"]) for e in seen if e["type"] == "evicted"]
        assert evicted == [("deleted", "trash"), ("expiring", "expired"), ("z-large", "idle")]
        assert all("disk pressure" in e["reason"] for e in seen if e["type"] == "evicted")
        # Evicted live branches are purged, not kept for undelete.
        assert manager.trash.list() == [] and storage.deleted == {}
        assert {b.name for b in manager.list()} == {"main", "a-small", "guarded", "in-use"}
        assert session.branch.connections == 1


async def test_reclaim_does_nothing_when_eviction_is_off(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path) as (manager, storage, _):
        await manager.create("idle")
        storage.sizes["idle"] = 100
        await manager.delete("idle")
        reclaimer = Reclaimer(manager, enabled=False, free_bytes=lambda: storage.free)
        assert await reclaimer.reclaim(100) == 0
        assert len(manager.trash.list()) == 1


async def test_a_session_opened_after_the_plan_saves_its_branch(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The plan is made from a snapshot; the delete checks again under the branch's lock."""
    async with open_manager(tmp_path) as (manager, storage, _):
        await manager.create("late")
        storage.sizes["late"] = 100
        await manager.admit("late", "client")
        with pytest.raises(BranchConflict, match="has an open session"):
            await manager.delete("late", purge="disk pressure", if_idle=True)
        assert manager.get("late") is not None and storage.free == 0
        assert await Reclaimer(manager, free_bytes=lambda: storage.free).reclaim(100) == 0


async def test_a_gauge_that_lags_does_not_evict_more_than_needed(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """btrfs frees a deleted subvolume in the background: the known size counts meanwhile."""
    async with open_manager(tmp_path) as (manager, storage, _):
        for name, size in (("bigger", 500), ("smaller", 400)):
            await manager.create(name)
            storage.sizes[name] = size
        assert (
            await Reclaimer(manager, free_bytes=lambda: 0, own_bytes=_sizes(storage)).reclaim(450)
            == 500
        )
        assert manager.get("bigger") is None and manager.get("smaller") is not None
