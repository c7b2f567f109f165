"""The undelete trash: deleted branches kept whole for ``--undelete-window``, durably.

A delete does not free a branch at once: its data is renamed aside (``Storage.trash``, O(1) and
needing no free space) and its record, parent link and policy move into the ``trash`` table of
the state file, one row per deleted branch keyed by the token its data is kept under. The
registry of live branches never sees it, so a new branch may take the name meanwhile (an
undelete then refuses: the name is taken). ``prism.branches.deletion`` does the operations; this
module holds the rows and the pure decisions about them (when one is purged, which ones an
undelete brings back together), unit-tested without I/O.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from prism.branches.policy import BranchPolicy, policy_from_json, policy_to_json
from prism.durable.state import StateStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trash (
    token       TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    parent      TEXT,
    created_at  TEXT NOT NULL,
    deleted_at  TEXT NOT NULL,
    batch       TEXT NOT NULL,
    policy      TEXT NOT NULL,
    own_bytes   INTEGER
)
"""


@dataclass(frozen=True)
class TrashEntry:
    """One deleted branch waiting in the trash: all an undelete needs to bring it back."""

    token: str
    """Names its kept data (``Storage.trash(name, token)``) and its row."""
    name: str
    parent: str | None
    created_at: datetime
    deleted_at: datetime
    batch: str
    """Shared by the branches one delete took (``with_children``): undone together."""
    policy: BranchPolicy
    own_bytes: int | None
    """What purging it frees, as last measured before the delete (None: not known)."""

    def purge_at(self, window: float) -> datetime:
        """When the undelete window of this entry ends and the reaper purges it."""
        return self.deleted_at + timedelta(seconds=window)


def due_for_purge(
    entries: Iterable[TrashEntry], *, now: datetime, window: float
) -> list[TrashEntry]:
    """The entries whose window has passed, oldest deletion first: which also puts the
    descendants a ``with_children`` delete took (deleted before their parent) before their
    parent, as ZFS needs (it cannot destroy a dataset its kept children are clones of)."""
    due = [entry for entry in entries if entry.purge_at(window) <= now]
    return sorted(due, key=lambda entry: (entry.deleted_at, entry.token))


def restored_with(entries: Iterable[TrashEntry], top: TrashEntry) -> list[TrashEntry]:
    """``top`` and what the same delete took below it, parents first: what undeleting
    ``top`` brings back (a ``with_children`` delete is undone as a whole)."""
    batch = [entry for entry in entries if entry.batch == top.batch and entry != top]
    chosen = [top]
    for entry in chosen:  # grows while it is walked: breadth first from ``top``
        chosen += [child for child in batch if child.parent == entry.name]
    return chosen


def latest(entries: Iterable[TrashEntry], name: str) -> TrashEntry | None:
    """The last deleted branch called ``name`` (a name may be deleted, reused and deleted)."""
    named = [entry for entry in entries if entry.name == name]
    return max(named, key=lambda entry: entry.deleted_at) if named else None


class TrashStore:
    """The rows of the trash: a cache in memory, each change written through to sqlite."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        state.open_table("trash", _SCHEMA)
        rows = state.load(
            "SELECT token, name, parent, created_at, deleted_at, batch, policy, own_bytes "
            "FROM trash"
        )
        self._entries = {str(row[0]): _entry(row) for row in rows}

    def list(self) -> builtins.list[TrashEntry]:
        """Every entry, oldest deletion first."""
        return sorted(self._entries.values(), key=lambda entry: (entry.deleted_at, entry.token))

    async def add(self, entry: TrashEntry) -> None:
        await self._state.execute(
            "INSERT OR REPLACE INTO trash VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.token,
                entry.name,
                entry.parent,
                entry.created_at.isoformat(),
                entry.deleted_at.isoformat(),
                entry.batch,
                policy_to_json(entry.policy),
                entry.own_bytes,
            ),
            what="the trash in",
        )
        self._entries[entry.token] = entry

    async def remove(self, token: str) -> None:
        await self._state.execute(
            "DELETE FROM trash WHERE token = ?", (token,), what="the trash in"
        )
        self._entries.pop(token, None)

    def get(self, token: str) -> TrashEntry | None:
        return self._entries.get(token)


def _entry(row: tuple[object, ...]) -> TrashEntry:
    token, name, parent, created, deleted, batch, policy, own = row
    return TrashEntry(
        token=str(token),
        name=str(name),
        parent=None if parent is None else str(parent),
        created_at=datetime.fromisoformat(str(created)),
        deleted_at=datetime.fromisoformat(str(deleted)),
        batch=str(batch),
        policy=policy_from_json(str(name), str(policy)),
        own_bytes=None if own is None else int(str(own)),
    )


__all__ = ["TrashEntry", "TrashStore", "due_for_purge", "latest", "restored_with"]
