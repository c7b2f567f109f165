"""The whole of Prism on real copy-on-write filesystems: btrfs snapshots and XFS reflinks."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from prism.server import PrismServer
from prism.storage import open_storage
from tests.integration.harness import (
    PrismHandle,
    assert_clones_of_busy_parent_are_consistent,
    make_settings,
    psql,
)
from tests.sysenv import BTRFS_MOUNT, XFS_MOUNT, require_mount
from tests.system.stacks import destroy_branches

FILESYSTEMS = {"btrfs": (BTRFS_MOUNT, "btrfs"), "xfs": (XFS_MOUNT, "reflink")}


def _fresh_dir_on(mount: Path) -> Path:
    path = Path(tempfile.mkdtemp(prefix="prism-e2e-", dir=mount))
    path.chmod(0o711)
    return path


@pytest.fixture(params=sorted(FILESYSTEMS))
async def cow_prism(request: pytest.FixtureRequest) -> AsyncIterator[tuple[PrismHandle, str]]:
    """A Prism (storage auto) on the mounted filesystem, and the driver it should pick there.

    The fixture owns the server so it can stop it before removing the branches' data.
    """
    mount, driver = FILESYSTEMS[request.param]
    require_mount(mount, request.param)
    path = await trio.to_thread.run_sync(_fresh_dir_on, mount)
    try:
        async with trio.open_nursery() as nursery:
            settings = make_settings(path, storage="auto")
            info = await nursery.start(PrismServer(settings).run)
            yield PrismHandle(info, settings), driver
            nursery.cancel_scope.cancel()
    finally:
        await destroy_branches(await open_storage(driver, path))
        await trio.to_thread.run_sync(lambda: shutil.rmtree(path, ignore_errors=True))


async def test_auto_storage_branches_on_connect_consistently(
    cow_prism: tuple[PrismHandle, str],
) -> None:
    prism, driver = cow_prism
    assert prism.manager.storage.name == driver

    await psql(prism.dsn(), "CREATE TABLE base AS SELECT 1 AS v")
    await psql(prism.dsn("postgres@cow-a"), "INSERT INTO base VALUES (2)")
    assert (await psql(prism.dsn(), "SELECT sum(v) FROM base")).stdout.strip() == b"1"
    out = await psql(prism.dsn("postgres@cow-a"), "SELECT sum(v) FROM base")
    assert out.stdout.strip() == b"3"

    await assert_clones_of_busy_parent_are_consistent(prism)


async def test_stopped_branch_keeps_its_data_and_wakes_on_connect(
    cow_prism: tuple[PrismHandle, str],
) -> None:
    prism, _ = cow_prism
    await psql(prism.dsn("postgres@sleeper"), "CREATE TABLE kept AS SELECT 42 AS v")
    await prism.manager.stop("sleeper")
    assert prism.manager.runtime.address("sleeper") is None
    with trio.fail_after(30):
        out = await psql(prism.dsn("postgres@sleeper"), "SELECT v FROM kept")
    assert out.stdout.strip() == b"42"
