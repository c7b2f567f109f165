"""A branch's superuser plays the attacker against a running Prism (process runtime).

Every attempt here worked before the sandbox (issue 19): reading production's replication
password and other branches' files, running a program, connecting to main, another branch,
the front door and the API over TCP, and to main's and another branch's trusted service
socket with ``dblink``. Each must now fail, while the attacker's own branch keeps working.
The same attacks run against a Prism run by root (servers as their own OS user) and by a
normal user (servers as that same user), so they read everything they need from the data
directory, as an attacker who knows the layout would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from prism.runtime._postmaster import read_pidfile

SECRET = "hunter2-production-replication-password"
ATTACKER = "dev1"
NEIGHBOUR = "dev2"

Sql = Callable[[str, str], Awaitable[tuple[bool, str]]]
"""Run SQL as ``postgres@<branch>``: (succeeded, output or error)."""


@dataclass(frozen=True)
class Target:
    """A running Prism as the attacker sees it."""

    data_dir: Path
    front_door_port: int
    api_port: int
    sql: Sql

    def data_of(self, branch: str) -> Path:
        return self.data_dir / ("master" if branch == "main" else f"branches/{branch}")

    def server_of(self, branch: str) -> tuple[int, str]:
        """The TCP port and libpq service-socket host of ``branch``'s running server."""
        pidfile = read_pidfile(self.data_of(branch))
        assert pidfile is not None, f"{branch} is not running"
        return pidfile.port, pidfile.socket_dir

    async def ok(self, branch: str, sql: str) -> str:
        succeeded, output = await self.sql(branch, sql)
        assert succeeded, f"{sql}: {output}"
        return output.strip()

    async def refused(self, sql: str) -> str:
        succeeded, output = await self.sql(ATTACKER, sql)
        assert not succeeded, f"the attack succeeded: {sql}\n{output}"
        return output


def plant_source_secret(data_dir: Path) -> Path:
    """A readable stand-in for main's passfile of a source, where Prism keeps it."""
    secret = data_dir / "source" / "pgpass"
    secret.parent.mkdir(exist_ok=True)
    secret.write_text(f"*:*:*:replicator:{SECRET}\n")
    secret.chmod(0o644)  # readable by the servers' OS user: only the sandbox stops them
    secret.parent.chmod(0o755)
    return secret


async def attack(target: Target) -> None:
    """Every attempt of issue 19 from ``dev1``'s superuser; each must fail."""
    await target.ok("main", "CREATE TABLE customers AS SELECT 'real@customer.example' AS email")
    await target.ok(NEIGHBOUR, "CREATE TABLE private_work (id int)")
    await target.ok(ATTACKER, "SELECT 1")
    for path in (
        plant_source_secret(target.data_dir),
        target.data_of("main") / "PG_VERSION",
        target.data_of(NEIGHBOUR) / "PG_VERSION",
        target.data_dir / "prism.db",
    ):
        error = await target.refused(f"SELECT pg_read_file('{path}')")
        assert "Permission denied" in error, error
        assert SECRET not in error

    marker = target.data_of(ATTACKER) / "program-ran"
    error = await target.refused(f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'")
    assert "Permission denied" in error or "could not execute" in error, error
    assert not marker.exists()

    await target.ok(ATTACKER, "CREATE EXTENSION dblink")
    main_port, main_socket = target.server_of("main")
    neighbour_port, neighbour_socket = target.server_of(NEIGHBOUR)
    password = "user=postgres password=password"
    for where in (
        f"host=127.0.0.1 port={main_port} {password}",
        f"host=127.0.0.1 port={neighbour_port} {password}",
        f"host=127.0.0.1 port={target.front_door_port} {password}",
        f"host=127.0.0.1 port={target.api_port} {password}",
        f"host={main_socket} port={main_port} user=postgres",
        f"host={neighbour_socket} port={neighbour_port} user=postgres",
    ):
        error = await target.refused(f"SELECT * FROM dblink('{where}', 'SELECT 1') AS t(x int)")
        assert "could not establish connection" in error, error

    # Reached the right way, everything is as it was: the attempts were stopped, not broken.
    assert await target.ok("main", "SELECT email FROM customers") == "real@customer.example"
    assert await target.ok(NEIGHBOUR, "SELECT count(*) FROM private_work") == "0"


async def own_branch_works(target: Target) -> None:
    """The attacker's own branch: DDL, COPY to and from its files, an extension, parallel
    workers (dynamic shared memory without /dev/shm)."""
    own = target.data_of(ATTACKER)
    output = await target.ok(
        ATTACKER,
        f"""
        CREATE TABLE t (id int, payload text);
        INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g;
        COPY t TO '{own}/t.copy';
        CREATE TABLE t2 (LIKE t);
        COPY t2 FROM '{own}/t.copy';
        CREATE EXTENSION hstore;
        SET max_parallel_workers_per_gather = 2;
        SET parallel_setup_cost = 0;
        SET parallel_tuple_cost = 0;
        SET min_parallel_table_scan_size = 0;
        EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT count(*) FROM t2;
        SELECT count(*) FROM t2;
        """,
    )
    assert output.splitlines()[-1] == "200000"
    assert "Workers Launched: 2" in output, output
