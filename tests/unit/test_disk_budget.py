"""The disk budget on fakes: sizes and reserves read, the fit decision, holds that race, the
reclaimer asked before a refusal, retention's size bound, and the watcher's actions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from prism.branches.diskwatch import DiskWatch, MainControl
from prism.branches.snapshots import Snapshot, taken_before
from prism.core.diskrules import (
    STOP_ROOM,
    WAL_SEGMENT,
    DiskReserve,
    Kept,
    Level,
    Retention,
    Space,
    ballast_size,
    clone_need,
    level,
    over_size,
    shortfall,
    snapshot_due_by_size,
)
from prism.core.errors import ConfigError, DiskFull
from prism.core.events import EventBus
from prism.core.units import format_size, parse_size
from prism.server import within_budget
from prism.storage.ballast import Ballast
from prism.storage.budget import DiskBudget, SpaceUse
from tests.fakes import FakeStorage

MiB, GiB = 2**20, 2**30


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", MiB), ("500MB", 500_000_000), ("2GiB", 2 * GiB), ("1.5 GiB", 3 * GiB // 2)],
)
def test_sizes_are_read_in_si_and_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "12 parsecs", "-1GiB", "GiB", "1e9"])
def test_a_size_that_is_not_one_is_refused_with_what_is_accepted(text: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_size(text)
    assert refused.value.hint is not None and "2GiB" in refused.value.hint


def test_the_default_reserve_is_the_smaller_of_ten_percent_and_two_gib() -> None:
    assert DiskReserve().of(300 * MiB) == 30 * MiB
    assert DiskReserve().of(100 * GiB) == 2 * GiB
    assert str(DiskReserve()) == "10%,2GiB"


@pytest.mark.parametrize(
    ("text", "total", "kept"),
    [("5%", 1000 * MiB, 50 * MiB), ("100MiB", GiB, 100 * MiB), ("50%,1GiB", 10 * GiB, GiB)],
)
def test_a_reserve_is_a_percentage_a_size_or_the_smaller_of_both(
    text: str, total: int, kept: int
) -> None:
    reserve = DiskReserve.parse(text)
    assert reserve.of(total) == kept
    assert DiskReserve.parse(str(reserve)) == reserve


@pytest.mark.parametrize("text", ["", "100%", "5%,6%", "1GiB,2GiB", "ten percent"])
def test_a_bad_reserve_is_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        DiskReserve.parse(text)


def test_retention_takes_a_time_a_size_or_both() -> None:
    assert Retention.parse("7d,5GiB") == Retention(7 * 86400.0, 5 * GiB)
    assert Retention.parse("3h") == Retention(3 * 3600.0, None)
    assert Retention.parse("500MiB") == Retention(7 * 86400.0, 500 * MiB)
    assert str(Retention()) == "7d,5GiB"
    assert Retention.parse(str(Retention())) == Retention()
    with pytest.raises(ConfigError):
        Retention.parse("7d,8d")


def test_an_operation_fits_only_if_the_reserve_stays_free_counting_what_others_hold() -> None:
    space = Space(total=1000 * MiB, free=200 * MiB)
    assert shortfall(space, need=100 * MiB, reserve=100 * MiB) == 0
    assert shortfall(space, need=101 * MiB, reserve=100 * MiB) == MiB
    assert shortfall(space, need=50 * MiB, reserve=100 * MiB, held=60 * MiB) == 10 * MiB
    # The ballast is Prism's to give back: it counts as free.
    assert shortfall(Space(1000 * MiB, 150 * MiB, 50 * MiB), 100 * MiB, 100 * MiB) == 0


def test_a_copy_needs_the_parents_size_and_its_wal_again_a_cow_clone_little() -> None:
    assert clone_need(parent_bytes=GiB, copies_data=True) == GiB
    assert clone_need(parent_bytes=GiB, copies_data=False) == WAL_SEGMENT
    # A copy in backup mode copies pg_wal again beside the first copy.
    assert clone_need(parent_bytes=GiB, copies_data=True, wal_bytes=48 * MiB) == GiB + 48 * MiB


def test_levels_go_low_under_the_reserve_then_critical_then_full_without_ballast() -> None:
    reserve = 100 * MiB
    assert level(Space(GiB, 200 * MiB), reserve) is Level.OK
    assert level(Space(GiB, 90 * MiB), reserve) is Level.LOW
    assert level(Space(GiB, 40 * MiB, 50 * MiB), reserve) is Level.LOW
    assert level(Space(GiB, STOP_ROOM - 1, 50 * MiB), reserve) is Level.CRITICAL
    assert level(Space(GiB, STOP_ROOM - 1), reserve) is Level.FULL


@pytest.mark.parametrize("reserve", [10 * MiB, 40 * MiB, 100 * MiB, 2 * GiB])
def test_what_the_budget_allows_is_never_critical(reserve: int) -> None:
    ballast = ballast_size(reserve)
    assert level(Space(10 * GiB, reserve - ballast, ballast), reserve) is Level.OK


def test_the_size_bound_drops_the_oldest_snapshots_first_and_never_the_newest() -> None:
    kept = [Kept("a", 100, 50), Kept("b", 100, 50), Kept("c", 100, 50)]
    assert over_size(kept, None) == []
    assert over_size(kept, 450) == []
    assert over_size(kept, 449) == ["a"]
    assert over_size(kept, 200) == ["a", "b"]
    assert over_size(kept, 10) == ["a", "b"]  # the newest stays; the caller says so


def test_a_snapshot_is_due_early_when_the_archive_grew_a_quarter_of_the_bound() -> None:
    assert not snapshot_due_by_size(10 * GiB, None)
    assert not snapshot_due_by_size(GiB, 4 * GiB)
    assert snapshot_due_by_size(GiB + 1, 4 * GiB)


def test_pruning_before_a_time_keeps_the_snapshot_that_time_starts_from() -> None:
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    snapshots = [Snapshot(f"s{h}", "main", now - timedelta(hours=h), "0" * 24) for h in (5, 3, 1)]
    assert [s.name for s in taken_before(snapshots, now - timedelta(hours=2))] == ["s5"]
    assert [s.name for s in taken_before(snapshots, now)] == ["s5", "s3"]


class _Disk:
    """A file system whose free space a test sets; a ballast on it takes its bytes."""

    def __init__(self, total: int, free: int, ballast: Ballast | None = None) -> None:
        self.total, self.free, self.ballast = total, free, ballast

    def __call__(self, path: Path) -> tuple[int, int]:
        taken = 0 if self.ballast is None else self.ballast.present()
        return self.total, self.free - taken


class _Reclaimer:
    def __init__(self, disk: _Disk, frees: int) -> None:
        self.disk, self.frees = disk, frees
        self.asked: list[int] = []

    async def reclaim(self, need_bytes: int) -> int:
        self.asked.append(need_bytes)
        self.disk.free += self.frees
        return self.frees


def _budget(disk: _Disk) -> DiskBudget:
    return DiskBudget(
        storage=FakeStorage(),
        data_dir=Path("fake-data"),
        reserve=DiskReserve.parse("100MiB"),
        archives=True,
        statfs=disk,
    )


async def test_a_hold_counts_until_released_so_two_racing_operations_cannot_share_the_room() -> (
    None
):
    budget = _budget(_Disk(GiB, 200 * MiB))
    first = await budget.hold({"branches": 80 * MiB}, what="create branch a")
    with pytest.raises(DiskFull) as refused:
        await budget.hold({"branches": 80 * MiB}, what="create branch b")
    assert refused.value.sqlstate == "53100"
    assert "create branch b" in refused.value.message
    assert "held by operations under way" in refused.value.message
    first.release()
    first.release()  # harmless
    (await budget.hold({"branches": 80 * MiB}, what="create branch b")).release()


async def test_a_refusal_says_what_is_free_what_is_kept_and_what_uses_the_space() -> None:
    budget = _budget(_Disk(GiB, 120 * MiB))
    budget.use = SpaceUse(branches=700 * MiB, snapshots=0, wal_archive=561 * MiB, trash=0)
    with pytest.raises(DiskFull) as refused:
        await budget.hold({"branches": 40 * MiB}, what='create branch "x"')
    error = refused.value
    assert format_size(120 * MiB) in error.message and format_size(100 * MiB) in error.message
    assert error.detail is not None and "wal archive 561.0 MiB" in error.detail
    assert error.hint is not None and "prism archive prune" in error.hint


async def test_the_reclaimer_is_asked_for_the_missing_bytes_before_a_refusal() -> None:
    disk = _Disk(GiB, 120 * MiB)
    reclaimer = _Reclaimer(disk, frees=30 * MiB)
    budget = _budget(disk)
    (await budget.hold({"branches": 40 * MiB}, what="create", reclaimer=reclaimer)).release()
    assert reclaimer.asked == [20 * MiB]
    reclaimer.frees = 0
    with pytest.raises(DiskFull):
        await budget.hold({"branches": 200 * MiB}, what="create", reclaimer=reclaimer)
    assert reclaimer.asked[-1] == 150 * MiB


async def test_a_server_is_not_started_on_a_file_system_too_full_for_its_wal() -> None:
    disk = _Disk(GiB, STOP_ROOM - 1)
    budget = _budget(disk)
    with pytest.raises(DiskFull, match="cannot start branch"):
        budget.refuse_start("main")
    disk.free = 60 * MiB  # low, but a server may run: it is main's own growth
    budget.refuse_start("main")


async def test_the_watcher_releases_the_ballast_then_stops_main_and_says_so(
    tmp_path: Path,
) -> None:
    ballast = Ballast(tmp_path / "ballast", MiB)
    disk = _Disk(GiB, 300 * MiB, ballast)
    budget = _budget(disk)
    events = EventBus()
    stops: list[str] = []

    async def stop_main() -> None:
        stops.append("main")

    async def use() -> SpaceUse:
        return SpaceUse()

    watch = DiskWatch(budget, events, MainControl(stop_main, use), ballast)
    seen: list[dict[str, object]] = []
    events.add_listener(seen.append)
    await watch.check()
    assert ballast.present() == MiB  # written while there is room
    disk.free = 90 * MiB
    await watch.check()
    disk.free = STOP_ROOM - 1 + MiB  # main wrote on: less than it needs, but for the ballast
    await watch.check()
    assert ballast.present() == 0 and stops == []  # the ballast gave main its room
    disk.free = STOP_ROOM - 1  # main ate it too
    await watch.check()
    await watch.check()
    assert stops == ["main"]  # once
    disk.free = 500 * MiB
    await watch.check()
    await watch.check()
    assert ballast.present() == MiB
    levels = [(e["type"], e["level"]) for e in seen]
    assert levels == [("disk_low", "low"), ("disk_low", "full"), ("disk_ok", "ok")]
    assert "start main" in str(seen[1]["error"])


async def test_main_started_again_before_the_disk_is_ok_is_stopped_again_when_it_fills_it(
    tmp_path: Path,
) -> None:
    """The operator frees some space and starts main (allowed once the disk is not full);
    main fills it again: it is stopped again, not left to PANIC."""
    disk = _Disk(GiB, STOP_ROOM - 1)
    stops: list[str] = []

    async def stop_main() -> None:
        stops.append("main")

    async def use() -> SpaceUse:
        return SpaceUse()

    watch = DiskWatch(_budget(disk), EventBus(), MainControl(stop_main, use), None)
    await watch.check()
    disk.free = 60 * MiB  # low: main may start again
    await watch.check()
    disk.free = STOP_ROOM - 1
    await watch.check()
    assert stops == ["main", "main"]


async def test_a_base_backup_is_not_begun_on_a_disk_already_under_its_reserve() -> None:
    made: list[Path] = []

    async def make(pgdata: Path) -> None:
        made.append(pgdata)

    disk = _Disk(GiB, 90 * MiB)
    guarded = within_budget(_budget(disk), make, "take a base backup of the source")
    with pytest.raises(DiskFull, match="take a base backup"):
        await guarded(Path("main"))
    assert made == []
    disk.free = 500 * MiB
    await guarded(Path("main"))
    assert made == [Path("main")]
