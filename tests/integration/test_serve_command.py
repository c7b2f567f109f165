"""`prism serve` as a user runs it: a real process, real signals, one-line errors."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import httpx
import trio

from .harness import PASSWORD, fresh_dir, log_of, psql, running_prism
from .harness import free_port as _free_port
from .harness import serve_args as _serve_args


def _dsn(port: int, user: str) -> str:
    return f"host=127.0.0.1 port={port} user={user} password={PASSWORD} dbname=postgres"


def _postgres_pids_for(data_dir: Path) -> list[int]:
    """Live postmaster processes whose data directory lies under ``data_dir``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"postgres") and b"-D" in cmdline:
            pgdata = cmdline[cmdline.index(b"-D") + 1].decode()
            if pgdata.startswith(str(data_dir)):
                pids.append(int(entry.name))
    return pids


async def _serves_then_stops_cleanly(process: trio.Process, pg_port: int, branch: str) -> None:
    """A query on ``branch`` through Prism answers; then SIGTERM ends Prism with status 0."""
    out = await psql(_dsn(pg_port, f"postgres@{branch}"), "SELECT 7")
    assert out.stdout.decode().strip() == "7"
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        assert await process.wait() == 0


async def test_sigterm_stops_every_branch_server_and_exits_cleanly(data_dir: Path) -> None:
    async with running_prism(data_dir) as (process, pg_port, _):
        await psql(_dsn(pg_port, "postgres@sigterm-branch"), "SELECT 1")
        assert len(_postgres_pids_for(data_dir)) == 2
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0
    assert _postgres_pids_for(data_dir) == []
    log = log_of(data_dir).read_text()
    assert "Traceback" not in log
    assert "prism: stopped" in log


async def test_restart_after_a_crash_adopts_running_servers(data_dir: Path) -> None:
    async with running_prism(data_dir) as (process, pg_port, _):
        await psql(_dsn(pg_port, "postgres@survivor"), "CREATE TABLE t AS SELECT 5 AS v")
        before = sorted(_postgres_pids_for(data_dir))
        process.kill()
        await process.wait()
    assert sorted(_postgres_pids_for(data_dir)) == before  # servers outlive a crashed Prism
    async with running_prism(data_dir) as (process, pg_port, api_port):
        assert sorted(_postgres_pids_for(data_dir)) == before  # adopted, not restarted
        out = await psql(_dsn(pg_port, "postgres@survivor"), "SELECT v FROM t")
        assert out.stdout.decode().strip() == "5"
        async with httpx.AsyncClient() as http:
            body = (await http.get(f"http://127.0.0.1:{api_port}/branches")).json()
        assert sorted(body) == ["main", "survivor"]
        process.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await process.wait() == 0
    assert _postgres_pids_for(data_dir) == []


async def _serve_expecting_failure(args: list[str]) -> str:
    result = await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr
    return stderr


async def test_a_second_prism_on_the_same_data_dir_exits_naming_the_first(
    data_dir: Path,
) -> None:
    async with running_prism(data_dir) as (process, pg_port, api_port):
        await psql(_dsn(pg_port, "postgres@kept"), "CREATE TABLE t AS SELECT 3 AS v")
        servers = sorted(_postgres_pids_for(data_dir))
        # Other ports, as the hint of a port clash used to suggest: refused before it touches
        # anything of the data dir.
        with trio.fail_after(20):
            stderr = await _serve_expecting_failure(
                _serve_args(data_dir, _free_port(), _free_port())
            )
        assert (
            f"prism: error: data directory {data_dir} is in use by another Prism "
            f"(pid {process.pid}), serving postgres clients on 127.0.0.1:{pg_port} and the API "
            f"on http://127.0.0.1:{api_port}\n" in stderr
        )
        assert "--data-dir" in stderr.split("prism: hint:")[1]
        assert sorted(_postgres_pids_for(data_dir)) == servers  # nothing adopted or stopped
        out = await psql(_dsn(pg_port, "postgres@kept"), "SELECT v FROM t")
        assert out.stdout.decode().strip() == "3"


async def test_the_lock_of_a_killed_prism_does_not_stop_the_next(data_dir: Path) -> None:
    async with running_prism(data_dir) as (process, pg_port, _):
        await psql(_dsn(pg_port, "postgres@survivor"), "SELECT 1")
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert (data_dir / "prism.lock").exists()  # left behind, with the dead Prism's pid
    assert len(_postgres_pids_for(data_dir)) == 2  # its servers, which must not hold the lock
    async with running_prism(data_dir) as (process, pg_port, _):
        await _serves_then_stops_cleanly(process, pg_port, "survivor")
    assert _postgres_pids_for(data_dir) == []


async def test_a_data_dir_prism_creates_itself_works() -> None:
    """The README's way: point --data-dir at a path that does not exist yet (as root the
    servers run as another user, who must be able to pass through the new directory)."""
    data_dir = fresh_dir("parent-") / "data"
    async with running_prism(data_dir) as (process, pg_port, _):
        await _serves_then_stops_cleanly(process, pg_port, "in-new-dir")


async def test_busy_port_is_a_one_line_error(data_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stderr = await _serve_expecting_failure(_serve_args(data_dir, port, _free_port()))
    assert f"prism: error: cannot listen for clients on 127.0.0.1:{port}" in stderr
    assert "prism: hint:" in stderr


async def test_unusable_data_dir_is_a_one_line_error() -> None:
    blocker = fresh_dir("blocker-") / "a-file"
    blocker.write_text("not a directory")
    stderr = await _serve_expecting_failure(
        _serve_args(blocker / "data", _free_port(), _free_port())
    )
    assert f"prism: error: cannot create data directory {blocker / 'data'}" in stderr


async def test_bad_setting_value_is_a_one_line_error(data_dir: Path) -> None:
    args = [*_serve_args(data_dir, _free_port(), _free_port()), "--idle-timeout", "soon"]
    stderr = await _serve_expecting_failure(args)
    assert "invalid duration 'soon'" in stderr


async def test_environment_sets_a_setting_and_a_flag_beats_it(data_dir: Path) -> None:
    env = {**os.environ, "PRISM_STORAGE": "btrfs"}
    args = _serve_args(data_dir, _free_port(), _free_port(), storage=None)
    result = await trio.run_process(args, capture_stderr=True, check=False, env=env)
    assert result.returncode == 1  # btrfs from the environment: this is no btrfs filesystem
    assert "btrfs" in result.stderr.decode()
    async with running_prism(data_dir, env=env):  # --storage copy on the command line wins
        pass
