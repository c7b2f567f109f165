"""Connection cost: ``pgbench -C -S`` (a new connection per transaction) direct, Prism, PgBouncer.

``python -m tools.bench.connect [--rounds 5] [--seconds 3] [--clients 1 8 32]`` starts one Prism
(``PRISM_CONNECT_PHASES=1``, so each connection logs where its start-up time went, see
:mod:`prism.frontdoor.phases`) and a PgBouncer in session mode checking its clients with SCRAM
(:func:`tools.bench.proxy.pgbouncer`), both in front of the same main server, then runs every
(clients, target) cell ``rounds`` times, interleaved in a shuffled order, as the proxy section
does. Clients connect with ``sslmode=disable`` everywhere (direct and PgBouncer offer no TLS;
``--sslmode prefer`` measures Prism's TLS handshake too). It prints the TPS medians, the
ratios to direct and Prism's per-phase breakdown (median ms of the 1-client runs).

``--before REF`` adds Prism as of git commit ``REF`` (its ``src`` exported to a scratch
directory) with its own main server (``direct-before``, the reference of its ratio), measured in
the same rounds: before and after side by side on the same noisy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import statistics
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from prism.frontdoor.phases import ENV
from prism.postgres.binaries import PgInstall
from prism.server import raise_open_file_limit
from tools.bench.common import (
    REPO,
    SCRATCH,
    PrismProcess,
    median,
    pg_install,
    pgbench,
    prism_process,
    run,
    scratch_dir,
)
from tools.bench.machine import describe
from tools.bench.proxy import pgbouncer, prepare

TARGETS = ("direct", "prism", "pgbouncer")
BEFORE = ("direct-before", "prism-before")
REFERENCE = {"prism-before": "direct-before"}
"""The direct target each target's ratio is taken to, when it is not ``direct``."""
_ON = {ENV: "1"}
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


async def _exported(ref: str, work: Path) -> Path:
    """Prism's ``src`` as of commit ``ref``, exported below ``work`` (a PYTHONPATH entry)."""
    tree = work / f"src-{ref}"
    tree.mkdir()
    archive = (await run(["git", "-C", str(REPO), "archive", ref, "src"], env=None)).stdout
    await run(["tar", "-x", "-C", str(tree)], stdin=archive, env=None)
    return tree / "src"


@contextlib.asynccontextmanager
async def _prisms(work: Path, before: str | None) -> AsyncIterator[dict[str, PrismProcess]]:
    """This tree's Prism (timing its phases), and the one of commit ``before`` if asked."""
    async with contextlib.AsyncExitStack() as stack:
        prisms = {"prism": await stack.enter_async_context(prism_process(work / "data", env=_ON))}
        if before is not None:
            source = {"PYTHONPATH": str(await _exported(before, work)), **_ON}
            prisms["prism-before"] = await stack.enter_async_context(
                prism_process(work / "data-before", env=source)
            )
        yield prisms


async def _main(args: argparse.Namespace) -> None:
    raise_open_file_limit()
    install = await pg_install(SCRATCH)
    work = scratch_dir("connect-")
    os.environ["PGSSLMODE"] = args.sslmode
    tps: defaultdict[str, list[float]] = defaultdict(list)
    phases: defaultdict[str, list[dict[str, float]]] = defaultdict(list)
    try:
        await _rounds(args, install, work, tps, phases)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # two mains' data: over a gigabyte
    _report(args, install, tps, phases)


async def _rounds(
    args: argparse.Namespace,
    install: PgInstall,
    work: Path,
    tps: dict[str, list[float]],
    phases: dict[str, list[dict[str, float]]],
) -> None:
    """Every (clients, target) cell ``args.rounds`` times, interleaved; results into the dicts."""
    async with _prisms(work, args.before) as prisms:
        direct = await prepare(install, prisms["prism"])
        ports = {"direct": direct, "prism": prisms["prism"].port}
        if "prism-before" in prisms:
            ports["direct-before"] = await prepare(install, prisms["prism-before"])
            ports["prism-before"] = prisms["prism-before"].port
        async with pgbouncer(install, work, direct, client_auth="scram-sha-256") as (bouncer, _):
            ports["pgbouncer"] = bouncer
            order = list(ports)
            shuffle = random.Random(24)
            for round_no in range(args.rounds):
                for clients in args.clients:
                    shuffle.shuffle(order)
                    for target in order:
                        since = len(prisms[target].log_text()) if target in prisms else 0
                        result = await pgbench(
                            install,
                            ports[target],
                            clients=clients,
                            seconds=args.seconds,
                            select_only=True,
                            options=("-C",),
                        )
                        tps[f"{clients}|{target}"].append(result.tps)
                        if target in prisms and clients == 1:
                            phases[target].append(phase_medians(prisms[target], since))
                        print(
                            f"round {round_no + 1} c={clients} {target}: {result.tps:.1f} tps",
                            file=sys.stderr,
                            flush=True,
                        )


def _report(
    args: argparse.Namespace,
    install: object,
    tps: dict[str, list[float]],
    phases: dict[str, list[dict[str, float]]],
) -> None:
    print(f"{describe(install)}")
    print(f"sslmode={args.sslmode}, {args.rounds} rounds of {args.seconds:g} s per cell\n")
    targets = [t for t in (*TARGETS, *BEFORE) if f"{args.clients[0]}|{t}" in tps]
    print("| clients | " + " | ".join(f"{t} tps" for t in targets) + " | ratios to direct |")
    print("| ---: | " + " | ".join("---:" for _ in targets) + " | --- |")
    for clients in args.clients:
        cell = {target: median(tps[f"{clients}|{target}"]) for target in targets}
        ratios = ", ".join(
            f"{t} {cell[t] / cell[REFERENCE.get(t, 'direct')]:.2f}"
            for t in targets
            if not t.startswith("direct")
        )
        print(f"| {clients} | " + " | ".join(f"{cell[t]:.0f}" for t in targets) + f" | {ratios} |")
    names = sorted({p for runs in phases.values() for run in runs for p in run})
    names.sort(key=lambda phase: phase == "total")
    print("\n| phase (1 client), median ms | " + " | ".join(phases) + " |")
    print("| --- | " + " | ".join("---:" for _ in phases) + " |")
    for phase in names:
        row = [median([run[phase] for run in runs if phase in run]) for runs in phases.values()]
        print(f"| {phase} | " + " | ".join(f"{value:.3f}" for value in row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.connect", description=__doc__)
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=3, help="length of one pgbench run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per cell")
    parser.add_argument("--sslmode", default="disable", choices=("disable", "prefer"))
    parser.add_argument("--before", default=None, help="also measure Prism as of this commit")
    trio.run(_main, parser.parse_args())


if __name__ == "__main__":
    main()
