"""Branches of main as of a moment in the past: snapshots plus main's archived WAL.

``prism serve --snapshot-every 1h --retention 7d`` (the defaults) makes main archive its WAL
(``prism.walarchive``) and snapshot itself (``prism.snapshots``). A branch ``at`` a time T in
the window (from the oldest kept snapshot to now) is the clone of the newest snapshot complete
at or before T, started with ``recovery_target_time = T``, ``restore_command`` reading the
archive and ``recovery_target_action = promote``: Postgres replays the archive up to the first
commit after T and promotes, so the branch holds exactly the transactions committed at or
before T. The branch's server refuses clients (``hot_standby = off``) until it has promoted,
so the ordinary start of a new branch waits for it.

Recovery only stops at a commit *after* the target; when main's WAL has none yet, Postgres
would end recovery with an error. So first: a local main (a primary) commits one empty
transaction, whose time is after T; a standby main whose last replayed commit is at or before
T has nothing later to offer, and its current state *is* its state at T, so the branch is a
plain clone of main.

Everything the create path does for crash safety applies unchanged: the new branch is recorded
``provisioning`` before the clone, and reconcile removes a half-made one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio

from prism.address import BackendAddress
from prism.config import Settings, format_duration, parse_duration
from prism.errors import ConfigError, OutsideWindow, PrismError
from prism.events import EventBus
from prism.names import MAIN_BRANCH
from prism.runtime.base import Runtime
from prism.snapshots import (
    RETRY_SECONDS,
    Snapshot,
    SnapshotStore,
    expired,
    is_due,
    precise_time,
    service_of,
    take_snapshot,
)
from prism.source.standby import is_standby, recover_to
from prism.state import utcnow
from prism.storage.base import Storage
from prism.walarchive import WalArchive

log = logging.getLogger(__name__)


def parse_at(text: str, now: datetime) -> datetime:
    """A point in time: RFC 3339 with a zone (``2026-11-29T06:40:00Z``) or ``-15m`` (before
    ``now``). ``ValueError`` says what is accepted."""
    text = text.strip()
    if text.startswith("-"):
        try:
            return now - timedelta(seconds=parse_duration(text[1:]))
        except ConfigError as exc:
            raise ValueError(exc.message) from None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither an RFC 3339 time nor -DURATION") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} must say its time zone, e.g. Z")
    return moment


class PointInTime:
    """Main's WAL archive and snapshots, and branches made from them as of a time."""

    def __init__(self, data_dir: Path, storage: Storage, events: EventBus) -> None:
        self.storage = storage
        self.events = events
        self.archive = WalArchive(data_dir / "wal-archive" / MAIN_BRANCH)
        self.store = SnapshotStore(data_dir / "snapshots", storage)
        # A snapshot being cloned into a branch is not pruned under it.
        self._lock = trio.Lock()

    # ---- what main's server is started with -------------------------------------------

    def server_settings(self, branch: str, pgdata: Path) -> dict[str, str]:
        """Extra settings of ``branch``'s server: main archives its WAL, no other server does
        (blocking: called where the runtime prepares a start)."""
        if branch != MAIN_BRANCH:
            return {}
        self.archive.prepare(owner_of=pgdata)
        return self.archive.server_settings(standby=is_standby(pgdata))

    # ---- the window --------------------------------------------------------------------

    def snapshots(self) -> list[Snapshot]:
        """Kept snapshots, oldest first (blocking, cheap)."""
        return self.store.list()

    def check(self, at: datetime, now: datetime) -> Snapshot:
        """The snapshot a branch at ``at`` starts from; ``OutsideWindow`` naming the window."""
        snapshots = self.snapshots()
        if not snapshots:
            raise OutsideWindow(
                "no snapshot of main is kept yet, so no branch can be made as of a time",
                hint="the first is taken when Prism starts; see --snapshot-every",
            )
        start = snapshots[0].taken_at
        if not start <= at <= now:
            raise OutsideWindow(
                f"{precise_time(at)} is outside the point-in-time window of main: "
                f"{precise_time(start)} to {precise_time(now)} (now)",
                hint="choose a time in the window; --retention sets how far back it reaches",
            )
        return [snapshot for snapshot in snapshots if snapshot.taken_at <= at][-1]

    # ---- a branch as of a time ---------------------------------------------------------

    async def clone(
        self,
        child: str,
        at: datetime,
        *,
        main: BackendAddress,
        superuser: str,
        clone_current: Callable[[], Awaitable[None]],
    ) -> None:
        """Make ``child``'s data: main's as of ``at``, recovered and promoted at first start."""
        if not await _commit_after(main, at, superuser=superuser):
            log.info("pitr: main has no commit after %s yet; %s is main now", at, child)
            await clone_current()
            return
        async with self._lock:
            snapshot = self.check(at, utcnow())
            path = await self.storage.clone(snapshot.name, child)
        restore = self.archive.restore_command(self.storage.path(MAIN_BRANCH) / "pg_wal")
        target = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
        await trio.to_thread.run_sync(
            lambda: recover_to(path, restore_command=restore, target_time=target)
        )
        log.info("pitr: %s cloned from %s, to replay WAL up to %s", child, snapshot.name, target)

    # ---- the schedule ------------------------------------------------------------------

    async def reconcile(self) -> None:
        await self.store.reconcile()

    async def run(
        self,
        *,
        every: float,
        retention: float,
        wake_main: Callable[[], Awaitable[BackendAddress]],
        clone_main: Callable[[str], Awaitable[None]],
        superuser: str,
    ) -> None:
        """Take a snapshot whenever one is due and prune old ones, for ever; never raises a
        failure (it is logged and published as a ``snapshot_failed`` event)."""
        period, keep = timedelta(seconds=every), timedelta(seconds=retention)
        while True:
            try:
                snapshots = await trio.to_thread.run_sync(self.snapshots)
                taken = None
                if is_due(snapshots, utcnow(), period):
                    taken = await take_snapshot(
                        self.store, wake_main=wake_main, clone_main=clone_main, superuser=superuser
                    )
                await self.prune(keep)
                if taken is not None:  # after the prune: what is kept is settled
                    self.events.publish(
                        "snapshot_taken",
                        MAIN_BRANCH,
                        snapshot=taken.name,
                        taken_at=precise_time(taken.taken_at),
                    )
                snapshots = await trio.to_thread.run_sync(self.snapshots)
                due = snapshots[-1].taken_at + period if snapshots else utcnow()
                wait = max((due - utcnow()).total_seconds(), 0.0)
            except Exception as exc:  # a background task: log, report, try again later
                error = exc.message if isinstance(exc, PrismError) else repr(exc)
                log.error("snapshot of main failed (retrying): %s", error)
                self.events.publish("snapshot_failed", MAIN_BRANCH, error=error)
                wait = min(every, RETRY_SECONDS)
            await trio.sleep(wait)

    async def prune(self, retention: timedelta) -> None:
        """Remove snapshots past ``retention`` and the archived WAL only they needed."""
        async with self._lock:
            snapshots = await trio.to_thread.run_sync(self.snapshots)
            for snapshot in expired(snapshots, utcnow(), retention):
                await self.store.discard(snapshot.name)
                log.info("snapshot: %s removed (older than the retention)", snapshot.name)
            kept = await trio.to_thread.run_sync(self.snapshots)
            if kept:
                await trio.to_thread.run_sync(self.archive.prune, kept[0].redo_wal)


