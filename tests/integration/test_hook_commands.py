"""``on_create`` commands: run once per new child before anyone gets in, only where allowed.

Real commands (a Python script, psql, sh) against real branch servers; a failing or hanging
command must fail the create with its own words and leave nothing behind.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import trio

from .api_helpers import api, wait_for
from .harness import PrismHandle, psql, refused_sqlstate

V1 = "/api/v1"

# Connects with DATABASE_URL, masks the customers, and records what it was given, so the test
# can see which branch it ran for, as whom, and how often.
_SCRIPT = """
import os, sys
import psycopg

with open(sys.argv[1], "a") as log:
    log.write(os.environ["PRISM_BRANCH"] + "\\n")
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("UPDATE customers SET email = 'customer' || id || '@example.invalid'")
    conn.execute(
        "CREATE TABLE hook_env AS SELECT %s::text AS branch, %s::text AS parent,"
        " %s::text AS pghost, current_user::text AS who, %s::text AS token",
        (
            os.environ["PRISM_BRANCH"],
            os.environ["PRISM_PARENT"],
            os.environ["PGHOST"],
            os.environ.get("PRISM_API_TOKEN", "none"),
        ),
    )
"""


async def _value(prism: PrismHandle, branch: str, sql: str) -> str:
    return (await psql(prism.dsn(f"postgres@{branch}"), sql)).stdout.decode().strip()


def _nothing_left_of(prism: PrismHandle, name: str) -> None:
    manager = prism.manager
    assert manager.get(name) is None
    assert name not in manager.storage.list()
    assert manager.runtime.address(name) is None
    assert manager.policies.get(name) == manager.policies.get("nobody")


def _is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_commands_are_refused_unless_the_operator_allowed_them(
    prism: PrismHandle,
) -> None:
    async with api(prism) as http:
        await http.post(f"{V1}/branches", json={"name": "tpl"})
        refused = await http.patch(
            f"{V1}/branches/tpl", json={"protected": True, "on_create_command": ["true"]}
        )
        after = (await http.get(f"{V1}/branches/tpl")).json()
    assert refused.status_code == 403
    assert refused.json()["code"] == "hook_commands_not_allowed"
    assert "--allow-hook-commands" in refused.json()["message"]
    # Refused as a whole: the protection asked for in the same PATCH was not applied either.
    assert (after["protected"], after["on_create_command"]) == (False, False)


async def test_command_runs_once_per_new_child_before_any_client_with_its_connection(
    start_prism: Any, tmp_path: Path
) -> None:
    prism: PrismHandle = await start_prism(allow_hook_commands=True, api_token="s3cret")
    await psql(
        prism.dsn(),
        "CREATE TABLE customers (id int PRIMARY KEY, email text);"
        "INSERT INTO customers VALUES (1, 'ada@real.example')",
    )
    script, ran = tmp_path / "mask.py", tmp_path / "ran.log"
    script.write_text(_SCRIPT)
    command = [sys.executable, str(script), str(ran)]
    async with api(prism, token="s3cret") as http:
        hooked = await http.patch(f"{V1}/branches/main", json={"on_create_command": command})
        assert (hooked.json()["on_create_command"], hooked.json()["on_create"]) == (True, False)
        assert prism.manager.policies.get("main").on_create_command == tuple(command)

        async with prism.manager.events.subscribe() as events:
            # Created on connect: the creating client's first query already sees the masking.
            assert await _value(prism, "dev", "SELECT email FROM customers") == (
                "customer1@example.invalid"
            )
            with trio.fail_after(10):
                seen = await wait_for(events, type="running", branch="dev")
        kinds = [e["type"] for e in seen if e["branch"] == "dev"]
        assert kinds.index("hook") < kinds.index("running")

        # Later sessions, a stop and a wake do not run it again; another child does.
        assert await _value(prism, "dev", "SELECT count(*) FROM customers") == "1"
        await http.post(f"{V1}/branches/dev/stop")
        await http.post(f"{V1}/branches/dev/start")
        await http.post(f"{V1}/branches", json={"name": "qa"})
    assert ran.read_text().splitlines() == ["dev", "qa"]
    env = await _value(prism, "qa", "SELECT branch, parent, pghost, who, token FROM hook_env")
    # The child's own server, as the superuser; Prism's settings (its API token) kept out.
    assert env == "qa|main|127.0.0.1|postgres|none"
    assert "ada@real.example" in await _value(prism, "main", "SELECT email FROM customers")


async def test_failing_command_fails_the_create_with_its_stderr_and_leaves_nothing(
    start_prism: Any,
) -> None:
    prism: PrismHandle = await start_prism(allow_hook_commands=True)
    failing = [
        "sh",
        "-c",
        'echo "masking customers"; echo "mask: column \\"phone\\" is gone" >&2; exit 3',
    ]
    async with api(prism) as http:
        await http.patch(f"{V1}/branches/main", json={"on_create_command": failing})
        response = await http.post(f"{V1}/branches", json={"name": "broken", "ttl": "1h"})
    assert (response.status_code, response.json()["code"]) == (500, "provision_failed")
    assert response.json()["message"] == (
        'could not create branch "broken": the on_create command exited with status 3: '
        'mask: column "phone" is gone'
    )
    _nothing_left_of(prism, "broken")

    # A client whose connection would create the branch gets the same words, not a hang.
    refused = await psql(prism.dsn("postgres@nope"), "SELECT 1", check=False)
    assert refused.returncode != 0
    assert 'mask: column "phone" is gone' in refused.stderr.decode()
    assert await refused_sqlstate(prism, "nope2") == "58000"
    _nothing_left_of(prism, "nope")
    _nothing_left_of(prism, "nope2")
    assert sorted(prism.manager.storage.list()) == ["main"]


async def test_hanging_command_is_killed_with_its_children_at_the_timeout(
    start_prism: Any, tmp_path: Path
) -> None:
    prism: PrismHandle = await start_prism(allow_hook_commands=True, hook_command_timeout=1.0)
    pids = tmp_path / "pids"
    # A shell that starts a child and waits: both must go, or the child would hold the pipes.
    hanging = ["sh", "-c", f'sleep 600 & echo "$$ $!" > {pids}; wait']
    async with api(prism) as http:
        await http.patch(f"{V1}/branches/main", json={"on_create_command": hanging})
        response = await http.post(f"{V1}/branches", json={"name": "slow"})
    assert response.status_code == 500
    assert (
        "the on_create command did not finish within 1s and was killed"
        in (response.json()["message"])
    )
    _nothing_left_of(prism, "slow")
    assert not any(_is_running(int(pid)) for pid in pids.read_text().split())


async def test_command_missing_program_is_a_clear_error(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(allow_hook_commands=True)
    async with api(prism) as http:
        await http.patch(
            f"{V1}/branches/main", json={"on_create_command": ["/nonexistent/mask-tool"]}
        )
        response = await http.post(f"{V1}/branches", json={"name": "lost"})
    assert response.status_code == 500
    assert (
        "the on_create command '/nonexistent/mask-tool' could not be started: "
        "No such file or directory"
    ) in response.json()["message"]
    _nothing_left_of(prism, "lost")


async def test_command_left_by_a_run_that_allowed_it_is_refused_before_anything_is_made(
    prism: PrismHandle,
) -> None:
    # As if an earlier Prism, started with --allow-hook-commands, had stored it.
    await prism.manager.policies.update("main", on_create_command=("true",))
    async with api(prism) as http:
        response = await http.post(f"{V1}/branches", json={"name": "child", "ttl": "1h"})
        assert (response.status_code, response.json()["code"]) == (
            403,
            "hook_commands_not_allowed",
        )
        assert response.json()["message"] == (
            'cannot make a child of branch "main", whose on_create hook is a command: '
            "on_create commands are off (Prism was not started with --allow-hook-commands)"
        )
        refused = await psql(prism.dsn("postgres@child"), "SELECT 1", check=False)
        assert "on_create commands are off" in refused.stderr.decode()
        assert await refused_sqlstate(prism, "child") == "42501"
        _nothing_left_of(prism, "child")

        # Removing the command is always allowed; then children can be made again.
        cleared = await http.patch(f"{V1}/branches/main", json={"on_create_command": None})
        assert cleared.json()["on_create_command"] is False
        made = await http.post(f"{V1}/branches", json={"name": "child"})
    assert made.status_code == 201
