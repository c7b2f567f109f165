"""Point in time on the system: with the docker runtime on btrfs and ZFS, the container of main
(or of another branch that keeps WAL) archives its WAL through a bind mount, and a branch at a
time replays that archive inside its own container; on ZFS, a snapshot a branch was cloned from
outlives its retention until that branch is deleted.

The checks are the integration test's (``tests.integration.pitr_checks``): rows stamped every
100 ms, a branch at a time between two commits holds exactly those committed by then.
"""

from __future__ import annotations

import pytest
import trio

from prism.core.values import BranchPattern
from prism.runtime.docker import CONTAINER_ARCHIVE
from tests.integration.api_helpers import wait_for
from tests.integration.harness import psql
from tests.integration.pitr_checks import ROWS, check_branches_at, first_snapshot, stamp_rows
from tests.system.stacks import docker_client, place, prism_in_process
from tests.waiting import wait_until


@pytest.mark.parametrize("storage", ["btrfs", "zfs"])
async def test_a_docker_main_gives_branches_as_of_a_time(storage: str) -> None:
    async with (
        place(storage) as where,
        prism_in_process(where, "docker", snapshot_every=3600.0) as prism,
    ):
        await first_snapshot(prism)
        archive = prism.manager.point_in_time.archive_of("main")
        moments = await trio.to_thread.run_sync(stamp_rows, prism.dsn())
        # The segment holding the rows is archived from inside main's container, as the
        # container's user; recovery then reads it from the archive (its first choice).
        await psql(prism.dsn(), "SELECT pg_switch_wal() FROM pg_create_restore_point('x')")
        # Polling: the archiver sends nothing Prism could wait on.
        await wait_until(archive.segments, what="main's first archived segment", within=30)
        client = docker_client()
        main = await trio.to_thread.run_sync(client.containers.get, "prism-main")
        mounts = {m["Destination"]: m["Source"] for m in main.attrs["Mounts"]}
        assert mounts[str(CONTAINER_ARCHIVE)] == str(archive.directory)
        owner = (await trio.to_thread.run_sync(prism.manager.storage.path("main").stat)).st_uid
        segment = archive.directory / archive.segments()[0]
        assert (await trio.to_thread.run_sync(segment.stat)).st_uid == owner

        await check_branches_at(prism, "main", moments)
        # Each branch replayed in its own container, from main's archive and pg_wal, mounted
        # read-only.
        branch = await trio.to_thread.run_sync(client.containers.get, "prism-main-at-4")
        restore = [m for m in branch.attrs["Mounts"] if "/restore/" in m["Destination"]]
        assert sorted(m["Source"] for m in restore) == sorted(
            [str(archive.directory), str(prism.manager.storage.path("main") / "pg_wal")]
        )
        assert not any(m["RW"] for m in restore)


async def test_a_docker_branch_that_keeps_wal_gives_branches_as_of_a_time() -> None:
    pattern = BranchPattern.parse("main|dev")
    async with (
        place("btrfs") as where,
        prism_in_process(
            where, "docker", snapshot_every=3600.0, point_in_time_branches=pattern
        ) as prism,
    ):
        await prism.manager.create("dev")
        await first_snapshot(prism, "dev")
        moments = await trio.to_thread.run_sync(stamp_rows, prism.dsn("postgres@dev"))
        await check_branches_at(prism, "dev", moments, (5, ROWS - 2))
        dev = await trio.to_thread.run_sync(docker_client().containers.get, "prism-dev")
        mounts = {m["Destination"]: m["Source"] for m in dev.attrs["Mounts"]}
        archive = prism.manager.point_in_time.archive_of("dev")
        assert mounts[str(CONTAINER_ARCHIVE)] == str(archive.directory)


async def test_a_zfs_snapshot_with_a_branch_cloned_from_it_outlives_its_retention() -> None:
    """On ZFS a branch at a time is a clone of its snapshot, which cannot be destroyed under
    it: retention stops offering the snapshot, keeps its data until that branch is deleted,
    and a restart in between starts cleanly."""
    async with place("zfs") as where:
        overrides = {"snapshot_every": 1.0, "retention": "1s"}
        async with prism_in_process(where, "process", **overrides) as prism:
            manager = prism.manager
            first = await first_snapshot(prism)
            await psql(prism.dsn(), "CREATE TABLE t AS SELECT 1 AS v")
            await manager.create("child", at=first.taken_at)
            async with manager.events.subscribe() as events:
                with trio.fail_after(120):
                    while first in manager.point_in_time.snapshots():
                        seen = await wait_for(events, type="snapshot_taken", branch="main")
                        assert not [e for e in seen if e["type"] == "snapshot_failed"]
            assert manager.storage.exists(first.name)
        async with prism_in_process(where, "process", **overrides) as prism:
            # Purged at once: a branch kept in the trash for undelete still needs it.
            await prism.manager.delete("child", purge="the test frees it")
            # Polling: the timer's next round removes it, and sends no event for that.
            await wait_until(
                lambda: not prism.manager.storage.exists(first.name),
                what=f"{first.name} removed",
                within=60,
            )
