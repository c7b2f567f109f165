"""Point in time: snapshots and archived WAL give a branch as of any moment in the window.

Rows are stamped into main (a local primary, or the source a standby main follows), or into a
branch that keeps WAL, every 100 ms; a branch at a time T between two commits holds exactly
the rows committed at or before T, and a time outside the window is refused with the window.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from prism.branches.snapshots import Snapshot, precise_time, snapshot_name
from prism.core.crashpoints import POINTS
from prism.core.diskrules import Retention
from prism.core.settings import Settings
from prism.core.values import BranchPattern
from prism.durable.state import utcnow
from prism.server import PrismServer
from tests.waiting import wait_until

from .api_helpers import api, status, wait_for
from .harness import PrismHandle, free_port, make_settings, psql, serve_args
from .pitr_checks import (
    ROWS,
    between,
    branch_at,
    branch_dsn,
    check_branches_at,
    first_snapshot,
    stamp_rows,
    stamped_rows,
)
from .production import SUPERUSER_PASSWORD, production_server


async def test_branch_at_a_time_holds_exactly_the_rows_committed_by_then(
    start_prism: Any,
) -> None:
    prism = await start_prism(snapshot_every=3600.0)
    await first_snapshot(prism)
    moments = await trio.to_thread.run_sync(stamp_rows, prism.dsn())
    await check_branches_at(prism, "main", moments)
    # The branches' writes stay their own.
    assert await stamped_rows(prism, "main") == list(range(ROWS))


async def test_a_branch_that_keeps_wal_gives_branches_as_of_a_time(start_prism: Any) -> None:
    """``dev`` keeps WAL (``--point-in-time-branches``): its own window and snapshots, ``at``
    from it; a branch that keeps none is refused, saying how to turn it on; a reset restarts
    dev's window and a delete removes its archive and snapshots."""
    prism = await start_prism(
        snapshot_every=3600.0, point_in_time_branches=BranchPattern.parse("main|dev")
    )
    manager, kept = prism.manager, prism.manager.point_in_time
    await manager.create("dev")
    await manager.create("other")
    first = await first_snapshot(prism, "dev")
    moments = await trio.to_thread.run_sync(stamp_rows, prism.dsn("postgres@dev"))
    await check_branches_at(prism, "dev", moments, (3, ROWS - 2))
    async with api(prism) as client:
        listed = (await client.get("/api/v1/branches/dev/snapshots")).json()
        assert listed["keeps_wal"] is True
        assert [s["name"] for s in listed["snapshots"]] == [first.name]
        assert listed["window"]["start"] == precise_time(first.taken_at)
        other = (await client.get("/api/v1/branches/other/snapshots")).json()
        assert other == {"snapshots": [], "window": None, "keeps_wal": False}
        listing = (await client.get("/api/v1/branches")).json()["branches"]
        views = {b["name"]: b["keeps_wal"] for b in listing}
        assert (views["main"], views["dev"], views["other"]) == (True, True, False)
        reply = await client.post(
            "/api/v1/branches", json={"name": "no", "parent": "other", "at": "-0s"}
        )
        assert reply.status_code == 422, reply.text
        assert reply.json()["code"] == "outside_window"
        assert '"other" keeps no WAL' in reply.json()["message"]
        assert "--point-in-time-branches" in reply.json()["hint"]
    assert manager.get("no") is None
    cli = [sys.executable, "-m", "prism.cli.main", "snapshot", "ls", "--branch", "dev"]
    shown = await trio.run_process([*cli, "--api", prism.info.api_url], capture_stdout=True)
    assert first.name in shown.stdout.decode()
    archive = kept.archive_of("dev").directory
    assert archive.is_dir()

    # A reset: dev's old window ends, a new one opens when it runs again.
    async with manager.events.subscribe() as events:
        await manager.reset("dev")
        assert kept.snapshots("dev") == []
        await manager.start("dev")
        with trio.fail_after(120):
            await wait_for(events, type="snapshot_taken", branch="dev")
    renewed = kept.snapshots("dev")
    assert len(renewed) == 1 and renewed[0].taken_at > first.taken_at
    assert not manager.storage.exists(first.name)

    # A delete: dev's archive and snapshots go with it.
    await manager.delete("dev", with_children=True)
    assert kept.snapshots("dev") == []

    def freed() -> bool:
        # Polling: the timer frees the space in its next round, which sends no event.
        archives = sorted(p.name for p in kept.archives.iterdir())
        return archives == ["main"] and not any(
            name.startswith("snap:dev:") for name in manager.storage.list()
        )

    await wait_until(freed, what="dev's archive and snapshots removed", within=60)
    assert [s.branch for s in kept.store.list()] == ["main"]


