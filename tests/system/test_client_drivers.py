"""pgjdbc (DBeaver) and node-postgres (TypeORM) through Prism, as the seed's users run them.

Each driver plays the client-matrix script of :mod:`tests.clients` from a small program in its
own language (``clients/Matrix.java``, ``clients/matrix.js``) against a new branch, with TLS off
and on, and prints what it saw; the expectation is the one every Python client meets too. The
drivers come from ``tools/sysenv/clients.sh`` (Debian's pgjdbc, node-postgres from npm).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.clients import (
    Seen,
    assert_behaves_like_postgres,
    assert_new_branch_was_made,
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


def _node_postgres() -> tuple[list[str], dict[str, str]]:
    modules = require_file(NODE_MODULES / "pg-copy-streams", "node-postgres")
    node = require_command("node")
    return [node, str(_PROGRAMS / "matrix.js")], {"NODE_PATH": str(modules.parent)}


DRIVERS: dict[str, Callable[[], tuple[list[str], dict[str, str]]]] = {
    "pgjdbc": _pgjdbc,
    "node-postgres": _node_postgres,
}


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("driver", sorted(DRIVERS))
async def test_driver_behaves_through_prism_as_with_postgres(
    prism: PrismHandle, driver: str, tls: bool
) -> None:
    command, env = DRIVERS[driver]()
    target = target_for(prism, tls=tls)
    with trio.fail_after(120):
        result = await trio.run_process(
            [*command, target.as_json()],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, **env},
        )
    assert result.returncode == 0, result.stderr.decode()
    seen = Seen.from_json(result.stdout.decode().strip().splitlines()[-1])
    assert_behaves_like_postgres(seen, target)
    await assert_new_branch_was_made(prism, target)
