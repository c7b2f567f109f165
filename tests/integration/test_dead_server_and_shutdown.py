"""A branch server that dies behind Prism's back, and shutdowns where a stop fails or hangs."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from prism.core.errors import RuntimeStopFailed
from prism.runtime._postmaster import read_pidfile, start_ticks

from .harness import (
    PASSWORD,
    PrismHandle,
    assert_listed_stopped_then_woken,
    kill_branch_server,
    log_of,
    psql,
    running_prism,
)

# What Prism may take beyond --shutdown-timeout: the SIGKILL and its reaping, main's stop,
# closing the state and the listeners, interpreter exit.
_EXIT_MARGIN = 8.0


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


async def test_shutdown_kills_a_server_that_cannot_stop_and_exits_within_its_deadline(
    data_dir: Path,
) -> None:
    """A SIGSTOPped postmaster never finishes a fast shutdown (and the runtime's own
    escalation would wait --stop-timeout, 30 s, first): ``prism serve`` kills it once
    --shutdown-timeout has passed, says so, and exits cleanly."""
    deadline = 3.0
    args = ["--shutdown-timeout", "3s"]
    async with running_prism(data_dir, args=args) as (process, pg_port, _):
        dsn = f"host=127.0.0.1 port={pg_port} user=postgres@frozen password={PASSWORD}"
        await psql(f"{dsn} dbname=postgres", "SELECT 1")
        pidfile = read_pidfile(data_dir / "branches" / "frozen")
        assert pidfile is not None
        os.kill(pidfile.pid, signal.SIGSTOP)
        try:
            began = trio.current_time()
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(deadline + _EXIT_MARGIN):
                status = await process.wait()
            took = trio.current_time() - began
        finally:
            if start_ticks(pidfile.pid) is not None:
                os.kill(pidfile.pid, signal.SIGKILL)
    assert status == 0
    assert took >= deadline
    assert start_ticks(pidfile.pid) is None, "the stopped server outlived Prism"
    log = log_of(data_dir).read_text()
    assert "killing the server of branch frozen: not stopped within 3s" in log
    assert "server killed branch=frozen" in log
    assert "server stopped branch=main" in log
