"""Branches as of a moment in the past: snapshots plus a branch's archived WAL.

``prism serve --snapshot-every 1h --retention 7d`` (the defaults) makes every branch that
keeps WAL (``--point-in-time-branches``, default ``main``) archive its WAL
(``prism.branches.walarchive``) and snapshot itself (``prism.branches.snapshots``). A branch ``at``
a time T in its parent's window (from the oldest kept snapshot to now) is the clone of the newest
snapshot complete at or before T, started with ``recovery_target_time = T``, ``restore_command``
reading the parent's archive and ``recovery_target_action = promote``: Postgres replays the archive
up to the first commit after T and promotes, so the branch holds exactly the transactions
committed at or before T. The branch's server refuses clients (``hot_standby = off``) until it
has promoted, so the ordinary start of a new branch waits for it.

Recovery only stops at a commit *after* the target; when the parent's WAL has none yet,
Postgres would end recovery with an error. So first: a primary parent commits one empty
transaction, whose time is after T; a standby main whose last replayed commit is at or before
T has nothing later to offer, and its current state *is* its state at T, so the branch is a
plain clone of it.

The snapshot timer never starts a stopped branch: a stopped server writes no WAL, so the
newest snapshot and the archive still reach to now; its next snapshot is taken once it runs
again. Deleting or resetting a branch ends its window: its snapshot records are forgotten and
its archive renamed away at once (the commit point), the clones and files are removed by the
timer's next round, or by the next start after a crash.

A server is given these directories by the runtime that starts it (``ServerExtras``: each
directory's host path and what it is for); where the server sees them (a container's bind
mount at a fixed path, a local process at the host path) is the runtime's choice, and the
commands are made once it has said. The ``restore_command`` is given at each start while the
branch recovers, so a clone names no path of any runtime.

Everything the create path does for crash safety applies unchanged: the create's intent is in
the journal before the clone, and start-up recovery removes a half-made branch.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio

from prism.branches import walarchive
from prism.branches.snapshots import (
    RETRY_SECONDS,
    Snapshot,
    SnapshotStore,
    is_due,
    precise_time,
    take_snapshot,
    taken_before,
)
from prism.branches.walarchive import WalArchive
from prism.core.address import BackendAddress
from prism.core.config import format_duration, parse_duration
from prism.core.crashpoints import crash_point
from prism.core.diskrules import Kept, Retention, over_size, snapshot_due_by_size
from prism.core.errors import ConfigError, OutsideWindow, describe
from prism.core.events import EventBus
from prism.core.names import MAIN_BRANCH
from prism.core.settings import Settings
from prism.core.values import BranchPattern
from prism.durable.journal import Journal
from prism.durable.state import parse_rfc3339, utcnow
from prism.postgres.client import connect_branch
from prism.postgres.serverconf import is_recovering, is_standby, recover_to
from prism.runtime.base import SeenAt, ServerExtras, Share, SharedDir
from prism.storage.base import Storage
from prism.storage.diskuse import measure

log = logging.getLogger(__name__)


def parse_at(text: str, now: datetime) -> datetime:
    """A point in time, in UTC: RFC 3339 with a zone (``2026-11-29T06:40:00Z``) or ``-15m``
    (before ``now``). ``ValueError`` says what is accepted, also for a time too far back for
    ``datetime`` to hold (``-999999999999d``)."""
    text = text.strip()
    if text.startswith("-"):
        try:
            return now - timedelta(seconds=parse_duration(text[1:]))
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        except OverflowError:
            raise ValueError(f"{text[:40]!r} reaches back further than year 1") from None
    return parse_rfc3339(text)


@dataclass(frozen=True)
class SnapshotSource:
    """What the snapshot timer needs of the branch manager."""

    names: Callable[[], list[str]]
    """The branches that exist."""
    running: Callable[[str], BackendAddress | None]
    """A branch's server address if it runs; never starts it."""
    clone: Callable[[str, str], Awaitable[None]]
    """Clone a branch, consistently, into a storage name (a snapshot)."""


