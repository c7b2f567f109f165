"""--source-mode dump on btrfs (subvolume snapshots) and XFS (reflinks): after a refresh the
old main's directory is gone, and a branch cloned from it still holds and serves its data. On
ZFS, where a branch is a clone of a snapshot of main's dataset, the old dataset is set aside
until no branch needs it.

With the docker runtime (on btrfs) the dump tools run in containers of the image, so the source
runs from the host's PostgreSQL of the image's major, as in ``test_source_docker``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest
import trio

from prism.core.errors import find_prism_error
from prism.runtime._docker_tools import LABEL_SOURCE_DIR
from prism.server import PrismServer
from prism.storage import open_storage
from tests.integration.api_helpers import api
from tests.integration.harness import PrismHandle, make_settings, psql
from tests.integration.production import APP, APP_DB, Production, production_server
from tests.integration.test_source_dump import (
    REFRESH_KILLS,
    assert_one_whole_generation,
    kill_a_refresh,
    stop_serve,
)
from tests.sysenv import (
    BTRFS_MOUNT,
    HOST_PG_BIN,
    XFS_MOUNT,
    require_file,
    require_mount,
)
from tests.system.stacks import destroy_branches, place, prism_in_process

FILESYSTEMS = {"btrfs": (BTRFS_MOUNT, "btrfs"), "xfs": (XFS_MOUNT, "reflink")}
DOCKER = "docker-btrfs"
ROWS = 1000


@pytest.fixture(params=[*sorted(FILESYSTEMS), DOCKER])
async def dump_prism(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[PrismHandle, Production]]:
    """A managed-database-like source and a Prism in dump mode on the mounted filesystem
    (with the docker runtime for ``docker-btrfs``)."""
    if request.param == DOCKER:
        bin_dir = require_file(HOST_PG_BIN, "PostgreSQL of the test image's major")
        async with (
            production_server(bin_dir, replication=False) as source,
            place("btrfs") as where,
            prism_in_process(
                where, "docker", source=source.app_source(), source_mode="dump"
            ) as prism,
        ):
            yield prism, source
        return
    mount, driver = FILESYSTEMS[request.param]
    require_mount(mount, request.param)
    path = Path(tempfile.mkdtemp(prefix="prism-dump-", dir=mount))
    await trio.to_thread.run_sync(path.chmod, 0o711)
    try:
        async with production_server(replication=False) as source, trio.open_nursery() as nursery:
            settings = make_settings(
                path, storage=driver, source=source.app_source(), source_mode="dump"
            )
            info = await nursery.start(PrismServer(settings).run)
            yield PrismHandle(info, settings), source
            nursery.cancel_scope.cancel()
    finally:
        await destroy_branches(await open_storage(driver, path))
        await trio.to_thread.run_sync(lambda: shutil.rmtree(path, ignore_errors=True))


async def _count(prism: PrismHandle, user: str = "postgres") -> int:
    result = await psql(prism.dsn(user, dbname=APP_DB), "SELECT count(*) FROM events")
    return int(result.stdout.decode())


async def test_a_branch_keeps_its_generation_after_the_old_main_is_removed(
    dump_prism: tuple[PrismHandle, Production],
) -> None:
    prism, source = dump_prism
    manager = prism.manager
    await manager.create("b1")
    await psql(prism.dsn("postgres@b1", dbname=APP_DB), "INSERT INTO events (origin) VALUES ('b1')")
    await source.app_sql("INSERT INTO events SELECT FROM generate_series(1, 500)")
    cluster = "SELECT system_identifier FROM pg_control_system()"
    old_main = await psql(prism.dsn(dbname=APP_DB), cluster)

    assert (await manager.refresh_main()).number == 2
    # Main is another cluster now (a fresh initdb), ...
    assert (await psql(prism.dsn(dbname=APP_DB), cluster)).stdout != old_main.stdout
    # The old generation's directory is gone (nothing left in the trash either) ...
    trash = manager.storage.trash_dir
    assert [p.name for p in trash.iterdir()] == []
    # ... and b1, cloned from it, holds its rows and its own, stops, wakes and takes writes.
    await manager.stop("b1")
    assert await _count(prism, "postgres@b1") == ROWS + 1
    await psql(prism.dsn("postgres@b1", dbname=APP_DB), "INSERT INTO events DEFAULT VALUES")
    assert manager.require("b1").generation.number == 1
    assert await _count(prism) == ROWS + 500
    await manager.create("b2")
    assert await _count(prism, "postgres@b2") == ROWS + 500
    assert manager.require("b2").generation.number == 2


async def test_with_docker_a_source_that_refuses_gets_one_clear_error() -> None:
    bin_dir = require_file(HOST_PG_BIN, "PostgreSQL of the test image's major")
    async with production_server(bin_dir, replication=False) as source, place("btrfs") as where:
        # The first dump: a wrong password fails the start with the source's answer, and
        # leaves neither a half-made main nor a program's container behind.
        with pytest.raises(BaseException) as caught:
            async with prism_in_process(
                where, "docker", source=source.app_source("wrong"), source_mode="dump"
            ):
                pass
        error = find_prism_error(caught.value)
        assert error is not None, caught.value
        assert error.message == f"the source refused the password of role {APP}"
        assert "--source-password-file" in (error.hint or "")
        assert not (where.data_dir / "master").exists()
        engine = docker.from_env(version="auto")
        label = f"{LABEL_SOURCE_DIR}={where.data_dir / 'source'}"
        assert engine.containers.list(all=True, filters={"label": label}) == []

        # A refresh whose pg_dump fails in the container's pipe says why, and main serves on.
        settings = {"source": source.app_source(), "source_mode": "dump"}
        async with prism_in_process(where, "docker", **settings) as prism:
            await psql(source.dsn(dbname=APP_DB), "CREATE TABLE secret (x int)")
            async with api(prism) as client:
                answer = await client.post("/api/v1/branches/main/refresh")
            assert answer.status_code == 502, answer.text
            message = answer.json()["message"]
            assert message == f"role {APP} may not read everything in the source's database"
            assert await _count(prism) == ROWS


async def _zfs(*args: str) -> str:
    result = await trio.run_process(["zfs", *args], capture_stdout=True)
    return result.stdout.decode().strip()


@pytest.mark.parametrize("runtime", ["process", "docker"])
async def test_on_zfs_the_old_generation_is_set_aside_while_a_branch_needs_it(
    runtime: str,
) -> None:
    # The source runs the docker image's major; the process runtime's, the embedded binaries.
    bin_dir = None
    if runtime == "docker":
        bin_dir = require_file(HOST_PG_BIN, "PostgreSQL of the test image's major")
    async with (
        place("zfs") as where,
        production_server(bin_dir, replication=False) as source,
        prism_in_process(where, runtime, source=source.app_source(), source_mode="dump") as prism,
    ):
        manager = prism.manager
        await manager.create("b1")
        await source.app_sql("INSERT INTO events SELECT FROM generate_series(1, 500)")
        assert (await manager.refresh_main()).number == 2

        # The old main's dataset is kept, marked and unmounted, for b1's origin snapshot; the
        # new generation's dataset is main now.
        marks = await _zfs(
            "get", "-H", "-r", "-s", "local", "-o", "name,value", "prism:aside", where.zfs_dataset
        )
        aside = [line.split("\t")[0] for line in marks.splitlines()]
        assert aside == [f"{where.zfs_dataset}/master"]
        assert await _zfs("get", "-H", "-o", "value", "mountpoint", aside[0]) == "none"
        assert manager.storage.dataset_of("main") == f"{where.zfs_dataset}/branches/gen:2"
        origin = await _zfs("get", "-H", "-o", "value", "origin", manager.storage.dataset_of("b1"))
        assert origin.startswith(f"{aside[0]}@")
        await manager.stop("b1")
        assert await _count(prism, "postgres@b1") == ROWS
        assert await _count(prism) == ROWS + 500
        await manager.create("b2")
        assert await _count(prism, "postgres@b2") == ROWS + 500
        assert manager.require("b1").generation.number == 1

        # Once no branch needs it, start-up's sweep destroys it; nothing else is touched.
        assert await manager.storage.sweep() == []  # b1 still needs it
        await manager.delete("b1", purge="the test frees it")  # a kept b1 would need it
        swept = await manager.storage.sweep()
        assert [str(path) for path in swept] == aside
        assert await _count(prism, "postgres@b2") == ROWS + 500

        # A main nothing is cloned from is destroyed as soon as the next generation serves.
        await manager.delete("b2", purge="the test frees it")
        assert (await manager.refresh_main()).number == 3
        assert await _zfs("get", "-H", "-r", "-s", "local", "prism:aside", where.zfs_dataset) == ""
        listed = (await _zfs("list", "-H", "-o", "name", "-r", where.zfs_dataset)).split()
        assert sorted(listed) == [
            where.zfs_dataset,
            f"{where.zfs_dataset}/branches",
            f"{where.zfs_dataset}/branches/gen:3",
            f"{where.zfs_dataset}/deleted",  # the trash's parent, empty
        ]
        assert await _count(prism) == ROWS + 500


@pytest.mark.parametrize(("point", "generation"), REFRESH_KILLS)
async def test_on_zfs_a_refresh_killed_at_any_step_leaves_one_whole_generation(
    point: str, generation: int
) -> None:
    async with place("zfs") as where, production_server(replication=False) as managed:
        storage = ["--storage", "zfs", "--zfs-dataset", where.zfs_dataset]
        process, pg_port, api_port = await kill_a_refresh(managed, where.data_dir, point, storage)
        try:
            await assert_one_whole_generation(pg_port, api_port, generation)
            leftovers = sorted(p.name for p in (where.data_dir / "branches").iterdir())
            assert leftovers == [".deleted", ".trash", "kept"]
            # Only main and kept's datasets (and the old main, set aside for kept) are left.
            listed = await _zfs("list", "-H", "-r", "-o", "name,mountpoint", where.zfs_dataset)
            mounted = sorted(line.split("\t")[1] for line in listed.splitlines() if "\t/" in line)
            assert mounted == [
                str(where.data_dir / "branches" / "kept"),
                str(where.data_dir / "master"),
            ]
        finally:
            await stop_serve(process)
