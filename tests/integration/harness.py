"""Helpers for tests that run a real Prism: settings, a handle on a running server, psql."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pg8000.native
import pytest
import trio

from prism.core.settings import Settings
from prism.core.values import HostPort
from prism.runtime._postmaster import read_pidfile
from prism.server import ServerInfo
from tests.waiting import wait_until

PASSWORD = "password"
# Data dirs must be reachable by the non-root user Postgres runs as when the tests run as root;
# pytest's own tmp_path lives under a 0700 directory, so use a world-traversable base instead.
_BASE = Path(tempfile.gettempdir()) / "prism-tests"


def fresh_dir(prefix: str) -> Path:
    _BASE.mkdir(mode=0o711, exist_ok=True)
    _BASE.chmod(0o711)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=_BASE))
    path.chmod(0o711)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_args(
    data_dir: Path,
    pg_port: int,
    api_port: int,
    *,
    storage: str | None = "copy",
    python: str = sys.executable,
) -> list[str]:
    """The command line of ``prism serve`` on ``data_dir`` and the given ports."""
    args = [
        python,
        "-m",
        "prism.cli.main",
        "serve",
        "--data-dir",
        str(data_dir),
        "--listen",
        f"127.0.0.1:{pg_port}",
        "--api",
        f"127.0.0.1:{api_port}",
        "--password",
        PASSWORD,
        # Snapshots of main (on by default) only where a test asks: tests/integration/test_pitr.py
        "--snapshot-every",
        "0",
    ]
    return args if storage is None else [*args, "--storage", storage]


@asynccontextmanager
async def running_prism(
    data_dir: Path,
    *,
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
    args: Sequence[str] = (),
    python: str = sys.executable,
) -> AsyncIterator[tuple[trio.Process, int, int]]:
    """Start `prism serve`, wait until it is ready, yield (process, pg port, api port).

    Ready is ``/healthz`` answering 200: with ``--source`` the API answers during the base
    backup already.

    ``prefix`` goes before the command (e.g. ``setpriv`` to drop privileges), ``args`` after
    it; ``python`` runs Prism (another user may not reach this one); the output goes to
    :func:`log_of` the data directory.
    """
    pg_port, api_port = free_port(), free_port()
    log = log_of(data_dir).open("wb")
    process = await trio.lowlevel.open_process(
        [*prefix, *serve_args(data_dir, pg_port, api_port, python=python), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        async with httpx.AsyncClient() as http:

            async def serving() -> bool:
                assert process.poll() is None, "prism serve exited early"
                try:
                    return (await http.get(f"http://127.0.0.1:{api_port}/healthz")).is_success
                except httpx.TransportError:
                    return False

            await wait_until(serving, what="prism serve to be ready", within=60)
        yield process, pg_port, api_port
    finally:
        # A graceful stop, so the branch servers go with it; a kill would orphan them.
        if process.poll() is None:
            process.terminate()
            with trio.move_on_after(30):
                await process.wait()
        if process.poll() is None:
            process.kill()
        await process.wait()
        log.close()


def log_of(data_dir: Path) -> Path:
    """Where :func:`running_prism` writes the output of `prism serve` on ``data_dir``."""
    return data_dir.parent / f"{data_dir.name}.log"


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    base = Settings(
        data_dir=data_dir,
        listen=HostPort("127.0.0.1", 0),
        api=HostPort("127.0.0.1", 0),
        storage="copy",
        password=PASSWORD,
        startup_timeout=3.0,
        snapshot_every=0.0,  # snapshots of main only where a test asks for them
    )
    return dataclasses.replace(base, **overrides)


class PrismHandle:
    """A running in-process Prism and helpers to reach it."""

    def __init__(self, info: ServerInfo, settings: Settings) -> None:
        self.info = info
        self.settings = settings

    @property
    def port(self) -> int:
        return self.info.listen[1]

    @property
    def manager(self) -> Any:
        return self.info.manager

    def dsn(self, user: str = "postgres", dbname: str = "postgres", **extra: str) -> str:
        parts = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "user": user,
            "password": PASSWORD,
            "dbname": dbname,
            "sslmode": "disable",
            **extra,
        }
        return " ".join(f"{key}={value}" for key, value in parts.items())


async def kill_branch_server(manager: Any, name: str) -> None:
    """SIGKILL the postmaster of ``name`` and wait for Prism's ``stopped`` event about it."""
    pidfile = read_pidfile(manager.storage.path(name))
    assert pidfile is not None, f"branch {name} has no running server"
    await exit_reported(manager, name, functools.partial(os.kill, pidfile.pid, signal.SIGKILL))


async def exit_reported(manager: Any, name: str, kill: Callable[[], object]) -> None:
    """Run ``kill`` (in a thread: it may block) and wait for Prism's ``stopped`` event about
    ``name``, which must give the reason ``exited``."""
    async with manager.events.subscribe() as events:
        await trio.to_thread.run_sync(kill)
        with trio.fail_after(5):
            async for event in events:
                if event["type"] == "stopped" and event["branch"] == name:
                    assert event["reason"] == "exited", event
                    return