class PointInTime:
    """The WAL archives and snapshots of the branches that keep WAL, and branches made from
    them as of a time."""

    def __init__(
        self,
        data_dir: Path,
        storage: Storage,
        events: EventBus,
        *,
        journal: Journal,
        branches: BranchPattern | None = None,
    ) -> None:
        self.storage = storage
        self.events = events
        self.branches = branches or BranchPattern.parse(MAIN_BRANCH)
        self.archives = data_dir / "wal-archive"
        self.store = SnapshotStore(data_dir / "snapshots", storage, journal)
        # A snapshot being cloned into a branch is not pruned or swept under it.
        self._lock = trio.Lock()
        # Set when a branch that keeps WAL starts: its first snapshot is due at once.
        self._poke = trio.Event()
        # Drops per branch, so a snapshot that raced a delete or reset is not kept.
        self._drops: Counter[str] = Counter()
        # What each snapshot holds alone: measured once (a snapshot never changes), for the
        # size bound of --retention.
        self._sizes: dict[str, int] = {}
        self.retention = Retention()
        """Set by ``run``: the size bound also decides when a snapshot is due early."""

    def keeps_wal(self, branch: str) -> bool:
        return self.branches.matches(branch)

    def archive_of(self, branch: str) -> WalArchive:
        return WalArchive(self.archives / branch)

    # ---- what a server is started with -------------------------------------------------

    def server_extras(self, branch: str, pgdata: Path, parent: str | None) -> ServerExtras:
        """Extra directories and settings of ``branch``'s server (blocking; a
        ``ServerExtrasSource``): its own archive if it keeps WAL, and while it recovers to a
        time, its parent's archive and ``pg_wal`` (read-only) for its ``restore_command``."""
        dirs: list[SharedDir] = []
        archive = restore_from = None
        standby = False
        if self.keeps_wal(branch):
            archive = self.archive_of(branch)
            archive.prepare(owner_of=pgdata)
            standby = is_standby(pgdata)
            dirs.append(SharedDir(Share.WAL_ARCHIVE, archive.directory))
        if parent is not None and is_recovering(pgdata):
            source = self.archive_of(parent)
            if source.directory.is_dir():
                restore_from = source
                dirs += [
                    SharedDir(Share.RESTORE_ARCHIVE, source.directory, read_only=True),
                    SharedDir(Share.RESTORE_WAL, self.storage.path(parent) / "pg_wal", True),
                ]
        settings = functools.partial(_server_settings, archive, standby, restore_from)
        return ServerExtras(tuple(dirs), settings)

    def poke(self) -> None:
        """Run a round now (the disk is low: the size bound should prune at once)."""
        self._poke.set()

    async def cloned(self, parent: str, child: str) -> None:
        """A clone was made (``Followers.after_clone``): a clone of a running parent on a
        copying driver archives a WAL segment, so the size bound may call for a round."""
        if self.keeps_wal(parent) and self.retention.max_bytes is not None:
            self._poke.set()

    async def started(self, branch: str, address: BackendAddress) -> None:
        """A server started (``Followers.after_start``): a branch that keeps WAL may be due
        its first snapshot."""
        if self.keeps_wal(branch):
            self._poke.set()

    # ---- the window --------------------------------------------------------------------

    def snapshots(self, branch: str = MAIN_BRANCH) -> list[Snapshot]:
        """``branch``'s kept snapshots, oldest first (blocking, cheap)."""
        return [snapshot for snapshot in self.store.list() if snapshot.branch == branch]

    def check(self, at: datetime, now: datetime, branch: str = MAIN_BRANCH) -> Snapshot:
        """The snapshot a branch of ``branch`` at ``at`` starts from; ``OutsideWindow`` saying
        why there is none."""
        if not self.keeps_wal(branch):
            raise OutsideWindow(
                f'branch "{branch}" keeps no WAL, so no branch can be made from it as of a time',
                hint=f"start Prism with --point-in-time-branches matching it (now "
                f"{self.branches}); its window opens at its first snapshot after that",
            )
        snapshots = self.snapshots(branch)
        if not snapshots:
            raise OutsideWindow(
                f"no snapshot of {branch} is kept yet, so no branch can be made as of a time",
                hint="the first is taken when it runs; see --snapshot-every",
            )
        start = snapshots[0].taken_at
        if not start <= at <= now:
            raise OutsideWindow(
                f"{precise_time(at)} is outside the point-in-time window of {branch}: "
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
        parent: str,
        address: BackendAddress,
        superuser: str,
        clone_current: Callable[[], Awaitable[None]],
    ) -> None:
        """Make ``child``'s data: ``parent``'s (running at ``address``) as of ``at``,
        recovered and promoted at first start."""
        if not await _commit_after(address, at, superuser=superuser):
            log.info("pitr: %s has no commit after %s yet; %s is %s now", parent, at, child, parent)
            await clone_current()
            return
        async with self._lock:
            snapshot = self.check(at, utcnow(), parent)
            path = await self.storage.clone(snapshot.name, child)
        # A clone not yet told to recover to ``at`` would start as the snapshot's moment: the
        # create's intent has it rolled back.
        crash_point("pitr:cloned")
        target = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
        # Its restore_command comes with each start while it recovers (``server_extras``).
        await trio.to_thread.run_sync(lambda: recover_to(path, target_time=target))
        log.info("pitr: %s cloned from %s, to replay WAL up to %s", child, snapshot.name, target)

    # ---- the end of a window -----------------------------------------------------------

    def drop(self, branch: str) -> None:
        """``branch``'s data was thrown away (``Followers.after_discard``: delete, reset, a
        failed create): end its window now; the next round frees the space."""
        self._drops[branch] += 1
        self._poke.set()
        try:
            self.store.forget_branch(branch)
            walarchive.retire(self.archives, branch, secrets.token_hex(4))
        except OSError as exc:  # a discard hook must not raise; a sweep still frees a deleted one's
            log.error("could not end the point-in-time window of %s: %s", branch, exc)

    async def sweep(self, existing: set[str]) -> None:
        """Free what dropped windows left, and the windows of branches gone without a drop
        (a crash between a delete and its drop)."""
        async with self._lock:
            for name in await trio.to_thread.run_sync(walarchive.archived_branches, self.archives):
                if name not in existing:
                    walarchive.retire(self.archives, name, secrets.token_hex(4))
            for snapshot in await trio.to_thread.run_sync(self.store.list):
                if snapshot.branch not in existing:
                    await trio.to_thread.run_sync(self.store.forget, snapshot.name)
            await self.store.reconcile(why="no longer recorded (expired, or of a branch gone)")
            await trio.to_thread.run_sync(walarchive.remove_retired, self.archives)

    # ---- the schedule ------------------------------------------------------------------

    async def run(
        self, *, every: float, retention: Retention, source: SnapshotSource, superuser: str
    ) -> None:
        """Take a snapshot of each running branch that keeps WAL whenever one is due and prune
        old ones, for ever; never raises a failure (it is logged and published as a
        ``snapshot_failed`` event, and that branch is tried again later)."""
        period, keep = timedelta(seconds=every), retention
        self.retention = retention
        while True:
            self._poke = trio.Event()
            wait = every
            try:
                await self.sweep(set(source.names()))
            except Exception as exc:  # a background task: log and try again later
                log.error("snapshots: could not free dropped windows (retrying): %s", describe(exc))
                wait = min(wait, RETRY_SECONDS)
            for branch in sorted(filter(self.keeps_wal, source.names())):
                try:
                    due = await self._round(branch, period, keep, source, superuser)
                except Exception as exc:  # a background task: log, report, try again later
                    error = describe(exc)
                    log.error("snapshot of %s failed (retrying): %s", branch, error)
                    self.events.publish("snapshot_failed", branch, error=error)
                    due = min(every, RETRY_SECONDS)
                wait = min(wait, due)
            with trio.move_on_after(wait):
                await self._poke.wait()

    async def _round(
        self,
        branch: str,
        period: timedelta,
        keep: Retention,
        source: SnapshotSource,
        superuser: str,
    ) -> float:
        """One branch's turn: a snapshot if due and the branch runs, then the prune; returns
        the seconds until its next snapshot is due."""
        address = source.running(branch)
        snapshots = await trio.to_thread.run_sync(self.snapshots, branch)
        taken = None
        if address is not None and (
            is_due(snapshots, utcnow(), period)
            or await trio.to_thread.run_sync(self._due_by_size, branch, snapshots, keep)
        ):
            drops = self._drops[branch]
            taken = await take_snapshot(
                self.store, branch, address=address, clone=source.clone, superuser=superuser
            )
            if self._drops[branch] != drops:  # deleted or reset meanwhile: of data now gone
                await self.store.discard(taken.name)
                taken = None
        await self.prune(keep, branch)
        if taken is not None:  # after the prune: what is kept is settled
            self.events.publish(
                "snapshot_taken",
                branch,
                snapshot=taken.name,
                taken_at=precise_time(taken.taken_at),
            )
        snapshots = await trio.to_thread.run_sync(self.snapshots, branch)
        due = snapshots[-1].taken_at + period if snapshots else utcnow()
        return max((due - utcnow()).total_seconds(), 0.0)

    async def prune(self, retention: Retention, branch: str = MAIN_BRANCH) -> None:
        """Remove ``branch``'s snapshots past ``retention`` (by time, then by size, oldest
        first) and the archived WAL only they needed."""
        cutoff = utcnow() - timedelta(seconds=retention.seconds)
        await self.prune_before(cutoff, branch, why="older than the retention")
        async with self._lock:
            snapshots = await trio.to_thread.run_sync(self.snapshots, branch)
            kept = await self._kept(branch, snapshots)
            dropped = over_size(kept, retention.max_bytes)
            total = sum(k.bytes + k.wal_bytes for k in kept)
            if retention.max_bytes is not None and total > retention.max_bytes and not dropped:
                log.warning(
                    "snapshots: %s's newest snapshot and the WAL after it (%d bytes) exceed the "
                    "retention's size bound (%d bytes); a new snapshot is due",
                    branch,
                    total,
                    retention.max_bytes,
                )
        if dropped:
            start = next(s for s in snapshots if s.name not in dropped)
            log.warning(
                "snapshots: %d snapshot(s) of %s removed to keep within the retention's size "
                "bound (%d bytes): branches as of a time now reach back to %s only",
                len(dropped),
                branch,
                retention.max_bytes,
                precise_time(start.taken_at),
            )
            await self.prune_before(start.taken_at, branch, why="over the size bound")

    async def prune_before(
        self, cutoff: datetime, branch: str = MAIN_BRANCH, *, why: str = "asked to"
    ) -> int:
        """Start ``branch``'s window at ``cutoff``: remove the snapshots no branch as of a time
        from then on needs, and the archived WAL before the oldest one kept; returns how many
        snapshots went (``prism archive prune --before``, and retention)."""
        removed = 0
        async with self._lock:
            snapshots = await trio.to_thread.run_sync(self.snapshots, branch)
            for snapshot in taken_before(snapshots, cutoff):
                if await self.store.discard(snapshot.name):
                    self._sizes.pop(snapshot.name, None)
                    removed += 1
                    log.info("snapshot: %s removed (%s)", snapshot.name, why)
            kept = await trio.to_thread.run_sync(self.snapshots, branch)
            if kept:
                await trio.to_thread.run_sync(self.archive_of(branch).prune, kept[0].redo_wal)
        return removed

    async def delete_snapshot(self, branch: str, name: str) -> bool:
        """Remove snapshot ``name`` of ``branch`` now, and the archived WAL before the oldest
        one left; False if there is no such snapshot. The window shrinks only if it was the
        oldest; the WAL a later snapshot leads on with is kept."""
        async with self._lock:
            snapshots = await trio.to_thread.run_sync(self.snapshots, branch)
            if name not in {snapshot.name for snapshot in snapshots}:
                return False
            await self.store.discard(name)
            self._sizes.pop(name, None)
            log.info("snapshot: %s removed (asked to)", name)
            kept = await trio.to_thread.run_sync(self.snapshots, branch)
            if kept:
                await trio.to_thread.run_sync(self.archive_of(branch).prune, kept[0].redo_wal)
        return True

    def _due_by_size(self, branch: str, snapshots: list[Snapshot], keep: Retention) -> bool:
        """Whether the WAL archived since the newest snapshot calls for a new one (blocking)."""
        if not snapshots:
            return False
        grown = self.archive_of(branch).bytes_between(snapshots[-1].redo_wal)
        return snapshot_due_by_size(grown, keep.max_bytes)

    async def _kept(self, branch: str, snapshots: list[Snapshot]) -> list[Kept]:
        """Each snapshot with the bytes it holds alone and the WAL up to the next one."""
        archive = self.archive_of(branch)
        kept = []
        for index, snapshot in enumerate(snapshots):
            if snapshot.name not in self._sizes:
                use = await measure(self.storage, snapshot.name)
                self._sizes[snapshot.name] = use.own if use.own is not None else use.total or 0
            end = snapshots[index + 1].redo_wal if index + 1 < len(snapshots) else None
            wal = await trio.to_thread.run_sync(archive.bytes_between, snapshot.redo_wal, end)
            kept.append(Kept(snapshot.name, self._sizes[snapshot.name], wal))
        return kept

    def space_used(self) -> tuple[int, int]:
        """Bytes held by the kept snapshots (as far as measured) and by every WAL archive
        (blocking: it lists the archives)."""
        snapshots = sum(self._sizes.get(s.name, 0) for s in self.store.list())
        archives = sum(
            self.archive_of(name).size_bytes()
            for name in walarchive.archived_branches(self.archives)
        )
        return snapshots, archives


