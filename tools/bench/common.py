"""What every benchmark section shares: statistics, Postgres tools, clients and a Prism process.

The benchmarks drive real things only (real ``postgres`` servers, real ``pgbench``, a real
``prism serve`` process), all on 127.0.0.1, so the numbers are what a user would see. Prism's
own building blocks (``ProcessRuntime``, ``open_storage``, the service client) are reused where
a benchmark needs a bare server or a bare clone, so the "floor" figures run the same code paths
minus Prism's orchestration.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import trio

from prism.postgres.binaries import PgInstall, resolve_pg_install
from prism.postgres.client import ServiceConnection, connect_service

PASSWORD = "password"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
#: Bench data lives below a world-traversable directory: servers run as the unprivileged
#: ``prism`` user when the bench runs as root.
SCRATCH = Path(tempfile.gettempdir()) / "prism-bench"


def scratch_dir(prefix: str, base: Path | None = None) -> Path:
    """A fresh directory the server user can traverse (mode 0711)."""
    base = base or SCRATCH
    base.mkdir(mode=0o711, parents=True, exist_ok=True)
    base.chmod(0o711)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    path.chmod(0o711)
    return path


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation, as numpy's default."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def pg_install(data_dir: Path) -> PgInstall:
    """The embedded PostgreSQL binaries and the user servers run as, chosen as Prism does."""
    return await resolve_pg_install(data_dir, pg_bin=None, run_as="prism")


def pg_env() -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": PASSWORD, "PGCONNECT_TIMEOUT": "30", "LC_ALL": "C"}


async def run(
    command: Sequence[str], *, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion, capturing its output, failing with its stderr."""
    result = await trio.run_process(
        list(command),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=kwargs.pop("env", pg_env()),
        **kwargs,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}): "
            f"{result.stderr.decode(errors='replace')[-2000:]}"
        )
    return result