async def test_the_snapshot_timer_leaves_a_stopped_branch_stopped(start_prism: Any) -> None:
    """While ``dev`` is stopped, snapshots of main go on and none of dev is taken (it is not
    woken); once dev runs again, its overdue snapshot is taken."""
    prism = await start_prism(
        snapshot_every=1.0, point_in_time_branches=BranchPattern.parse("main|dev")
    )
    manager, kept = prism.manager, prism.manager.point_in_time
    await manager.create("dev")
    await first_snapshot(prism, "dev")
    await manager.stop("dev")
    before = kept.snapshots("dev")
    async with manager.events.subscribe() as events:
        with trio.fail_after(120):
            for _ in range(3):
                await wait_for(events, type="snapshot_taken", branch="main")
        assert status(prism, "dev") == "stopped"
        assert kept.snapshots("dev") == before
        await manager.start("dev")
        with trio.fail_after(120):
            await wait_for(events, type="snapshot_taken", branch="dev")
    assert kept.snapshots("dev")[-1].taken_at > before[-1].taken_at


async def test_a_standby_main_gives_branches_as_of_a_time_on_the_source(
    start_prism: Any, empty_data_dir: Path
) -> None:
    async with production_server() as production:
        data_dir = empty_data_dir
        prism = await start_prism(
            data_dir=data_dir, source=production.source(), snapshot_every=3600.0
        )
        await first_snapshot(prism)
        moments = await trio.to_thread.run_sync(stamp_rows, production.dsn())

        async def replayed() -> bool:
            # Polling: replay offers nothing to wait on from outside the server.
            return len(await stamped_rows(prism, "main", SUPERUSER_PASSWORD)) >= ROWS

        await wait_until(replayed, what="main to replay every row", within=60)
        for last_row in (3, ROWS - 2):
            await branch_at(prism, f"src-{last_row}", between(moments, last_row))
            rows = await stamped_rows(prism, f"src-{last_row}", SUPERUSER_PASSWORD)
            assert rows == list(range(last_row + 1))
        # After the source's last commit: main as it is now.
        await branch_at(prism, "src-now", "-0s")
        assert await stamped_rows(prism, "src-now", SUPERUSER_PASSWORD) == list(range(ROWS))
        # Branches are writable; main (a standby) and the source are not touched.
        await psql(
            branch_dsn(prism, "src-3", SUPERUSER_PASSWORD),
            "INSERT INTO stamps VALUES (1000, now())",
        )
        assert await production.sql("SELECT count(*) FROM stamps") == str(ROWS)


async def test_a_time_outside_the_window_is_refused_with_the_window(start_prism: Any) -> None:
    prism = await start_prism(snapshot_every=3600.0)
    first = await first_snapshot(prism)
    async with api(prism) as client:
        listed = (await client.get("/api/v1/branches/main/snapshots")).json()
        assert [s["name"] for s in listed["snapshots"]] == [first.name]
        assert listed["window"]["start"] == precise_time(first.taken_at)
        for at in (first.taken_at - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)):
            reply = await client.post(
                "/api/v1/branches", json={"name": "too-far", "at": precise_time(at)}
            )
            assert reply.status_code == 422, reply.text
            body = reply.json()
            assert body["code"] == "outside_window"
            assert precise_time(first.taken_at) in body["message"]
            assert precise_time(at) in body["message"]
        reply = await client.post("/api/v1/branches", json={"name": "bad", "at": "yesterday"})
        assert reply.status_code == 422 and "RFC 3339" in reply.json()["message"]
    assert prism.manager.get("too-far") is None
    assert not prism.manager.storage.exists("too-far")


async def test_relative_time_and_the_snapshot_cli(start_prism: Any) -> None:
    prism = await start_prism(snapshot_every=3600.0)
    first = await first_snapshot(prism)
    await trio.to_thread.run_sync(stamp_rows, prism.dsn())
    cli = [sys.executable, "-m", "prism.cli.main"]
    where = ["--api", prism.info.api_url]
    await trio.run_process([*cli, "branch", "create", "just-now", "--at", "-0s", *where])
    assert await stamped_rows(prism, "just-now") == list(range(ROWS))
    listed = await trio.run_process([*cli, "snapshot", "ls", *where], capture_stdout=True)
    assert first.name in listed.stdout.decode()
    refused = await trio.run_process(
        [*cli, "branch", "create", "long-ago", "--at", "-30d", *where],
        capture_stderr=True,
        check=False,
    )
    assert refused.returncode != 0
    assert "outside the point-in-time window of main" in refused.stderr.decode()


