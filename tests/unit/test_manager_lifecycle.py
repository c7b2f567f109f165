"""BranchManager alone over in-memory drivers: one provision per branch, rollback, reconcile."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from prism.core.errors import ProvisionFailed, RuntimeStartFailed
from prism.core.events import Event
from prism.durable.state import BranchRecord, StateStore, utcnow
from prism.runtime.base import Runtime
from prism.storage.base import Storage
from tests.fakes import FakeRuntime, FakeStorage
from tests.manager_kit import open_manager


def test_the_fakes_satisfy_the_driver_protocols() -> None:
    assert isinstance(FakeStorage(), Storage)
    assert isinstance(FakeRuntime(), Runtime)


async def test_twenty_clients_racing_to_a_new_branch_cause_one_provision(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path, slow=True) as (manager, _, _):
        seen: list[Event] = []
        manager.events.add_listener(seen.append)
        addresses = []

        async def connect() -> None:
            addresses.append(await manager.ensure_running("crowded"))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(connect)
        assert len(set(addresses)) == 1 and len(addresses) == 20
        assert [e["type"] for e in seen].count("provisioning") == 1


async def test_a_failed_start_rolls_the_new_branch_back_entirely(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path) as (manager, storage, runtime):
        runtime.fail["start:broken"] = RuntimeStartFailed("the server would not start")
        with pytest.raises(ProvisionFailed, match="could not create branch"):
            await manager.create("broken")
        assert manager.get("broken") is None
        assert not storage.exists("broken")
        assert "broken" not in runtime.running
        assert [r.name for r in await manager.state.all()] == ["main"]


async def test_reconcile_rolls_back_half_made_and_registers_found_branches(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    storage = FakeStorage(tmp_path / "data")
    storage.branches |= {"main", "half-made", "found"}
    # Only a directory initdb finished is registered; a half-made one is removed.
    found = storage.path("found")
    (found / "global").mkdir(parents=True)
    for marker in ("PG_VERSION", "postgresql.conf", "global/pg_control"):
        (found / marker).touch()
    state = StateStore(tmp_path / "prism.db")
    now = utcnow()
    await state.put(BranchRecord("main", None, now, now, "stopped"))
    await state.put(BranchRecord("half-made", "main", now, now, "provisioning"))
    await state.put(BranchRecord("gone", "main", now, now, "stopped"))
    state.close()
    async with open_manager(tmp_path, storage=storage) as (manager, _, runtime):
        assert [b.name for b in manager.list()] == ["found", "main"]
        assert not storage.exists("half-made")
        assert manager.require("found").parent == "main"
        assert sorted(r.name for r in await manager.state.all()) == ["found", "main"]
        assert "main" in runtime.running


async def test_reconcile_stops_the_servers_no_branch_owns(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = FakeRuntime()
    runtime.strays = ["a postmaster on data/rolled-back"]
    async with open_manager(tmp_path, runtime=runtime) as (manager, _, _):
        assert runtime.strays == []
        assert manager.get("rolled-back") is None
    assert "belongs to no branch: a postmaster on data/rolled-back" in caplog.text


class _StuckStop(FakeRuntime):
    """A runtime on which the server of branch ``stuck`` never finishes a stop."""

    async def stop(self, branch: str) -> None:
        if branch == "stuck":
            await trio.sleep_forever()
        await super().stop(branch)


async def test_shutdown_kills_the_servers_still_running_at_its_deadline(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = _StuckStop()
    async with open_manager(tmp_path, runtime=runtime) as (manager, _, _):
        await manager.create("stuck")
        await manager.create("fine")
        seen: list[Event] = []
        manager.events.add_listener(seen.append)
        began = trio.current_time()
        failures = await manager.close(kill_after=5.0)
        assert trio.current_time() - began == pytest.approx(5.0)
        assert failures == {}
        assert runtime.killed == ["stuck"]
        assert runtime.running == {}
        assert {b.name: b.status.value for b in manager.list()} == {
            "fine": "stopped",
            "main": "stopped",
            "stuck": "stopped",
        }
        stopped = {e["branch"]: e["reason"] for e in seen if e["type"] == "stopped"}
        assert stopped == {"fine": "shutdown", "main": "shutdown", "stuck": "killed"}
    assert "killing the server of branch stuck: not stopped within 5s" in caplog.text


async def test_shutdown_within_its_deadline_kills_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path, slow=True) as (manager, _, runtime):
        await manager.create("quick")
        assert await manager.close(kill_after=5.0) == {}
        assert runtime.killed == [] and runtime.running == {}
