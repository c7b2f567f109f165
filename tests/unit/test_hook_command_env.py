"""What an ``on_create`` command is given: the child's connection, none of Prism's secrets."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

from prism.branches.hooks import HookCommands, command_environment, stderr_tail
from prism.core.errors import HookCommandsNotAllowed
from prism.postgres.dsn import ConnectionParams

_PARAMS = ConnectionParams(
    host="127.0.0.1",
    port=41237,
    user="postgres",
    dbname="postgres",
    sslmode="disable",
    password="p@ss word/:",
)


def test_command_gets_the_childs_server_as_libpq_variables_and_a_url() -> None:
    env = command_environment(
        _PARAMS, branch="dev", parent="main", inherited={"PATH": "/usr/bin", "HOME": "/home/x"}
    )
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "PGHOST": "127.0.0.1",
        "PGPORT": "41237",
        "PGUSER": "postgres",
        "PGDATABASE": "postgres",
        "PGSSLMODE": "disable",
        "PGPASSWORD": "p@ss word/:",
        "DATABASE_URL": env["DATABASE_URL"],
        "PRISM_BRANCH": "dev",
        "PRISM_PARENT": "main",
    }
    url = urlsplit(env["DATABASE_URL"])
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", 41237, "/postgres")
    assert unquote(url.password or "") == "p@ss word/:"  # escaped, so it survives parsing


def test_command_does_not_see_prisms_settings_or_other_servers() -> None:
    inherited = {
        "PRISM_API_TOKEN": "secret",
        "PRISM_PASSWORD": "also-secret",
        "PGSERVICE": "production",
        "PGHOST": "db.example.com",
        "DATABASE_URL": "postgresql://prod/app",
        "LANG": "C.UTF-8",
    }
    env = command_environment(_PARAMS, branch="dev", parent="main", inherited=inherited)
    assert "PRISM_API_TOKEN" not in env and "PRISM_PASSWORD" not in env
    assert "PGSERVICE" not in env
    assert env["PGHOST"] == "127.0.0.1" and "prod" not in env["DATABASE_URL"]
    assert env["LANG"] == "C.UTF-8"


def test_stderr_tail_keeps_the_last_lines_and_says_when_there_were_none() -> None:
    noisy = b"".join(f"line {n}\n".encode() for n in range(50)) + b"ERROR: \xff boom\n"
    tail = stderr_tail(noisy)
    assert tail.splitlines()[-1] == "ERROR: \ufffd boom"
    assert tail.splitlines()[0] == "line 41" and len(tail.splitlines()) == 10
    assert stderr_tail(b"x" * 10_000).endswith("x") and len(stderr_tail(b"x" * 10_000)) == 2000
    assert stderr_tail(b"  \n") == "(nothing on stderr)"


def test_commands_are_off_unless_allowed() -> None:
    with pytest.raises(HookCommandsNotAllowed) as refused:
        HookCommands().refuse_unless_allowed('cannot give branch "x" an on_create command')
    assert refused.value.sqlstate == "42501"
    assert "--allow-hook-commands" in refused.value.message
    HookCommands(allowed=True).refuse_unless_allowed("never raised")