@contextlib.asynccontextmanager
async def _serving(settings: Settings) -> AsyncIterator[PrismHandle]:
    """A Prism that stops (cleanly) at the end of the block, so the next one reconciles."""
    async with trio.open_nursery() as nursery:
        info = await nursery.start(PrismServer(settings).run)
        yield PrismHandle(info, settings)
        nursery.cancel_scope.cancel()


async def test_snapshots_are_pruned_with_the_wal_only_they_needed(data_dir: Path) -> None:
    settings = make_settings(data_dir, snapshot_every=1.0, retention=Retention(1.0))
    switch = "SELECT pg_switch_wal() FROM pg_create_restore_point('x')"
    async with _serving(settings) as prism:
        kept, storage = prism.manager.point_in_time, prism.manager.storage
        async with prism.manager.events.subscribe() as events:
            with trio.fail_after(120):
                # Main finishes a segment between snapshots: WAL to archive, then to prune.
                for _ in range(4):
                    await psql(prism.dsn(), switch)
                    await wait_for(events, type="snapshot_taken")
                snapshots = kept.snapshots()
    # Retention 1 s: the newest, and at most the one before it that covers the cutoff.
    assert 1 <= len(snapshots) <= 2
    # Checked once Prism has stopped: a snapshot being taken is not on disk half-made.
    assert {name for name in storage.list() if name.startswith("snap:")} == {
        snapshot.name for snapshot in kept.snapshots()
    }
    oldest_needed = snapshots[0].redo_wal[8:]
    archived = kept.archive_of("main").segments()
    assert archived, "main archived no WAL"
    assert all(name[8:24] >= oldest_needed for name in archived)


async def test_a_snapshot_half_made_by_a_crash_is_removed_at_start(data_dir: Path) -> None:
    settings = make_settings(data_dir, snapshot_every=3600.0)
    async with _serving(settings) as prism:
        storage, kept = prism.manager.storage, prism.manager.point_in_time
        async with prism.manager.events.subscribe() as events:
            if not kept.snapshots():
                with trio.fail_after(120):
                    await wait_for(events, type="snapshot_taken")
        whole = kept.snapshots()[0]
    # What a crash leaves: a clone whose record was never written (its intent marker only, as
    # an older Prism wrote it: converted into a journal row at start), and a record whose
    # clone is gone.
    half = snapshot_name("main", datetime(2026, 1, 1, tzinfo=UTC))
    await storage.clone(whole.name, half)
    (data_dir / "snapshots" / f"{half}.taking").write_text("")
    gone = Snapshot(snapshot_name("main", datetime(2026, 1, 2, tzinfo=UTC)), "main", utcnow(), "")
    kept.store.commit(gone)
    async with _serving(settings) as prism:
        assert [s.name for s in prism.manager.point_in_time.snapshots()] == [whole.name]
        assert not prism.manager.storage.exists(half)
        assert [b.name for b in prism.manager.list()] == ["main"]


@contextlib.asynccontextmanager
async def _serve_to_crash(
    data_dir: Path, point: str, *flags: str, branch: str = "main"
) -> AsyncIterator[tuple[httpx.AsyncClient, str, list[dict[str, Any]]]]:
    """``prism serve`` set to SIGKILL its own process group at ``point``, once ``branch``
    has a snapshot: yields an HTTP client, the API's URL and that branch's snapshots; the
    block must bring Prism to ``point``."""
    pg_port, api_port = free_port(), free_port()
    command = [*serve_args(data_dir, pg_port, api_port), "--snapshot-every", "1h", *flags]
    env = {**os.environ, "PRISM_TEST_CRASH_AT": point}
    log_path = data_dir.parent / f"{data_dir.name}.log"
    with log_path.open("ab") as log:
        process = await trio.lowlevel.open_process(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{api_port}/api/v1"
    async with httpx.AsyncClient(timeout=120) as http:

        async def snapshotted() -> list[dict[str, Any]] | None:
            assert process.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.TransportError):
                if branch != "main":
                    await http.post(f"{url}/branches", json={"name": branch})
                listed = (await http.get(f"{url}/branches/{branch}/snapshots")).json()
                return listed.get("snapshots") or None
            return None

        yield (
            http,
            url,
            await wait_until(snapshotted, what=f"{branch}'s first snapshot", within=120),
        )
    with trio.fail_after(60):
        assert await process.wait() == -signal.SIGKILL