async def _commit_after(main: BackendAddress, at: datetime, *, superuser: str) -> bool:
    """Whether main's WAL has a commit after ``at`` (making one on a primary main)."""
    literal = at.astimezone(UTC).strftime("'%Y-%m-%d %H:%M:%S.%f+00'::timestamptz")
    async with await service_of(main, superuser=superuser, purpose="pitr") as service:
        rows = await service.query(
            f"SELECT pg_is_in_recovery(), coalesce(pg_last_xact_replay_timestamp() > {literal}, "
            "false)"
        )
        in_recovery, replayed_after = rows[0]
        if in_recovery == "t":
            return replayed_after == "t"
        # An empty transaction with an id writes a commit record, timed now (after ``at``).
        await service.query("SELECT pg_current_xact_id()")
        return True


def open_point_in_time(
    settings: Settings, data_dir: Path, storage: Storage, runtime: Runtime, events: EventBus
) -> PointInTime | None:
    """Main's snapshots and WAL archive as ``settings`` ask; None when they are off.

    Only the process runtime can start main with the archive settings so far; with another,
    point in time is off and the log says so.
    """
    if settings.snapshot_every <= 0:
        return None
    if not hasattr(runtime, "settings_for"):
        log.warning(
            "snapshots and point-in-time branches are off: --runtime %s cannot archive "
            "main's WAL yet (use --runtime process, or --snapshot-every 0 to silence this)",
            runtime.name,
        )
        return None
    if not storage.atomic and storage.name == "copy":
        log.warning(
            "snapshots: with the copy driver every snapshot of main is a full copy of it, one "
            "every %s kept for %s; set --snapshot-every to what the disk affords, or 0",
            format_duration(settings.snapshot_every),
            format_duration(settings.retention),
        )
    point_in_time = PointInTime(data_dir, storage, events)
    runtime.settings_for = point_in_time.server_settings
    return point_in_time
