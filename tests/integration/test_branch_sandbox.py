"""A branch's superuser reaches nothing outside its branch (Prism in-process, as the test user).

As root, as in CI, the servers run as their own OS user (``prism``); the same attacks against
a Prism run by a normal user are in ``tests/system/test_branch_sandbox_normal_user.py``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from prism.core.values import HostPort
from prism.runtime import landlock
from tests.sandbox_attacks import ATTACKER, Target, attack, own_branch_works

from .harness import PrismHandle, psql

pytestmark = pytest.mark.skipif(
    not landlock.probe().scopes, reason="this kernel's Landlock lacks scopes (ABI < 6)"
)


def _target(prism: PrismHandle) -> Target:
    async def sql(branch: str, text: str) -> tuple[bool, str]:
        result = await psql(prism.dsn(f"postgres@{branch}"), text, check=False)
        output = result.stdout if result.returncode == 0 else result.stderr
        return result.returncode == 0, output.decode()

    return Target(prism.settings.data_dir, prism.port, prism.info.api[1], sql)


async def test_a_branch_superuser_reaches_nothing_outside_its_branch(prism: PrismHandle) -> None:
    await attack(_target(prism))
    async with httpx.AsyncClient() as client:
        health = (await client.get(f"http://127.0.0.1:{prism.info.api[1]}/healthz")).json()
    assert health["sandbox"]["complete"] is True


async def test_the_attackers_own_branch_keeps_working(prism: PrismHandle) -> None:
    await own_branch_works(_target(prism))


async def test_an_sql_hook_runs_no_program_on_the_host(prism: PrismHandle) -> None:
    """An ``on_create`` SQL hook is the child's superuser too: no shell on the host."""
    marker = prism.settings.data_dir / "hook-ran"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{prism.info.api[1]}") as client:
        response = await client.patch(
            "/api/v1/branches/main",
            json={"on_create": f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'"},
        )
        assert response.status_code == 200, response.text
        created = await client.post("/api/v1/branches", json={"name": "hooked"})
    assert created.status_code >= 400, created.text
    assert "on_create" in created.text or "hook" in created.text, created.text
    assert not marker.exists()
    assert prism.manager.get("hooked") is None


async def test_branch_egress_opens_the_named_port_and_no_other(start_prism: Any) -> None:
    """``--branch-egress`` lets a branch connect to what a team needs (an FDW target)."""
    allowed, other = trio.socket.socket(), trio.socket.socket()
    await allowed.bind(("127.0.0.1", 0))
    await other.bind(("127.0.0.1", 0))
    allowed.listen()
    other.listen()
    allowed_port, other_port = allowed.getsockname()[1], other.getsockname()[1]
    prism = await start_prism(branch_egress=(HostPort("127.0.0.1", allowed_port),))
    target = _target(prism)
    await target.ok(ATTACKER, "CREATE EXTENSION dblink")
    tried = "SELECT * FROM dblink('host=127.0.0.1 port={}', 'x') AS t(x int)"
    arrived = trio.Event()

    async def answer_and_hang_up() -> None:
        connection, _ = await allowed.accept()
        arrived.set()
        connection.close()

    with allowed, other:
        refused = await target.refused(tried.format(other_port))
        assert "Permission denied" in refused, refused
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_and_hang_up)
            with trio.fail_after(30):
                reached = await target.refused(tried.format(allowed_port))
        assert arrived.is_set()
        assert "Permission denied" not in reached, reached
