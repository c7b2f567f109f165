"""--source: main is a base backup of a real "production" server and follows it as a hot standby;
branches of it are writable copies as of their clone, and nothing they do reaches the source."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pg8000.native
import pytest
import trio
from trio_websocket import open_websocket_url

from prism.core.errors import find_prism_error
from prism.core.events import EventBus
from prism.core.values import HostPort
from prism.server import PrismServer

from .api_helpers import api, wait_for
from .harness import PrismHandle, free_port, make_settings, psql
from .production import (
    CATCH_UP_S,
    SUPERUSER_PASSWORD,
    Production,
    write_continuously,
)
from .production import caught_up as _caught_up
from .production import prism_dsn as _dsn
from .production import prism_sql as _sql
from .production import source_state as _source_state


async def test_main_follows_the_source_and_branches_are_writable_copies_of_it(
    production: Production, empty_data_dir: Path, start_prism: Callable[..., Any]
) -> None:
    async with trio.open_nursery() as writers:
        await writers.start(write_continuously, production)
        prism = await start_prism(data_dir=empty_data_dir, source=production.source())
        await _caught_up(prism, production)  # and again while the source keeps writing:
        await _caught_up(prism, production)

        # Main is a hot standby: reads work, writes get Postgres' own read-only error.
        assert await _sql(prism, "SELECT pg_is_in_recovery()") == "t"
        refused = await psql(_dsn(prism), "INSERT INTO events DEFAULT VALUES", check=False)
        assert "read-only transaction" in refused.stderr.decode()

        # A branch cut while the source writes is a consistent prefix of the source's history.
        assert await _sql(prism, "SELECT pg_is_in_recovery()", "busy") == "f"
        count, top = (await _sql(prism, "SELECT count(*), max(id) FROM events", "busy")).split("|")
        assert count == top
        writers.cancel_scope.cancel()

    # With the source quiet, a branch holds exactly what the source committed before its clone.
    committed = await _caught_up(prism, production)
    await prism.manager.create("quiet")
    await production.sql("INSERT INTO events DEFAULT VALUES")
    assert await _sql(prism, "SELECT count(*), max(id) FROM events", "quiet") == (
        f"{committed}|{committed}"
    )

    # Branches are writable, and nothing written there reaches the source.
    await _sql(
        prism, "INSERT INTO events (origin) VALUES ('branch'); CREATE TABLE mine (x int)", "quiet"
    )
    assert await _sql(prism, "SELECT count(*) FROM events WHERE origin = 'branch'", "quiet") == "1"
    assert await production.sql("SELECT count(*) FROM events WHERE origin = 'branch'") == "0"
    assert await production.sql("SELECT to_regclass('mine') IS NULL") == "t"
    # Nor does a branch hold the source's address.
    conninfo = await _sql(prism, "SELECT current_setting('primary_conninfo')", "quiet")
    assert conninfo == ""

    # Main keeps following after branches were cut from it.
    await _caught_up(prism, production)
    # And a branch of a branch works as always: it has its parent's writes.
    await prism.manager.create("quiet-child", parent="quiet")
    query = "SELECT count(*) FROM events WHERE origin = 'branch'"
    assert await _sql(prism, query, "quiet-child") == "1"


@pytest.mark.parametrize(
    ("user", "password", "message"),
    [
        ("replicator", "wrong-password", "refused the password of role replicator"),
        ("no_repl_role", "repl-secret", "lacks the REPLICATION attribute"),
        ("postgres", SUPERUSER_PASSWORD, "pg_hba.conf allows no replication connection"),
    ],
)
async def test_a_source_that_refuses_gets_one_clear_error(
    production: Production,
    empty_data_dir: Path,
    start_prism: Callable[..., Any],
    user: str,
    password: str,
    message: str,
) -> None:
    with pytest.raises(BaseException) as caught:
        await start_prism(data_dir=empty_data_dir, source=production.source(user, password))
    error = find_prism_error(caught.value)
    assert error is not None, caught.value
    assert message in error.message
    assert error.hint
    # Nothing half-made is left as main.
    assert not (empty_data_dir / "master").exists()


async def test_a_half_made_main_from_an_interrupted_backup_is_taken_again(
    production: Production, empty_data_dir: Path, start_prism: Callable[..., Any]
) -> None:
    # What a crash mid-backup leaves: the intent marker and a main with part of the files.
    (empty_data_dir / "source").mkdir()
    (empty_data_dir / "source" / "basebackup.incomplete").write_text("in progress\n")
    (empty_data_dir / "master" / "base").mkdir(parents=True)
    (empty_data_dir / "master" / "PG_VERSION").write_text("18\n")
    prism = await start_prism(data_dir=empty_data_dir, source=production.source())
    await _caught_up(prism, production)
    assert not (empty_data_dir / "source" / "basebackup.incomplete").exists()


async def test_source_health_is_reported_and_survives_the_source_stopping(
    production: Production, empty_data_dir: Path, start_prism: Callable[..., Any]
) -> None:
    prism = await start_prism(data_dir=empty_data_dir, source=production.source())
    await _caught_up(prism, production)
    # With the source idle, main has nothing left to replay.
    await _source_state(prism, "streaming", replay_lag_bytes=0, replay_lag_seconds=0)
    async with api(prism) as client:
        metrics = (await client.get("/metrics")).text
    assert "prism_source_streaming 1" in metrics.splitlines()
    # A separate reading: the source may have written a checkpoint record since, so any count.
    lag = next(x for x in metrics.splitlines() if x.startswith("prism_source_replay_lag_bytes "))
    assert int(lag.split()[1]) >= 0

    await production.stop()
    await _source_state(prism, "disconnected")
    # Main keeps serving its last state, and branches keep working.
    assert await _sql(prism, "SELECT count(*) FROM events") == "1000"
    await _sql(prism, "INSERT INTO events (origin) VALUES ('branch')", "offline")

    await production.start()
    await production.sql("INSERT INTO events (origin) VALUES ('after-restart')")
    await _caught_up(prism, production)  # Postgres' walreceiver reconnected by itself
    source = await _source_state(prism, "streaming", replay_lag_bytes=0)
    assert source["last_replayed"] is not None  # the commit just replayed


async def test_a_role_that_loses_replication_while_followed_is_named_with_the_fix(
    production: Production, empty_data_dir: Path, start_prism: Callable[..., Any]
) -> None:
    prism = await start_prism(data_dir=empty_data_dir, source=production.source())
    await _caught_up(prism, production)
    # Two statements, two transactions: in one, the walreceiver could reconnect before the
    # ALTER ROLE commits, and stream on.
    await production.sql("ALTER ROLE replicator NOREPLICATION")
    await production.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication")
    message = "the source refuses role replicator: it lacks the REPLICATION attribute"
    async with prism.manager.events.subscribe() as events:
        source = await _source_state(prism, "disconnected", error=message)
        assert source["hint"] == "on the source: ALTER ROLE replicator REPLICATION"
        with trio.fail_after(CATCH_UP_S):
            await wait_for(events, type="source", error=message)
    # Fixed on the source: main streams again by itself and the error is gone.
    await production.sql("ALTER ROLE replicator REPLICATION")
    await _source_state(prism, "streaming", error=None, hint=None)


async def test_prism_restarted_mid_stream_catches_up(
    production: Production, empty_data_dir: Path
) -> None:
    settings = make_settings(empty_data_dir, source=production.source())
    async with trio.open_nursery() as nursery:
        info = await nursery.start(PrismServer(settings).run)
        await _caught_up(PrismHandle(info, settings), production)
        nursery.cancel_scope.cancel()
    await production.sql("INSERT INTO events SELECT FROM generate_series(1, 500)")
    async with trio.open_nursery() as nursery:
        info = await nursery.start(PrismServer(settings).run)
        prism = PrismHandle(info, settings)
        assert await _caught_up(prism, production) == 1500
        assert await _sql(prism, "SELECT pg_is_in_recovery()") == "t"
        nursery.cancel_scope.cancel()


async def test_base_backup_progress_is_logged_and_published(
    production: Production,
    empty_data_dir: Path,
    start_prism: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[dict[str, Any]] = []

    class RecordingBus(EventBus):
        """The real bus, also keeping every event for the test to read."""

        def publish(self, type_: str, branch: str | None = None, **fields: Any) -> Any:
            event = super().publish(type_, branch, **fields)
            seen.append(event)
            return event

    monkeypatch.setattr("prism.server.EventBus", RecordingBus)
    caplog.set_level("INFO", logger="prism.source")
    await start_prism(data_dir=empty_data_dir, source=production.source())
    kinds = [event["type"] for event in seen]
    assert kinds.index("backing_up") < kinds.index("backup_progress") < kinds.index("backed_up")
    assert kinds.index("backed_up") < kinds.index("created")
    last = [event for event in seen if event["type"] == "backup_progress"][-1]
    assert last["percent"] == 100
    assert last["done_bytes"] == last["total_bytes"] > 0
    assert last["rate_bytes_s"] > 0
    assert "base backup 100%" in caplog.text


async def test_base_backup_progress_reaches_the_api_the_stream_and_clients(
    production: Production, empty_data_dir: Path
) -> None:
    pg_port, api_port = free_port(), free_port()
    settings = make_settings(
        empty_data_dir,
        source=production.source(),
        source_max_rate=await production.max_rate_for(8),
        listen=HostPort("127.0.0.1", pg_port),
        api=HostPort("127.0.0.1", api_port),
    )
    base = f"http://127.0.0.1:{api_port}"
    async with trio.open_nursery() as nursery, httpx.AsyncClient(base_url=base) as http:
        nursery.start_soon(PrismServer(settings).run)
        # The API answers while the backup runs: main is listed as backing_up, with progress.
        with trio.fail_after(CATCH_UP_S):
            while True:
                try:
                    listed = (await http.get("/api/v1/branches")).json()["branches"]
                except httpx.TransportError:
                    listed = []
                if listed and (listed[0]["source"] or {}).get("backup"):
                    break
                await trio.sleep(0.1)
        [main] = listed
        assert main["name"] == "main"
        assert main["status"] == "backing_up"
        assert main["source"]["state"] == "backing_up"
        progress = main["source"]["backup"]
        assert 0 < progress["done_bytes"] < progress["total_bytes"]
        assert progress["percent"] < 100
        assert progress["rate_bytes_s"] > 0
        health = await http.get("/healthz")
        assert (health.status_code, health.json()["status"]) == (503, "starting")

        # The event stream: a snapshot with main backing up, then live progress.
        async with open_websocket_url(f"ws://127.0.0.1:{api_port}/api/v1/events") as socket:
            snapshot = json.loads(await socket.get_message())
            assert [b["status"] for b in snapshot["branches"]] == ["backing_up"]
            with trio.fail_after(CATCH_UP_S):
                event = json.loads(await socket.get_message())
                while event["type"] != "backup_progress":
                    event = json.loads(await socket.get_message())
            assert event["branch"] == "main"
            assert event["percent"] < 100

        # A client of main, or of a new branch, is told to come back, with the progress.
        for user in ("postgres", "postgres@early"):

            def connect(user: str = user) -> dict[str, str]:
                with pytest.raises(pg8000.native.DatabaseError) as refused:
                    pg8000.native.Connection(
                        user, password=SUPERUSER_PASSWORD, host="127.0.0.1", port=pg_port
                    )
                fields: dict[str, str] = refused.value.args[0]
                return fields

            fields = await trio.to_thread.run_sync(connect)
            assert fields["C"] == "57P03"
            assert "branch main is not ready yet" in fields["M"]
            assert re.search(r"base backup of the source: \d+% \(", fields["M"]), fields["M"]
            assert "eta" in fields["M"]
        refused = await http.post("/api/v1/branches", json={"name": "early"})
        assert (refused.status_code, refused.json()["code"]) == (503, "starting_up")

        # Then main is whole, streaming and serving; the refused branch was never made.
        with trio.fail_after(CATCH_UP_S * 4):
            # Polling: the test sees Prism from outside, as an operator's probe does.
            while (await http.get("/healthz")).status_code != 200:  # noqa: ASYNC110
                await trio.sleep(0.1)
        dsn = production.dsn().replace(str(production.port), str(pg_port))
        assert (await psql(dsn, "SELECT count(*) FROM events")).stdout.decode().strip() == "1000"
        names = [b["name"] for b in (await http.get("/api/v1/branches")).json()["branches"]]
        assert names == ["main"]
        nursery.cancel_scope.cancel()


async def test_a_gone_source_is_retried_ever_less_often_and_at_the_base_rate_once_back(
    production: Production, empty_data_dir: Path, start_prism: Callable[..., Any]
) -> None:
    prism = await start_prism(data_dir=empty_data_dir, source=production.source())
    await _caught_up(prism, production)
    streaming = await _source_state(prism, "streaming", retry_interval_s=5.0)
    assert streaming["next_attempt"] is None

    await production.stop()
    # The interval doubles after each failed retry: 5 s, then 10 s, then 20 s.
    first = await _source_state(prism, "disconnected", retry_interval_s=10.0)
    assert first["next_attempt"] is not None
    second = await _source_state(prism, "disconnected", retry_interval_s=20.0)
    assert second["next_attempt"] > first["next_attempt"]
    # Main keeps serving its last state meanwhile, and branches keep working.
    assert await _sql(prism, "SELECT current_setting('wal_retrieve_retry_interval')") == "20s"
    assert await _sql(prism, "SELECT count(*) FROM events") == "1000"
    await _sql(prism, "INSERT INTO events (origin) VALUES ('branch')", "while-gone")
    # A branch does not inherit main's backoff.
    query = "SELECT current_setting('wal_retrieve_retry_interval')"
    assert await _sql(prism, query, "while-gone") == "5s"

    await production.start()
    await production.sql("INSERT INTO events (origin) VALUES ('back')")
    await _caught_up(prism, production)
    await _source_state(prism, "streaming", retry_interval_s=5.0, next_attempt=None)
