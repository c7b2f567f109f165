"""--source with the docker runtime, on btrfs and on ZFS: main is a base backup taken by
``pg_basebackup`` in a container of the image, runs in its container as a hot standby of a
production-like source, and its branches are writable copies as of their clone.

The source runs from the host's PostgreSQL of the image's major (a source's major must match the
image's) with the production-like ``pg_hba.conf`` of the integration tests: on 127.0.0.1 for the
host network (the default), and on the docker bridge's gateway for ``bridge-ip``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import pytest
import trio

from prism.core.errors import PrismError, find_prism_error
from prism.runtime._docker_engine import LABEL_MANAGED, LABEL_PGDATA
from prism.runtime._docker_tools import LABEL_SOURCE_DIR
from prism.storage import open_storage
from tests.integration.harness import PrismHandle, psql
from tests.integration.production import (
    REPLICATOR_PASSWORD,
    Production,
    caught_up,
    prism_dsn,
    prism_sql,
    production_server,
    source_state,
    write_continuously,
)
from tests.sysenv import DOCKER_IMAGE, HOST_PG_BIN, require_file
from tests.system.stacks import Place, place, prism_in_process, require_docker, tcp_probe_sql

SLOT = "prism_docker"
BRIDGE = {"docker_network": "bridge-ip"}


@dataclass
class Followed:
    prism: PrismHandle
    production: Production
    writes: trio.CancelScope
    stopped: trio.Event

    async def stop_writes(self) -> None:
        """Stop the writer and wait until its last insert has finished."""
        self.writes.cancel()
        await self.stopped.wait()


@pytest.fixture(params=["btrfs", "zfs"])
async def followed(request: pytest.FixtureRequest) -> AsyncIterator[Followed]:
    require_docker()
    bin_dir = require_file(HOST_PG_BIN, "PostgreSQL of the test image's major")
    async with (
        production_server(bin_dir) as production,
        place(request.param) as where,
        trio.open_nursery() as writers,
    ):
        # The base backup is taken while the source writes, as production's would be; the
        # test stops the writes on their own scope (cancelling the nursery would end the test).
        writes, stopped = trio.CancelScope(), trio.Event()

        async def write(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with writes:
                await write_continuously(production, task_status=task_status)
            stopped.set()

        await writers.start(write)
        settings = {"source": production.source(), "source_slot": SLOT}
        async with prism_in_process(where, "docker", **settings) as prism:
            yield Followed(prism, production, writes, stopped)
            writes.cancel()


def _container(name: str) -> Any:
    return docker.from_env(version="auto").containers.get(name)


async def _refusal(where: Place, source: str, **settings: Any) -> PrismError:
    """The error a Prism following ``source`` fails to start with."""
    with pytest.raises(BaseException) as caught:
        async with prism_in_process(where, "docker", source=source, **settings):
            pass
    error = find_prism_error(caught.value)
    assert error is not None, caught.value
    return error


async def test_docker_main_follows_the_source_and_its_branches_are_writable_copies(
    followed: Followed,
) -> None:
    prism, production = followed.prism, followed.production
    await caught_up(prism, production)  # and again while the source keeps writing:
    await caught_up(prism, production)

    # Main is a hot standby in its container: reads work, writes get Postgres' read-only error.
    assert await prism_sql(prism, "SELECT pg_is_in_recovery()") == "t"
    refused = await psql(prism_dsn(prism), "INSERT INTO events DEFAULT VALUES", check=False)
    assert "read-only transaction" in refused.stderr.decode()
    # The password is in no command line and no environment the engine shows: main reads it
    # from Prism's passfile, mounted read-only at its host path and private to main's user.
    main = _container("prism-main")
    assert REPLICATOR_PASSWORD not in str(main.attrs["Config"]) + str(main.attrs["Args"])
    passfile = prism.settings.data_dir / "source" / "pgpass"
    mounts = {mount["Source"]: mount["RW"] for mount in main.attrs["Mounts"]}
    assert mounts[str(passfile.parent)] is False
    owner = passfile.stat()
    assert stat.S_IMODE(owner.st_mode) == 0o600
    assert main.attrs["Config"]["User"] == f"{owner.st_uid}:{owner.st_gid}"
    conninfo = await prism_sql(prism, "SELECT current_setting('primary_conninfo')")
    assert f"passfile={passfile}" in conninfo
    # Prism's overrides apply, its own pg_hba.conf among them (production's has no local trust).
    assert "synchronous_standby_names=" in main.attrs["Args"]
    assert (await prism_sql(prism, "SHOW hba_file")).endswith("/prism_hba.conf")
    await source_state(prism, "streaming")
    # The slot was made by psql in a container, and main's walreceiver streams through it.
    slot = f"SELECT active FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
    assert await production.sql(slot) == "t"

    # A branch cut while the source writes is a consistent prefix of the source's history.
    assert await prism_sql(prism, "SELECT pg_is_in_recovery()", "busy") == "f"
    counted = await prism_sql(prism, "SELECT count(*), max(id) FROM events", "busy")
    count, top = counted.split("|")
    assert count == top
    # No branch's container has the passfile.
    busy = _container("prism-busy")
    assert str(passfile.parent) not in [mount["Source"] for mount in busy.attrs["Mounts"]]
    # Nor can a branch's superuser reach the source: main's container alone connects out.
    probe = tcp_probe_sql(production.port, production.source_host)
    reached = await prism_sql(prism, probe, "busy")
    assert "Operation not permitted" in reached and "connected" not in reached, reached

    # With the source quiet, a branch holds exactly what it committed before the clone.
    await followed.stop_writes()
    committed = await caught_up(prism, production)
    await prism.manager.create("quiet")
    await production.sql("INSERT INTO events DEFAULT VALUES")
    quiet = await prism_sql(prism, "SELECT count(*), max(id) FROM events", "quiet")
    assert quiet == f"{committed}|{committed}"

    # Branches are writable, and nothing written there reaches the source.
    await prism_sql(
        prism, "INSERT INTO events (origin) VALUES ('branch'); CREATE TABLE mine (x int)", "quiet"
    )
    query = "SELECT count(*) FROM events WHERE origin = 'branch'"
    assert await prism_sql(prism, query, "quiet") == "1"
    assert await production.sql(query) == "0"
    assert await production.sql("SELECT to_regclass('mine') IS NULL") == "t"
    assert await prism_sql(prism, "SELECT current_setting('primary_conninfo')", "quiet") == ""
    # Main keeps following after branches were cut from it.
    await caught_up(prism, production)

    # Why main cannot stream is read from its container's log and named with the fix.
    # Two statements, two transactions: in one, the walreceiver could reconnect before the
    # ALTER ROLE commits, and stream on.
    await production.sql("ALTER ROLE replicator NOREPLICATION")
    await production.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication")
    message = "the source refuses role replicator: it lacks the REPLICATION attribute"
    source = await source_state(prism, "disconnected", error=message)
    assert source["hint"] == "on the source: ALTER ROLE replicator REPLICATION"
    await production.sql("ALTER ROLE replicator REPLICATION")
    await source_state(prism, "streaming", error=None)
    await production.sql("INSERT INTO events DEFAULT VALUES")
    await caught_up(prism, production)


async def test_a_backup_left_half_made_by_a_crash_is_stopped_removed_and_taken_again() -> None:
    client = require_docker()
    bin_dir = require_file(HOST_PG_BIN, "PostgreSQL of the test image's major")
    async with production_server(bin_dir) as production, place("btrfs") as where:
        # What a Prism killed mid-backup leaves: the intent marker, a half main, and the
        # backup's container still running (it is not Prism's child).
        source_dir = where.data_dir / "source"
        source_dir.mkdir(mode=0o700)
        marker = source_dir / "basebackup.incomplete"
        marker.write_text("a base backup into main is in progress\n")
        half = await (await open_storage("btrfs", where.data_dir)).create("main")
        (half / "PG_VERSION").write_text("15\n")
        leftover = client.containers.run(
            DOCKER_IMAGE,
            entrypoint=["sleep", "600"],
            detach=True,
            labels={LABEL_MANAGED: "true", LABEL_SOURCE_DIR: str(source_dir)},
        )
        try:
            async with prism_in_process(where, "docker", source=production.source()) as prism:
                await caught_up(prism, production)
                assert not marker.exists()
                assert await prism_sql(prism, "SELECT pg_is_in_recovery()") == "t"
            with pytest.raises(docker.errors.NotFound):
                leftover.reload()
        finally:
            with contextlib.suppress(docker.errors.NotFound):
                leftover.remove(force=True)


async def test_a_docker_source_that_refuses_gets_one_clear_error_and_leaves_nothing() -> None:
    client = require_docker()
    bin_dir = require_file(HOST_PG_BIN, "PostgreSQL of the test image's major")
    async with production_server(bin_dir) as production, place("btrfs") as where:
        error = await _refusal(where, production.source(password="wrong-password"))
        # psql's stderr, read from its container, is explained as on the host.
        assert "the source refused the password of role replicator" in error.message
        assert not (where.data_dir / "master").exists()
        label = f"{LABEL_SOURCE_DIR}={where.data_dir / 'source'}"
        assert client.containers.list(all=True, filters={"label": label}) == []


async def test_a_source_of_another_major_than_the_image_is_refused_naming_the_image() -> None:
    require_docker()
    # The embedded binaries' major; the test image (which does not say its PG_MAJOR) runs 15.
    async with production_server() as production, place("btrfs") as where:
        assert production.install.major != 15
        error = await _refusal(where, production.source())
        assert error.message.endswith(
            f"is PostgreSQL {production.install.major}, and the image {DOCKER_IMAGE} "
            "runs PostgreSQL 15"
        )
        assert error.hint is not None and "--image" in error.hint
        assert not (where.data_dir / "master").exists()


async def test_a_restarted_prism_starts_main_in_its_container_following_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = require_docker()
    bin_dir = require_file(HOST_PG_BIN, "PostgreSQL of the test image's major")
    caplog.set_level("INFO", logger="prism.source")
    async with production_server(bin_dir) as production, place("btrfs") as where:
        async with prism_in_process(where, "docker", source=production.source()) as prism:
            await caught_up(prism, production)
        # The progress came from pg_basebackup's stderr, streamed from its container.
        assert "source: base backup 100%" in caplog.text
        # Prism stopped main's container on its way out (the next one is made anew, with the
        # passfile mounted again); the source went on meanwhile.
        on_data = [
            container
            for container in client.containers.list(all=True, filters={"label": LABEL_MANAGED})
            if container.labels.get(LABEL_PGDATA, "").startswith(str(where.data_dir))
        ]
        assert on_data == []
        await production.sql("INSERT INTO events SELECT FROM generate_series(1, 500)")
        async with prism_in_process(where, "docker", source=production.source()) as prism:
            assert await caught_up(prism, production) == 1500
            assert await prism_sql(prism, "SELECT pg_is_in_recovery()") == "t"


async def test_on_the_docker_bridge_main_follows_a_source_at_a_routable_address() -> None:
    client = require_docker()
    bin_dir = require_file(HOST_PG_BIN, "PostgreSQL of the test image's major")
    (bridge,) = client.networks.get("bridge").attrs["IPAM"]["Config"]
    # Some engines (20.10 on this image) leave the default bridge's gateway out of IPAM: it is
    # then the subnet's first address, as dockerd assigns it to docker0.
    subnet = bridge["Subnet"]
    gateway = bridge.get("Gateway") or str(next(ipaddress.ip_network(subnet).hosts()))
    async with (
        production_server(bin_dir, bridge=(gateway, subnet)) as production,
        place("btrfs") as where,
    ):
        # 127.0.0.1 would be each container itself: refused, naming the way out.
        loopback = production.source().replace(production.source_host, "127.0.0.1")
        assert "loopback" in (await _refusal(where, loopback, **BRIDGE)).message
        # The host's address on the bridge: the backup's container and main's reach it.
        source = production.source()
        async with prism_in_process(where, "docker", source=source, **BRIDGE) as prism:
            await caught_up(prism, production)
            await production.sql("INSERT INTO events DEFAULT VALUES")
            await caught_up(prism, production)
            main = _container("prism-main")
            assert main.attrs["HostConfig"]["NetworkMode"] != "host"
            assert await prism_sql(prism, "SELECT count(*) FROM events", "on-bridge") == "1001"
