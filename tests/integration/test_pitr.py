"""Point in time: main's snapshots and archived WAL give a branch as of any moment in the window.

Rows are stamped into main (a local primary, or the source a standby main follows) every
100 ms; a branch at a time T between two commits holds exactly the rows committed at or before
T, and a time outside the window is refused with the window.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from prism.config import Settings
from prism.server import PrismServer
from prism.snapshots import Snapshot, precise_time, snapshot_name
from prism.state import utcnow
from tests.waiting import wait_until

from .api_helpers import api, wait_for
from .harness import (
    PASSWORD,
    PrismHandle,
    free_port,
    make_settings,
    psql,
    serve_args,
)
from .production import SUPERUSER_PASSWORD, production_server

ROWS = 30
GAP_S = 0.1


async def _first_snapshot(prism: PrismHandle) -> Any:
    """Wait for the snapshot Prism takes when it starts."""
    kept = prism.manager.point_in_time
    async with prism.manager.events.subscribe() as events:
        if not kept.snapshots():
            with trio.fail_after(120):
                await wait_for(events, type="snapshot_taken")
    return kept.snapshots()[0]


def _stamp_rows(dsn: str) -> list[tuple[datetime, datetime]]:
    """Insert ``ROWS`` rows ``GAP_S`` apart; each row's (committed by, next begun after)."""
    moments = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE stamps (id int PRIMARY KEY, at timestamptz NOT NULL)")
        for row in range(ROWS):
            conn.execute("INSERT INTO stamps VALUES (%s, clock_timestamp())", (row,))
            committed = datetime.now(UTC)
            time.sleep(GAP_S)  # a worker thread, not the event loop
            moments.append((committed, datetime.now(UTC)))
    return moments


def _dsn(prism: PrismHandle, branch: str, password: str = PASSWORD) -> str:
    return prism.dsn(f"postgres@{branch}").replace(f"password={PASSWORD}", f"password={password}")


async def _rows(prism: PrismHandle, branch: str, password: str = PASSWORD) -> list[int]:
    out = await psql(_dsn(prism, branch, password), "SELECT id FROM stamps ORDER BY id")
    return [int(line) for line in out.stdout.decode().split()]


async def _branch_at(prism: PrismHandle, name: str, at: datetime | str) -> None:
    shown = at if isinstance(at, str) else precise_time(at)
    async with api(prism) as client:
        reply = await client.post("/api/v1/branches", json={"name": name, "at": shown})
    assert reply.status_code == 201, reply.text


def _between(moments: list[tuple[datetime, datetime]], last_row: int) -> datetime:
    """A time after ``last_row``'s commit and before the next row's insert began."""
    committed, next_begun = moments[last_row]
    return committed + (next_begun - committed) / 2


async def test_branch_at_a_time_holds_exactly_the_rows_committed_by_then(
    start_prism: Any,
) -> None:
    prism = await start_prism(snapshot_every=3600.0)
    await _first_snapshot(prism)
    moments = await trio.to_thread.run_sync(_stamp_rows, prism.dsn())
    for last_row in (4, 17, ROWS - 2):
        await _branch_at(prism, f"at-{last_row}", _between(moments, last_row))
        assert await _rows(prism, f"at-{last_row}") == list(range(last_row + 1))
    # Writable, and its writes stay its own.
    await psql(prism.dsn("postgres@at-4"), "INSERT INTO stamps VALUES (1000, now())")
    assert await _rows(prism, "main") == list(range(ROWS))


async def test_a_standby_main_gives_branches_as_of_a_time_on_the_source(
    start_prism: Any, empty_data_dir: Path
) -> None:
    async with production_server() as production:
        data_dir = empty_data_dir
        prism = await start_prism(
            data_dir=data_dir, source=production.source(), snapshot_every=3600.0
        )
        await _first_snapshot(prism)
        moments = await trio.to_thread.run_sync(_stamp_rows, production.dsn())

        async def replayed() -> bool:
            # Polling: replay offers nothing to wait on from outside the server.
            return len(await _rows(prism, "main", SUPERUSER_PASSWORD)) >= ROWS

        await wait_until(replayed, what="main to replay every row", within=60)
        for last_row in (3, ROWS - 2):
            await _branch_at(prism, f"src-{last_row}", _between(moments, last_row))
            rows = await _rows(prism, f"src-{last_row}", SUPERUSER_PASSWORD)
            assert rows == list(range(last_row + 1))
        # After the source's last commit: main as it is now.
        await _branch_at(prism, "src-now", "-0s")
        assert await _rows(prism, "src-now", SUPERUSER_PASSWORD) == list(range(ROWS))
        # Branches are writable; main (a standby) and the source are not touched.
        await psql(
            _dsn(prism, "src-3", SUPERUSER_PASSWORD),
            "INSERT INTO stamps VALUES (1000, now())",
        )
        assert await production.sql("SELECT count(*) FROM stamps") == str(ROWS)


async def test_a_time_outside_the_window_is_refused_with_the_window(start_prism: Any) -> None:
    prism = await start_prism(snapshot_every=3600.0)
    first = await _first_snapshot(prism)
    async with api(prism) as client:
        listed = (await client.get("/api/v1/branches/main/snapshots")).json()
        assert [s["name"] for s in listed["snapshots"]] == [first.name]
        assert listed["window"]["start"] == precise_time(first.taken_at)
        for at in (first.taken_at - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)):
            reply = await client.post(
                "/api/v1/branches", json={"name": "too-far", "at": precise_time(at)}
            )
            assert reply.status_code == 422, reply.text
            body = reply.json()
            assert body["code"] == "outside_window"
            assert precise_time(first.taken_at) in body["message"]
            assert precise_time(at) in body["message"]
        reply = await client.post("/api/v1/branches", json={"name": "bad", "at": "yesterday"})
        assert reply.status_code == 422 and "RFC 3339" in reply.json()["message"]
    assert prism.manager.get("too-far") is None
    assert not prism.manager.storage.exists("too-far")


