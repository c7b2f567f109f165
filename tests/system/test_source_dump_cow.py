"""--source-mode dump on btrfs (subvolume snapshots) and XFS (reflinks): after a refresh the
old main's directory is gone, and a branch cloned from it still holds and serves its data."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from prism.server import PrismServer
from prism.storage import open_storage
from tests.integration.harness import PrismHandle, make_settings, psql
from tests.integration.production import APP_DB, Production, production_server
from tests.sysenv import BTRFS_MOUNT, XFS_MOUNT, require_mount

FILESYSTEMS = {"btrfs": (BTRFS_MOUNT, "btrfs"), "xfs": (XFS_MOUNT, "reflink")}
ROWS = 1000


@pytest.fixture(params=sorted(FILESYSTEMS))
async def dump_prism(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[PrismHandle, Production]]:
    """A managed-database-like source and a Prism in dump mode on the mounted filesystem."""
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
        storage = await open_storage(driver, path)
        for branch in sorted(storage.list(), key=lambda name: name == "main"):
            await storage.destroy(branch)
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
