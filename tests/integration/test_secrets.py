"""Secrets: the source password off the command line, ``?password=true`` that logs in or says
why not, and the password files a killed Prism left swept at the next start."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from tests.crash_suite import serving, spawn
from tests.crash_suite import sql as crash_sql

from .api_helpers import api
from .harness import PASSWORD, PrismHandle, fresh_dir, log_of, psql, running_prism
from .production import REPLICATOR_PASSWORD, SUPERUSER_PASSWORD, Production

_ARGV_WARNING = "--source on the command line holds a password"


async def _connection(http: httpx.AsyncClient, branch: str) -> dict[str, Any]:
    """``branch``'s ``connection`` object, asked with its password."""
    response = await http.get(f"/api/v1/branches/{branch}", params={"password": "true"})
    response.raise_for_status()
    connection: dict[str, Any] = response.json()["connection"]
    return connection


def _select_one(uri: str) -> int:
    """Log in with ``uri`` through the front door and run a query (blocking)."""
    with psycopg.connect(uri, connect_timeout=10) as conn:
        row = conn.execute("SELECT 1").fetchone()
    assert row is not None
    return int(row[0])


async def _stop(process: trio.Process) -> None:
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(60):
        assert await process.wait() == 0


async def test_the_password_of_an_initdb_main_logs_in_and_a_changed_one_is_withheld(
    prism: PrismHandle,
) -> None:
    async with api(prism) as http:
        main = await _connection(http, "main")
        assert main["password"] == PASSWORD and "password_note" not in main
        assert await trio.to_thread.run_sync(_select_one, main["uri"]) == 1

        await prism.manager.create("rotated")
        await psql(prism.dsn("postgres@rotated"), "ALTER ROLE postgres PASSWORD 'rotated-pw'")
        rotated = await _connection(http, "rotated")
        assert rotated["password"] is None
        assert "ALTER ROLE" in rotated["password_note"]
        assert "rotated-pw" not in str(rotated) and PASSWORD not in rotated["uri"]
        # Main's is untouched by its branch's change, and still given.
        assert (await _connection(http, "main"))["password"] == PASSWORD


async def test_a_source_password_on_the_command_line_is_warned_of_and_never_logged(
    production: Production, empty_data_dir: Path
) -> None:
    args = ["--source", production.source(), "--log-level", "debug"]
    async with running_prism(empty_data_dir, args=args) as (process, _, api_port):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
            main = await _connection(http, "main")
        # Main follows the source: its roles are production's, so Prism has no password to give
        assert main["password"] is None
        assert "source" in main["password_note"]
        assert PASSWORD not in main["uri"]
        # ... and the production password the note points to logs in through the front door.
        uri = main["uri"].replace("%40main@", f"%40main:{SUPERUSER_PASSWORD}@")
        assert await trio.to_thread.run_sync(_select_one, uri) == 1
        await _stop(process)
    log = log_of(empty_data_dir).read_text()
    [warning] = [line for line in log.splitlines() if _ARGV_WARNING in line]
    assert "WARNING" in warning and "$PRISM_SOURCE" in warning
    assert REPLICATOR_PASSWORD not in log


async def test_a_source_in_the_environment_gives_no_warning(
    production: Production, empty_data_dir: Path
) -> None:
    env = {**os.environ, "PRISM_SOURCE": production.source()}
    async with running_prism(empty_data_dir, env=env) as (process, _, _):
        await _stop(process)
    log = log_of(empty_data_dir).read_text()
    assert "base backup" in log  # it did follow the source
    assert _ARGV_WARNING not in log and REPLICATOR_PASSWORD not in log


async def test_password_files_a_killed_prism_left_are_gone_after_start(data_dir: Path) -> None:
    run = data_dir / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    pwfile = run / "prism-initdb-k1ll3d.pw"
    pwfile.write_text(f"{PASSWORD}\n")
    workdir = run / ".initdb-k1ll3d"
    workdir.mkdir()
    (workdir / "pwfile").write_text(f"{PASSWORD}\n")
    async with running_prism(data_dir) as (process, _, _):
        assert not pwfile.exists() and not workdir.exists()
        await _stop(process)
    log = log_of(data_dir).read_text()
    assert f"secrets: removed {pwfile}" in log and f"secrets: removed {workdir}" in log


async def test_a_kill_during_initdb_leaves_the_password_file_only_until_the_next_start() -> None:
    data_dir = fresh_dir("initdb-") / "data"
    killed = await spawn(data_dir, "copy", crash_at="initdb:password-written")
    with trio.fail_after(120):
        assert await killed.process.wait() == -signal.SIGKILL
    [left] = [p for p in (data_dir / "run").iterdir() if p.name.startswith("prism-initdb-")]
    assert left.read_text() == f"{PASSWORD}\n"
    assert stat.S_IMODE(left.stat().st_mode) == 0o600
    async with serving(data_dir, "copy") as prism:
        assert not left.exists()
        assert await crash_sql(prism.dsn("postgres"), "SELECT 1") == "1"  # initdb done over
    assert f"secrets: removed {left}" in log_of(data_dir).read_text()


@pytest.fixture(autouse=True)
def _no_inherited_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``PRISM_SOURCE`` of the caller's shell would change what these tests start."""
    monkeypatch.delenv("PRISM_SOURCE", raising=False)
