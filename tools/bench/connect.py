"""Connection cost: ``pgbench -C -S`` (a new connection per transaction) direct, Prism, PgBouncer.

``python -m tools.bench.connect [--rounds 5] [--seconds 3] [--clients 1 8 32]`` starts one Prism
(``PRISM_CONNECT_PHASES=1``, so each connection logs where its start-up time went, see
:mod:`prism.frontdoor.phases`) and a PgBouncer in session mode checking its clients with SCRAM
(:func:`tools.bench.proxy.pgbouncer`), both in front of the same main server, then runs every
(clients, target) cell ``rounds`` times, interleaved in a shuffled order, as the proxy section
does. Clients connect with ``sslmode=disable`` everywhere (direct and PgBouncer offer no TLS;
``--sslmode prefer`` measures Prism's TLS handshake too). It prints the TPS medians, the
ratios to direct and Prism's per-phase breakdown (median ms of the 1-client runs).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time
from collections import defaultdict

import trio

from prism.frontdoor.phases import ENV
from prism.server import raise_open_file_limit
from tools.bench.common import (
    SCRATCH,
    PrismProcess,
    median,
    pg_install,
    pgbench,
    prism_process,
    scratch_dir,
)
from tools.bench.machine import describe
from tools.bench.proxy import pgbouncer, prepare

TARGETS = ("direct", "prism", "pgbouncer")
_PHASES = re.compile(r"connect phases: peer=\S+ (.*) ms")


def phase_medians(prism: PrismProcess, since: int) -> dict[str, float]:
    """Median ms per phase over the connections Prism logged after log offset ``since``."""
    spent: defaultdict[str, list[float]] = defaultdict(list)
    for line in _PHASES.findall(prism.log_text()[since:]):
        total = 0.0
        for field in line.split():
            phase, value = field.split("=")
            spent[phase].append(float(value))
            total += float(value)
        spent["total"].append(total)
    return {phase: statistics.median(values) for phase, values in spent.items()}


async def _main(args: argparse.Namespace) -> None:
    raise_open_file_limit()
    install = await pg_install(SCRATCH)
    work = scratch_dir("connect-")
    os.environ["PGSSLMODE"] = args.sslmode
    tps: defaultdict[str, list[float]] = defaultdict(list)
    phases: list[dict[str, float]] = []
    async with prism_process(work / "data", env={ENV: "1"}) as prism:
        direct = await prepare(install, prism)
        async with pgbouncer(install, work, direct, client_auth="scram-sha-256") as (bouncer, _):
            ports = {"direct": direct, "prism": prism.port, "pgbouncer": bouncer}
            order = list(TARGETS)
            shuffle = random.Random(24)
            for round_no in range(args.rounds):
                for clients in args.clients:
                    shuffle.shuffle(order)
                    for target in order:
                        since = len(prism.log_text())
                        result = await pgbench(
                            install,
                            ports[target],
                            clients=clients,
                            seconds=args.seconds,
                            select_only=True,
                            options=("-C",),
                        )
                        tps[f"{clients}|{target}"].append(result.tps)
                        if target == "prism" and clients == 1:
                            phases.append(phase_medians(prism, since))
                        print(
                            f"round {round_no + 1} c={clients} {target}: {result.tps:.1f} tps",
                            file=sys.stderr,
                            flush=True,
                        )
    _report(args, install, tps, phases)


def _report(
    args: argparse.Namespace,
    install: object,
    tps: dict[str, list[float]],
    phases: list[dict[str, float]],
) -> None:
    print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {describe(install)}")
    print(f"sslmode={args.sslmode}, {args.rounds} rounds of {args.seconds:g} s per cell\n")
    print(
        "| clients | direct tps | Prism tps | PgBouncer tps | Prism / direct | PgBouncer / direct |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for clients in args.clients:
        cell = {target: median(tps[f"{clients}|{target}"]) for target in TARGETS}
        prism, bouncer = cell["prism"] / cell["direct"], cell["pgbouncer"] / cell["direct"]
        print(
            f"| {clients} | {cell['direct']:.0f} | {cell['prism']:.0f} | {cell['pgbouncer']:.0f} "
            f"| **{prism:.2f}** | {bouncer:.2f} |"
        )
    names = sorted({phase for run in phases for phase in run}, key=lambda p: (p == "total", p))
    print("\n| phase (1 client) | median ms |\n| --- | ---: |")
    for phase in names:
        print(f"| {phase} | {median([run[phase] for run in phases if phase in run]):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.connect", description=__doc__)
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=3, help="length of one pgbench run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per cell")
    parser.add_argument("--sslmode", default="disable", choices=("disable", "prefer"))
    trio.run(_main, parser.parse_args())


if __name__ == "__main__":
    main()
