"""Base backup throughput: Prism's ``--source`` backup beside plain ``pg_basebackup``.

One source (a bare ``postgres`` with a pgbench database of ``--source-scale``), then, in
alternating rounds, the same backup made two ways: ``pg_basebackup -X stream --checkpoint=fast``
as an operator would run it, and Prism's ``Source.make_main`` (which runs that command with
``--progress`` and parses it, then configures main as a standby). Same machine, same source,
same run: the ratio is the cost of what Prism adds.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from prism.core.events import EventBus
from prism.durable.journal import Journal
from prism.durable.state import StateStore
from prism.postgres.binaries import PgInstall, PgInstalls
from prism.postgres.conninfo import parse_conninfo
from prism.runtime._host_tools import HostTools
from prism.source.follow import Source
from tools.bench.common import HOST, SUPERUSER, median, run, scratch_dir, start_bare, stop_bare


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _fresh(install: PgInstall, path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    install.chown(path)
    path.chmod(0o700)
    return path


async def measure(
    install: PgInstall, *, scale: int, rounds: int, log: Callable[[str], None]
) -> dict[str, Any]:
    work = scratch_dir("source-backup-")
    install.chown(work)
    work.chmod(0o711)
    pgdata = work / "source"
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    await run(
        [str(install.bin("initdb")), "-D", str(pgdata), "-U", SUPERUSER, "--auth=trust"],
        env=env,
        **install.spawn_options(),
    )
    process, port = await start_bare(install, pgdata, work / "source.log")
    conninfo = f"host={HOST} port={port} user={SUPERUSER} dbname=postgres"
    try:
        log(f"source: pgbench -i -s {scale}")
        await run([str(install.bin("pgbench")), "-i", "-q", "-s", str(scale), conninfo], env=env)
        tools = HostTools(PgInstalls(install), work / "main.log")
        journal = Journal(StateStore(work / "state.db"))
        source = Source(
            parse_conninfo(conninfo), None, tools, work / "prism-source", EventBus(), journal
        )
        plain: list[float] = []
        prism: list[float] = []
        size = 0
        for n in range(rounds):
            target = await trio.to_thread.run_sync(_fresh, install, work / "plain")
            started = time.perf_counter()
            await run(
                [
                    *(str(install.bin("pg_basebackup")), "-d", conninfo, "-D", str(target)),
                    *("-X", "stream", "--checkpoint=fast"),
                ],
                env=env,
                **install.spawn_options(),
            )
            plain.append(time.perf_counter() - started)
            size = _size(target)
            target = await trio.to_thread.run_sync(_fresh, install, work / "prism")
            started = time.perf_counter()
            await source.make_main(target)
            prism.append(time.perf_counter() - started)
            log(f"source: round {n + 1}: plain {plain[-1]:.2f} s, prism {prism[-1]:.2f} s")
    finally:
        await stop_bare(process)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "scale": scale,
        "rounds": rounds,
        "bytes": size,
        "plain_s": plain,
        "prism_s": prism,
        "plain_mb_s": size / 2**20 / median(plain),
        "prism_mb_s": size / 2**20 / median(prism),
        "ratio": median(prism) / median(plain),
    }