async def test_relative_time_and_the_snapshot_cli(start_prism: Any) -> None:
    prism = await start_prism(snapshot_every=3600.0)
    first = await _first_snapshot(prism)
    await trio.to_thread.run_sync(_stamp_rows, prism.dsn())
    cli = [sys.executable, "-m", "prism.cli"]
    where = ["--api", prism.info.api_url]
    await trio.run_process([*cli, "branch", "create", "just-now", "--at", "-0s", *where])
    assert await _rows(prism, "just-now") == list(range(ROWS))
    listed = await trio.run_process([*cli, "snapshot", "ls", *where], capture_stdout=True)
    assert first.name in listed.stdout.decode()
    refused = await trio.run_process(
        [*cli, "branch", "create", "long-ago", "--at", "-30d", *where],
        capture_stderr=True,
        check=False,
    )
    assert refused.returncode != 0
    assert "outside the point-in-time window of main" in refused.stderr.decode()


@contextlib.asynccontextmanager
async def _serving(settings: Settings) -> AsyncIterator[PrismHandle]:
    """A Prism that stops (cleanly) at the end of the block, so the next one reconciles."""
    async with trio.open_nursery() as nursery:
        info = await nursery.start(PrismServer(settings).run)
        yield PrismHandle(info, settings)
        nursery.cancel_scope.cancel()


async def test_snapshots_are_pruned_with_the_wal_only_they_needed(data_dir: Path) -> None:
    settings = make_settings(data_dir, snapshot_every=1.0, retention=1.0)
    switch = "SELECT pg_switch_wal() FROM pg_create_restore_point('x')"
    async with _serving(settings) as prism:
        kept, storage = prism.manager.point_in_time, prism.manager.storage
        async with prism.manager.events.subscribe() as events:
            with trio.fail_after(120):
                # Main finishes a segment between snapshots: WAL to archive, then to prune.
                for _ in range(4):
                    await psql(prism.dsn(), switch)
                    await wait_for(events, type="snapshot_taken")
                snapshots = kept.snapshots()
    # Retention 1 s: the newest, and at most the one before it that covers the cutoff.
    assert 1 <= len(snapshots) <= 2
    # Checked once Prism has stopped: a snapshot being taken is not on disk half-made.
    assert {name for name in storage.list() if name.startswith("snap:")} == {
        snapshot.name for snapshot in kept.snapshots()
    }
    oldest_needed = snapshots[0].redo_wal[8:]
    archived = kept.archive.segments()
    assert archived, "main archived no WAL"
    assert all(name[8:24] >= oldest_needed for name in archived)


async def test_a_snapshot_half_made_by_a_crash_is_removed_at_start(data_dir: Path) -> None:
    settings = make_settings(data_dir, snapshot_every=3600.0)
    async with _serving(settings) as prism:
        storage, kept = prism.manager.storage, prism.manager.point_in_time
        async with prism.manager.events.subscribe() as events:
            if not kept.snapshots():
                with trio.fail_after(120):
                    await wait_for(events, type="snapshot_taken")
        whole = kept.snapshots()[0]
    # What a crash leaves: a clone whose record was never written (its intent marker only),
    # and a record whose clone is gone.
    half = snapshot_name("main", datetime(2026, 1, 1, tzinfo=UTC))
    await storage.clone(whole.name, half)
    kept.store.begin(half)
    gone = Snapshot(snapshot_name("main", datetime(2026, 1, 2, tzinfo=UTC)), "main", utcnow(), "")
    kept.store.commit(gone)
    async with _serving(settings) as prism:
        assert [s.name for s in prism.manager.point_in_time.snapshots()] == [whole.name]
        assert not prism.manager.storage.exists(half)
        assert [b.name for b in prism.manager.list()] == ["main"]


@pytest.mark.parametrize("point", ["create:cloned", "create:server-up"])
async def test_a_branch_at_a_time_half_made_by_a_crash_is_undone(
    point: str, data_dir: Path
) -> None:
    """``prism serve`` SIGKILLs its own process group at ``point`` of a create with ``at``;
    the next start removes the half-made branch and keeps the snapshots."""
    pg_port, api_port = free_port(), free_port()
    command = [*serve_args(data_dir, pg_port, api_port), "--snapshot-every", "1h"]
    env = {**os.environ, "PRISM_TEST_CRASH_AT": point}
    log_path = data_dir.parent / f"{data_dir.name}.log"
    with log_path.open("ab") as log:
        process = await trio.lowlevel.open_process(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{api_port}/api/v1"
    async with httpx.AsyncClient(timeout=120) as http:

        async def snapshotted() -> dict[str, Any] | None:
            assert process.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.TransportError):
                listed: dict[str, Any] = (await http.get(f"{url}/branches/main/snapshots")).json()
                return listed if listed["snapshots"] else None
            return None

        listed = await wait_until(snapshotted, what="main's first snapshot", within=120)
        with contextlib.suppress(httpx.TransportError):
            await http.post(f"{url}/branches", json={"name": "half", "at": "-0s"})
    with trio.fail_after(60):
        assert await process.wait() == -signal.SIGKILL
    # The next start undoes the create (a server it left running is stopped first).
    async with _serving(make_settings(data_dir, snapshot_every=3600.0)) as prism:
        assert prism.manager.get("half") is None
        assert not prism.manager.storage.exists("half")
        assert [s["name"] for s in listed["snapshots"]] == [
            s.name for s in prism.manager.point_in_time.snapshots()
        ]
        await _branch_at(prism, "whole", "-0s")