def _server_settings(
    archive: WalArchive | None, standby: bool, restore_from: WalArchive | None, seen: SeenAt
) -> dict[str, str]:
    """The settings of a server that archives into ``archive`` and recovers from
    ``restore_from``, naming the directories where the server sees them (``seen``)."""
    settings: dict[str, str] = {}
    if archive is not None:
        settings.update(archive.server_settings(standby=standby, seen_at=seen[Share.WAL_ARCHIVE]))
    if restore_from is not None:
        settings["restore_command"] = restore_from.restore_command(
            seen[Share.RESTORE_WAL], seen_at=seen[Share.RESTORE_ARCHIVE]
        )
    return settings


async def _commit_after(address: BackendAddress, at: datetime, *, superuser: str) -> bool:
    """Whether the WAL of the server at ``address`` has a commit after ``at`` (making one on a
    primary)."""
    literal = at.astimezone(UTC).strftime("'%Y-%m-%d %H:%M:%S.%f+00'::timestamptz")
    async with await connect_branch(
        address, user=superuser, application_name="prism pitr"
    ) as service:
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
    settings: Settings,
    data_dir: Path,
    storage: Storage,
    events: EventBus,
    journal: Journal,
) -> PointInTime | None:
    """The WAL archives and snapshots ``settings`` ask for; None when they are off."""
    if settings.snapshot_every <= 0:
        return None
    if not storage.atomic and storage.name == "copy":
        log.warning(
            "snapshots: with the copy driver every snapshot is a full copy of its branch, one "
            "every %s kept for %s; set --snapshot-every to what the disk affords, or 0",
            format_duration(settings.snapshot_every),
            settings.retention,
        )
    return PointInTime(
        data_dir, storage, events, journal=journal, branches=settings.point_in_time_branches
    )
