"""The reaper task over a manager with stand-in drivers, on a mock clock: no Postgres, no sleeps."""

from __future__ import annotations

import time
from pathlib import Path

import trio
import trio.testing

from prism.branches.manager import BranchManager
from prism.branches.reaper import run_reaper
from prism.core.events import Event
from tests.manager_kit import open_manager


def _make_idle(manager: BranchManager, *names: str) -> None:
    for name in names:
        manager.require(name).last_active_ts = time.time() - 3600


async def _reaper(manager: BranchManager) -> None:
    await run_reaper(manager, idle_timeout=1.0, include_main=False)


async def _stopped(manager: BranchManager, name: str) -> None:
    """Wait (on the mock clock: no real time) until the reaper has stopped ``name``."""
    done = trio.Event()

    def listen(event: Event) -> None:
        if event["type"] == "stopped" and event["branch"] == name and event["reason"] == "idle":
            done.set()

    manager.events.add_listener(listen)
    with trio.fail_after(60):
        await done.wait()


async def test_reaper_survives_a_non_prism_error_of_one_branch(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path) as (manager, _storage, runtime):
        for name in ("doomed", "fine", "later"):
            await manager.create(name)
        _make_idle(manager, "doomed", "fine")
        # Not a PrismError: what a Docker APIError or a sqlite error looks like to the reaper.
        runtime.fail["stop:doomed"] = RuntimeError("the engine went away")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_reaper, manager)
            await _stopped(manager, "fine")  # the branch after the failing one
            _make_idle(manager, "later")
            await _stopped(manager, "later")  # the reaper is still at work
            nursery.cancel_scope.cancel()
        assert "fine" not in runtime.running and "later" not in runtime.running


async def test_reaper_leaves_a_branch_with_an_open_session(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path) as (manager, _storage, runtime):
        await manager.create("busy")
        session = await manager.admit("busy", "client-1")
        _make_idle(manager, "busy")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_reaper, manager)
            await trio.sleep(5)  # twenty looks of the reaper, on the mock clock
            assert "busy" in runtime.running
            manager.connection_closed(session)
            _make_idle(manager, "busy")
            await _stopped(manager, "busy")
            nursery.cancel_scope.cancel()
