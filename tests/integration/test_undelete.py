"""The undelete window end to end: real Postgres data and policies come back after a delete,
through the API and the CLI, after a restart, and after ``kill -9`` at every step of a delete."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import httpx
import pytest
import trio

from prism.core.crashpoints import POINTS
from tests.crash_suite import VICTIM_VALUE, crash_during, seed, serving, sql

HOOK = "CREATE TABLE from_hook AS SELECT 1 AS v"


async def _policy_and_delete(api: str) -> dict[str, object]:
    """Give ``victim`` a policy worth keeping; return it as the API shows it."""
    async with httpx.AsyncClient(timeout=120) as http:
        body = {"ttl": "72h", "on_create": HOOK}
        answer = await http.patch(f"{api}/api/v1/branches/victim", json=body)
        assert answer.is_success, answer.text
        return dict(answer.json())


def _policy(view: dict[str, object]) -> tuple[object, ...]:
    return (view["protected"], view["expires_at"], view["on_create"], view["parent"])


async def _undelete(api: str) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=120) as http:
        answer = await http.post(f"{api}/api/v1/branches/victim/undelete")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"undeleted": ["victim"]}
        return dict((await http.get(f"{api}/api/v1/branches/victim")).json())


async def test_undelete_round_trip_over_the_api_and_after_a_restart(data_dir: Path) -> None:
    async with serving(data_dir, "copy") as prism:
        await seed(prism)
        before = await _policy_and_delete(prism.api)
        async with httpx.AsyncClient(timeout=120) as http:
            deleted = await http.delete(f"{prism.api}/api/v1/branches/victim")
            assert deleted.json() == {"deleted": ["victim"]}
            missing = await http.get(f"{prism.api}/api/v1/branches/victim")
            assert missing.status_code == 404
            trash = (await http.get(f"{prism.api}/api/v1/trash")).json()
        assert trash["undelete_window"] == 3600
        [kept] = trash["trash"]
        assert (kept["name"], kept["parent"], kept["on_create"]) == ("victim", "main", True)
        assert kept["purge_at"] > kept["deleted_at"]
    async with serving(data_dir, "copy") as prism:
        after = await _undelete(prism.api)
        assert _policy(after) == _policy(before)
        assert await sql(prism.dsn("postgres@victim"), "SELECT v FROM t") == str(VICTIM_VALUE)
        async with httpx.AsyncClient(timeout=120) as http:
            again = await http.post(f"{prism.api}/api/v1/branches/victim/undelete")
            assert (again.status_code, again.json()["code"]) == (404, "branch_not_found")
            # Its hook is back too: a new child of it runs it.
            child = await http.post(
                f"{prism.api}/api/v1/branches", json={"name": "kid", "parent": "victim"}
            )
            assert child.status_code == 201, child.text
        assert await sql(prism.dsn("postgres@kid"), "SELECT v FROM from_hook") == "1"


async def test_undelete_is_refused_while_a_new_branch_has_the_name(data_dir: Path) -> None:
    async with serving(data_dir, "copy") as prism:
        await seed(prism)
        async with httpx.AsyncClient(timeout=120) as http:
            await http.delete(f"{prism.api}/api/v1/branches/victim")
        # The name is free for a new branch, created on connect.
        await sql(prism.dsn("postgres@victim"), "SELECT 1")
        async with httpx.AsyncClient(timeout=120) as http:
            refused = await http.post(f"{prism.api}/api/v1/branches/victim/undelete")
            assert (refused.status_code, refused.json()["code"]) == (409, "branch_exists")
            await http.delete(f"{prism.api}/api/v1/branches/victim")
        after = await _undelete(prism.api)
        assert after["name"] == "victim"
        # The first one deleted (with its row) is the one still kept.
        assert await sql(prism.dsn("postgres@victim"), "SELECT to_regclass('t') IS NULL") == "t"


async def _cli(api: str, *args: str) -> str:
    result = await trio.run_process(
        [sys.executable, "-m", "prism.cli.main", "branch", *args, "--api", api],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def test_the_cli_lists_the_trash_and_undeletes(data_dir: Path) -> None:
    async with serving(data_dir, "copy") as prism:
        await seed(prism)
        assert (await _cli(prism.api, "rm", "victim")).strip() == "deleted: victim"
        table = (await _cli(prism.api, "trash")).splitlines()
        assert table[0].split() == ["NAME", "PARENT", "DELETED", "AT", "PURGED", "AT"]
        assert table[1].split()[:2] == ["victim", "main"]
        assert json.loads(await _cli(prism.api, "trash", "--json"))["trash"][0]["name"] == "victim"
        assert (await _cli(prism.api, "undelete", "victim")).strip() == "undeleted: victim"
        assert await sql(prism.dsn("postgres@victim"), "SELECT v FROM t") == str(VICTIM_VALUE)
        assert "the trash is empty" in await _cli(prism.api, "trash")
        # --purge frees at once: nothing is kept to undelete.
        assert (await _cli(prism.api, "rm", "victim", "--purge")).strip() == "deleted: victim"
        assert "the trash is empty" in await _cli(prism.api, "trash")


@pytest.mark.parametrize("point", POINTS["delete"])
async def test_a_delete_killed_at_any_step_can_be_undone(point: str, data_dir: Path) -> None:
    """Prism is killed (``kill -9`` of its group) at each step of a delete; after the restart
    the branch is either still there or in the trash, and then comes back whole."""
    async with serving(data_dir, "copy") as prism:
        await seed(prism)
        before = await _policy_and_delete(prism.api)
    killed = await crash_during(
        data_dir, "copy", point, ("DELETE", "/api/v1/branches/victim", None)
    )
    assert killed == -signal.SIGKILL, f"prism did not die at {point}"
    async with serving(data_dir, "copy") as prism:
        async with httpx.AsyncClient(timeout=120) as http:
            listed = (await http.get(f"{prism.api}/api/v1/branches/victim")).status_code
            trash = (await http.get(f"{prism.api}/api/v1/trash")).json()["trash"]
        assert (listed == 200) != bool(trash), (listed, trash)
        after = await _undelete(prism.api) if trash else before
        assert _policy(after) == _policy(before)
        assert await sql(prism.dsn("postgres@victim"), "SELECT v FROM t") == str(VICTIM_VALUE)
