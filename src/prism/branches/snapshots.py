"""Snapshots of the branches that keep WAL, taken every ``--snapshot-every``, kept for
``--retention``.

A snapshot is a clone of a branch in the storage under a name no branch can have
(``snap:<branch>:<time>``, see ``prism.core.names``), taken the way a branch is cloned (consistent
even while the branch runs), plus a small JSON record beside it: when it was complete and the
first WAL segment its recovery needs (the redo point of the branch's last checkpoint before the
clone). With the branch's WAL archive (``prism.branches.walarchive``) it is the starting point of a
branch as of any time after it (``prism.branches.pitr``).

Crash safety: a ``SnapshotIntent`` is recorded in the journal before the clone and the record
is written after it; the record is the commit point. Start-up recovery
(``SnapshotStore.recovery_owner``) removes the clone of an intent whose record was never
written, then (``reconcile``) any clone without a record and any record whose clone is gone.
Deleting one removes the record first, so a half-deleted snapshot is never offered; deleting a
branch forgets all of its records at once and leaves the clones to ``reconcile``.

The schedule (``PointInTime.run``) is a background task that logs and survives every failure:
a failed snapshot is tried again a minute later, and never stops Prism.
"""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

from prism.core.address import BackendAddress
from prism.core.crashpoints import crash_point
from prism.core.errors import BranchConflict
from prism.core.names import SNAPSHOT_PREFIX, is_snapshot_name
from prism.durable.intents import SnapshotIntent
from prism.durable.journal import Journal
from prism.durable.recovery import Owner
from prism.durable.state import utcnow
from prism.postgres.client import connect_branch
from prism.storage.base import Storage

log = logging.getLogger(__name__)

_RECORD = ".json"
#: How soon a failed snapshot is tried again (or sooner, if snapshots are more frequent).
RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class Snapshot:
    """One kept snapshot of a branch."""

    name: str
    branch: str
    taken_at: datetime
    redo_wal: str

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "branch": self.branch,
            "taken_at": precise_time(self.taken_at),
            "redo_wal": self.redo_wal,
        }


