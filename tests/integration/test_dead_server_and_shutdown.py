"""A branch server that dies behind Prism's back, and a shutdown where one stop fails."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from prism.errors import RuntimeStopFailed

from .harness import PrismHandle, assert_listed_stopped_then_woken, kill_branch_server, psql


async def test_a_killed_branch_server_is_reported_within_a_second_and_restarted(
    prism: PrismHandle,
) -> None:
    manager = prism.manager
    await psql(prism.dsn("postgres@mortal"), "CREATE TABLE t AS SELECT 9 AS v")
    with trio.fail_after(1.0):
        await kill_branch_server(manager, "mortal")
    await assert_listed_stopped_then_woken(prism, "mortal")


async def test_shutdown_stops_every_server_even_when_one_stop_fails(
    prism: PrismHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that survives SIGKILL cannot be made for real, so that one stop is faked."""
    manager = prism.manager
    for name in ("stuck", "fine-1", "fine-2"):
        await psql(prism.dsn(f"postgres@{name}"), "SELECT 1")
    real_stop = manager.runtime.stop

    async def stop(branch: str) -> Any:
        if branch == "stuck":
            raise RuntimeStopFailed("the server of branch stuck did not exit after SIGKILL")
        return await real_stop(branch)

    monkeypatch.setattr(manager.runtime, "stop", stop)
    failures = await manager.close()
    assert failures == {"stuck": "the server of branch stuck did not exit after SIGKILL"}
    for name in ("main", "fine-1", "fine-2"):
        assert manager.runtime.address(name) is None, f"{name} still running"
    monkeypatch.setattr(manager.runtime, "stop", real_stop)
    await manager.runtime.stop("stuck")
