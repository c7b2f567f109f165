"""The physical floor of a docker cold start: a btrfs snapshot and a bare container, no Prism.

Beside the docker runtime's cold start (``docker_cold_start``) this is what the same machine
needs at least: snapshot a stopped main (made by Prism's docker runtime, so file ownership is
the container's), create and start a container of the same image with the same mount, network
and user the runtime uses (Docker's low-level API, one call each, as the runtime does), wait
for ``postmaster.pid`` to say ``ready`` (polled every millisecond) and run ``SELECT 1`` directly.

What the branch sandbox costs (issue 19) is too small to see between two runs of the whole cold
start on a shared machine, so ``--sandbox-pairs N`` measures it here: N pairs of floor runs,
one bare and one with the sandbox's host config (``prism.runtime._docker_sandbox``), alternated
so both see the same load, and the median of the paired differences.

Usage (root; Docker engine and the btrfs pool from ``tools/sysenv/setup.sh``)::

    python -m tools.bench.docker_floor --sandbox-pairs 30 [--mount /mnt/prism-test/btrfs]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any

import docker
import trio
from docker.types import Mount

from prism.core.names import MAIN_BRANCH
from prism.core.settings import Settings
from prism.core.values import HostPort
from prism.runtime import _docker_sandbox as sandbox
from prism.storage import open_storage
from tools.bench.common import (
    HOST,
    PASSWORD,
    SUPERUSER,
    first_query,
    free_port,
    percentile,
    scratch_dir,
)
from tools.bench.targets import prism_in_process

_TARGET = "/pgdata"


def _ready(pgdata: Path) -> bool:
    with contextlib.suppress(OSError):
        lines = (pgdata / "postmaster.pid").read_text().split("\n")
        return len(lines) > 7 and lines[7].strip() == "ready"
    return False


async def measure(
    *, image: str, mount: Path, samples: int, sandboxed: tuple[bool, ...] = (False,)
) -> list[dict[str, float]]:
    """``samples`` floor runs; each a dict of seconds: clone, create, start, ready, total.

    Run ``i`` is sandboxed as ``sandboxed[i % len(sandboxed)]`` says (``sandboxed`` = 1 or 0
    in its dict), so ``(False, True)`` alternates a bare and a sandboxed container.
    """
    root = scratch_dir("docker-floor-", mount)
    settings = Settings(
        data_dir=root,
        listen=HostPort(HOST, 0),
        api=HostPort(HOST, 0),
        storage="btrfs",
        runtime="docker",
        image=image,
        password=PASSWORD,
        log_level="warning",
        idle_timeout=0,
    )
    async with prism_in_process(settings):
        pass  # main is initdb'd in a container, started, then stopped cleanly on the way out
    storage = await open_storage("btrfs", root)
    owner = os.stat(root / "master")
    client = docker.from_env()
    api, architecture = client.api, str(client.info().get("Architecture", ""))
    runs: list[dict[str, float]] = []
    try:
        for number in range(samples):
            confined = sandboxed[number % len(sandboxed)]
            options = sandbox.host_config(outbound=False, architecture=architecture)
            run = await _one(
                api, storage, image, f"floor{number}", owner, options if confined else {}
            )
            runs.append({**run, "sandboxed": float(confined)})
    finally:
        for branch in storage.list():
            with contextlib.suppress(Exception):
                await storage.destroy(branch)
        await trio.run_process(["rm", "-rf", str(root)], check=False)
    return runs


async def _one(
    api: Any,
    storage: Any,
    image: str,
    name: str,
    owner: os.stat_result,
    confinement: dict[str, Any],
) -> dict[str, float]:
    started = time.perf_counter()
    pgdata: Path = await storage.clone(MAIN_BRANCH, name)
    cloned = time.perf_counter()
    port = free_port()
    command = ["-D", _TARGET, "-c", f"listen_addresses={HOST}", "-c", f"port={port}"]
    command += ["-c", "unix_socket_directories="]
    created = await trio.to_thread.run_sync(
        lambda: api.create_container(
            image,
            entrypoint=["postgres"],
            command=command,
            user=f"{owner.st_uid}:{owner.st_gid}",
            environment={"LC_ALL": "C"},
            host_config=api.create_host_config(
                mounts=[Mount(_TARGET, str(pgdata), type="bind")],
                network_mode="host",
                **confinement,
            ),
        )
    )
    made = time.perf_counter()
    try:
        await trio.to_thread.run_sync(api.start, created["Id"])
        running = time.perf_counter()
        with trio.fail_after(60):
            while not _ready(pgdata):  # noqa: ASYNC110 (polling the pid file is the floor)
                await trio.sleep(0.001)
        ready = time.perf_counter()
        await first_query(port, SUPERUSER)
        done = time.perf_counter()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lambda: api.remove_container(created["Id"], force=True))
            await storage.destroy(name)
    return {
        "clone": cloned - started,
        "create": made - cloned,
        "start": running - made,
        "ready": ready - running,
        "total": done - started,
    }


def _sandbox_cost(runs: list[dict[str, float]]) -> None:
    """Print bare vs sandboxed floor phases and the median paired difference, in ms."""
    bare = [run for run in runs if not run["sandboxed"]]
    boxed = [run for run in runs if run["sandboxed"]]
    print(f"{'ms':<12}{'bare p50':>10}{'sandbox p50':>13}{'paired diff p50':>17}")
    for phase in ("create", "start", "ready", "total"):
        diffs = [(b[phase] - a[phase]) * 1000 for a, b in zip(bare, boxed, strict=False)]
        print(
            f"{phase:<12}{percentile([r[phase] for r in bare], 50) * 1000:>10.1f}"
            f"{percentile([r[phase] for r in boxed], 50) * 1000:>13.1f}"
            f"{statistics.median(diffs):>17.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sandbox-pairs", type=int, default=30)
    parser.add_argument("--mount", type=Path, default=Path("/mnt/prism-test/btrfs"))
    parser.add_argument("--image", default="prism-test/postgres:15")
    args = parser.parse_args()
    runs = trio.run(
        lambda: measure(
            image=args.image,
            mount=args.mount,
            samples=2 * args.sandbox_pairs,
            sandboxed=(False, True),
        )
    )
    _sandbox_cost(runs)


if __name__ == "__main__":
    main()
