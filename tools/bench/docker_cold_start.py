"""Cold start with the docker runtime: connect to a missing branch → first query result.

Why a script of its own: issue 3 sets a target (p50 ≤ 300 ms on btrfs) and the figure is only
useful with its split, so the next bottleneck is visible. A whole Prism runs in this process
(``PrismServer``, storage and runtime chosen by flags) on a fresh directory of the given
filesystem; each run connects as ``postgres@<new branch>`` with Prism's own small client and
times ``SELECT 1``. The split comes from Prism's own log records (the provision line gives the
clone, the docker runtime's ``container phases`` line gives create / start / inspect / ready),
so the script measures the code as it runs, not a re-enactment of it.

Each branch is then stopped and woken again (a *wake*: the branch exists, its server does not
run) and finally deleted, so runs do not pile up containers or clones.

Usage (root; Docker engine and the btrfs pool from ``tools/sysenv/setup.sh``)::

    python -m tools.bench.docker_cold_start [--runs 20] [--storage btrfs]
        [--mount /mnt/prism-test/btrfs] [--image prism-test/postgres:15] [--json out.json]

Output: a table on stdout and, with ``--json``, one object::

    {"config": {...}, "runs": [{"branch", "cold_ms", "wake_ms", "clone_ms", "create_ms",
     "start_ms", "inspect_ms", "ready_ms"}, ...],
     "summary": {"<field>": {"p50", "p90", "min", "max"}, ...}}

``*_ms`` phase fields are null where a log line was not seen (e.g. a runtime that logs no split).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from prism.core.settings import Settings
from prism.core.values import HostPort
from prism.server import PrismServer
from prism.storage import open_storage
from tools.bench.common import PASSWORD, first_query, percentile, scratch_dir

PHASES = ("clone_ms", "create_ms", "start_ms", "inspect_ms", "ready_ms")
FIELDS = ("cold_ms", "wake_ms", *PHASES)
_PAIR = re.compile(r"(\w+)=(\S+)")
_PROVISION = re.compile(r"provision: branch (\S+) from \S+ in [\d.]+ ms \(clone ([\d.]+) ms\)")


class _PhaseLog(logging.Handler):
    """Collects, per branch, the phase timings Prism logs while it provisions and starts."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.phases: dict[str, dict[str, float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        found = _PROVISION.search(message)
        if found:
            self.phases.setdefault(found[1], {})["clone_ms"] = float(found[2])
            return
        if message.startswith("container phases"):
            pairs = dict(_PAIR.findall(message))
            into = self.phases.setdefault(pairs.get("branch", "?"), {})
            for key, value in pairs.items():
                if key in PHASES:
                    # The wake's split is not wanted: keep the cold start's.
                    into.setdefault(key, float(value))


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run Prism on a fresh directory of ``args.mount`` and time ``args.runs`` cold starts."""
    log = _PhaseLog()
    logging.getLogger("prism").addHandler(log)
    logging.getLogger("prism").setLevel(logging.DEBUG)
    root = scratch_dir("bench-cold-", args.mount)
    settings = Settings(
        data_dir=root,
        listen=HostPort("127.0.0.1", 0),
        api=HostPort("127.0.0.1", 0),
        storage=args.storage,
        runtime=args.runtime,
        image=args.image,
        docker_network=args.network,
        zfs_dataset=args.zfs_dataset,
        password=PASSWORD,
        idle_timeout=0,
        snapshot_every=0.0,  # no snapshot of main being taken while cold starts are timed
    )
    runs: list[dict[str, Any]] = []
    try:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(PrismServer(settings).run)
            port = info.listen[1]
            await first_query(port, "postgres")  # main is up; warm the client code paths
            for n in range(args.warmup + args.runs):
                branch = f"cold-{n}-{uuid.uuid4().hex[:6]}"
                cold = await first_query(port, f"postgres@{branch}") * 1000
                await info.manager.stop(branch)
                wake = await first_query(port, f"postgres@{branch}") * 1000
                await info.manager.delete(branch)
                if n < args.warmup:
                    continue
                row: dict[str, Any] = {"branch": branch, "cold_ms": cold, "wake_ms": wake}
                phases = log.phases.get(branch, {})
                row.update({key: phases.get(key) for key in PHASES})
                runs.append(row)
                print(_format_row(row), flush=True)
            nursery.cancel_scope.cancel()
    finally:
        logging.getLogger("prism").removeHandler(log)
        storage = await open_storage(args.storage, root, **_storage_options(args))
        for branch in sorted(storage.list(), key=lambda name: name == "main"):
            await storage.destroy(branch)
        shutil.rmtree(root, ignore_errors=True)
    summary = {}
    for key in FIELDS:
        values = [row[key] for row in runs if row[key] is not None]
        if values:
            summary[key] = {
                "p50": round(percentile(values, 50), 1),
                "p90": round(percentile(values, 90), 1),
                "min": round(min(values), 1),
                "max": round(max(values), 1),
            }
    config = {k: v for k, v in vars(args).items() if k != "json"}
    return {"config": config, "runs": runs, "summary": summary}


def _storage_options(args: argparse.Namespace) -> dict[str, str]:
    return {"dataset": args.zfs_dataset} if args.storage == "zfs" else {}


def _format_row(row: dict[str, Any]) -> str:
    cells = [f"{row[key]:8.1f}" if row.get(key) is not None else "       -" for key in FIELDS]
    return f"{row['branch']:<18}" + "".join(cells)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2, help="runs not counted")
    parser.add_argument("--mount", type=Path, default=Path("/mnt/prism-test/btrfs"))
    parser.add_argument("--storage", default="btrfs")
    parser.add_argument("--runtime", default="docker")
    parser.add_argument("--zfs-dataset", default="")
    parser.add_argument("--image", default="prism-test/postgres:15")
    parser.add_argument("--network", default="auto", help="--docker-network of prism serve")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    # Prism's DEBUG records are for the phase log only; the terminal gets warnings.
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.WARNING)
    logging.getLogger().addHandler(errors)
    print(f"{'branch':<18}" + "".join(f"{key[:-3]:>8}" for key in FIELDS))
    result = trio.run(bench, args)
    print(f"{'p50':<18}" + "".join(_cell(result["summary"], key, "p50") for key in FIELDS))
    print(f"{'p90':<18}" + "".join(_cell(result["summary"], key, "p90") for key in FIELDS))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


def _cell(summary: dict[str, Any], key: str, stat: str) -> str:
    return f"{summary[key][stat]:8.1f}" if key in summary else "       -"


if __name__ == "__main__":
    sys.exit(main())
