"""The one journal: every unfinished multi-step change on disk, as a typed intent (JSON).

An operation records its intent (``prism.durable.intents``) *before* its first step on disk, may
replace it as it goes (same key: a reset saying it has started cloning), and drops it once
finished or undone. A crash anywhere in between leaves the row, which start-up recovery
(``prism.durable.recovery``) hands to the recoverer its owner registered. A row is never dropped
unread: one nobody recovers stops start-up.

The table lives in Prism's state file (``StateStore``: one connection, ``synchronous=FULL``, so
a row is on disk before the step it announces). Opening the journal converts what an older
Prism left: rows of its ``operations`` table, whose ``detail`` was parsed two ways, become
typed intents here, once (``prism.durable.journal_upgrade``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prism.durable.intents import Intent, IntentT, decode
from prism.durable.journal_upgrade import convert_markers, convert_operations
from prism.durable.state import StateStore, utcnow

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    body        TEXT NOT NULL,
    started_at  TEXT NOT NULL
)
"""

# A later step of the same operation replaces its body but keeps its id and its start.
_UPSERT = (
    "INSERT INTO journal (key, kind, body, started_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET kind = excluded.kind, body = excluded.body"
)


@dataclass(frozen=True)
class Entry:
    """One row of the journal, not yet decoded (its kind may be one this Prism lacks)."""

    id: int
    key: str
    kind: str
    body: str
    started_at: str

    def decode(self, kind: type[IntentT]) -> IntentT:
        return decode(self.body, kind)


class Journal:
    """Records, lists and drops intents in the state file; shared by every owner."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        state.open_table("journal", _SCHEMA)
        convert_operations(self)
        convert_markers(self, state.path.parent)

    async def record(self, intent: Intent) -> None:
        """Write ``intent`` (or replace the one with its key) before the step it announces."""
        await self.state.execute(
            _UPSERT,
            (intent.key, intent.KIND, intent.encode(), utcnow().isoformat()),
            what="the journal in",
        )

    async def done(self, intent: Intent) -> None:
        """Drop ``intent``: its operation finished or was undone."""
        await self.state.execute(
            "DELETE FROM journal WHERE key = ?", (intent.key,), what="the journal in"
        )

    async def drop(self, entry: Entry) -> None:
        """Drop the row ``entry`` once recovery finished or undid it."""
        await self.state.execute(
            "DELETE FROM journal WHERE id = ?", (entry.id,), what="the journal in"
        )

    async def entries(self) -> list[Entry]:
        """Every intent a crash left, oldest first."""
        rows = await self.state.execute(
            "SELECT id, key, kind, body, started_at FROM journal ORDER BY id"
        )
        return [Entry(int(str(i)), str(k), str(t), str(b), str(s)) for i, k, t, b, s in rows]

    def record_at_start(self, key: str, kind: str, body: str, *, started_at: str) -> None:
        """Write one row at start, before any task runs (the upgrade of an older data dir)."""
        self.state.load(_UPSERT, (key, kind, body, started_at))


__all__ = ["Entry", "Journal"]
