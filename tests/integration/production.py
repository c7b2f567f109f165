"""A "production" PostgreSQL for tests of --source: the same binaries, its own data dir and port,
wal_level=replica, a replication role with a password and a pg_hba.conf with no local trust.

The binaries are the embedded ones, or a bin dir of the major the branch servers run (the docker
runtime's image); helpers read main and branches through a Prism following it.
``production_server(replication=False)`` is a managed database instead (for --source-mode
dump): no replication line in pg_hba.conf, and an application role ``app`` (no REPLICATION, no
superuser) owning its database ``appdb`` with a table ``events`` of its own."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from prism.postgres.binaries import PgInstall, resolve_pg_install
from prism.runtime._postmaster import free_port
from tests.waiting import wait_until

from .api_helpers import api
from .harness import PASSWORD, PrismHandle, fresh_dir, psql

SUPERUSER_PASSWORD = "prod-superuser-secret"
CATCH_UP_S = 30
REPLICATOR = "replicator"
REPLICATOR_PASSWORD = "repl-secret"
PRODUCTION_HBA = f"""\
local       all          all                       scram-sha-256
host        all          all          127.0.0.1/32 scram-sha-256
host        replication  {REPLICATOR}   127.0.0.1/32 scram-sha-256
host        replication  no_repl_role 127.0.0.1/32 scram-sha-256
"""
MANAGED_HBA = """\
local       all          all                       scram-sha-256
host        all          all          127.0.0.1/32 scram-sha-256
"""
APP = "app"
APP_PASSWORD = "app-secret"
APP_DB = "appdb"


@dataclass
class Production:
    """A running source server."""

    install: PgInstall
    pgdata: Path
    port: int
    #: Where Prism reaches it: the loopback, or an address its containers can route to.
    source_host: str = "127.0.0.1"

    def dsn(
        self, user: str = "postgres", password: str = SUPERUSER_PASSWORD, dbname: str = "postgres"
    ) -> str:
        return f"host=127.0.0.1 port={self.port} user={user} password={password} dbname={dbname}"

    def source(self, user: str = REPLICATOR, password: str = REPLICATOR_PASSWORD) -> str:
        """What Prism's --source is set to."""
        host, port = self.source_host, self.port
        return f"host={host} port={port} user={user} password={password} dbname=postgres"

    def app_source(self, password: str = APP_PASSWORD) -> str:
        """--source of a managed database: the application role and its database."""
        return self.dsn(APP, password, APP_DB)

    async def max_rate_for(self, seconds: float) -> int:
        """A ``source_max_rate`` (kB/s) that makes a base backup of this server last
        ``seconds``."""
        size = int(await self.sql("SELECT sum(pg_database_size(oid)) FROM pg_database"))
        return max(32, int(size / 1024 / seconds))

    async def sql(self, sql: str) -> str:
        return (await psql(self.dsn(), sql)).stdout.decode().strip()

    async def app_sql(self, sql: str) -> str:
        """Run ``sql`` as the application role in its database."""
        return (await psql(self.dsn(APP, APP_PASSWORD, APP_DB), sql)).stdout.decode().strip()

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
async def production_server(
    bin_dir: Path | None = None,
    *,
    bridge: tuple[str, str] | None = None,
    replication: bool = True,
) -> AsyncIterator[Production]:
    """Start a production-like server with a table ``events`` and stop it at the end.

    ``bin_dir`` holds the binaries to run it with; the embedded ones without it. ``bridge``
    (an address of this host, a network) makes it listen there too and take replication
    connections from that network (a docker bridge's gateway and subnet), Prism's source host.
    ``replication=False`` makes it a managed database (no replication line; see above).
    """
    base = fresh_dir("production-")
    install = await resolve_pg_install(base, pg_bin=bin_dir)
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
        listen, hba = "127.0.0.1", PRODUCTION_HBA if replication else MANAGED_HBA
        if bridge is not None:
            listen += f",{bridge[0]}"
            hba += f"host        replication  {REPLICATOR}   {bridge[1]} scram-sha-256\n"
        with (pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {port}\nlisten_addresses = '{listen}'\n"
                f"unix_socket_directories = '{base}'\nwal_level = replica\n"
                "max_wal_senders = 5\nmax_replication_slots = 5\n"
            )
        (pgdata / "pg_hba.conf").write_text(hba)
        production = Production(install, pgdata, port, bridge[0] if bridge else "127.0.0.1")
        await production.start()
        await production.sql(
            f"CREATE ROLE {REPLICATOR} REPLICATION LOGIN PASSWORD '{REPLICATOR_PASSWORD}';"
            f"CREATE ROLE no_repl_role LOGIN PASSWORD '{REPLICATOR_PASSWORD}';"
            "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL "
            "DEFAULT clock_timestamp(), origin text NOT NULL DEFAULT 'source');"
            "INSERT INTO events SELECT FROM generate_series(1, 1000)"
        )
        if not replication:
            await production.sql(f"CREATE ROLE {APP} LOGIN PASSWORD '{APP_PASSWORD}'")
            await production.sql(f"CREATE DATABASE {APP_DB} OWNER {APP}")
            await production.app_sql(
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


def prism_dsn(prism: PrismHandle, branch: str | None = None) -> str:
    """A DSN of main (or ``branch``) through Prism, as the source's superuser."""
    user = "postgres" if branch is None else f"postgres@{branch}"
    return prism.dsn(user).replace(f"password={PASSWORD}", f"password={SUPERUSER_PASSWORD}")


async def prism_sql(prism: PrismHandle, sql: str, branch: str | None = None) -> str:
    """Run ``sql`` on main (or ``branch``) through Prism; its output, stripped."""
    return (await psql(prism_dsn(prism, branch), sql)).stdout.decode().strip()


async def caught_up(prism: PrismHandle, production: Production) -> int:
    """Wait until main holds every row the source had committed when asked; return that id."""
    target = int(await production.sql("SELECT max(id) FROM events"))

    async def replayed() -> bool:
        # Polling: replay offers nothing to wait on from outside the server.
        return int(await prism_sql(prism, "SELECT coalesce(max(id), 0) FROM events")) >= target

    await wait_until(replayed, what=f"main to replay row {target}", within=CATCH_UP_S)
    return target


async def source_state(prism: PrismHandle, wanted: str, **fields: Any) -> dict[str, Any]:
    """Poll ``GET /api/v1/branches/main`` until ``source`` has ``state`` ``wanted`` (and
    ``fields``)."""
    async with api(prism) as client:

        async def reported() -> dict[str, Any] | None:
            source: dict[str, Any] = (await client.get("/api/v1/branches/main")).json()["source"]
            matches = source["state"] == wanted and fields.items() <= source.items()
            return source if matches else None

        return await wait_until(reported, what=f"source {wanted} {fields}", within=CATCH_UP_S)


async def write_continuously(production: Production, *, task_status: trio.TaskStatus[None]) -> None:
    """Insert one row at a time into ``events`` until cancelled (one psql per row).

    A cancelled writer finishes the insert it is in rather than killing its psql: the server
    may commit a killed client's insert after the test has read what the source committed.
    """
    task_status.started()
    while True:
        with trio.CancelScope(shield=True):
            await psql(production.dsn(), "INSERT INTO events DEFAULT VALUES")
        await trio.sleep(0.01)  # the pace of the load, not a wait for anything


__all__ = [
    "Production",
    "caught_up",
    "prism_dsn",
    "prism_sql",
    "production_server",
    "source_state",
    "write_continuously",
]