@pytest.mark.parametrize("point", [*POINTS["pitr"], "create:cloned", "create:server-up"])
async def test_a_branch_at_a_time_half_made_by_a_crash_is_undone(
    point: str, data_dir: Path
) -> None:
    """``prism serve`` SIGKILLs its own process group at ``point`` of a create with ``at``;
    the next start removes the half-made branch and keeps the snapshots."""
    async with _serve_to_crash(data_dir, point) as (http, url, snapshots):
        with contextlib.suppress(httpx.TransportError):
            await http.post(f"{url}/branches", json={"name": "half", "at": "-0s"})
    # The next start undoes the create (a server it left running is stopped first).
    async with _serving(make_settings(data_dir, snapshot_every=3600.0)) as prism:
        assert prism.manager.get("half") is None
        assert not prism.manager.storage.exists("half")
        assert [s["name"] for s in snapshots] == [
            s.name for s in prism.manager.point_in_time.snapshots()
        ]
        await branch_at(prism, "whole", "-0s")


@pytest.mark.parametrize("point", POINTS["snapshot"])
async def test_a_snapshot_cut_short_by_a_crash_is_removed_or_kept_whole(
    point: str, data_dir: Path
) -> None:
    """``prism serve`` SIGKILLs its own process group at ``point`` of main's first snapshot;
    the next start removes a clone whose record was never written, or keeps the snapshot
    whose record was: every snapshot in the storage is offered, every one offered is there,
    and the journal is empty."""
    pg_port, api_port = free_port(), free_port()
    command = [*serve_args(data_dir, pg_port, api_port), "--snapshot-every", "1h"]
    env = {**os.environ, "PRISM_TEST_CRASH_AT": point}
    with (data_dir.parent / f"{data_dir.name}.log").open("ab") as log:
        process = await trio.lowlevel.open_process(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    with trio.fail_after(120):
        assert await process.wait() == -signal.SIGKILL, f"prism did not die at {point}"
    restarted = utcnow()
    async with _serving(make_settings(data_dir, snapshot_every=3600.0)) as prism:
        snapshot = await first_snapshot(prism)
        kept, storage = prism.manager.point_in_time, prism.manager.storage
        offered = sorted(s.name for s in kept.snapshots())
        assert sorted(n for n in storage.list() if n.startswith("snap:")) == offered
        assert (snapshot.taken_at < restarted) is (point == "snapshot:committed")
        assert await prism.manager.journal.entries() == []
        await branch_at(prism, "whole", "-0s")


async def test_a_delete_cut_short_by_a_crash_still_removes_the_window(data_dir: Path) -> None:
    """Killed after ``dev``'s data went to the trash and before its window was dropped: the
    next start frees ``dev``'s snapshots and archive (an undeleted branch's history starts
    again)."""
    pattern = "main|dev"
    flags = ("--point-in-time-branches", pattern)
    async with _serve_to_crash(data_dir, "delete:trashed", *flags, branch="dev") as (
        http,
        url,
        snapshots,
    ):
        with contextlib.suppress(httpx.TransportError):
            await http.delete(f"{url}/branches/dev")
    archives = data_dir / "wal-archive"
    assert (archives / "dev").is_dir()
    settings = make_settings(
        data_dir, snapshot_every=3600.0, point_in_time_branches=BranchPattern.parse(pattern)
    )
    async with _serving(settings) as prism:
        assert prism.manager.get("dev") is None

        def freed() -> bool:
            # Polling: the timer's first round frees it, and sends no event for that.
            snapshot = prism.manager.storage.exists(snapshots[0]["name"])
            return not snapshot and [p.name for p in archives.iterdir()] == ["main"]

        await wait_until(freed, what="dev's archive and snapshots removed", within=60)
        assert {s.branch for s in prism.manager.point_in_time.store.list()} == {"main"}


async def test_a_branch_at_a_time_says_its_time_everywhere_and_keeps_it_across_a_restart(
    data_dir: Path,
) -> None:
    settings = make_settings(data_dir, snapshot_every=3600.0)
    cli = [sys.executable, "-m", "prism.cli.main"]
    async with _serving(settings) as prism:
        await first_snapshot(prism)
        where = ["--api", prism.info.api_url]
        async with prism.manager.events.subscribe() as events:
            await trio.run_process([*cli, "branch", "create", "held", "--at", "-0s", *where])
            with trio.fail_after(30):
                created = (await wait_for(events, type="created", branch="held"))[-1]
        at = prism.manager.get("held").at
        assert at is not None and created["data_at"] == precise_time(at)
        shown = await trio.run_process(
            [*cli, "branch", "show", "held", *where], capture_stdout=True
        )
        assert f"  data as of   {precise_time(at)} (made with --at)" in shown.stdout.decode()
        listed = await trio.run_process(
            [*cli, "branch", "ls", "--json", *where], capture_stdout=True
        )
        assert {b["name"]: b["at"] for b in json.loads(listed.stdout)} == {
            "main": None,
            "held": precise_time(at),
        }
    async with _serving(settings) as prism:
        assert prism.manager.get("held").at == at
        await prism.manager.reset("held")  # a reset clones the parent's present
        assert prism.manager.get("held").at is None
