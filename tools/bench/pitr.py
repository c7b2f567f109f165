"""Time to a point-in-time branch as a function of the WAL it replays (issue 9).

One Prism (in this process) with a fresh main and its first snapshot, taken before any data:
the snapshot is small whatever the driver, so the clone is not what is measured (the copy
driver on the root disk keeps the gigabytes off the shared test pools). First a branch at the
snapshot's own time (clone, start, nearly no WAL) is the floor. Then, in steps, main writes WAL
(wide rows, no TOAST) until 16 MB, 256 MB and 1 GB have been written since the snapshot; after
each step a branch is created ``at`` that moment, so it clones the snapshot and replays all of
that WAL. The difference to the floor is the replay, and WAL MB / s of it Postgres' own replay
speed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from prism.durable.state import utcnow
from prism.postgres.client import connect_service
from tools.bench import targets

STEPS_MB = (16, 256, 1024)
#: Each branch is made this many times; the report shows the median (a shared, busy machine).
ROUNDS = 3
#: Rows just under the TOAST threshold: WAL grows by about their size, uncompressed.
_ROW = "INSERT INTO filler SELECT repeat(md5(g::text), 56) FROM generate_series(1, {rows}) g"
_ROW_BYTES = 1900


async def _wal_bytes(address: Any) -> int:
    async with await connect_service(
        unix_socket=address.service_socket_path(), port=address.port, user="postgres"
    ) as service:
        rows = await service.query("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
    return int(float(rows[0][0]))


async def _write(address: Any, megabytes: float) -> None:
    rows = max(1, int(megabytes * 2**20 / _ROW_BYTES))
    async with await connect_service(
        unix_socket=address.service_socket_path(), port=address.port, user="postgres"
    ) as service:
        for start in range(0, rows, 50_000):
            await service.query(_ROW.format(rows=min(50_000, rows - start)))


async def _branch_times(manager: Any, name: str, at: datetime) -> list[float]:
    """Seconds to create a branch at ``at``, ``ROUNDS`` times (each deleted again)."""
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        await manager.create(name, at=at)
        times.append(round(time.perf_counter() - started, 3))
        await manager.delete(name)
    return times


async def measure(log: Callable[[str], None]) -> dict[str, Any]:
    found, _ = targets.available(("copy",))
    target = found[0]
    runs = []
    async with targets.data_dir(target) as (_, settings):
        settings = dataclasses.replace(settings, snapshot_every=3600.0, start_timeout=900.0)
        async with targets.prism_in_process(settings) as info:
            manager = info.manager
            async with manager.events.subscribe() as events:
                if not manager.point_in_time.snapshots():
                    async for event in events:
                        if event["type"] == "snapshot_taken":
                            break
            main = await manager.ensure_running("main", create=False)
            async with await connect_service(
                unix_socket=main.service_socket_path(), port=main.port, user="postgres"
            ) as service:
                await service.query("CREATE TABLE filler (pad text)")
            snapshot = manager.point_in_time.snapshots()[0]
            floor_s = await _branch_times(manager, "floor", snapshot.taken_at)
            log(f"pitr: a branch at the snapshot's time: {floor_s} s")
            since = await _wal_bytes(main)
            for step, megabytes in enumerate(STEPS_MB):
                written = (await _wal_bytes(main) - since) / 2**20
                log(f"pitr: writing WAL up to {megabytes} MB after the snapshot")
                await _write(main, megabytes - written)
                wal_mb = (await _wal_bytes(main) - since) / 2**20
                pitr_s = await _branch_times(manager, f"at-{step}", utcnow())
                log(f"pitr: {wal_mb:.0f} MB of WAL replayed: {pitr_s} s")
                runs.append({"wal_mb": wal_mb, "pitr_s": pitr_s})
    return {"driver": target.label, "floor_s": floor_s, "runs": runs}
