"""The durable branch registry and intent journal: one sqlite3 file in the data directory.

It records what Prism *meant* to have (name, parent, timestamps, status); storage and runtime
drivers say what really exists. ``BranchManager`` reconciles the two at start. All calls go
through a worker thread so a slow disk never stalls the event loop.

The intent journal is a table in this file too (``prism.durable.journal``). The file and its WAL are
0600: they name every branch and are nobody else's business.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import trio

from prism.core.errors import StorageError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS branches (
    name        TEXT PRIMARY KEY,
    parent      TEXT,
    created_at  TEXT NOT NULL,
    last_active TEXT NOT NULL,
    status      TEXT NOT NULL,
    at          TEXT
)
"""
#: ``at`` came with point-in-time branches knowing their time: added in place to older files.
_ADD_AT = "ALTER TABLE branches ADD COLUMN at TEXT"

#: The database file and the files sqlite keeps beside it.
_DB_SUFFIXES = ("", "-wal", "-shm", "-journal")


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 time with its zone (``2026-12-01T00:00:00Z``), in UTC; ``ValueError`` else.

    Converted to UTC here, so a time at the very ends of ``datetime``'s range (year 1 at
    +14:00, year 9999 at -14:00) is refused when it is read, not when it is next shown.
    """
    shown = text if len(text) <= 40 else text[:40] + "..."
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{shown!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{shown!r} must say its time zone, e.g. Z")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{shown!r} is out of the range of times Prism can hold") from None


def rfc3339(moment: datetime) -> str:
    """``2026-11-24T22:01:43Z``: the seed's timestamp format (UTC, seconds)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class BranchRecord:
    """One row of the registry."""

    name: str
    parent: str | None
    created_at: datetime
    last_active: datetime
    status: str
    at: datetime | None = None
    """The time of its parent's data a point-in-time branch holds (``--at``); else None."""


@dataclass(frozen=True)
class Generation:
    """One copy of the source in main (``--source-mode dump``): its number, counted from 1,
    and when its dump was taken. A branch carries the generation of main it was cloned from."""

    number: int
    taken_at: datetime


class StateError(StorageError):
    """The state file could not be read or written (most often: the disk is full)."""


class StateStore:
    """Reads and writes branch records; safe to share between tasks (calls are serialised)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # sqlite creates its files with the process umask; 077 keeps them 0600 from birth.
        previous = os.umask(0o077)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            # A rollback journal, kept between transactions: WAL mode maps its -shm index into
            # memory, and on a full btrfs a page fault there kills the process with SIGBUS
            # instead of failing the write. PERSIST reuses the journal's blocks, so a small
            # write (a delete's record) still fits when the disk has just filled up.
            self._db.execute("PRAGMA journal_mode=PERSIST")
            # FULL: a journal row must be on disk before the step it announces starts.
            self._db.execute("PRAGMA synchronous=FULL")
            self.open_table("branches", _SCHEMA, columns={"at": _ADD_AT})
        finally:
            os.umask(previous)
        _make_private(path)
        self._lock = trio.Lock()

    def open_table(self, table: str, schema: str, *, columns: dict[str, str] | None = None) -> None:
        """Create ``table``, kept in this file by another module, at start before any task runs.

        ``schema`` is its ``CREATE TABLE IF NOT EXISTS``; ``columns`` maps a column added
        since to its ``ALTER TABLE ... ADD COLUMN``, run in place on a table from an older
        Prism. One connection for the whole file keeps its journal settings and error
        handling in one place.
        """
        self._db.execute(schema)
        have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
        for column, alter in (columns or {}).items():
            if column not in have:
                self._db.execute(alter)

    def load(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Run one statement at start, before any task runs (so without the lock or a thread)."""
        return self._db.execute(sql, params).fetchall()

    def has_table(self, table: str) -> bool:
        """Whether the file has ``table`` (one an older Prism kept, say)."""
        found = self.load("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        return bool(found)

    async def execute(
        self, sql: str, params: tuple[object, ...] = (), *, what: str = "Prism's state file"
    ) -> list[tuple[object, ...]]:
        """Run one statement in a worker thread; a failure is a ``StateError`` saying how to
        get going again. ``what`` names the data in that message ("branch policies in")."""
        try:
            return await self._run(sql, params)
        except sqlite3.Error as exc:
            raise StateError(
                f"cannot update {what} {self.path.name}: {exc}",
                hint="free disk space in the data directory (deleting a branch works "
                "on a full disk) and try again",
            ) from exc

    async def _run(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        async with self._lock:
            return await trio.to_thread.run_sync(lambda: self._db.execute(sql, params).fetchall())

    async def all(self) -> list[BranchRecord]:
        rows = await self.execute(
            "SELECT name, parent, created_at, last_active, status, at FROM branches ORDER BY name"
        )
        return [
            BranchRecord(
                name=str(name),
                parent=None if parent is None else str(parent),
                created_at=datetime.fromisoformat(str(created)),
                last_active=datetime.fromisoformat(str(active)),
                status=str(status),
                at=None if at is None else datetime.fromisoformat(str(at)),
            )
            for name, parent, created, active, status, at in rows
        ]

    async def put(self, record: BranchRecord) -> None:
        await self.execute(
            "INSERT OR REPLACE INTO branches (name, parent, created_at, last_active, status, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                record.name,
                record.parent,
                record.created_at.isoformat(),
                record.last_active.isoformat(),
                record.status,
                None if record.at is None else record.at.isoformat(),
            ),
        )

    async def delete(self, name: str) -> None:
        await self.execute("DELETE FROM branches WHERE name = ?", (name,))

    def close(self) -> None:
        self._db.close()


def _make_private(path: Path) -> None:
    """Force 0600 on the database and its companions (a file made by an older Prism: 0644)."""
    for suffix in _DB_SUFFIXES:
        try:
            os.chmod(f"{path}{suffix}", 0o600)
        except FileNotFoundError:
            continue
