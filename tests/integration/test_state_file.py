"""The state file: private, and its intent journal survives reopening."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from prism.state import Intent, StateStore

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
        await store.begin("main", "initdb")
        assert _mode(path) == 0o600, path
        for companion in directory.glob(f"{path.name}-*"):
            assert _mode(companion) == 0o600, companion
        store.close()


async def test_intents_are_durable_until_finished() -> None:
    path = fresh_dir("state-") / "prism.db"
    store = StateStore(path)
    await store.begin("feature", "reset", parent="main", detail="abcd1234")
    store.close()
    store = StateStore(path)
    assert await store.intents() == [Intent("feature", "reset", "main", "abcd1234")]
    await store.finish("feature")
    assert await store.intents() == []
    store.close()
