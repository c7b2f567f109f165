"""A "production" PostgreSQL for tests of --source: the same binaries, its own data dir and port,
wal_level=replica, a replication role with a password and a pg_hba.conf with no local trust."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import trio

from prism.pgbin import PgInstall, resolve_pg_install
from prism.runtime._postmaster import free_port

from .harness import fresh_dir, psql

SUPERUSER_PASSWORD = "prod-superuser-secret"
REPLICATOR = "replicator"
REPLICATOR_PASSWORD = "repl-secret"
PRODUCTION_HBA = f"""\
local       all          all                       scram-sha-256
host        all          all          127.0.0.1/32 scram-sha-256
host        replication  {REPLICATOR}   127.0.0.1/32 scram-sha-256
host        replication  no_repl_role 127.0.0.1/32 scram-sha-256
"""


@dataclass
class Production:
    """A running source server."""

    install: PgInstall
    pgdata: Path
    port: int

    def dsn(self, user: str = "postgres", password: str = SUPERUSER_PASSWORD) -> str:
        return f"host=127.0.0.1 port={self.port} user={user} password={password} dbname=postgres"

    def source(self, user: str = REPLICATOR, password: str = REPLICATOR_PASSWORD) -> str:
        """What Prism's --source is set to."""
        return f"host=127.0.0.1 port={self.port} user={user} password={password} dbname=postgres"

    async def max_rate_for(self, seconds: float) -> int:
        """A ``source_max_rate`` (kB/s) that makes a base backup of this server last
        ``seconds``."""
        size = int(await self.sql("SELECT sum(pg_database_size(oid)) FROM pg_database"))
        return max(32, int(size / 1024 / seconds))

    async def sql(self, sql: str) -> str:
        return (await psql(self.dsn(), sql)).stdout.decode().strip()

    async def pg_ctl(self, *args: str) -> None:
        log = self.pgdata.parent / "production.log"
        await trio.run_process(
            [str(self.install.bin("pg_ctl")), "-D", str(self.pgdata), "-l", str(log), *args],
            capture_stdout=True,
            capture_stderr=True,
            env={"PATH": os.environ["PATH"], "LC_ALL": "C"},
            **self.install.spawn_options(),
        )

    async def start(self) -> None:
        await self.pg_ctl("-w", "start")

    async def stop(self) -> None:
        await self.pg_ctl("-w", "-m", "fast", "stop")


@contextlib.asynccontextmanager
async def production_server() -> AsyncIterator[Production]:
    """Start a production-like server with a table ``events`` and stop it at the end."""
    base = fresh_dir("production-")
    install = await resolve_pg_install(base)
    pgdata = base / "pgdata"
    install.chown(base)
    pwfile = base / "pw"
    pwfile.write_text(SUPERUSER_PASSWORD + "\n")
    install.chown(pwfile)
    port = free_port()
    try:
        await trio.run_process(
            [
                *(str(install.bin("initdb")), "-D", str(pgdata), "-U", "postgres"),
                *("--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C"),
            ],
            capture_stdout=True,
            capture_stderr=True,
            env={"PATH": os.environ["PATH"], "LC_ALL": "C"},
            **install.spawn_options(),
        )
        with (pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{base}'\nwal_level = replica\n"
                "max_wal_senders = 5\nmax_replication_slots = 5\n"
            )
        (pgdata / "pg_hba.conf").write_text(PRODUCTION_HBA)
        production = Production(install, pgdata, port)
        await production.start()
        await production.sql(
            f"CREATE ROLE {REPLICATOR} REPLICATION LOGIN PASSWORD '{REPLICATOR_PASSWORD}';"
            f"CREATE ROLE no_repl_role LOGIN PASSWORD '{REPLICATOR_PASSWORD}';"
            "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL "
            "DEFAULT clock_timestamp(), origin text NOT NULL DEFAULT 'source');"
            "INSERT INTO events SELECT FROM generate_series(1, 1000)"
        )
        yield production
    finally:
        with trio.CancelScope(shield=True):
            if (pgdata / "postmaster.pid").exists():
                await trio.run_process(
                    [str(install.bin("pg_ctl")), "-D", str(pgdata), "-m", "immediate", "stop"],
                    check=False,
                    capture_stdout=True,
                    capture_stderr=True,
                    **install.spawn_options(),
                )
            shutil.rmtree(base, ignore_errors=True)


async def write_continuously(production: Production, *, task_status: trio.TaskStatus[None]) -> None:
    """Insert one row at a time into ``events`` until cancelled (one psql per row)."""
    task_status.started()
    while True:
        await psql(production.dsn(), "INSERT INTO events DEFAULT VALUES")
        await trio.sleep(0.01)


__all__ = ["Production", "production_server", "write_continuously"]
