"""Point in time: main's snapshots and archived WAL give a branch as of any moment in the window.

Rows are stamped into main every 100 ms; a branch at a time T between two commits holds exactly
the rows committed at or before T, and a time outside the window is refused with the window.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import trio

from prism.snapshots import precise_time

from .api_helpers import api, wait_for
from .harness import PrismHandle, psql

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


async def _rows(prism: PrismHandle, branch: str) -> list[int]:
    out = await psql(prism.dsn(f"postgres@{branch}"), "SELECT id FROM stamps ORDER BY id")
    return [int(line) for line in out.stdout.decode().split()]


async def test_branch_at_a_time_holds_exactly_the_rows_committed_by_then(
    start_prism: Any,
) -> None:
    prism = await start_prism(snapshot_every=3600.0)
    await _first_snapshot(prism)
    moments = await trio.to_thread.run_sync(_stamp_rows, prism.dsn())
    async with api(prism) as client:
        for last_row in (4, 17, ROWS - 2):
            committed, next_begun = moments[last_row]
            target = committed + (next_begun - committed) / 2
            name = f"at-{last_row}"
            reply = await client.post(
                "/api/v1/branches", json={"name": name, "at": precise_time(target)}
            )
            assert reply.status_code == 201, reply.text
            assert await _rows(prism, name) == list(range(last_row + 1))
        # Writable, and its writes stay its own.
        await psql(prism.dsn("postgres@at-4"), "INSERT INTO stamps VALUES (1000, now())")
        assert await _rows(prism, "main") == list(range(ROWS))


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
    async with api(prism) as client:
        reply = await client.post("/api/v1/branches", json={"name": "just-now", "at": "-0s"})
        assert reply.status_code == 201, reply.text
    assert await _rows(prism, "just-now") == list(range(ROWS))
    command = [sys.executable, "-m", "prism.cli", "snapshot", "ls", "--api", prism.info.api_url]
    listed = await trio.run_process(command, capture_stdout=True)
    assert first.name in listed.stdout.decode()
