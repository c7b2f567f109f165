"""A branch's superuser reaches nothing outside its branch (Prism in-process, as the test user).

As root, as in CI, the servers run as their own OS user (``prism``); the same attacks against
a Prism run by a normal user are in ``tests/system/test_branch_sandbox_normal_user.py``.
"""

from __future__ import annotations

import httpx
import pytest

from prism.runtime import landlock
from tests.sandbox_attacks import Target, attack, own_branch_works

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
