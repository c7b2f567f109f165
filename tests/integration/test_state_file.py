"""The state file: private, and its intent journal survives reopening."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from prism.durable.intents import InitdbIntent, ResetIntent
from prism.durable.journal import Journal
from prism.durable.state import StateStore

from .harness import fresh_dir


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_a_new_state_file_is_0600_and_an_old_0644_one_is_made_private() -> None:
    directory = fresh_dir("state-")
    old = directory / "old.db"
    sqlite3.connect(old).close()
    old.chmod(0o644)
    for path in (directory / "new.db", old):
        store = StateStore(path)
        await Journal(store).record(InitdbIntent("main"))
        assert _mode(path) == 0o600, path
        for companion in directory.glob(f"{path.name}-*"):
            assert _mode(companion) == 0o600, companion
        store.close()


async def test_intents_are_durable_until_finished() -> None:
    path = fresh_dir("state-") / "prism.db"
    store = StateStore(path)
    intent = ResetIntent("feature", "main", "abcd1234")
    await Journal(store).record(intent)
    store.close()
    store = StateStore(path)
    journal = Journal(store)
    assert [entry.decode(ResetIntent) for entry in await journal.entries()] == [intent]
    await journal.done(intent)
    assert await journal.entries() == []
    store.close()