async def assert_listed_stopped_then_woken(prism: PrismHandle, name: str) -> None:
    """After its server died: ``name`` is listed stopped, and the next client gets a session
    (on the data of table ``t``, ``v = 9``) that wakes it."""
    async with httpx.AsyncClient(base_url=prism.info.api_url) as http:
        view = (await http.get(f"/api/v1/branches/{name}")).json()
    assert view["status"] == "stopped"
    out = await psql(prism.dsn(f"postgres@{name}"), "SELECT v FROM t")
    assert out.stdout.decode().strip() == "9"
    assert prism.manager.require(name).status.value == "running"


async def psql(dsn: str, sql: str, *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run real ``psql`` (unaligned, tuples only) against ``dsn``."""
    result = await trio.run_process(
        ["psql", dsn, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, "PGCONNECT_TIMEOUT": "30"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"psql failed ({result.returncode}): {result.stderr.decode()}")
    return result


async def refused_sqlstate(prism: PrismHandle, branch: str) -> str:
    """The SQLSTATE of the ErrorResponse a client connecting to ``branch`` gets (pg8000)."""

    def connect() -> str:
        with pytest.raises(pg8000.native.DatabaseError) as refused:
            pg8000.native.Connection(
                f"postgres@{branch}", password=PASSWORD, host="127.0.0.1", port=prism.port
            )
        return str(refused.value.args[0]["C"])

    return await trio.to_thread.run_sync(connect)


_ACCOUNTS = """
CREATE EXTENSION IF NOT EXISTS amcheck;
CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 50) g;
CREATE INDEX accounts_balance ON accounts (balance);
"""
_TRANSFER = """
BEGIN;
UPDATE accounts SET balance = balance - 7 WHERE id = {a};
UPDATE accounts SET balance = balance + 7 WHERE id = {b};
INSERT INTO accounts SELECT 1000 + {i}, 0;
COMMIT;
"""
# bt_index_check raises on a corrupt index; psql prints the last statement's result only.
_CHECK = "SELECT bt_index_check('accounts_balance', true); SELECT sum(balance) FROM accounts"
# About 1 MB of WAL, a new file for the table (the old one removed), then a new WAL segment.
_CHURN = """
BEGIN;
TRUNCATE filler;
INSERT INTO filler SELECT repeat(md5(g::text), 32) FROM generate_series(1, 1000) g;
COMMIT;
SELECT pg_switch_wal();
"""


async def assert_clones_of_busy_parent_are_consistent(
    prism: PrismHandle, branches: int = 4, *, churn_wal: bool = False
) -> None:
    """Cut branches from main while a writer moves money in it: each sees a committed state.

    The invariant (the balances always sum to 50,000) holds in every committed state; a clone
    that caught a half-written page or lost WAL would break it or fail the index check.

    With ``churn_wal`` a second writer makes files vanish under a file-by-file clone all along:
    it switches WAL segments (archive_status files come and go when main archives), replaces a
    table's file, and with ``max_wal_size`` at 32 MB checkpoints recycle segments every few
    switches; each branch is deleted once checked, so many fit on the disk.
    """
    await psql(prism.dsn(), _ACCOUNTS)
    if churn_wal:
        await psql(prism.dsn(), "CREATE TABLE filler (pad text)")
        await psql(prism.dsn(), "ALTER SYSTEM SET max_wal_size = '32MB'")
        await psql(prism.dsn(), "SELECT pg_reload_conf()")
    writes = 0

    async def writer() -> None:
        nonlocal writes
        while True:
            sql = _TRANSFER.format(a=1 + writes % 50, b=1 + (writes * 7 + 3) % 50, i=writes)
            await psql(prism.dsn(), sql)
            writes += 1

    async def churner() -> None:
        while True:
            await psql(prism.dsn(), _CHURN)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        if churn_wal:
            nursery.start_soon(churner)
        for n in range(branches):
            await trio.sleep(0.2)  # the load: writes land between one branch and the next
            out = await psql(prism.dsn(f"postgres@busy-{n}"), _CHECK)
            assert out.stdout.decode().strip() == "50000"
            if churn_wal:
                await prism.manager.delete(f"busy-{n}")
        nursery.cancel_scope.cancel()
    assert writes > 0


@contextlib.contextmanager
def frozen(manager: Any, name: str) -> Iterator[int]:
    """SIGSTOP the postmaster of ``name`` (alive, serving nobody) for the block; its pid."""
    pidfile = read_pidfile(manager.storage.path(name))
    assert pidfile is not None, f"branch {name} has no running server"
    os.kill(pidfile.pid, signal.SIGSTOP)
    try:
        yield pidfile.pid
    finally:
        os.kill(pidfile.pid, signal.SIGCONT)


async def wait_for_status(
    http: httpx.AsyncClient, branch: str, status: str, within: float
) -> dict[str, Any]:
    """``branch``'s view once the API says ``status`` (polled every 50 ms)."""
    with trio.fail_after(within):
        while True:
            view: dict[str, Any] = (await http.get(f"/api/v1/branches/{branch}")).json()
            if view["status"] == status:
                return view
            await trio.sleep(0.05)
