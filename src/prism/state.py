"""The durable branch registry: one sqlite3 file in the data directory.

It records what Prism *meant* to have (name, parent, timestamps, status); storage and runtime
drivers say what really exists. ``BranchManager`` reconciles the two at start. All calls go
through a worker thread so a slow disk never stalls the event loop.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import trio

_SCHEMA = """
CREATE TABLE IF NOT EXISTS branches (
    name        TEXT PRIMARY KEY,
    parent      TEXT,
    created_at  TEXT NOT NULL,
    last_active TEXT NOT NULL,
    status      TEXT NOT NULL
)
"""


def utcnow() -> datetime:
    return datetime.now(UTC)


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


class StateStore:
    """Reads and writes branch records; safe to share between tasks (calls are serialised)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._lock = trio.Lock()

    async def _run(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        async with self._lock:
            return await trio.to_thread.run_sync(lambda: self._db.execute(sql, params).fetchall())

    async def all(self) -> list[BranchRecord]:
        rows = await self._run(
            "SELECT name, parent, created_at, last_active, status FROM branches ORDER BY name"
        )
        return [
            BranchRecord(
                name=str(name),
                parent=None if parent is None else str(parent),
                created_at=datetime.fromisoformat(str(created)),
                last_active=datetime.fromisoformat(str(active)),
                status=str(status),
            )
            for name, parent, created, active, status in rows
        ]

    async def put(self, record: BranchRecord) -> None:
        await self._run(
            "INSERT OR REPLACE INTO branches VALUES (?, ?, ?, ?, ?)",
            (
                record.name,
                record.parent,
                record.created_at.isoformat(),
                record.last_active.isoformat(),
                record.status,
            ),
        )

    async def delete(self, name: str) -> None:
        await self._run("DELETE FROM branches WHERE name = ?", (name,))

    def close(self) -> None:
        self._db.close()
