"""Truthful health on real servers: main frozen (SIGSTOP) or in crash recovery (a backend
SIGKILLed while another cannot die) is never called running while it serves nobody; clients
are refused at once with 57P03; ``/healthz`` answers 503; it is running again once it serves."""

from __future__ import annotations

import functools
import os
import signal
from typing import Any

import httpx
import pg8000.native
import pytest
import trio

from prism.core.events import Event

from .harness import PASSWORD, PrismHandle, frozen, psql, wait_for_status

pytestmark = pytest.mark.integration

_STATUSES = {"running", "recovering", "unhealthy", "stopping", "stopped", "starting"}


def main_statuses(prism: PrismHandle) -> list[Event]:
    """Every status event of main from now on, as it comes (for the life of the bus)."""
    seen: list[Event] = []

    def keep(event: Event) -> None:
        if event["branch"] == "main" and event["type"] in _STATUSES:
            seen.append(event)

    prism.manager.events.add_listener(keep)
    return seen


async def refusal(prism: PrismHandle) -> dict[str, str]:
    """The ErrorResponse fields a client of main gets (it must come at once: no hang)."""

    def connect() -> dict[str, str]:
        with pytest.raises(pg8000.native.DatabaseError) as refused:
            pg8000.native.Connection(
                "postgres@main", password=PASSWORD, host="127.0.0.1", port=prism.port, timeout=10
            )
        fields: dict[str, str] = refused.value.args[0]
        return fields

    with trio.fail_after(3):
        return await trio.to_thread.run_sync(connect)


async def assert_never_running_for(http: httpx.AsyncClient, seconds: float, status: str) -> None:
    """For ``seconds``, the API, ``/healthz`` and the event ring all say ``status``."""
    with trio.move_on_after(seconds):
        while True:
            assert (await http.get("/api/v1/branches/main")).json()["status"] == status
            health = await http.get("/healthz")
            assert health.status_code == 503 and health.json()["status"] == status
            await trio.sleep(0.05)


async def test_a_frozen_main_is_unhealthy_until_it_thaws(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(health_interval=0.25)
    await psql(prism.dsn(), "SELECT 1")
    seen = main_statuses(prism)
    async with httpx.AsyncClient(base_url=prism.info.api_url) as http:
        with frozen(prism.manager, "main"):
            view = await wait_for_status(http, "main", "unhealthy", within=10)
            assert "does not answer" in view["trouble"]["reason"]
            assert view["trouble"]["log"], "the log's last lines"
            health = await http.get("/healthz")
            assert health.status_code == 503
            assert health.json()["main"]["reason"] == view["trouble"]["reason"]
            refused = await refusal(prism)
            assert refused["C"] == "57P03" and "unhealthy" in refused["M"]
            await assert_never_running_for(http, 1.0, "unhealthy")
        view = await wait_for_status(http, "main", "running", within=10)
        assert view["trouble"] is None
        assert (await http.get("/healthz")).status_code == 200
        await psql(prism.dsn(), "SELECT 1")
    assert [(e["type"], e.get("reason")) for e in seen] == [
        ("unhealthy", None),
        ("running", "recovered"),
    ]


async def test_main_in_crash_recovery_is_recovering_until_it_serves_again(
    start_prism: Any,
) -> None:
    """A SIGKILLed backend sends the postmaster into crash recovery; a second backend,
    SIGSTOPped, cannot obey its SIGQUIT, which holds the server in recovery (answering 57P03
    "in recovery mode") until the test lets it go."""
    prism: PrismHandle = await start_prism(health_interval=0.25)
    await psql(prism.dsn(), "SELECT 1")
    sleepers = []
    async with trio.open_nursery() as nursery:
        for tag in ("frozen", "doomed"):
            sleep = f"SELECT pg_sleep(120) -- {tag}"
            run = functools.partial(
                trio.run_process,
                ["psql", prism.dsn(), "-X", "-c", sleep],
                check=False,
                capture_stdout=True,
                capture_stderr=True,
            )
            sleepers.append(await nursery.start(run))
        pids: dict[str, str] = {}
        with trio.fail_after(10):
            while len(pids) < 2:
                out = await psql(
                    prism.dsn(),
                    "SELECT right(query, 6), pid FROM pg_stat_activity "
                    "WHERE query LIKE 'SELECT pg_sleep(120) -- %'",
                )
                pids = dict(line.split("|") for line in out.stdout.decode().split())
                await trio.sleep(0.05)
        seen = main_statuses(prism)
        async with httpx.AsyncClient(base_url=prism.info.api_url) as http:
            os.kill(int(pids["frozen"]), signal.SIGSTOP)
            try:
                os.kill(int(pids["doomed"]), signal.SIGKILL)
                view = await wait_for_status(http, "main", "recovering", within=10)
                assert "in recovery mode" in view["trouble"]["reason"]
                assert any("terminated by signal 9" in line for line in view["trouble"]["log"])
                refused = await refusal(prism)
                assert refused["C"] == "57P03" and "recovering" in refused["M"]
                assert "terminated by signal 9" in refused["H"]
                await assert_never_running_for(http, 1.0, "recovering")
            finally:
                os.kill(int(pids["frozen"]), signal.SIGCONT)
            view = await wait_for_status(http, "main", "running", within=15)
            assert view["trouble"] is None
            # Running means serving: a client gets in at once.
            await psql(prism.dsn(), "SELECT 1")
            assert (await http.get("/healthz")).status_code == 200
        assert [(e["type"], e.get("reason")) for e in seen] == [
            ("recovering", None),
            ("running", "recovered"),
        ]
        for process in sleepers:
            process.terminate()
