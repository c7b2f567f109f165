"""Cold start and wake-up, per storage driver, with the physical floor beside them.

* **cold start**: a client connects as ``postgres@<new branch>`` and runs ``SELECT 1``; the time
  from TCP connect to the result, over ``n`` fresh branches (each deleted after its turn, so
  every branch meets the same machine). Split into clone (provisioning → starting, including the
  online-backup bracket of file-by-file drivers), server start (starting → running) and the rest
  (connect, authentication through the proxy, the query), from Prism's own branch events.
* **wake-up**: a stopped branch, then connect and ``SELECT 1``.
* **floor**: on the same data, with Prism gone: the driver's clone of a stopped main, a bare
  ``postgres`` start on it (readiness polled every millisecond), and a direct first query.

Prism runs in this process so the split can be read from its event bus; the client is Prism's
own protocol client, so no process start-up is counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from prism.branches.manager import BranchManager
from prism.core.names import MAIN_BRANCH
from prism.postgres.binaries import PgInstall
from tools.bench.common import (
    HOST,
    SUPERUSER,
    first_query,
    median,
    percentile,
    run,
    start_bare,
    stop_bare,
)
from tools.bench.targets import Target, data_dir, open_storage_for, prism_in_process

WARMUP = 2
"""Cold starts run and not counted before each driver's series."""


@dataclass
class Split:
    total: float
    clone: float
    start: float

    @property
    def rest(self) -> float:
        return self.total - self.clone - self.start


@dataclass
class DriverResult:
    """Cold start, wake-up and floor of one driver at one database size."""

    label: str
    size_mb: float
    cold: list[Split] = field(default_factory=list)
    wake: list[float] = field(default_factory=list)
    floor: list[Split] = field(default_factory=list)
    #: What a user would do instead, on the same data: method → seconds.
    alternatives: dict[str, float] = field(default_factory=dict)

    def p(self, series: str, q: float, part: str = "total") -> float:
        values: list[float] = (
            self.wake if series == "wake" else [getattr(s, part) for s in getattr(self, series)]
        )
        return percentile(values, q) * 1000

    def median_ms(self, series: str, part: str) -> float:
        return median([getattr(s, part) for s in getattr(self, series)]) * 1000


