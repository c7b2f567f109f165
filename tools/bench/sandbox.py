"""What the branch sandbox costs: cold start and wake-up with and without it, interleaved.

Two Prisms run side by side on the same storage driver, one with ``--branch-sandbox on`` (the
default) and one with it off; each round makes one new branch in each (cold start: connect as
``postgres@<new branch>`` → result of ``SELECT 1``), then stops and wakes one branch in each,
alternating which goes first, so both meet the same machine. The difference of the medians is
the sandbox's cost (building the Landlock ruleset, the two syscalls before ``exec``). Beside
it, that work alone, timed directly (``ruleset_build``): what a cold start or a wake-up pays,
free of the noise of a server's start, and the start of a trivial program plain and confined
(``spawn_*``).

Usage: ``.venv/bin/python -m tools.bench.sandbox [--rounds N] [--driver copy|btrfs|...]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import subprocess
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from prism.postgres.binaries import PgInstall
from prism.runtime import landlock
from prism.runtime.sandbox import SandboxPolicy, ServerAccess, server_access
from tools.bench.common import SUPERUSER, first_query, median, ms, percentile, pg_install
from tools.bench.machine import describe as describe_machine
from tools.bench.targets import available, data_dir, prism_in_process

_WARMUP = 2


def _access(install: PgInstall, pgdata: Path) -> ServerAccess:
    """The sandbox of a server of ``install`` on ``pgdata``, as the process runtime builds it."""
    return server_access(
        SandboxPolicy(),
        branch="bench",
        bin_dir=install.bin_dir,
        pgdata=pgdata,
        socket_dir=pgdata,
        config_files=(),
        port=40000,
        settings={},
    )


def ruleset_build_ms(install: PgInstall, pgdata: Path, samples: int = 200) -> float:
    """Median milliseconds to build one server's Landlock ruleset, as the runtime does."""
    support = landlock.probe()
    access = _access(install, pgdata)
    timings = []
    for _ in range(samples):
        started = time.perf_counter()
        ruleset = landlock.Ruleset.build(
            support, access.paths, bind_ports=access.bind_ports, connect_ports=()
        )
        timings.append(time.perf_counter() - started)
        ruleset.close()
    return round(ms(median(timings)), 3)


def spawn_ms(install: PgInstall, pgdata: Path, samples: int = 60) -> dict[str, float]:
    """Median milliseconds to start a trivial program from this process (Prism loaded): plain,
    and confined as the process runtime does (ruleset built, then started from a confined
    thread), alternated so both meet the same machine."""
    support = landlock.probe()
    access = _access(install, pgdata)
    program = [str(install.bin("postgres")), "--version"]
    timings: dict[str, list[float]] = {"plain": [], "confined": []}
    for _ in range(samples):
        for mode in timings:
            started = time.perf_counter()
            if mode == "plain":
                child = subprocess.Popen(program, stdout=subprocess.DEVNULL)
            else:
                ruleset = landlock.Ruleset.build(support, access.paths, bind_ports=(40000,))
                start = functools.partial(subprocess.Popen, program, stdout=subprocess.DEVNULL)
                child = landlock.run_confined(ruleset, start)
                ruleset.close()
            timings[mode].append(time.perf_counter() - started)
            child.wait()
    return {
        f"spawn_{mode}_p50_ms": round(ms(median(values)), 2) for mode, values in timings.items()
    }


async def measure(driver: str, rounds: int) -> dict[str, Any]:
    """Median and p95 (ms) of cold starts and wake-ups with the sandbox on and off."""
    targets, skipped = available((driver,))
    if not targets:
        raise SystemExit(f"sandbox bench: {driver}: {skipped[driver]}")
    series: dict[str, dict[str, list[float]]] = {
        mode: {"cold": [], "wake": []} for mode in ("on", "off")
    }
    async with AsyncExitStack() as stack:
        ports = {}
        managers = {}
        for mode in ("on", "off"):
            _root, settings = await stack.enter_async_context(data_dir(targets[0]))
            settings = dataclasses.replace(settings, branch_sandbox=mode == "on")
            info = await stack.enter_async_context(prism_in_process(settings))
            ports[mode], managers[mode] = info.listen[1], info.manager
        for number in range(_WARMUP + rounds):
            order = ("on", "off") if number % 2 == 0 else ("off", "on")
            for mode in order:
                name = f"cold{number}"
                took = await first_query(ports[mode], f"{SUPERUSER}@{name}")
                await managers[mode].stop(name)
                woke = await first_query(ports[mode], f"{SUPERUSER}@{name}")
                await managers[mode].delete(name)
                if number >= _WARMUP:
                    series[mode]["cold"].append(took)
                    series[mode]["wake"].append(woke)
    install = await pg_install(targets[0].base)
    result: dict[str, Any] = {
        "machine": describe_machine(install),
        "driver": targets[0].label,
        "rounds": rounds,
        "ruleset_build_p50_ms": ruleset_build_ms(install, targets[0].base),
        **spawn_ms(install, targets[0].base),
    }
    for mode, kinds in series.items():
        for kind, values in kinds.items():
            result[f"{kind}_{mode}_p50_ms"] = round(ms(median(values)), 1)
            result[f"{kind}_{mode}_p95_ms"] = round(ms(percentile(values, 95)), 1)
    for kind in ("cold", "wake"):
        result[f"{kind}_cost_ms"] = round(
            result[f"{kind}_on_p50_ms"] - result[f"{kind}_off_p50_ms"], 1
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.sandbox", description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--driver", default="copy")
    args = parser.parse_args()
    result = trio.run(measure, args.driver, args.rounds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
