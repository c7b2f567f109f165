"""`prism serve --source` killed (``kill -9``) mid-base-backup and mid-stream: the next start
throws a half backup away and takes it again (no half main is ever served, the killed Prism's
``pg_basebackup`` is killed), and a main killed while streaming resumes and catches up."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pg8000.native
import pytest
import trio

from prism.core.crashpoints import POINTS
from prism.runtime._postmaster import postmasters_under, processes_under
from tests.crash_suite import _wait_reaped, kill_servers_under

from .harness import free_port, log_of, psql, running_prism, serve_args
from .production import SUPERUSER_PASSWORD, Production, write_continuously

TIMEOUT_S = 60


def _dsn(production: Production, pg_port: int, user: str = "postgres") -> str:
    return production.dsn(user).replace(f"port={production.port}", f"port={pg_port}")


async def _count(dsn: str) -> int:
    return int((await psql(dsn, "SELECT count(*) FROM events")).stdout.decode())


def _backups(data_dir: Path) -> dict[int, tuple[int, Path]]:
    return processes_under(data_dir, ("pg_basebackup",))


def _journal_kinds(data_dir: Path) -> list[str]:
    """The kinds of the intents in the journal of the Prism on ``data_dir`` (read-only)."""
    db = sqlite3.connect(f"file:{data_dir / 'prism.db'}?mode=ro", uri=True)
    try:
        return [str(kind) for (kind,) in db.execute("SELECT kind FROM journal ORDER BY id")]
    finally:
        db.close()


def _refused_sqlstate(pg_port: int) -> str:
    """What a client of main gets now: the SQLSTATE of its refusal, or "" if it got in."""
    try:
        pg8000.native.Connection(
            "postgres", password=SUPERUSER_PASSWORD, host="127.0.0.1", port=pg_port
        ).close()
    except pg8000.native.DatabaseError as exc:
        return str(exc.args[0]["C"])
    return ""


async def test_prism_killed_mid_backup_takes_it_again_and_never_serves_a_half_main(
    production: Production, empty_data_dir: Path
) -> None:
    rate = await production.max_rate_for(10)
    throttle = ["--source", production.source(), "--source-max-rate", f"{rate}k"]
    pg_port, api_port = free_port(), free_port()
    with log_of(empty_data_dir).open("wb") as log:
        process = await trio.lowlevel.open_process(
            [*serve_args(empty_data_dir, pg_port, api_port), *throttle],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
            with trio.fail_after(TIMEOUT_S):
                percent = 0
                while percent < 10:
                    await trio.sleep(0.1)
                    try:
                        source = (await http.get("/api/v1/branches/main")).json()["source"]
                    except httpx.TransportError:
                        continue
                    percent = (source["backup"] or {}).get("percent", 0)
        assert await trio.to_thread.run_sync(_refused_sqlstate, pg_port) == "57P03"
    finally:
        process.kill()
        await process.wait()
    # What kill -9 leaves: a pg_basebackup still writing into main, and the intent.
    assert _backups(empty_data_dir), "the killed Prism's pg_basebackup should outlive it"
    assert "basebackup" in _journal_kinds(empty_data_dir)

    # The next start kills it, throws the half main away and takes the backup again, whole.
    async with running_prism(empty_data_dir, args=["--source", production.source()]) as (
        _,
        pg_port,
        api_port,
    ):
        assert await _count(_dsn(production, pg_port)) == 1000
        assert not _backups(empty_data_dir)
        assert "basebackup" not in _journal_kinds(empty_data_dir)
        await _streaming(api_port)
    log_text = log_of(empty_data_dir).read_text()
    assert "killing pg_basebackup" in log_text
    assert "removing main left half-made by an interrupted base backup" in log_text


@pytest.mark.parametrize("point", POINTS["basebackup"])
async def test_a_base_backup_killed_at_each_step_is_taken_again_whole(
    production: Production, empty_data_dir: Path, point: str
) -> None:
    """``kill -9`` of Prism's process group at each named step of the base backup into main:
    the next start throws away whatever main was (half a backup, a backup not yet made a
    standby) and takes it again; main then holds every row and streams."""
    source = ["--source", production.source()]
    pg_port, api_port = free_port(), free_port()
    env = {**os.environ, "PRISM_TEST_CRASH_AT": point}
    with log_of(empty_data_dir).open("wb") as log:
        process = await trio.lowlevel.open_process(
            [*serve_args(empty_data_dir, pg_port, api_port), *source],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    with trio.fail_after(TIMEOUT_S):
        assert await process.wait() == -signal.SIGKILL, f"prism did not die at {point}"
    assert _journal_kinds(empty_data_dir) == ["initdb", "basebackup"]
    async with running_prism(empty_data_dir, args=source) as (_, pg_port, api_port):
        assert await _count(_dsn(production, pg_port)) == 1000
        assert _journal_kinds(empty_data_dir) == []
        await _streaming(api_port)
    assert "removing main left half-made by an interrupted base backup" in (
        log_of(empty_data_dir).read_text()
    )


@pytest.mark.parametrize("servers_too", [False, True], ids=["prism", "prism-and-main"])
async def test_prism_killed_mid_stream_resumes_and_a_branch_holds_every_row_before_it(
    production: Production, empty_data_dir: Path, servers_too: bool
) -> None:
    source = ["--source", production.source()]
    async with trio.open_nursery() as writers:
        await writers.start(write_continuously, production)
        async with running_prism(empty_data_dir, args=source) as (process, pg_port, _):
            await _caught_up(production, pg_port)
            process.kill()
            await process.wait()
        # Main's server outlives the killed Prism (and streams on, on its own), unless it is
        # killed as well, as systemd kills a unit's every process.
        [server] = postmasters_under(empty_data_dir)
        if servers_too:
            killed = kill_servers_under(empty_data_dir, "process")
            await trio.to_thread.run_sync(_wait_reaped, killed)
        async with running_prism(empty_data_dir, args=source) as (process, pg_port, api_port):
            # The killed Prism's main is adopted, or restarted: one server either way.
            [again] = postmasters_under(empty_data_dir)
            assert (again == server) is not servers_too
            await _streaming(api_port)
            await _caught_up(production, pg_port)
            # A branch cut while the source writes holds every row committed before the cut.
            committed = int(await production.sql("SELECT max(id) FROM events"))
            await _caught_up(production, pg_port, committed)
            branch = _dsn(production, pg_port, "postgres@after-kill")
            rows = await psql(branch, "SELECT count(*), max(id) FROM events")
            count, top = rows.stdout.decode().strip().split("|")
            assert int(top) >= committed
            assert count == top  # a consistent prefix: no row missing below the newest
            writers.cancel_scope.cancel()


async def _streaming(api_port: int) -> None:
    """Wait until the API says main streams from the source."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
        with trio.fail_after(TIMEOUT_S):
            while True:
                main = (await http.get("/api/v1/branches/main")).json()
                if main["source"]["state"] == "streaming":
                    return
                await trio.sleep(0.2)


async def _caught_up(production: Production, pg_port: int, target: int | None = None) -> None:
    """Wait until main holds every row of the source up to ``target`` (default: now)."""
    if target is None:
        target = int(await production.sql("SELECT max(id) FROM events"))
    query = "SELECT coalesce(max(id), 0) FROM events"
    with trio.fail_after(TIMEOUT_S):
        while int((await psql(_dsn(production, pg_port), query)).stdout.decode()) < target:  # noqa: ASYNC110
            await trio.sleep(0.05)
