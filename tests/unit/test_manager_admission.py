"""Admission in BranchManager: the caps hold under concurrency, eviction never cuts a session.

The drivers are in-memory stand-ins whose steps take Trio time, and the clock is a MockClock, so
every interleaving the awaits allow is exercised in milliseconds and without real sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from prism.branches.manager import BranchManager, BranchStatus, ClientSession
from prism.core.errors import LimitExceeded, PrismError, TooManyConnections
from prism.core.events import Event
from prism.frontdoor.admission import FrontDoor, Session, SessionBranch
from prism.frontdoor.limits import Gate, Limits
from tests.manager_kit import open_manager


async def _admit_at_once(
    manager: BranchManager, names: list[str], *, first: Callable[[str], object] | None = None
) -> tuple[list[ClientSession], list[PrismError]]:
    """A client for each of ``names``, all at once: the sessions admitted and the refusals.

    ``first`` runs before each admission, outside it (what the proxy asks before admitting).
    """
    admitted: list[ClientSession] = []
    refused: list[PrismError] = []

    async def connect(name: str) -> None:
        if first is not None:
            first(name)
        try:
            admitted.append(await manager.admit(name, f"client-{name}"))
        except PrismError as exc:
            refused.append(exc)

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(connect, name)
    return admitted, refused


async def test_the_manager_and_its_sessions_are_what_the_front_door_needs(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path) as (manager, _, _):
        assert isinstance(manager, FrontDoor)
        session = await manager.admit("feature", "client")
        assert isinstance(session, Session)
        assert isinstance(session.branch, SessionBranch)
        manager.connection_closed(session)


async def test_max_branches_holds_for_concurrent_first_connections(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path, max_branches=3, slow=True) as (manager, _, _):
        gate = Gate(manager, Limits())
        names = [f"new-{i}" for i in range(5)]
        admitted, refused = await _admit_at_once(manager, names, first=gate.may_create)
        assert len(admitted) == 2
        assert len(refused) == 3
        assert all(isinstance(exc, LimitExceeded) for exc in refused)
        assert "limit of 3 branches" in refused[0].message
        assert len(manager.list()) == 3


async def test_max_branches_also_caps_the_api_path(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path, max_branches=2) as (manager, storage, _):
        await manager.create("first")
        with pytest.raises(LimitExceeded):
            await manager.create("second")
        assert manager.get("second") is None
        assert not storage.exists("second")


async def test_max_running_holds_for_concurrent_wakes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path, max_running=3, slow=True) as (manager, _, runtime):
        admitted, refused = await _admit_at_once(manager, [f"busy-{i}" for i in range(6)])
        # main plus two branches with clients fit; the rest are told every server has clients.
        assert len(admitted) == 2
        assert all(isinstance(exc, TooManyConnections) for exc in refused)
        assert runtime.peak <= 3


async def test_eviction_skips_a_branch_whose_session_is_still_being_set_up(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path, max_running=3) as (manager, _, runtime):
        await manager.create("setting-up")
        await manager.create("idle")
        # Admitted but not yet spliced (the proxy is still logging in to the server).
        session = await manager.admit("setting-up", "client-1")
        manager.require("setting-up").last_active_ts = time.time() - 7200  # least recent
        manager.require("idle").last_active_ts = time.time() - 3600
        await manager.admit("newcomer", "client-2")
        assert "setting-up" in runtime.running
        assert "idle" not in runtime.running
        manager.connection_closed(session)


async def test_eviction_under_load_never_cuts_a_session_and_keeps_the_cap(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Many clients come and go on more branches than may run: eviction and admission race."""
    async with open_manager(tmp_path, max_running=3, slow=True) as (manager, _, runtime):
        cut: list[str] = []

        async def client(name: str, hold: float) -> None:
            try:
                session = await manager.admit(name, "c")
            except TooManyConnections:
                return
            try:
                await trio.sleep(0.2)  # logging in to the server: not yet a spliced session
                if name not in runtime.running:
                    cut.append(f"{name} was stopped during its client's log-in")
                with manager.terminable(session):
                    await trio.sleep(hold)
            except PrismError as exc:
                cut.append(exc.message)
            finally:
                manager.connection_closed(session)

        async with trio.open_nursery() as nursery:
            for round_ in range(8):
                for i in range(3):
                    nursery.start_soon(client, f"b-{(3 * round_ + i) % 7}", 0.2 * (i + 1))
                await trio.sleep(0.6)
        assert cut == []
        assert runtime.peak <= 3
        assert all(branch.connections == 0 for branch in manager.list())


async def test_evicted_branch_is_stopped_with_the_real_reason(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path, max_running=2) as (manager, _, _):
        await manager.create("old")
        seen: list[Event] = []
        manager.events.add_listener(seen.append)
        await manager.create("new")
        stopped = [(e["branch"], e["reason"]) for e in seen if e["type"] == "stopped"]
        assert stopped == [("old", "max-running")]
        assert manager.require("old").status is BranchStatus.STOPPED


async def test_a_session_of_a_deleted_branch_does_not_touch_its_successor(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path) as (manager, _, _):
        session = await manager.admit("phoenix", "client-1")  # its login then fails, slowly
        await manager.delete("phoenix")
        await manager.create("phoenix")
        manager.connection_closed(session)
        assert manager.require("phoenix").connections == 0


async def test_every_wake_path_is_held_to_the_running_cap(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The API's start and the role lookup's wake-up go through the same reservation."""
    async with open_manager(tmp_path, max_running=2) as (manager, _, runtime):
        await manager.create("asleep")
        await manager.stop("asleep")
        session = await manager.admit("busy", "client-1")
        with pytest.raises(TooManyConnections, match="all of them have clients"):
            await manager.start("asleep")  # the API and the CLI
        with pytest.raises(TooManyConnections):
            await manager.ensure_running("asleep", create=False)  # the role lookup
        assert "asleep" not in runtime.running
        assert manager.require("asleep").status is BranchStatus.STOPPED
        manager.connection_closed(session)
        await manager.start("asleep")  # "busy" is idle now: it makes room
        assert "asleep" in runtime.running and "busy" not in runtime.running
