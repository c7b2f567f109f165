"""``python -m tools.bench``: run every benchmark and write docs/benchmarks.md with its plots.

Sections run in a fixed order and each is bounded (counts and durations below), so the whole run
stays well under 20 minutes on a 2-core machine. ``--only`` reruns some sections; the report
keeps the last results of the others (``docs/benchmarks/results.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from prism.server import raise_open_file_limit
from tools.bench import (
    coldstart,
    docker_cold_start,
    docker_floor,
    events,
    idle,
    pitr,
    proxy,
    report,
    source_backup,
    standby,
    targets,
)
from tools.bench.common import (
    SCRATCH,
    percentile,
    pg_install,
    prism_process,
    psql,
    scratch_dir,
)
from tools.bench.machine import describe

SECTIONS = ("coldstart", "docker", "o1", "proxy", "idle", "events", "source", "pitr", "standby")
DRIVERS = ("btrfs", "reflink", "zfs", "copy")
IMAGE = "prism-test/postgres:15"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _coldstart(args: argparse.Namespace, install: Any) -> dict[str, Any]:
    found, skipped = targets.available(DRIVERS)
    results = []
    for target in found:
        result = await coldstart.measure_driver(
            install, target, branches=args.branches, wakes=args.wakes, log=_log
        )
        results.append(asdict(result))
    return {"drivers": results, "skipped": skipped}


async def _o1(args: argparse.Namespace, install: Any) -> dict[str, Any]:
    found, skipped = targets.available(("btrfs", "reflink", "zfs", "copy"))
    results = []
    for target in found:
        for scale in (1, args.big_scale):
            result = await coldstart.measure_driver(
                install,
                target,
                branches=args.o1_branches,
                wakes=0,
                load_scale=scale,
                alternatives=target.kind == "copy",
                log=_log,
            )
            results.append({"scale": scale, **asdict(result)})
    return {"runs": results, "skipped": skipped}


async def _docker(args: argparse.Namespace) -> dict[str, Any]:
    """The docker runtime on btrfs: tools/bench/docker_cold_start.py, with its own split."""
    ready, reason = targets.docker_ready(IMAGE)
    if not ready:
        return {"skipped": reason}
    options = argparse.Namespace(
        runs=args.branches,
        warmup=2,
        mount=Path("/mnt/prism-test/btrfs"),
        storage="btrfs",
        runtime="docker",
        zfs_dataset="",
        image=IMAGE,
        network="auto",
    )
    prism_log = logging.getLogger("prism")
    level, prism_log.propagate = prism_log.level, False  # bench() logs DEBUG for its split
    try:
        result: dict[str, Any] = await docker_cold_start.bench(options)
    finally:
        prism_log.setLevel(level)
        prism_log.propagate = True
    summary = result["summary"]
    result["floor"] = await docker_floor.measure(
        image=IMAGE, mount=options.mount, samples=args.branches
    )
    floor = percentile([run["total"] for run in result["floor"]], 50) * 1000
    _log(
        f"docker: cold p50 {summary['cold_ms']['p50']:.0f} ms, "
        f"wake p50 {summary['wake_ms']['p50']:.0f} ms, floor p50 {floor:.0f} ms"
    )
    return result


async def _events(args: argparse.Namespace) -> dict[str, Any]:
    found, _ = targets.available(("copy",))
    result = await events.measure(found[0], cycles=args.event_cycles, log=_log)
    return asdict(result)


async def _proxy_and_idle(
    args: argparse.Namespace, install: Any, wanted: set[str]
) -> dict[str, Any]:
    work = scratch_dir("proxy-")
    out: dict[str, Any] = {}
    data, pump_data = work / "data", work / "data-pump"
    for each in (data, pump_data):
        async with prism_process(each) as prism:
            direct = prism.branch_port("main")
            await psql(install, direct, f"ALTER SYSTEM SET max_connections = {args.idle + 50}")
    async with contextlib.AsyncExitStack() as stack:
        prism = await stack.enter_async_context(prism_process(data))
        if "proxy" in wanted:
            pump_prism = await stack.enter_async_context(
                prism_process(pump_data, extra=("--data-plane", "pump"))
            )
            result = await proxy.measure(
                install,
                prism,
                pump_prism,
                work,
                clients=tuple(args.clients),
                seconds=args.seconds,
                rounds=args.rounds,
                log=_log,
            )
            out["proxy"] = asdict(result)
        if "idle" in wanted:
            out["idle"] = asdict(await idle.measure(prism, connections=args.idle, log=_log))
    return out


async def _main(args: argparse.Namespace) -> None:
    raise_open_file_limit()
    install = await pg_install(SCRATCH)
    results = report.load_results()
    results["machine"] = describe(install)
    results["args"] = vars(args)
    wanted = set(args.only or SECTIONS)
    started = time.perf_counter()
    # Each finished section is saved at once: a later one failing (a full disk on a shared
    # test filesystem, say) costs only itself, and ``--only`` can rerun it.
    if "coldstart" in wanted:
        results["coldstart"] = await _coldstart(args, install)
        report.save_results(results)
    if "o1" in wanted:
        results["o1"] = await _o1(args, install)
        report.save_results(results)
    if "docker" in wanted:
        results["docker"] = await _docker(args)
        report.save_results(results)
    if "events" in wanted:
        results["events"] = await _events(args)
        report.save_results(results)
    if "source" in wanted:
        results["source"] = await source_backup.measure(
            install, scale=args.source_scale, rounds=args.source_rounds, log=_log
        )
        # Kept with the section: a later --only run of other sections must not re-date it.
        results["source"]["machine"] = results["machine"]
        report.save_results(results)
    if "pitr" in wanted:
        results["pitr"] = await pitr.measure(log=_log)
        results["pitr"]["machine"] = results["machine"]
        report.save_results(results)
    if "standby" in wanted:
        results["standby"] = await standby.measure(
            install,
            scale=args.standby_scale,
            rounds=args.standby_rounds,
            lag_seconds=args.lag_seconds,
            log=_log,
        )
        results["standby"]["machine"] = results["machine"]
        report.save_results(results)
    if wanted & {"proxy", "idle"}:
        results.update(await _proxy_and_idle(args, install, wanted))
    results["duration_s"] = round(time.perf_counter() - started)
    report.save_results(results)
    report.write(results)
    _log(f"bench: done in {results['duration_s']} s; wrote {report.DOC}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__)
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--branches", type=int, default=20, help="cold starts per driver")
    parser.add_argument("--wakes", type=int, default=10, help="wake-ups per driver")
    parser.add_argument("--o1-branches", type=int, default=3, help="branches per size (O(1))")
    parser.add_argument("--big-scale", type=int, default=100, help="pgbench scale of the big DB")
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=3, help="length of one pgbench run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per cell")
    parser.add_argument("--idle", type=int, default=1000, help="idle connections")
    parser.add_argument("--event-cycles", type=int, default=20, help="stop/start cycles")
    parser.add_argument("--source-scale", type=int, default=20, help="pgbench scale of the source")
    parser.add_argument("--source-rounds", type=int, default=3, help="backups of each kind")
    parser.add_argument("--standby-scale", type=int, default=10, help="pgbench scale of mains")
    parser.add_argument("--standby-rounds", type=int, default=10, help="branches of each main")
    parser.add_argument("--lag-seconds", type=float, default=20, help="pgbench run for replay lag")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    trio.run(_main, args)


if __name__ == "__main__":
    main()
