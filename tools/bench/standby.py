"""A standby main (issue 9): cold start of its branches beside a primary main's, and how far it
lags behind its source while pgbench writes there.

Two Prisms in this process on the same storage driver (btrfs when its test pool is mounted),
each main holding a pgbench database of the same scale: one main is Prism's own (a primary),
the other a hot standby following a bare source server (``--source``). Branches are created on
both in alternating rounds, each deleted again, so both see the same load. A branch of a
standby main also replays what the clone holds and promotes before it admits clients; the
ratio is what that costs. Snapshots are off in both (``--snapshot-every 0``) and both mains
are checkpointed after the load: like for like.

Each branch's server log then says where its start went (``phases``): the start of recovery
(the fsync of the data directory a crash-consistent clone needs), replay, for a standby's clone
the end of archive recovery (a new timeline), the end-of-recovery checkpoint, and readiness; the
rest of a create is Prism's (clone, spawn, readiness polling).

Then pgbench (TPC-B-like, 4 clients) writes to the source while the source's own view of its
standby (``pg_stat_replication``: bytes not yet replayed, and ``replay_lag``) is sampled every
100 ms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from prism.postgres.client import connect_service
from tools.bench import targets
from tools.bench.common import HOST, SUPERUSER, median, run, scratch_dir, start_bare, stop_bare

_LAG = """
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), extract(epoch FROM replay_lag)
FROM pg_stat_replication WHERE application_name = 'prism'
"""


#: The phases of a branch server's start, each ended by a line of its log; a phase whose line
#: is missing (a primary's clone ends no archive recovery) takes 0 and the next one its time.
PHASES = (
    ("start to redo (data directory fsync)", "redo starts at"),
    ("redo", "redo done at"),
    ("end of archive recovery (new timeline)", "archive recovery complete"),
    ("end-of-recovery checkpoint", "checkpoint complete"),
    ("to ready", "ready to accept connections"),
)
#: The rest of a create: cloning, spawning the server, polling for readiness.
PRISM_PHASE = "Prism (clone, spawn, readiness)"
_STARTED = "starting PostgreSQL"
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})")


def start_phases(log_text: str) -> dict[str, float] | None:
    """Seconds of each of ``PHASES`` in one server start's log (sans-IO); None if it has none."""
    stamps: dict[str, datetime] = {}
    for line in log_text.splitlines():
        stamp = _STAMP.match(line)
        if stamp is None:
            continue
        for marker in (_STARTED, *(marker for _, marker in PHASES)):
            if marker in line and marker not in stamps:
                stamps[marker] = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S.%f")
    if _STARTED not in stamps or PHASES[-1][1] not in stamps:
        return None
    phases, last = {}, stamps[_STARTED]
    for name, marker in PHASES:
        at = stamps.get(marker, last)
        phases[name] = (at - last).total_seconds()
        last = at
    return phases


async def _create_delete(manager: Any, name: str, logs: Path) -> tuple[float, dict[str, float]]:
    """Seconds to create ``name`` (then deleted), and its server's start phases."""
    started = time.perf_counter()
    await manager.create(name)
    elapsed = time.perf_counter() - started
    log_text = await trio.Path(logs / f"{name}.log").read_text()
    await manager.delete(name)
    phases = start_phases(log_text) or {}
    phases[PRISM_PHASE] = elapsed - sum(phases.values())
    return elapsed, phases


async def _replay_lag(install: Any, conninfo: str, port: int, seconds: float) -> dict[str, Any]:
    """Sample main's replay lag, as the source sees it, while pgbench writes to the source."""
    lag_bytes: list[float] = []
    lag_s: list[float] = []
    pgbench = [str(install.bin("pgbench")), "-c", "4", "-j", "2", "-T", str(seconds), conninfo]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(run, pgbench))
        async with await connect_service(host=HOST, port=port, user=SUPERUSER) as source:
            await trio.sleep(1)  # past pgbench's connecting
            end = trio.current_time() + seconds - 2
            while trio.current_time() < end:
                rows = await source.query(_LAG)
                if rows and rows[0][0] is not None:
                    lag_bytes.append(float(rows[0][0]))
                    lag_s.append(float(rows[0][1] or 0.0))
                await trio.sleep(0.1)
    return {
        "seconds": seconds,
        "samples": len(lag_bytes),
        "lag_bytes": lag_bytes,
        "lag_s": lag_s,
    }


async def measure(
    install: Any,
    *,
    scale: int,
    rounds: int,
    lag_seconds: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    found, _ = targets.available(("btrfs", "copy"))
    target = found[0]
    work = scratch_dir("standby-source-")
    install.chown(work)
    pgdata = work / "source"
    await run(
        [str(install.bin("initdb")), "-D", str(pgdata), "-U", SUPERUSER, "--auth=trust"],
        **install.spawn_options(),
    )
    source, port = await start_bare(install, pgdata, work / "source.log", ["wal_level=replica"])
    conninfo = f"host={HOST} port={port} user={SUPERUSER} dbname=postgres"
    primary_s: list[float] = []
    standby_s: list[float] = []
    phases: dict[str, dict[str, list[float]]] = {"primary": {}, "standby": {}}
    try:
        await run([str(install.bin("pgbench")), "-i", "-q", "-s", str(scale), conninfo])
        async with contextlib.AsyncExitStack() as stack:
            managers, logs = [], []
            for source_setting in ("", conninfo):
                _, settings = await stack.enter_async_context(targets.data_dir(target))
                settings = dataclasses.replace(
                    settings, source=source_setting, snapshot_every=0.0, superuser=SUPERUSER
                )
                info = await stack.enter_async_context(targets.prism_in_process(settings))
                managers.append(info.manager)
                logs.append(settings.data_dir / "logs")
            primary, standby = managers
            main = await primary.ensure_running("main", create=False)
            await run(
                [
                    *(str(install.bin("pgbench")), "-i", "-q", "-s", str(scale)),
                    *("-h", HOST, "-p", str(main.port), "-U", SUPERUSER, "postgres"),
                ],
                env={"PGPASSWORD": "password", "PATH": "/usr/bin:/bin"},
            )
            # Both mains start from a checkpoint (a restartpoint on the standby), so neither
            # branch replays the pgbench load: what differs is only the promotion.
            for manager in managers:
                address = await manager.ensure_running("main", create=False)
                async with await connect_service(
                    unix_socket=address.service_socket_path(), port=address.port, user=SUPERUSER
                ) as service:
                    await service.query("CHECKPOINT")
            for n in range(rounds):
                for kind, manager, log_dir, times in (
                    ("primary", primary, logs[0], primary_s),
                    ("standby", standby, logs[1], standby_s),
                ):
                    elapsed, phased = await _create_delete(manager, f"{kind[0]}{n}", log_dir)
                    times.append(elapsed)
                    for phase, seconds in phased.items():
                        phases[kind].setdefault(phase, []).append(seconds)
                log(
                    f"standby: round {n + 1}: primary {primary_s[-1]:.3f} s, "
                    f"standby {standby_s[-1]:.3f} s"
                )
            log(f"standby: replay lag while pgbench writes to the source for {lag_seconds:g} s")
            lag = await _replay_lag(install, conninfo, port, lag_seconds)
    finally:
        await stop_bare(source)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "replay": lag,
        "driver": target.label,
        "scale": scale,
        "primary_s": primary_s,
        "standby_s": standby_s,
        "phases": phases,
        "ratio": median(standby_s) / median(primary_s),
    }
