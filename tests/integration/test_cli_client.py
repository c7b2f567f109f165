"""The ``prism branch …`` and ``prism events`` commands against a running daemon."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from .harness import PrismHandle, psql


async def _prism(
    *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    result = await trio.run_process(
        [sys.executable, "-m", "prism.cli.main", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PRISM_")}, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"prism {' '.join(args)} failed: {result.stderr.decode()}")
    return result


async def test_branch_commands_create_list_stop_start_reset_and_remove(
    prism: PrismHandle,
) -> None:
    url = ("--api", prism.info.api_url)
    created = await _prism("branch", "create", "cli-made", *url)
    assert created.stdout.decode().startswith("cli-made: running (parent main, server 127.0.0.1:")

    table = (await _prism("branch", "ls", *url)).stdout.decode().splitlines()
    assert table[0].split() == [
        *("NAME", "STATUS", "PARENT", "CONNS", "LAST", "ACTIVE", "PROTECTED", "EXPIRES"),
        *("OWN", "ADDRESS"),
    ]
    rows = [line for line in table[1:] if not line.startswith(" ")]
    # Main first: every other branch comes from it.
    assert [line.split()[:3] + line.split()[6:8] for line in rows] == [
        ["main", "running", "-", "yes", "-"],
        ["cli-made", "running", "main", "no", "-"],
    ]
    # Below the table: the disk the branches are on, and what uses it.
    assert [line.split()[0] for line in table[len(rows) + 1 :]] == ["disk", "used"]

    status = (await _prism("status", *url)).stdout.decode()
    assert "main     running" in status and "branches 2 (2 running)" in status
    assert "reserve" in status and "used by" in status
    listed = json.loads((await _prism("branch", "ls", "--json", *url)).stdout)
    assert [b["name"] for b in listed] == ["main", "cli-made"]

    stopped = await _prism("branch", "stop", "cli-made", *url)
    assert stopped.stdout.decode().strip() == "cli-made: stopped (parent main)"
    started = json.loads((await _prism("branch", "start", "cli-made", "--json", *url)).stdout)
    assert started["status"] == "running"
    reset = await _prism("branch", "reset", "cli-made", *url)
    assert reset.stdout.decode().startswith("cli-made: running")
    removed = await _prism("branch", "rm", "cli-made", *url)
    assert removed.stdout.decode().strip() == "deleted: cli-made"
    assert [b.name for b in prism.manager.list()] == ["main"]


async def test_failures_exit_non_zero_with_one_line_reason(prism: PrismHandle) -> None:
    url = ("--api", prism.info.api_url)
    refused = await _prism("branch", "rm", "main", *url, check=False)
    assert refused.returncode == 4  # a conflict: main is protected
    assert refused.stderr.decode() == "prism: error: the main branch cannot be deleted\n"
    # Main has no parent: said first, as unprotecting it would not make it resettable.
    reset = await _prism("branch", "reset", "main", *url, check=False)
    assert reset.returncode == 4
    assert reset.stderr.decode().splitlines() == [
        'prism: error: branch "main" has no parent to reset from',
        "prism: hint: reset a branch made from main, not main itself",
    ]
    missing = await _prism("branch", "stop", "ghost", *url, check=False)
    assert missing.returncode == 3  # not found
    assert missing.stderr.decode() == 'prism: error: branch "ghost" does not exist\n'


async def test_unreachable_api_is_one_line_not_a_traceback() -> None:
    result = await _prism("branch", "ls", "--api", "127.0.0.1:1", check=False)
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert lines[0].startswith("prism: error: cannot reach the Prism API")
    assert lines[1:] == ["prism: hint: is `prism serve` running? set --api or $PRISM_API"]


async def test_token_is_sent_and_a_missing_one_is_explained(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(api_token="s3cret")
    url = ("--api", prism.info.api_url)
    refused = await _prism("branch", "ls", *url, check=False)
    assert refused.returncode == 1 and "needs a token" in refused.stderr.decode()
    allowed = await _prism("branch", "ls", "--api-token", "s3cret", *url)
    assert "main" in allowed.stdout.decode()


async def test_events_command_tails_the_live_stream(prism: PrismHandle) -> None:
    command = [sys.executable, "-m", "prism.cli.main", "events", "--api", prism.info.api_url]
    lines: list[str] = []
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            functools.partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
        )
        buffer = b""
        with trio.fail_after(30):
            assert process.stdout is not None
            while not any(" running tailed " in line for line in lines):
                chunk = await process.stdout.receive_some()
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                lines += [line.decode() for line in complete]
                if any(line.startswith("snapshot:") for line in lines) and len(lines) == 1:
                    await prism.manager.create("tailed")
        process.terminate()
    assert lines[0] == "snapshot: 1 branches: main (running)"
    assert any(" provisioning tailed parent=main" in line for line in lines)


async def test_create_from_a_parent_and_rm_with_children_print_json(prism: PrismHandle) -> None:
    url = ("--api", prism.info.api_url)
    await _prism("branch", "create", "elder", *url)
    child = json.loads(
        (await _prism("branch", "create", "young", "--parent", "elder", "--json", *url)).stdout
    )
    assert (child["name"], child["parent"], child["status"]) == ("young", "elder", "running")

    refused = await _prism("branch", "rm", "elder", *url, check=False)
    assert refused.returncode == 4  # a conflict: it has children
    assert refused.stderr.decode().splitlines()[0] == (
        'prism: error: branch "elder" has child branches: young'
    )
    removed = await _prism("branch", "rm", "elder", "--with-children", "--json", *url)
    assert json.loads(removed.stdout) == {"deleted": ["young", "elder"]}


async def test_bad_input_is_refused_with_the_apis_reason(prism: PrismHandle) -> None:
    url = ("--api", prism.info.api_url)
    bad_name = await _prism("branch", "create", "Not-Valid", *url, check=False)
    assert bad_name.returncode == 1 and bad_name.stderr.decode().count("\n") == 1
    assert "Not-Valid" in bad_name.stderr.decode()
    orphan = await _prism("branch", "create", "orphan", "--parent", "nope", *url, check=False)
    assert orphan.returncode == 3  # the parent is not found
    assert orphan.stderr.decode().splitlines() == [
        'prism: error: parent branch "nope" does not exist',
        "prism: hint: list branches with GET /api/v1/branches",
    ]


async def test_out_of_range_times_are_one_line_naming_the_field(prism: PrismHandle) -> None:
    url = ("--api", prism.info.api_url)
    await _prism("branch", "create", "dated", *url)
    for args, field in (
        (("branch", "expire", "dated", "999999999999d"), "ttl"),
        (("branch", "create", "later", "--ttl", "1e308"), "ttl"),
        (("branch", "create", "older", "--at", "-999999999999d"), "at"),
    ):
        refused = await _prism(*args, *url, check=False)
        lines = refused.stderr.decode().splitlines()
        assert refused.returncode == 1 and len(lines) == 1, lines
        assert lines[0].startswith(f'prism: error: "{field}" must be ') and "100 years" in lines[0]
    listed = json.loads((await _prism("branch", "ls", "--json", *url)).stdout)
    assert sorted((b["name"], b["expires_at"]) for b in listed) == [("dated", None), ("main", None)]


async def test_usage_errors_exit_2() -> None:
    missing_name = await _prism("branch", "create", check=False)
    assert missing_name.returncode == 2
    assert "the following arguments are required: name" in missing_name.stderr.decode()


async def test_token_is_read_from_the_environment(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(api_token="s3cret")
    listed = await _prism(
        "branch", "ls", "--json", "--api", prism.info.api_url, env={"PRISM_API_TOKEN": "s3cret"}
    )
    assert [b["name"] for b in json.loads(listed.stdout)] == ["main"]


async def test_events_json_prints_one_object_per_line(prism: PrismHandle) -> None:
    command = [
        sys.executable,
        "-m",
        "prism.cli.main",
        "events",
        "--json",
        "--api",
        prism.info.api_url,
    ]
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            functools.partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
        )
        assert process.stdout is not None
        buffer = b""
        with trio.fail_after(30):
            while b"\n" not in buffer:
                buffer += await process.stdout.receive_some()
        process.terminate()
    first = json.loads(buffer.split(b"\n")[0])
    assert first["type"] == "snapshot"
    assert [b["name"] for b in first["branches"]] == ["main"]


async def test_events_without_the_token_exit_1_and_say_so(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(api_token="s3cret")
    refused = await _prism("events", "--api", prism.info.api_url, check=False)
    assert refused.returncode == 1
    lines = refused.stderr.decode().splitlines()
    assert lines[0].startswith("prism: error: cannot subscribe to ws://")
    assert lines[0].endswith("this Prism API needs a token (no token given)")
    assert lines[1:] == [
        "prism: hint: send 'Authorization: Bearer <token>' (prism: --api-token or $PRISM_API_TOKEN)"
    ]


async def test_a_branch_per_ci_job_create_print_dsn_use_and_rm_if_exists(
    prism: PrismHandle,
) -> None:
    url = ("--api", prism.info.api_url)
    created = await _prism(
        "branch", "create", "pr-42", "--parent", "main", "--print-dsn", "--password", *url
    )
    dsn = created.stdout.decode().strip()
    assert dsn.startswith("postgresql://postgres%40pr-42:password@127.0.0.1:")
    used = await trio.run_process(
        ["psql", dsn, "-XAtc", "SELECT current_database()"], capture_stdout=True
    )
    assert used.stdout.decode().strip() == "postgres"
    again = await _prism("branch", "create", "pr-42", *url, check=False)
    assert again.returncode == 4 and "already exists" in again.stderr.decode()
    assert (await _prism("branch", "rm", "pr-42", "--if-exists", *url)).returncode == 0
    gone = await _prism("branch", "rm", "pr-42", "--if-exists", "--json", *url)
    assert json.loads(gone.stdout) == {"deleted": []}
    missing = await _prism("branch", "rm", "pr-42", *url, check=False)
    assert missing.returncode == 3


async def test_dsn_formats_leave_the_password_out_unless_asked(prism: PrismHandle) -> None:
    url = ("--api", prism.info.api_url)
    await _prism("branch", "create", "fmt", *url)

    async def dsn(*flags: str) -> str:
        return (await _prism("branch", "dsn", "fmt", *flags, *url)).stdout.decode().strip()

    port = prism.port
    assert await dsn() == f"postgresql://postgres%40fmt@127.0.0.1:{port}/postgres?sslmode=require"
    assert await dsn("--format", "keyword") == (
        f"host=127.0.0.1 port={port} user=postgres@fmt dbname=postgres sslmode=require"
    )
    assert (await dsn("--format", "env")).splitlines()[2] == "PGUSER=postgres@fmt"
    assert (await dsn("--format", "jdbc")).startswith("jdbc:postgresql://127.0.0.1:")
    assert "password" not in await dsn("--format", "jdbc")
    assert "password=password" in await dsn("--format", "jdbc", "--password")
    assert (await dsn("--format", "prisma", "--json")).startswith("postgresql://postgres%40fmt@")
    unknown = await _prism("branch", "dsn", "ghost", *url, check=False)
    assert unknown.returncode == 3


async def test_protect_expire_and_hook_commands(prism: PrismHandle, tmp_path: Any) -> None:
    url = ("--api", prism.info.api_url)
    await _prism("branch", "create", "guarded", *url)
    protected = json.loads((await _prism("branch", "protect", "guarded", "--json", *url)).stdout)
    assert protected["protected"] is True
    refused = await _prism("branch", "rm", "guarded", *url, check=False)
    assert refused.returncode == 4
    assert refused.stderr.decode().splitlines() == [
        'prism: error: branch "guarded" is protected: it cannot be deleted',
        "prism: hint: unprotect it first: prism branch unprotect guarded",
    ]
    unprotected = await _prism("branch", "unprotect", "guarded", *url)
    assert unprotected.stdout.decode() == (
        "guarded: not protected: delete and reset allowed (prism branch protect guarded)\n"
    )
    expiring = json.loads(
        (await _prism("branch", "expire", "guarded", "72h", "--json", *url)).stdout
    )
    assert expiring["expires_at"].endswith("Z")
    never = json.loads(
        (await _prism("branch", "expire", "guarded", "never", "--json", *url)).stdout
    )
    assert never["expires_at"] is None
    sql = tmp_path / "hook.sql"
    sql.write_text("CREATE TABLE made_by_hook AS SELECT 42 AS v")
    hooked = await _prism("branch", "hook", "guarded", "--on-create", str(sql), "--json", *url)
    assert json.loads(hooked.stdout)["on_create"] is True
    said = await _prism("branch", "hook", "guarded", "--on-create", str(sql), *url)
    assert said.stdout.decode() == "guarded: new children run on_create before anyone connects\n"
    await _prism("branch", "create", "hooked-child", "--parent", "guarded", *url)
    made = await psql(prism.dsn("postgres@hooked-child"), "SELECT v FROM made_by_hook")
    assert made.stdout.decode().strip() == "42"
    cleared = await _prism("branch", "hook", "guarded", "--json", *url)
    assert json.loads(cleared.stdout)["on_create"] is False


async def test_hook_command_is_refused_unless_allowed_and_set_and_cleared_when_it_is(
    empty_data_dir: Path, start_prism: Any, tmp_path: Path
) -> None:
    off: PrismHandle = await start_prism()
    refused = await _prism(
        "branch",
        "hook",
        "main",
        "--on-create-command",
        "true",
        "--api",
        off.info.api_url,
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stderr.decode().splitlines()[0] == (
        'prism: error: cannot give branch "main" an on_create command: on_create commands are '
        "off (Prism was not started with --allow-hook-commands)"
    )
    assert refused.stderr.decode().splitlines()[1].startswith("prism: hint: use an SQL hook")

    # A second Prism, on a data directory of its own, whose operator allowed commands.
    on: PrismHandle = await start_prism(allow_hook_commands=True, data_dir=empty_data_dir)
    url = ("--api", on.info.api_url)
    marker = tmp_path / "ran"
    command = f"sh -c 'echo \"$PRISM_BRANCH\" > {marker}'"
    hooked = await _prism("branch", "hook", "main", "--on-create-command", command, "--json", *url)
    assert json.loads(hooked.stdout)["on_create_command"] is True
    assert on.manager.policies.get("main").on_create_command == (
        "sh",
        "-c",
        f'echo "$PRISM_BRANCH" > {marker}',
    )
    await _prism("branch", "create", "cmd-child", *url)
    assert marker.read_text() == "cmd-child\n"
    cleared = json.loads((await _prism("branch", "hook", "main", "--json", *url)).stdout)
    assert (cleared["on_create"], cleared["on_create_command"]) == (False, False)


async def test_show_tells_policy_hooks_disk_and_connection_of_one_branch(
    prism: PrismHandle,
) -> None:
    url = ("--api", prism.info.api_url)
    await _prism("branch", "create", "shown", "--ttl", "2h", "--protected", *url)
    lines = (await _prism("branch", "show", "shown", *url)).stdout.decode().splitlines()
    assert lines[0].startswith("shown: running (parent main, server 127.0.0.1:")
    facts = dict(line.strip().split(None, 1) for line in lines[1:] if "  " in line)
    assert facts["protected"] == "yes" and facts["hooks"] == "none"
    assert facts["expires"].endswith("Z")
    assert facts["disk"].startswith("own ")
    assert ", shared 0 B, total " in facts["disk"]  # a copy shares nothing
    assert facts["disk"].endswith("(copy: a full copy shares nothing)")
    assert facts["connect"] == (
        f"postgresql://postgres%40shown@127.0.0.1:{prism.port}/postgres?sslmode=require"
    )
    as_json = json.loads((await _prism("branch", "show", "shown", "--json", *url)).stdout)
    assert as_json["name"] == "shown" and as_json["protected"] is True
    missing = await _prism("branch", "show", "ghost", *url, check=False)
    assert missing.returncode == 3
    assert missing.stderr.decode() == 'prism: error: branch "ghost" does not exist\n'
