"""The other recipes of docs/operations.md, run as written there (with fresh ports and places).

* The ZFS equivalent of Getting Started: the master is a dataset the operator creates under
  the parent dataset, populated by running the image once.
* A master made from an existing database with ``pg_basebackup``: the "production" server is
  a container of the image with a table in it; its base backup becomes main, and a branch of
  it sees the production data.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import trio

from tests.integration.harness import psql
from tests.sysenv import DOCKER_IMAGE, require_command
from tests.system.stacks import (
    free_port,
    place,
    populate_with_image,
    prism_in_process,
    prism_serve,
    require_docker,
    scratch_dir,
    serve_args,
)


async def test_zfs_getting_started() -> None:
    require_docker()
    async with place("zfs") as where:
        master = where.data_dir / "master"
        dataset = f"{where.zfs_dataset}/master"
        await trio.run_process(["zfs", "create", "-o", f"mountpoint={master}", dataset])
        await trio.to_thread.run_sync(populate_with_image, master)
        pg_port, api_port = free_port(), free_port()
        with scratch_dir("prism-zfs-demo-") as logs:
            async with prism_serve(
                serve_args(where, "docker", pg_port, api_port),
                pg_port=pg_port,
                api_port=api_port,
                log=logs / "serve.log",
            ) as served:
                dsn = (
                    f"host=localhost port={pg_port} user=postgres@amazing-feature "
                    "password=password sslmode=disable"
                )
                session = await trio.run_process(
                    ["psql", dsn, "-Atc", "SELECT current_database()"],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
                assert session.stdout.decode().strip() == "postgres", served.log_text()
                listing = await trio.run_process(
                    ["curl", "-sS", f"{served.api}/branches"], capture_stdout=True
                )
                assert "amazing-feature" in listing.stdout.decode()
        snapshots = await trio.run_process(
            ["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r", dataset],
            capture_stdout=True,
        )
        assert snapshots.stdout.strip(), "the branch is a clone of a snapshot of the master"


@pytest.fixture
def production() -> Iterator[int]:
    """A running "production" Postgres (the image, on the host's network) with some data."""
    require_command("pg_basebackup")
    client = require_docker()
    port = free_port()
    name = f"prism-prod-{uuid.uuid4().hex[:8]}"
    container = client.containers.run(
        DOCKER_IMAGE,
        ["postgres", "-c", f"port={port}", "-c", "listen_addresses=127.0.0.1"],
        name=name,
        detach=True,
        network_mode="host",
        environment={"POSTGRES_PASSWORD": "prod-secret"},
    )
    try:
        dsn = f"host=127.0.0.1 port={port} user=postgres password=prod-secret dbname=postgres"
        for _ in range(600):
            ready = subprocess.run(["psql", dsn, "-Atc", "SELECT 1"], capture_output=True)
            if ready.returncode == 0:
                break
            time.sleep(0.1)
        orders = "CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 500) g"
        subprocess.run(["psql", dsn, "-c", orders], check=True, capture_output=True)
        yield port
    finally:
        container.remove(force=True, v=True)


def _image_postgres_owner() -> str:
    out = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "sh", DOCKER_IMAGE, "-c",
         "echo $(id -u postgres):$(id -g postgres)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


async def test_master_from_pg_basebackup_of_a_running_database(production: int) -> None:
    async with place("btrfs") as where:
        master = where.data_dir / "master"
        await trio.run_process(["btrfs", "subvolume", "create", str(master)], capture_stdout=True)
        # The recipe of docs/operations.md: base backup (WAL streamed), owner, mode.
        await trio.run_process(
            ["pg_basebackup", "-h", "127.0.0.1", "-p", str(production), "-U", "postgres",
             "-D", str(master), "-X", "stream", "-c", "fast"],
            env={**os.environ, "PGPASSWORD": "prod-secret"},
            capture_stderr=True,
        )  # fmt: skip
        owner = await trio.to_thread.run_sync(_image_postgres_owner)
        await trio.run_process(["chown", "-R", owner, str(master)])
        master.chmod(0o700)

        async with prism_in_process(where, "docker") as prism:
            # Production's own roles and passwords come with the backup.
            main = prism.dsn(password="prod-secret")
            feature = prism.dsn("postgres@from-prod", password="prod-secret")
            assert (await psql(main, "SELECT count(*) FROM orders")).stdout.strip() == b"500"
            await psql(feature, "DELETE FROM orders WHERE id > 100")
            assert (await psql(feature, "SELECT count(*) FROM orders")).stdout.strip() == b"100"
            assert (await psql(main, "SELECT count(*) FROM orders")).stdout.strip() == b"500"
