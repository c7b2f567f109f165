"""What the disk budget's check adds to a create: ``DiskBudget.hold_clone`` timed on its own.

The check runs before every create, reset and snapshot: a ``statvfs`` of each file system the
clone writes, the reserve arithmetic, the hold, and for the copy driver the parent's size,
which is a walk of its tree cached for 30 s. Both are timed here on a real file system under
the bench's scratch directory, with the copy driver (the one whose estimate needs that size)
and a parent of real files:

* **warm**: the parent's size is cached (every create but one per 30 s): the whole check and
  the release of its hold, ``--rounds`` times.
* **cold**: the cache is empty, so the parent is walked (off the event loop, in a thread).

Usage: ``.venv/bin/python -m tools.bench.budget [--rounds N] [--parent-mb M]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from prism.core.diskrules import DiskReserve
from prism.core.names import MAIN_BRANCH
from prism.storage.budget import DiskBudget
from prism.storage.copy import CopyStorage
from tools.bench.common import percentile


def _make_parent(pgdata: Path, megabytes: int) -> None:
    """A parent of 8 KiB-page-sized files in a few directories, like a small cluster."""
    for directory in range(8):
        (pgdata / "base" / str(directory)).mkdir(parents=True)
    (pgdata / "pg_wal").mkdir()
    chunk = os.urandom(2**20)
    for index in range(megabytes):
        target = pgdata / "base" / str(index % 8) / f"{16384 + index}"
        target.write_bytes(chunk)


async def measure(rounds: int, parent_mb: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="prism-bench-budget-") as scratch:
        root = Path(scratch)
        storage = CopyStorage(root)
        await trio.to_thread.run_sync(_make_parent, storage.path(MAIN_BRANCH), parent_mb)
        cold = []
        for _ in range(5):
            # A new budget knows no size yet: the walk a create pays once per 30 s.
            budget = DiskBudget(
                storage=storage, data_dir=root, reserve=DiskReserve.parse("1MiB"), archives=True
            )
            started = time.perf_counter()
            (await budget.hold_clone(MAIN_BRANCH, running=True, what="bench")).release()
            cold.append((time.perf_counter() - started) * 1e3)
        warm = []
        for _ in range(rounds):
            started = time.perf_counter()
            (await budget.hold_clone(MAIN_BRANCH, running=True, what="bench")).release()
            warm.append((time.perf_counter() - started) * 1e6)
        return {
            "rounds": rounds,
            "parent_mb": parent_mb,
            "filesystem": budget.filesystems()[0].kind,
            "warm_us": {"p50": percentile(warm, 50), "p99": percentile(warm, 99)},
            "cold_ms": {"p50": percentile(cold, 50), "max": max(cold)},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10000)
    parser.add_argument("--parent-mb", type=int, default=40)
    args = parser.parse_args()
    result = trio.run(measure, args.rounds, args.parent_mb)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
