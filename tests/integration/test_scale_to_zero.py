"""Scale-to-zero with a real reaper: idle branches stop, keep their data and wake on connect."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import trio

from .api_helpers import api, status, wait_for
from .harness import PrismHandle, psql


async def test_idle_branch_is_stopped_and_the_next_connect_wakes_it_with_data_intact(
    start_prism: Any,
) -> None:
    prism: PrismHandle = await start_prism(idle_timeout=1.0)
    async with prism.manager.events.subscribe() as events:
        await psql(prism.dsn("postgres@sleepy"), "CREATE TABLE kept AS SELECT 41 + 1 AS v")
        with trio.fail_after(15):
            await wait_for(events, type="stopped", branch="sleepy", reason="idle")
        assert prism.manager.runtime.address("sleepy") is None
        assert status(prism, "main") == "running"  # main does not scale to zero by default

        out = await psql(prism.dsn("postgres@sleepy"), "SELECT v FROM kept")
        assert out.stdout.decode().strip() == "42"
        with trio.fail_after(1):
            await wait_for(events, type="running", branch="sleepy", reason="wake")
    async with api(prism) as http:
        metrics = (await http.get("/metrics")).text.splitlines()
    assert "prism_reaper_stops_total 1" in metrics
    assert "prism_wake_duration_seconds_count 1" in metrics


async def test_branch_holding_an_idle_open_connection_is_not_stopped(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(idle_timeout=1.0)
    conn = await trio.to_thread.run_sync(
        lambda: psycopg.connect(prism.dsn("postgres@held"), autocommit=True)
    )
    async with prism.manager.events.subscribe() as events:
        try:
            await trio.sleep(3.0)  # three idle timeouts with nothing moving
            assert status(prism, "held") == "running"
            row = await trio.to_thread.run_sync(lambda: conn.execute("SELECT 1").fetchone())
            assert row == (1,)
        finally:
            await trio.to_thread.run_sync(conn.close)
        with trio.fail_after(15):
            await wait_for(events, type="stopped", branch="held", reason="idle")


async def test_main_scales_to_zero_when_the_setting_says_so(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(idle_timeout=1.0, main_scales_to_zero=True)
    async with prism.manager.events.subscribe() as events:
        with trio.fail_after(15):
            await wait_for(events, type="stopped", branch="main", reason="idle")
    out = await psql(prism.dsn(), "SELECT 'awake'")
    assert out.stdout.decode().strip() == "awake"


async def test_idle_timeout_zero_disables_the_reaper(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(idle_timeout=0.0, main_scales_to_zero=True)
    await psql(prism.dsn("postgres@forever"), "SELECT 1")
    prism.manager.get("forever").last_active_ts -= 10**6
    await trio.sleep(1.0)  # the behaviour under test: time passes and nothing is stopped
    assert status(prism, "forever") == "running"


async def test_client_arriving_after_the_reapers_look_keeps_the_branch_running(
    prism: PrismHandle,
) -> None:
    """The reaper picks from a snapshot; the stop itself re-checks under the branch's lock."""
    await psql(prism.dsn("postgres@late"), "SELECT 1")
    later = time.time() + 3600  # by then "late" would be long idle, were nobody connected
    conn = await trio.to_thread.run_sync(
        lambda: psycopg.connect(prism.dsn("postgres@late"), autocommit=True)
    )
    async with prism.manager.events.subscribe() as events:
        try:
            assert not await prism.manager.stop_if_idle("late", idle_for=60, now=later)
            assert status(prism, "late") == "running"
        finally:
            await trio.to_thread.run_sync(conn.close)
        with trio.fail_after(5):
            await wait_for(events, type="disconnected", branch="late")
    assert await prism.manager.stop_if_idle("late", idle_for=60, now=later)
    assert status(prism, "late") == "stopped"
