"""The pure rules of point in time: when a snapshot is due, which ones retention drops, which
archived WAL they no longer need, and how ``at`` is read."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

import pytest
import trio
import trio.testing

from prism.branches.pitr import PointInTime, SnapshotSource, parse_at
from prism.branches.snapshots import RETRY_SECONDS, Snapshot, expired, is_due
from prism.branches.walarchive import WalArchive
from prism.core.address import BackendAddress
from prism.core.diskrules import Retention
from prism.core.errors import RuntimeStartFailed
from prism.core.events import EventBus
from prism.core.values import BranchPattern
from prism.durable.journal import Journal
from tests.fakes import FakeStorage, InlineStateStore

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _snapshot(hours_ago: float) -> Snapshot:
    return Snapshot(f"snap:main:{hours_ago}", "main", NOW - hours_ago * HOUR, "0" * 24)


def test_a_snapshot_is_due_when_none_is_kept_or_the_newest_is_old_enough() -> None:
    assert is_due([], NOW, HOUR)
    assert not is_due([_snapshot(0.5)], NOW, HOUR)
    assert is_due([_snapshot(1)], NOW, HOUR)


def test_retention_keeps_the_newest_snapshot_at_or_before_its_cutoff() -> None:
    kept = [_snapshot(h) for h in (10, 8, 6, 4, 2)]  # oldest first
    dropped = expired(kept, NOW, 5 * HOUR)
    # 6 h ago covers the cutoff (5 h ago) onward, so only 10 and 8 go.
    assert [s.name for s in dropped] == ["snap:main:10", "snap:main:8"]


def test_retention_never_drops_the_newest_snapshot() -> None:
    assert expired([_snapshot(50), _snapshot(40)], NOW, HOUR) == [_snapshot(50)]
    assert expired([_snapshot(50)], NOW, HOUR) == []


def test_pruning_the_archive_compares_positions_and_keeps_history(tmp_path: Path) -> None:
    archive = WalArchive(tmp_path)
    names = [
        "000000010000000000000003",
        "000000010000000000000004",
        "000000010000000000000005.partial",
        "000000020000000000000002",  # a later timeline, an earlier position
        "00000002.history",
        ".000000010000000000000006.tmp",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert archive.prune("000000010000000000000004") == 2
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == sorted(set(names) - {"000000010000000000000003", "000000020000000000000002"})


def test_restore_command_tries_the_archive_then_mains_live_wal(tmp_path: Path) -> None:
    command = WalArchive(tmp_path / "a b").restore_command(tmp_path / "pg_wal")
    archived, live = f"'{tmp_path}/a b'/%f", f"{tmp_path}/pg_wal/%f"
    assert command == (
        f"cp {archived} %p 2>/dev/null || cp {live} %p 2>/dev/null || cp {archived} %p"
    )


def test_a_container_archives_and_restores_through_the_paths_it_sees(tmp_path: Path) -> None:
    archive = WalArchive(tmp_path / "main")
    inside = PurePosixPath("/var/lib/prism/wal-archive")
    command = archive.server_settings(standby=False, seen_at=inside)["archive_command"]
    assert f"{inside}/%f" in command and str(tmp_path) not in command
    restore = archive.restore_command(PurePosixPath("/r/pg_wal"), seen_at=PurePosixPath("/r/a"))
    assert restore == (
        "cp /r/a/%f %p 2>/dev/null || cp /r/pg_wal/%f %p 2>/dev/null || cp /r/a/%f %p"
    )


def test_at_is_rfc_3339_with_a_zone_or_a_duration_before_now() -> None:
    assert parse_at("2026-11-29T07:31:00Z", NOW) == datetime(2026, 11, 29, 7, 31, tzinfo=UTC)
    assert parse_at("-15m", NOW) == NOW - timedelta(minutes=15)
    for bad in ("2026-11-29T07:31:00", "yesterday", "-soon"):
        with pytest.raises(ValueError):
            parse_at(bad, NOW)


async def test_a_failing_snapshot_is_reported_tried_again_and_leaves_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Main whose server cannot be reached (nothing listens on its port): the schedule
    publishes ``snapshot_failed``, retries a minute later, and never raises."""
    events, storage = EventBus(), FakeStorage(tmp_path / "root")
    journal = Journal(InlineStateStore(tmp_path / "prism.db"))
    kept = PointInTime(tmp_path, storage, events, journal=journal)
    asked: list[str] = []
    nowhere = BackendAddress(host="127.0.0.1", port=1, service_socket_dir=None)

    def running(name: str) -> BackendAddress | None:
        asked.append(name)
        return nowhere

    async def clone(name: str, target: str) -> None:
        raise AssertionError("no clone without the redo point")

    source = SnapshotSource(names=lambda: ["main", "dev"], running=running, clone=clone)
    run = functools.partial(
        kept.run, every=3600.0, retention=Retention(86400.0), source=source, superuser="postgres"
    )
    failures = []
    async with events.subscribe() as subscription, trio.open_nursery() as nursery:
        nursery.start_soon(run)
        started = trio.current_time()
        async for event in subscription:
            failures.append(event)
            if len(failures) == 2:
                break
        nursery.cancel_scope.cancel()
    assert trio.current_time() - started >= RETRY_SECONDS
    assert [(e["type"], e["branch"]) for e in failures] == 2 * [("snapshot_failed", "main")]
    assert asked == ["main", "main"]  # only main keeps WAL by default: dev is never asked
    assert kept.snapshots() == [] and storage.list() == []
    assert list((tmp_path / "snapshots").iterdir()) == []  # no intent marker left
    assert await journal.entries() == []  # nor an intent


async def test_the_timer_never_starts_a_stopped_branch(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A stopped branch writes no WAL: the timer skips it, and takes its snapshot once its
    server has started (it is poked, not a minute or an hour later)."""
    events, storage = EventBus(), FakeStorage(tmp_path / "root")
    journal = Journal(InlineStateStore(tmp_path / "prism.db"))
    kept = PointInTime(
        tmp_path, storage, events, journal=journal, branches=BranchPattern.parse("main|dev")
    )
    address: BackendAddress | None = None
    cloned: list[str] = []

    async def clone(name: str, target: str) -> None:
        cloned.append(name)
        raise RuntimeStartFailed("the clone failed")

    source = SnapshotSource(names=lambda: ["dev"], running=lambda name: address, clone=clone)
    run = functools.partial(
        kept.run, every=3600.0, retention=Retention(86400.0), source=source, superuser="postgres"
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.sleep(7200)
        assert cloned == []
        address = BackendAddress(host="127.0.0.1", port=1, service_socket_dir=None)
        woken = trio.current_time()
        async with events.subscribe() as subscription:
            await kept.started("dev", address)
            async for event in subscription:
                assert event["type"] == "snapshot_failed" and event["branch"] == "dev"
                break
        assert trio.current_time() - woken < 1
        nursery.cancel_scope.cancel()
