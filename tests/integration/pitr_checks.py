"""The checks of point in time, shared by every runtime's test (integration and system).

Rows are stamped into a branch every ``GAP_S``; a branch made at a time between two commits
must hold exactly the rows committed at or before it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import trio

from prism.branches.snapshots import Snapshot, precise_time

from .api_helpers import api, wait_for
from .harness import PASSWORD, PrismHandle, psql

ROWS = 30
GAP_S = 0.1


async def first_snapshot(prism: PrismHandle, branch: str = "main") -> Snapshot:
    """Wait for the first snapshot of ``branch`` (taken when it runs)."""
    kept = prism.manager.point_in_time
    async with prism.manager.events.subscribe() as events:
        if not kept.snapshots(branch):
            with trio.fail_after(120):
                await wait_for(events, type="snapshot_taken", branch=branch)
    snapshot: Snapshot = kept.snapshots(branch)[0]
    return snapshot


def stamp_rows(dsn: str) -> list[tuple[datetime, datetime]]:
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


def branch_dsn(prism: PrismHandle, branch: str, password: str = PASSWORD) -> str:
    return prism.dsn(f"postgres@{branch}").replace(f"password={PASSWORD}", f"password={password}")


async def stamped_rows(prism: PrismHandle, branch: str, password: str = PASSWORD) -> list[int]:
    out = await psql(branch_dsn(prism, branch, password), "SELECT id FROM stamps ORDER BY id")
    return [int(line) for line in out.stdout.decode().split()]


async def branch_at(
    prism: PrismHandle, name: str, at: datetime | str, parent: str = "main"
) -> None:
    shown = at if isinstance(at, str) else precise_time(at)
    async with api(prism) as client:
        body: dict[str, Any] = {"name": name, "parent": parent, "at": shown}
        reply = await client.post("/api/v1/branches", json=body)
    assert reply.status_code == 201, reply.text


def between(moments: list[tuple[datetime, datetime]], last_row: int) -> datetime:
    """A time after ``last_row``'s commit and before the next row's insert began."""
    committed, next_begun = moments[last_row]
    return committed + (next_begun - committed) / 2


async def check_branches_at(
    prism: PrismHandle,
    parent: str,
    moments: list[tuple[datetime, datetime]],
    last_rows: tuple[int, ...] = (4, 17, ROWS - 2),
) -> None:
    """Branch ``parent`` between commits: each branch holds exactly the rows committed by
    then, and is writable."""
    for last_row in last_rows:
        name = f"{parent}-at-{last_row}"
        await branch_at(prism, name, between(moments, last_row), parent)
        assert await stamped_rows(prism, name) == list(range(last_row + 1))
    await psql(
        prism.dsn(f"postgres@{parent}-at-{last_rows[0]}"), "INSERT INTO stamps VALUES (1000, now())"
    )