async def psql(install: PgInstall, port: int, sql: str, *, user: str = SUPERUSER) -> str:
    """Run ``sql`` with psql over TCP; returns the unaligned, tuples-only output."""
    command = [str(install.bin("psql")), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    command += ["-h", HOST, "-p", str(port), "-U", user, "-d", "postgres", "-c", sql]
    return (await run(command)).stdout.decode().strip()


async def connect(port: int, user: str = SUPERUSER) -> ServiceConnection:
    """A password-authenticated protocol connection (Prism's own small client) over TCP."""
    return await connect_service(host=HOST, port=port, user=user, password=PASSWORD)


async def first_query(port: int, user: str) -> float:
    """Seconds from TCP connect to the result of ``SELECT 1`` on a new connection."""
    started = time.perf_counter()
    async with await connect(port, user) as conn:
        await conn.query("SELECT 1")
        return time.perf_counter() - started


@dataclass(frozen=True)
class PgbenchResult:
    """One pgbench run: throughput and per-transaction latency percentiles (µs)."""

    tps: float
    p50_us: float
    p95_us: float
    transactions: int
    in_window: int = 0
    """Transactions that ended within the window ``during`` returned (0 without one)."""


_TPS = re.compile(rb"tps = ([0-9.]+) \((?:without|excluding|including reconnection)")
_NONE_DONE = b"number of transactions actually processed: 0\n"

Window = Callable[[], Awaitable[tuple[float, float]]]
"""Run beside pgbench; returns the (start, end) wall-clock times of what it watched."""


async def pgbench(
    install: PgInstall,
    port: int,
    *,
    clients: int,
    seconds: float,
    select_only: bool,
    user: str = SUPERUSER,
    during: Window | None = None,
    options: Sequence[str] = (),
) -> PgbenchResult:
    """Run pgbench against ``port``; latency percentiles come from its per-transaction log.

    ``during`` runs meanwhile (a probe reading counters once the clients are connected); the
    result then counts the transactions that ended inside the window it returns. ``options``
    go on pgbench's command line (``-C``: a new connection per transaction).
    """
    log_dir = scratch_dir("pgbench-log-")
    window = (0.0, 0.0)
    try:
        command = pgbench_command(install, port, clients, seconds, select_only, user)
        command[1:1] = options
        command += ["-l", f"--log-prefix={log_dir}/tx"]
        async with trio.open_nursery() as nursery:
            if during is not None:

                async def watch() -> None:
                    nonlocal window
                    window = await during()

                nursery.start_soon(watch)
            result = await run(command)
        match = _TPS.search(result.stdout)
        if match is None and _NONE_DONE not in result.stdout:
            raise RuntimeError(f"cannot read tps from pgbench: {result.stdout.decode()[-800:]}")
        latencies: list[float] = []
        in_window = 0
        for path in log_dir.iterdir():
            for line in path.read_bytes().splitlines():
                fields = line.split()
                if len(fields) >= 6:  # client, tx, latency µs, script, end s, end µs
                    latencies.append(float(fields[2]))
                    ended = int(fields[4]) + int(fields[5]) / 1e6
                    in_window += window[0] <= ended < window[1]
        return PgbenchResult(  # no transaction in the whole run is a result too: 0 tps
            tps=float(match.group(1)) if match else 0.0,
            p50_us=percentile(latencies, 50),
            p95_us=percentile(latencies, 95),
            transactions=len(latencies),
            in_window=in_window,
        )
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


def pgbench_command(
    install: PgInstall, port: int, clients: int, seconds: float, select_only: bool, user: str
) -> list[str]:
    """The pgbench command line of one run (also printed in the report)."""
    command = [str(install.bin("pgbench")), "-n", "-c", str(clients), "-j", str(min(clients, 2))]
    command += ["-T", f"{seconds:g}", "-h", HOST, "-p", str(port), "-U", user]
    if select_only:
        command.append("-S")
    return [*command, "postgres"]


@dataclass
class PrismProcess:
    """A ``prism serve`` child process and what its log told us."""

    process: trio.Process
    port: int
    log_path: Path
    data_dir: Path
    #: Where this run's lines start in the (appended) log.
    log_offset: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kb(self) -> int:
        """Resident set size of the Prism process, from /proc (kB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS in /proc status")

    def log_text(self) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def branch_port(self, branch: str) -> int:
        """The TCP port of ``branch``'s server, read from Prism's log."""
        pattern = re.compile(rf"server (?:started|adopted) branch={re.escape(branch)} port=(\d+)")
        found = pattern.findall(self.log_text())
        if not found:
            raise RuntimeError(f"no server port for branch {branch} in {self.log_path}")
        return int(found[-1])


@contextlib.asynccontextmanager
async def prism_process(
    data_dir: Path,
    *,
    storage: str = "copy",
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> AsyncIterator[PrismProcess]:
    """Run ``prism serve`` as a child process until the block ends, then stop it with SIGTERM.

    ``env`` is added to this process's environment for it (``PRISM_CONNECT_PHASES``)."""
    port = free_port()
    _make_traversable(data_dir)
    log_path = data_dir.parent / f"{data_dir.name}.prism.log"
    command = [sys.executable, "-m", "prism.cli.main", "serve", "--data-dir", str(data_dir)]
    command += ["--listen", f"{HOST}:{port}", "--api", f"{HOST}:0", "--storage", storage]
    command += ["--password", PASSWORD, "--log-level", "info", "--snapshot-every", "0", *extra]
    with _append(log_path) as log:
        offset = log.tell()
        process = await trio.lowlevel.open_process(
            command, stdout=log, stderr=log, env={**os.environ, **(env or {})}
        )
    handle = PrismProcess(process, port, log_path, data_dir, offset)
    try:
        with trio.fail_after(120):
            while "prism: ready" not in handle.log_text():
                if process.returncode is not None:
                    raise RuntimeError(f"prism exited: {handle.log_text()[-2000:]}")
                await trio.sleep(0.05)
        yield handle
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(60):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def _make_traversable(directory: Path) -> None:
    """Create ``directory`` (mode 0711): servers running as another user must reach below it."""
    directory.mkdir(exist_ok=True)
    directory.chmod(0o711)


def _append(path: Path) -> BinaryIO:
    """A log file opened for appending; opening a local file is instant, so no thread."""
    return open(path, "ab")


def _tail(path: Path, chars: int) -> str:
    return path.read_text(errors="replace")[-chars:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def start_bare(
    install: PgInstall, pgdata: Path, log_path: Path, settings: Sequence[str] = ()
) -> tuple[trio.Process, int]:
    """Start ``postgres`` on ``pgdata`` with nothing around it; returns once it is ready.

    Readiness is polled every millisecond from ``postmaster.pid``: this is the floor a runtime
    could reach, so it must not add a coarse poll of its own.
    """
    port = free_port()
    command = [str(install.bin("postgres")), "-D", str(pgdata), "-c", f"listen_addresses={HOST}"]
    command += ["-c", f"port={port}", "-c", "unix_socket_directories="]
    for setting in settings:
        command += ["-c", setting]
    with _append(log_path) as log:
        process = await trio.lowlevel.open_process(
            command, stdout=log, stderr=log, start_new_session=True, **install.spawn_options()
        )
    pidfile = pgdata / "postmaster.pid"
    with trio.fail_after(60):
        while True:
            with contextlib.suppress(OSError):
                lines = pidfile.read_text().split("\n")
                if len(lines) > 7 and lines[7].strip() == "ready":
                    return process, port
            if process.returncode is not None:
                raise RuntimeError(f"postgres exited: {_tail(log_path, 1500)}")
            await trio.sleep(0.001)


async def stop_bare(process: trio.Process) -> None:
    """Immediate shutdown: the floor's clones are thrown away, nothing needs flushing."""
    process.send_signal(signal.SIGQUIT)
    await process.wait()