class _EventClock:
    """Records when each branch event arrives, to split a cold start into its phases."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], float] = {}

    async def follow(
        self,
        manager: BranchManager,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with manager.events.subscribe() as events:
            task_status.started()
            async for event in events:
                self.seen[(event["type"], event["branch"])] = time.perf_counter()

    def between(self, branch: str, first: str, second: str) -> float:
        return self.seen[(second, branch)] - self.seen[(first, branch)]


async def measure_driver(
    install: PgInstall,
    target: Target,
    *,
    branches: int,
    wakes: int,
    load_scale: int | None = None,
    alternatives: bool = False,
    log: Callable[[str], None] = print,
) -> DriverResult:
    """Cold starts, wake-ups and the floor for one driver (main loaded to ``load_scale``)."""
    async with data_dir(target) as (root, settings):
        clock = _EventClock()
        async with prism_in_process(settings) as info, trio.open_nursery() as nursery:
            await nursery.start(clock.follow, info.manager)
            manager: BranchManager = info.manager
            port = info.listen[1]
            if load_scale is not None:
                await _load(install, port, load_scale)
            size_mb = await _size_mb(port)
            result = DriverResult(target.label, size_mb)
            if alternatives:
                result.alternatives = await _alternatives(install, manager, log)
            for number in range(WARMUP):  # first runs pay for cold caches; docker's skip 2 too
                await first_query(port, f"{SUPERUSER}@warm{number}")
                await manager.delete(f"warm{number}")
            for number in range(branches):
                name = f"cold{number}"
                total = await first_query(port, f"{SUPERUSER}@{name}")
                await trio.sleep(0.01)  # let the event follower catch up
                clone = clock.between(name, "provisioning", "starting")
                start = clock.between(name, "starting", "running")
                result.cold.append(Split(total, clone, start))
                await manager.delete(name)
            await first_query(port, f"{SUPERUSER}@wake")
            for _ in range(wakes):
                await manager.stop("wake")
                result.wake.append(await first_query(port, f"{SUPERUSER}@wake"))
            await manager.delete("wake")
            nursery.cancel_scope.cancel()
        log(
            f"coldstart: {target.label} {size_mb:.0f} MB: p50 {result.p('cold', 50):.0f} ms "
            f"p95 {result.p('cold', 95):.0f} ms, wake p50 {result.p('wake', 50):.0f} ms"
        )
        result.floor = await _floor(
            install, target, settings_root=root, settings=settings, samples=branches
        )
        log(f"coldstart: {target.label} floor p50 {result.p('floor', 50):.0f} ms")
        return result


async def _floor(
    install: PgInstall, target: Target, *, settings_root, settings, samples: int
) -> list[Split]:  # type: ignore[no-untyped-def]
    """Clone a stopped main with the driver, start bare postgres, query it directly."""
    storage = await open_storage_for(settings)
    splits = []
    for number in range(samples):
        name = f"floor{number}"
        started = time.perf_counter()
        path = await storage.clone(MAIN_BRANCH, name)
        cloned = time.perf_counter()
        process, port = await start_bare(install, path, settings_root / f"{name}.log")
        ready = time.perf_counter()
        try:
            await first_query(port, SUPERUSER)
            done = time.perf_counter()
        finally:
            await stop_bare(process)
        await storage.destroy(name)
        splits.append(Split(done - started, cloned - started, ready - cloned))
    return splits


async def _alternatives(
    install: PgInstall, manager: BranchManager, log: Callable[[str], None]
) -> dict[str, float]:
    """Copy the database the ways Postgres offers: a template copy, and dump piped to restore."""
    address = manager.runtime.address(MAIN_BRANCH)
    assert address is not None
    port = str(address.port)
    connection = ["-h", HOST, "-p", port, "-U", SUPERUSER]
    psql = [str(install.bin("psql")), "-X", "-q", *connection, "-d", "template1", "-c"]
    timings = {}
    started = time.perf_counter()
    await run([*psql, "CREATE DATABASE copied TEMPLATE postgres"])
    timings["CREATE DATABASE ... TEMPLATE"] = time.perf_counter() - started
    await run([*psql, "CREATE DATABASE restored"])
    dump = f"{install.bin('pg_dump')} -Fc {' '.join(connection)} -d postgres"
    restore = f"{install.bin('pg_restore')} {' '.join(connection)} -d restored"
    started = time.perf_counter()
    await run(["bash", "-o", "pipefail", "-c", f"{dump} | {restore}"])
    timings["pg_dump | pg_restore"] = time.perf_counter() - started
    await run([*psql, "DROP DATABASE copied"])
    await run([*psql, "DROP DATABASE restored"])
    log(f"coldstart: alternatives {', '.join(f'{k} {v:.1f} s' for k, v in timings.items())}")
    return timings


async def _load(install: PgInstall, port: int, scale: int) -> None:
    # The test filesystems hold 4 GB and are shared with other test runs: keep the WAL the
    # load leaves behind small (the default max_wal_size of 1 GB nearly doubles scale 100).
    async with await _connect(port) as conn:
        await conn.query("ALTER SYSTEM SET max_wal_size = '256MB'")
        await conn.query("SELECT pg_reload_conf()")
    command = [str(install.bin("pgbench")), "-i", "-q", "-s", str(scale), "-I", "dtGvp"]
    await run([*command, "-h", HOST, "-p", str(port), "-U", SUPERUSER, "postgres"])
    async with await _connect(port) as conn:
        await conn.query("CHECKPOINT")


async def _size_mb(port: int) -> float:
    """The data directory's size as Postgres counts it (databases + WAL)."""
    async with await _connect(port) as conn:
        rows = await conn.query(
            "SELECT (SELECT sum(pg_database_size(oid)) FROM pg_database)"
            " + (SELECT sum(size) FROM pg_ls_waldir())"
        )
    return int(rows[0][0] or 0) / 1e6


async def _connect(port: int):  # type: ignore[no-untyped-def]
    from tools.bench.common import connect

    return await connect(port)
