"""Policies survive a restart of Prism, and a policy left by a crash mid-create is dropped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from prism.branches import BranchManager
from prism.policy import BranchPolicy, PolicyStore
from prism.server import PrismServer, ServerInfo

from .harness import make_settings


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
    store = PolicyStore(data_dir / "prism.db")
    await store.put("half-made", BranchPolicy(protected=True))
    store.close()
    seen: dict[str, BranchPolicy] = {}

    async def look(manager: BranchManager) -> None:
        seen["half-made"] = manager.policies.get("half-made")

    await _run_once(data_dir, look)
    assert seen["half-made"] == BranchPolicy()
    assert PolicyStore(data_dir / "prism.db").get("half-made") == BranchPolicy()