def precise_time(moment: datetime) -> str:
    """RFC 3339 in UTC to the millisecond: a window's edge must not be rounded into it."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def snapshot_name(branch: str, when: datetime) -> str:
    """The storage name of a snapshot of ``branch`` begun at ``when`` (unique to the µs)."""
    return f"{SNAPSHOT_PREFIX}{branch}:{when.strftime('%Y%m%dT%H%M%S%fZ')}"


def is_due(snapshots: list[Snapshot], now: datetime, every: timedelta) -> bool:
    """Whether a new snapshot is due: none yet, or the newest is ``every`` old."""
    return not snapshots or snapshots[-1].taken_at + every <= now


def expired(snapshots: list[Snapshot], now: datetime, retention: timedelta) -> list[Snapshot]:
    """The snapshots ``retention`` no longer needs (``snapshots`` oldest first).

    The newest one taken at or before the cutoff stays: branches as of a time just after the
    cutoff start from it. So does the newest of all, however old.
    """
    return taken_before(snapshots, now - retention)


def taken_before(snapshots: list[Snapshot], cutoff: datetime) -> list[Snapshot]:
    """The snapshots a window starting at ``cutoff`` no longer needs (oldest first): all
    taken at or before it but the newest of those, which branches as of ``cutoff`` start from
    (and the newest of all, however old)."""
    older = [s for s in snapshots if s.taken_at <= cutoff]
    return older[:-1]


class SnapshotStore:
    """The records of the snapshots, one JSON file each in ``directory``."""

    def __init__(self, directory: Path, storage: Storage, journal: Journal) -> None:
        self.directory = directory
        self.storage = storage
        self.journal = journal

    def list(self) -> list[Snapshot]:
        """Every complete snapshot, oldest first (blocking, cheap)."""
        found = []
        for path in self._files(_RECORD):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                found.append(
                    Snapshot(
                        name=raw["name"],
                        branch=raw["branch"],
                        taken_at=datetime.fromisoformat(raw["taken_at"]),
                        redo_wal=raw["redo_wal"],
                    )
                )
            except (OSError, ValueError, KeyError) as exc:
                log.warning("snapshots: ignoring unreadable record %s: %s", path.name, exc)
        return sorted(found, key=lambda snapshot: snapshot.taken_at)

    async def begin(self, name: str, branch: str) -> SnapshotIntent:
        """Record that ``name`` (of ``branch``) is being taken, before anything reaches the
        disk; its record's directory is made now, so a full disk fails here, not at the end."""
        await trio.to_thread.run_sync(self._make_directory)
        intent = SnapshotIntent(name, branch)
        await self.journal.record(intent)
        return intent

    def commit(self, snapshot: Snapshot) -> None:
        """Record a whole snapshot: from here on it is offered (the commit point; blocking)."""
        raw = {**snapshot.view(), "taken_at": snapshot.taken_at.isoformat()}
        tmp = self._path(snapshot.name, ".tmp")
        tmp.write_text(json.dumps(raw), encoding="utf-8")
        tmp.replace(self._path(snapshot.name, _RECORD))

    def forget_branch(self, branch: str) -> None:
        """Stop offering every snapshot of ``branch`` (blocking, cheap); their clones are
        removed by the next ``reconcile``."""
        for snapshot in self.list():
            if snapshot.branch == branch:
                self.forget(snapshot.name)

    def forget(self, name: str) -> None:
        """Stop offering ``name`` (its clone is removed after this)."""
        self._path(name, _RECORD).unlink(missing_ok=True)

    async def discard(self, name: str) -> bool:
        """Forget ``name`` and remove its clone; False if the clone must stay for now.

        On ZFS a branch made at a time is a clone of its snapshot, which cannot be destroyed
        under it: the snapshot is no longer offered, and ``reconcile`` removes its data once
        those branches are deleted.
        """
        await trio.to_thread.run_sync(self.forget, name)
        try:
            retired = await self.storage.retire(name)
        except BranchConflict as exc:
            log.info("snapshot: %s is no longer offered; its data stays: %s", name, exc.message)
            return False
        if retired is not None:
            await self.storage.remove_path(retired)
        return True

    def recovery_owner(self, *, sweep: bool) -> Owner:
        """Its part of start-up recovery: remove what an interrupted snapshot left, then, with
        ``sweep`` (snapshots are on), everything else ``reconcile`` finds."""
        return Owner(
            "snapshots",
            {SnapshotIntent: self._recover},
            sweep=self.reconcile if sweep else None,
        )

    async def _recover(self, intent: SnapshotIntent) -> None:
        """A snapshot cut short: keep it if its record was written, else remove its clone."""
        if await trio.to_thread.run_sync(self._path(intent.name, _RECORD).exists):
            return
        if self.storage.exists(intent.name) and await self.discard(intent.name):
            log.warning("reconcile: removed snapshot %s, left half-made by a crash", intent.name)

    async def reconcile(self, why: str = "left half-made by a crash") -> None:
        """Remove what a crash (or a forgotten branch: ``why``) left: clones without a record,
        records without a clone."""
        recorded = {snapshot.name for snapshot in await trio.to_thread.run_sync(self.list)}
        for name in sorted(set(self.storage.list()) - recorded):
            if is_snapshot_name(name) and await self.discard(name):
                log.warning("reconcile: removed snapshot %s, %s", name, why)
        for name in sorted(recorded):
            if not self.storage.exists(name):
                log.warning("reconcile: forgetting snapshot %s: its data is gone", name)
                await trio.to_thread.run_sync(self.forget, name)

    def _make_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, name: str, suffix: str) -> Path:
        return self.directory / f"{name}{suffix}"

    def _files(self, suffix: str) -> builtins.list[Path]:
        try:
            return sorted(p for p in self.directory.iterdir() if p.name.endswith(suffix))
        except FileNotFoundError:
            return []


async def redo_wal_file(address: BackendAddress, *, superuser: str) -> str:
    """The WAL segment of the redo point of the last checkpoint of the server at ``address``:
    everything a clone taken after now needs is at or after it."""
    async with await connect_branch(
        address, user=superuser, application_name="prism snapshot"
    ) as service:
        rows = await service.query("SELECT redo_wal_file FROM pg_control_checkpoint()")
    return str(rows[0][0])


async def take_snapshot(
    store: SnapshotStore,
    branch: str,
    *,
    address: BackendAddress,
    clone: Callable[[str, str], Awaitable[None]],
    superuser: str,
) -> Snapshot:
    """Take one snapshot of ``branch``, whose server runs at ``address``; ``clone(branch,
    target)`` clones it consistently. A failure leaves nothing behind."""
    started = utcnow()
    name = snapshot_name(branch, started)
    intent = await store.begin(name, branch)
    crash_point("snapshot:recorded")
    try:
        redo = await redo_wal_file(address, superuser=superuser)
        await clone(branch, name)
        crash_point("snapshot:cloned")
        # Complete now: a backup-mode clone is consistent only as of its end.
        snapshot = Snapshot(name, branch, utcnow(), redo)
        await trio.to_thread.run_sync(store.commit, snapshot)
        crash_point("snapshot:committed")
    except BaseException:
        with trio.CancelScope(shield=True):
            await store.discard(name)
            await store.journal.done(intent)
        raise
    await store.journal.done(intent)
    log.info(
        "snapshot: %s taken in %.1f s (redo from %s)",
        name,
        (snapshot.taken_at - started).total_seconds(),
        redo,
    )
    return snapshot
