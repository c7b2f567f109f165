"""--source-mode dump: main is a generation of pg_dump | pg_restore of a source that forbids
replication (a managed database); a refresh makes the next generation, and branches keep the
generation they were cloned from."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from prism.core.crashpoints import POINTS
from prism.core.errors import find_prism_error

from .api_helpers import api, error_of_next_query, open_session, wait_for
from .harness import PASSWORD, PrismHandle, free_port, fresh_dir, psql, serve_args
from .production import APP, APP_DB, Production, production_server

ROWS = 1000  # what production_server puts in appdb's events


@pytest.fixture
async def managed() -> AsyncIterator[Production]:
    async with production_server(replication=False) as server:
        yield server


@pytest.fixture
def empty_data_dir() -> Any:
    path = fresh_dir("dump-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _count(prism: PrismHandle, branch: str | None = None) -> int:
    user = "postgres" if branch is None else f"postgres@{branch}"
    result = await psql(prism.dsn(user, dbname=APP_DB), "SELECT count(*) FROM events")
    return int(result.stdout.decode())


async def _prism_cli(*args: str) -> str:
    result = await trio.run_process(
        [sys.executable, "-m", "prism.cli.main", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PRISM_")},
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def test_main_is_a_dump_and_a_refresh_makes_a_new_generation_branches_keep_theirs(
    managed: Production, empty_data_dir: Path, start_prism: Callable[..., Any]
) -> None:
    prism = await start_prism(
        data_dir=empty_data_dir, source=managed.app_source(), source_mode="dump"
    )
    # Generation 1 holds the source's rows; main is an ordinary writable primary.
    assert await _count(prism) == ROWS
    recovery = await psql(prism.dsn(dbname=APP_DB), "SELECT pg_is_in_recovery()")
    assert recovery.stdout.decode().strip() == "f"
    # The source's role came along (without its password: app may not read pg_authid) and
    # still owns its table.
    owner = await psql(
        prism.dsn(dbname=APP_DB), "SELECT tableowner FROM pg_tables WHERE tablename = 'events'"
    )
    assert owner.stdout.decode().strip() == APP

    await prism.manager.create("b1")
    await psql(prism.dsn("postgres@b1", dbname=APP_DB), "INSERT INTO events (origin) VALUES ('b1')")
    await managed.app_sql("INSERT INTO events SELECT FROM generate_series(1, 500)")

    session = await trio.to_thread.run_sync(open_session, prism.dsn(dbname=APP_DB))
    async with api(prism) as client, prism.manager.events.subscribe() as events:
        main = (await client.get("/api/v1/branches/main")).json()
        assert main["generation"] == 1
        answer = await client.post("/api/v1/branches/main/refresh")
        assert answer.status_code == 200, answer.text
        # A session open on main was ended at the swap, saying why.
        message = await trio.to_thread.run_sync(error_of_next_query, session)
        assert "main is being replaced by generation 2 of the source" in message
        assert answer.json()["generation"] == 2
        assert answer.json()["generation_taken_at"] >= main["generation_taken_at"]
        with trio.fail_after(30):
            seen = await wait_for(events, type="refresh_done", generation=2)
        types = [event["type"] for event in seen]
        assert types.index("refresh_started") < types.index("refresh_progress")
        progress = [event for event in seen if event["type"] == "refresh_progress"]
        assert {"phase": "roles", "passwords": False}.items() <= progress[0].items()
        assert any(event.get("phase") == "data" and event["done_bytes"] > 0 for event in progress)

        # Main is generation 2; b1 still holds generation 1's rows and its own, and works.
        assert await _count(prism) == ROWS + 500
        assert await _count(prism, "b1") == ROWS + 1
        await psql(prism.dsn("postgres@b1", dbname=APP_DB), "INSERT INTO events DEFAULT VALUES")
        # A new branch is cloned from generation 2.
        await prism.manager.create("b2")
        assert await _count(prism, "b2") == ROWS + 500

        shown = {
            b["name"]: b["generation"]
            for b in (await client.get("/api/v1/branches")).json()["branches"]
        }
        assert shown == {"main": 2, "b1": 1, "b2": 2}
        # A branch of a branch holds its parent's generation.
        await prism.manager.create("b1-child", parent="b1")
        child = (await client.get("/api/v1/branches/b1-child")).json()
        assert child["generation"] == 1

    url = ("--api", prism.info.api_url)
    table = (await _prism_cli("branch", "ls", *url)).splitlines()
    assert "GEN" in table[0].split()
    listed = json.loads(await _prism_cli("branch", "ls", "--json", *url))
    assert {b["name"]: str(b["generation"]) for b in listed} == {
        "b1": "1",
        "b1-child": "1",
        "b2": "2",
        "main": "2",
    }
    assert "generation 1 of " in await _prism_cli("branch", "show", "b1", *url)
    refreshed = await _prism_cli("main", "refresh", *url)
    assert refreshed.startswith("main: running (no parent, generation 3 of ")
    assert await _count(prism, "b1") == ROWS + 2


async def test_refresh_every_makes_new_generations_on_its_own(
    managed: Production, empty_data_dir: Path, start_prism: Callable[..., Any]
) -> None:
    prism = await start_prism(
        data_dir=empty_data_dir, source=managed.app_source(), source_mode="dump", refresh_every=1.0
    )
    async with prism.manager.events.subscribe() as events:
        await managed.app_sql("INSERT INTO events SELECT FROM generate_series(1, 500)")
        # The generation after the next one surely began after the insert.
        after = prism.manager.require("main").generation.number + 2
        with trio.fail_after(120):
            await wait_for(events, type="refresh_done", generation=after)
    branch = await prism.manager.create("fresh")
    assert branch.generation.number >= after
    assert await _count(prism, "fresh") == ROWS + 500


async def test_a_refresh_the_source_refuses_leaves_the_generation_serving(
    managed: Production, empty_data_dir: Path, start_prism: Callable[..., Any]
) -> None:
    prism = await start_prism(
        data_dir=empty_data_dir, source=managed.app_source(), source_mode="dump"
    )
    await managed.sql(f"ALTER ROLE {APP} PASSWORD 'changed'")
    async with api(prism) as client:
        answer = await client.post("/api/v1/branches/main/refresh")
        assert answer.status_code == 502, answer.text
        assert answer.json()["message"] == f"the source refused the password of role {APP}"
        assert "--source-password-file" in answer.json()["hint"]
        main = (await client.get("/api/v1/branches/main")).json()
    assert main["generation"] == 1
    assert main["status"] == "running"
    assert await _count(prism) == ROWS
    own = (".trash", ".deleted")  # the storage's own, made when it opens
    assert [p.name for p in (empty_data_dir / "branches").iterdir() if p.name not in own] == []


async def test_a_table_the_role_may_not_read_fails_the_refresh_with_the_grant_to_give(
    managed: Production, empty_data_dir: Path, start_prism: Callable[..., Any]
) -> None:
    prism = await start_prism(
        data_dir=empty_data_dir, source=managed.app_source(), source_mode="dump"
    )
    await psql(managed.dsn(dbname=APP_DB), "CREATE TABLE secret (x int)")  # the superuser's
    async with api(prism) as client:
        answer = await client.post("/api/v1/branches/main/refresh")
    assert answer.status_code == 502, answer.text
    assert (
        answer.json()["message"] == f"role {APP} may not read everything in the source's database"
    )
    assert f"GRANT pg_read_all_data TO {APP}" in answer.json()["hint"]
    assert await _count(prism) == ROWS


@pytest.mark.parametrize(
    ("password", "dbname", "message"),
    [
        ("wrong", APP_DB, f"the source refused the password of role {APP}"),
        (None, APP_DB, f"the source asks role {APP} for a password and Prism has none"),
        ("app-secret", "nodb", "has no database of the name --source gives"),
    ],
)
async def test_a_source_that_refuses_the_first_dump_gets_one_clear_error(
    managed: Production,
    empty_data_dir: Path,
    start_prism: Callable[..., Any],
    password: str | None,
    dbname: str,
    message: str,
) -> None:
    source = f"host=127.0.0.1 port={managed.port} user={APP} dbname={dbname}"
    if password is not None:
        source += f" password={password}"
    with pytest.raises(BaseException) as caught:
        await start_prism(data_dir=empty_data_dir, source=source, source_mode="dump")
    error = find_prism_error(caught.value)
    assert error is not None, caught.value
    assert message in error.message + (error.detail or "")
    # Nothing half-made is left as main.
    assert not (empty_data_dir / "master").exists()


async def test_refresh_without_dump_mode_is_refused_with_what_to_change(
    prism: PrismHandle,
) -> None:
    async with api(prism) as client:
        answer = await client.post("/api/v1/branches/main/refresh")
    assert answer.status_code == 409
    assert answer.json()["code"] == "not_dump_mode"
    assert "--source-mode dump" in answer.json()["message"]
    cli = await trio.run_process(
        [sys.executable, "-m", "prism.cli.main", "main", "refresh", "--api", prism.info.api_url],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert cli.returncode == 4  # a conflict with how Prism runs (docs/cli.md)
    assert cli.stderr.decode().startswith("prism: error: refreshing main needs --source-mode dump")


async def test_dump_mode_without_a_source_is_refused_before_anything_is_made(
    empty_data_dir: Path, start_prism: Callable[..., Any]
) -> None:
    with pytest.raises(BaseException) as caught:
        await start_prism(data_dir=empty_data_dir, source_mode="dump")
    error = find_prism_error(caught.value)
    assert error is not None, caught.value
    assert error.message == "--source-mode dump needs a source to dump"
    assert not (empty_data_dir / "master").exists()


# ---- a Prism killed mid-refresh --------------------------------------------------------------


async def _serve(
    data_dir: Path, source: str, storage: Sequence[str], crash_at: str | None = None
) -> tuple[trio.Process, int, int]:
    """``prism serve`` in dump mode in its own process group; ready unless it is to crash."""
    pg_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISM_")}
    env |= {"PRISM_SOURCE": source, "PRISM_SOURCE_MODE": "dump"}
    if crash_at is not None:
        env["PRISM_TEST_CRASH_AT"] = crash_at
    with (data_dir.parent / f"{data_dir.name}.log").open("ab") as log:
        process = await trio.lowlevel.open_process(
            [*serve_args(data_dir, pg_port, api_port, storage=None), *storage],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    async with httpx.AsyncClient() as http:
        with trio.fail_after(120):
            while True:
                assert process.poll() is None, f"prism serve exited early; see {data_dir}.log"
                try:
                    if (await http.get(f"http://127.0.0.1:{api_port}/healthz")).is_success:
                        return process, pg_port, api_port
                except httpx.TransportError:
                    await trio.sleep(0.05)


async def stop_serve(process: trio.Process) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        with trio.move_on_after(60):
            await process.wait()
    if process.poll() is None:
        process.kill()
        await process.wait()


def _dsn(pg_port: int, user: str = "postgres") -> str:
    return (
        f"host=127.0.0.1 port={pg_port} user={user} password={PASSWORD} dbname={APP_DB} "
        "sslmode=disable"
    )


#: The generation main holds after a kill at a refresh's step and a restart: 2 once main was
#: gone and the whole new generation stood (the swap is finished), 1 before.
_GENERATION_AFTER = {"refresh:retired": 2, "refresh:swapped": 2}
#: Each step a refresh passes (the registry's), and the generation main holds after a kill there.
REFRESH_KILLS = [(point, _GENERATION_AFTER.get(point, 1)) for point in POINTS["refresh"]]


async def kill_a_refresh(
    managed: Production, data_dir: Path, point: str, storage: Sequence[str]
) -> tuple[trio.Process, int, int]:
    """Main of generation 1 with a branch ``kept`` (a row of its own), 500 more rows on the
    source, a refresh killed at ``point``: returns the Prism started again afterwards."""
    await crash_a_refresh(managed, data_dir, point, storage)
    return await _serve(data_dir, managed.app_source(), storage)


async def crash_a_refresh(
    managed: Production, data_dir: Path, point: str, storage: Sequence[str]
) -> None:
    """``kill_a_refresh`` without the start afterwards: Prism lies dead where it was killed."""
    source = managed.app_source()
    process, pg_port, api_port = await _serve(data_dir, source, storage)
    try:
        await psql(_dsn(pg_port, "postgres@kept"), "INSERT INTO events (origin) VALUES ('kept')")
    finally:
        await stop_serve(process)
    await managed.app_sql("INSERT INTO events SELECT FROM generate_series(1, 500)")

    process, pg_port, api_port = await _serve(data_dir, source, storage, crash_at=point)
    async with httpx.AsyncClient(timeout=120) as http:
        with contextlib.suppress(httpx.TransportError):  # killed mid-answer, as meant
            await http.post(f"http://127.0.0.1:{api_port}/api/v1/branches/main/refresh")
    with trio.fail_after(60):
        assert await process.wait() == -signal.SIGKILL


async def assert_one_whole_generation(pg_port: int, api_port: int, generation: int) -> None:
    """Main serves ``generation`` whole, and ``kept`` its generation-1 rows and its own."""
    async with httpx.AsyncClient(timeout=120) as http:
        listed = (await http.get(f"http://127.0.0.1:{api_port}/api/v1/branches")).json()
    shown = {b["name"]: b["generation"] for b in listed["branches"]}
    assert shown == {"main": generation, "kept": 1}
    rows = await psql(_dsn(pg_port), "SELECT count(*) FROM events")
    assert int(rows.stdout.decode()) == ROWS + (500 if generation == 2 else 0)
    kept = await psql(_dsn(pg_port, "postgres@kept"), "SELECT count(*) FROM events")
    assert int(kept.stdout.decode()) == ROWS + 1


@pytest.mark.parametrize(("point", "generation"), REFRESH_KILLS)
async def test_a_refresh_killed_at_any_step_leaves_one_whole_generation_and_no_leftovers(
    managed: Production, empty_data_dir: Path, point: str, generation: int
) -> None:
    data_dir = empty_data_dir / "data"
    process, pg_port, api_port = await kill_a_refresh(
        managed, data_dir, point, ["--storage", "copy"]
    )
    try:
        await assert_one_whole_generation(pg_port, api_port, generation)
        leftovers = sorted(p.name for p in (data_dir / "branches").iterdir())
        assert leftovers == [".deleted", ".trash", "kept"]
        assert list((data_dir / "branches" / ".trash").iterdir()) == []
    finally:
        await stop_serve(process)


def _tree(data_dir: Path) -> list[str]:
    """Every path under ``data_dir``'s branches and main, two levels deep (what a sweep or an
    initdb would change)."""
    found = []
    for top in (data_dir / "branches", data_dir / "master"):
        if top.exists():
            found.append(str(top.relative_to(data_dir)))
            found += sorted(str(p.relative_to(data_dir)) for p in top.glob("*/*"))
    return found


async def test_a_refresh_cut_short_stops_a_start_without_dump_mode_and_keeps_everything(
    managed: Production, empty_data_dir: Path
) -> None:
    """The review's data loss: a crash between ``refresh:retired`` and the rename, then a
    start without ``--source-mode dump``. Start-up refuses, naming the intent and what to do;
    main's old data stays in the trash and the new generation stays staged (no sweep, no
    initdb); started in dump mode again, Prism finishes the swap."""
    data_dir = empty_data_dir / "data"
    storage = ["--storage", "copy"]
    await crash_a_refresh(managed, data_dir, "refresh:retired", storage)
    before = _tree(data_dir)
    assert any(path.startswith("branches/.trash/") for path in before), before
    assert not (data_dir / "master").exists()  # main is in the trash
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISM_")}
    env |= {"PRISM_SOURCE": managed.app_source()}  # the flag forgotten: follow mode
    result = await trio.run_process(
        [*serve_args(data_dir, free_port(), free_port(), storage=None), *storage],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "refresh of main" in stderr
    assert "--source-mode dump" in stderr
    assert "DELETE FROM journal WHERE id =" in stderr
    assert _tree(data_dir) == before
    process, pg_port, api_port = await _serve(data_dir, managed.app_source(), storage)
    try:
        await assert_one_whole_generation(pg_port, api_port, 2)
    finally:
        await stop_serve(process)
