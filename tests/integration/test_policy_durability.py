"""Policies survive a restart of Prism, and a policy left by a crash mid-create is dropped."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import trio

from prism.branches.manager import BranchManager
from prism.branches.policy import BranchPolicy, PolicyStore
from prism.durable.state import StateStore
from prism.server import PrismServer, ServerInfo

from .harness import make_settings

_NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


async def _run_once(data_dir: Path, step: Callable[[BranchManager], Awaitable[None]]) -> None:
    async with trio.open_nursery() as nursery:
        info: ServerInfo = await nursery.start(PrismServer(make_settings(data_dir)).run)
        await step(info.manager)
        nursery.cancel_scope.cancel()


async def test_protection_and_expiry_survive_a_restart(data_dir: Path) -> None:
    async def first(manager: BranchManager) -> None:
        await manager.create("kept", ttl=7200.0, protected=True)
        await manager.set_policy("main", on_create="SELECT 1")

    seen: dict[str, BranchPolicy] = {}

    async def second(manager: BranchManager) -> None:
        seen["kept"] = manager.policy("kept")
        seen["main"] = manager.policy("main")

    await _run_once(data_dir, first)
    await _run_once(data_dir, second)
    assert seen["kept"].protected and seen["kept"].expires_at is not None
    assert seen["main"].on_create == "SELECT 1" and seen["main"].protected


async def test_policy_of_a_branch_that_never_came_to_be_is_dropped(data_dir: Path) -> None:
    # What a crash between writing the intent and provisioning leaves: a row, no branch.
    state = StateStore(data_dir / "prism.db")
    store = PolicyStore(state)
    await store.put("half-made", BranchPolicy(protected=True))
    state.close()
    seen: dict[str, BranchPolicy] = {}

    async def look(manager: BranchManager) -> None:
        seen["half-made"] = manager.policies.get("half-made")

    await _run_once(data_dir, look)
    assert seen["half-made"] == BranchPolicy()
    assert PolicyStore(StateStore(data_dir / "prism.db")).get("half-made") == BranchPolicy()


def test_policies_survive_reopening_and_orphans_are_pruned(tmp_path: Path) -> None:
    path = tmp_path / "prism.db"

    async def write() -> None:
        state = StateStore(path)
        store = PolicyStore(state)
        await store.put("keep", BranchPolicy(protected=True, expires_at=_NOW, on_create="SELECT 1"))
        await store.put("ghost", BranchPolicy(expires_at=_NOW))
        state.close()

    async def read() -> tuple[BranchPolicy, list[str], BranchPolicy]:
        state = StateStore(path)
        store = PolicyStore(state)
        kept = store.get("keep")
        pruned = await store.prune(["keep", "main"])
        ghost = store.get("ghost")
        state.close()
        return kept, pruned, ghost

    trio.run(write)
    kept, pruned, ghost = trio.run(read)
    assert kept == BranchPolicy(protected=True, expires_at=_NOW, on_create="SELECT 1")
    assert pruned == ["ghost"] and ghost == BranchPolicy()
    assert PolicyStore(StateStore(path)).get("ghost") == BranchPolicy()


def test_hook_commands_are_kept_and_an_older_policy_table_gains_the_column(
    tmp_path: Path,
) -> None:
    path = tmp_path / "prism.db"
    with sqlite3.connect(path) as old:  # the table as Prism wrote it before commands existed
        old.execute(
            "CREATE TABLE branch_policy (name TEXT PRIMARY KEY, protected INTEGER NOT NULL,"
            " expires_at TEXT, on_create TEXT)"
        )
        old.execute("INSERT INTO branch_policy VALUES ('tpl', 1, NULL, 'SELECT 1')")
    old.close()
    command = ("psql", "-c", "UPDATE t SET x = 'a b'")

    async def write() -> BranchPolicy:
        state = StateStore(path)
        store = PolicyStore(state)
        before = store.get("tpl")
        await store.update("tpl", on_create_command=command)
        state.close()
        return before

    assert trio.run(write) == BranchPolicy(protected=True, on_create="SELECT 1")
    assert PolicyStore(StateStore(path)).get("tpl") == BranchPolicy(
        protected=True, on_create="SELECT 1", on_create_command=command
    )
