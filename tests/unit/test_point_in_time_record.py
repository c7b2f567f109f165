"""A point-in-time branch's time is recorded in the state file, also in a file an older Prism
made without the column."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from prism.durable.state import BranchRecord
from tests.fakes import InlineStateStore

_CREATED = datetime(2026, 12, 1, 7, 40, tzinfo=UTC)
_AT = datetime(2026, 12, 1, 7, 31, tzinfo=UTC)


async def test_the_time_a_branch_holds_survives_a_restart(tmp_path: Path) -> None:
    state = InlineStateStore(tmp_path / "prism.db")
    await state.put(BranchRecord("before", "main", _CREATED, _CREATED, "running", at=_AT))
    await state.put(BranchRecord("now", "main", _CREATED, _CREATED, "running"))
    state.close()
    again = InlineStateStore(tmp_path / "prism.db")
    try:
        assert {r.name: r.at for r in await again.all()} == {"before": _AT, "now": None}
    finally:
        again.close()


async def test_a_state_file_without_the_column_gets_it_in_place(tmp_path: Path) -> None:
    older = sqlite3.connect(tmp_path / "prism.db")
    older.execute(
        "CREATE TABLE branches (name TEXT PRIMARY KEY, parent TEXT, created_at TEXT NOT NULL, "
        "last_active TEXT NOT NULL, status TEXT NOT NULL)"
    )
    stamp = _CREATED.isoformat()
    older.execute("INSERT INTO branches VALUES ('kept', 'main', ?, ?, 'stopped')", (stamp, stamp))
    older.commit()
    older.close()
    state = InlineStateStore(tmp_path / "prism.db")
    try:
        (kept,) = await state.all()
        assert (kept.name, kept.at) == ("kept", None)
        await state.put(BranchRecord("before", "main", _CREATED, _CREATED, "stopped", at=_AT))
        assert {r.name: r.at for r in await state.all()} == {"before": _AT, "kept": None}
    finally:
        state.close()
