"""Branches for a team, end to end: connection strings, protection, expiry, templates and hooks."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import trio

from .api_helpers import api, wait_for
from .harness import PrismHandle, psql, refused_sqlstate

V1 = "/api/v1"

MASKING_SQL = """
UPDATE customers SET
    name  = 'Customer ' || id,
    email = 'customer' || id || '@example.invalid',
    phone = '+1-555-' || lpad(id::text, 4, '0');
"""


async def _value(dsn: str, sql: str) -> str:
    return (await psql(dsn, sql)).stdout.decode().strip()


def _open_session(dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SELECT 1")
    return conn


# ---- connection strings ---------------------------------------------------------------------


async def test_connection_object_is_ready_to_paste_into_a_real_client(
    prism: PrismHandle,
) -> None:
    await psql(prism.dsn(), "CREATE TABLE marker AS SELECT 'main' AS v")
    async with api(prism) as http:
        await http.post(f"{V1}/branches", json={"name": "feature"})
        plain = (await http.get(f"{V1}/branches/feature")).json()["connection"]
        secret = (await http.get(f"{V1}/branches/feature", params={"password": "1"})).json()
    assert plain["uri"] == (
        f"postgresql://postgres%40feature@127.0.0.1:{prism.port}/postgres?sslmode=require"
    )
    assert plain["user"] == "postgres@feature" and "password" not in plain
    conn = secret["connection"]
    assert conn["password"] == "password"
    # The TLS-on default gives sslmode=require, and the real psql speaks it through Prism.
    assert await _value(conn["uri"], "SELECT current_user, v FROM marker") == "postgres|main"
    assert await _value(conn["keyword"], "SELECT 1") == "1"


async def test_the_list_has_connections_without_passwords(prism: PrismHandle) -> None:
    async with api(prism) as http:
        listed = (await http.get(f"{V1}/branches")).json()["branches"]
        missing = await http.get(f"{V1}/branches/ghost")
    assert listed[0]["connection"]["user"] == "postgres@main"
    assert "password" not in listed[0]["connection"] and listed[0]["protected"] is True
    assert missing.status_code == 404


# ---- protection -----------------------------------------------------------------------------


async def test_protected_branch_refuses_delete_and_reset_until_unprotected(
    prism: PrismHandle,
) -> None:
    async with api(prism) as http:
        await http.post(f"{V1}/branches", json={"name": "keep", "protected": True})
        child = await http.post(f"{V1}/branches", json={"name": "kid", "parent": "keep"})
        assert child.json()["protected"] is False
        for response in (
            await http.delete(f"{V1}/branches/keep", params={"with_children": "true"}),
            await http.post(f"{V1}/branches/keep/reset"),
        ):
            assert response.status_code == 409
            assert response.json()["code"] == "branch_protected"
            assert response.json()["message"].startswith('branch "keep" is protected')
        # Refused before anything was touched: the child is still there.
        assert prism.manager.get("kid") is not None
        patched = await http.patch(f"{V1}/branches/keep", json={"protected": False})
        assert patched.json()["protected"] is False
        deleted = await http.delete(f"{V1}/branches/keep", params={"with_children": "true"})
    assert deleted.json() == {"deleted": ["kid", "keep"]}


async def test_a_protected_descendant_stops_a_delete_with_children(prism: PrismHandle) -> None:
    async with api(prism) as http:
        await http.post(f"{V1}/branches", json={"name": "top"})
        await http.post(f"{V1}/branches", json={"name": "mid", "parent": "top"})
        await http.post(f"{V1}/branches", json={"name": "leaf", "parent": "mid"})
        await http.patch(f"{V1}/branches/leaf", json={"protected": True})
        refused = await http.delete(f"{V1}/branches/top", params={"with_children": "true"})
    assert refused.status_code == 409 and '"leaf" is protected' in refused.json()["message"]
    assert {b.name for b in prism.manager.list()} == {"main", "top", "mid", "leaf"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"protected": "yes"},
        {"ttl": "soon"},
        {"ttl": 0},
        {"expires_at": "tomorrow"},
        {"expires_at": "2030-01-01T00:00:00"},
        {"ttl": "1h", "expires_at": None},
        {"on_create": ""},
        {"colour": "red"},
    ],
)
async def test_bad_patch_bodies_are_refused_and_change_nothing(
    prism: PrismHandle, body: dict[str, Any]
) -> None:
    async with api(prism) as http:
        await http.post(f"{V1}/branches", json={"name": "target"})
        response = await http.patch(f"{V1}/branches/target", json=body)
        after = (await http.get(f"{V1}/branches/target")).json()
    assert response.status_code == 422 and response.json()["code"] == "invalid_request"
    assert (after["protected"], after["expires_at"], after["on_create"]) == (False, None, False)


# ---- expiry ---------------------------------------------------------------------------------


async def test_expired_branch_is_announced_then_deleted(prism: PrismHandle) -> None:
    async with prism.manager.events.subscribe() as events, api(prism) as http:
        created = await http.post(f"{V1}/branches", json={"name": "brief", "ttl": "1s"})
        assert created.json()["expires_at"].endswith("Z")
        with trio.fail_after(30):
            seen = await wait_for(events, type="deleted", branch="brief")
    kinds = [e["type"] for e in seen if e["branch"] == "brief"]
    assert kinds.index("expired") < kinds.index("deleting") < kinds.index("deleted")
    assert prism.manager.get("brief") is None
    assert not prism.manager.storage.path("brief").exists()


async def test_protected_branches_never_expire(prism: PrismHandle) -> None:
    async with prism.manager.events.subscribe() as events, api(prism) as http:
        await http.post(f"{V1}/branches", json={"name": "held", "ttl": "1s", "protected": True})
        await http.post(f"{V1}/branches", json={"name": "marker", "ttl": "1s"})
        with trio.fail_after(30):
            await wait_for(events, type="deleted", branch="marker")
    assert prism.manager.get("held") is not None  # expired first, but protected


async def test_open_session_outlives_expiry_until_it_closes(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(expiry_grace=3600.0)
    session = await trio.to_thread.run_sync(_open_session, prism.dsn("postgres@busy"))
    async with prism.manager.events.subscribe() as events, api(prism) as http:
        await http.patch(f"{V1}/branches/busy", json={"ttl": "1s"})
        await http.post(f"{V1}/branches", json={"name": "tick", "ttl": "1s"})
        with trio.fail_after(30):
            # A branch with no session expired meanwhile: the reaper has looked at "busy" too.
            seen = await wait_for(events, type="deleted", branch="tick")
        assert all(e["branch"] != "busy" for e in seen if e["type"] == "expired")
        assert (await trio.to_thread.run_sync(session.execute, "SELECT 7")).fetchone() == (7,)
        await trio.to_thread.run_sync(session.close)
        with trio.fail_after(30):
            seen = await wait_for(events, type="deleted", branch="busy")
    kinds = [e["type"] for e in seen if e["branch"] == "busy"]
    assert kinds.index("expired") < kinds.index("deleting") < kinds.index("deleted")


async def test_session_on_an_expired_branch_is_ended_after_the_grace(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(expiry_grace=1.0)
    session = await trio.to_thread.run_sync(_open_session, prism.dsn("postgres@lingers"))
    async with prism.manager.events.subscribe() as events, api(prism) as http:
        await http.patch(f"{V1}/branches/lingers", json={"ttl": "1s"})
        with trio.fail_after(30):
            await wait_for(events, type="deleted", branch="lingers")
    with pytest.raises(psycopg.OperationalError) as caught:
        await trio.to_thread.run_sync(session.execute, "SELECT 1")
    session.close()
    assert 'branch "lingers" expired and was deleted' in str(caught.value)
    assert caught.value.sqlstate == "57P01"


# ---- templates and hooks ----------------------------------------------------------------------


async def test_branches_created_on_connect_use_the_default_parent_and_ttl(
    start_prism: Any,
) -> None:
    prism: PrismHandle = await start_prism(default_parent="template", branch_ttl=7200.0)
    async with api(prism) as http:
        made = await http.post(f"{V1}/branches", json={"name": "template"})
        assert made.json()["expires_at"] is None  # an explicit create has no default TTL
    await psql(prism.dsn("postgres@template"), "CREATE TABLE seeded AS SELECT 'tpl' AS v")
    assert await _value(prism.dsn("postgres@dev-1"), "SELECT v FROM seeded") == "tpl"
    async with api(prism) as http:
        dev = (await http.get(f"{V1}/branches/dev-1")).json()
    assert dev["parent"] == "template" and dev["expires_at"] is not None


async def test_on_create_hook_masks_every_new_child_before_any_client_sees_it(
    prism: PrismHandle,
) -> None:
    await psql(
        prism.dsn(),
        "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, phone text);"
        "INSERT INTO customers VALUES (1, 'Ada Lovelace', 'ada@real.example', '+44 20 7946 0001')",
    )
    async with api(prism) as http:
        hooked = await http.patch(f"{V1}/branches/main", json={"on_create": MASKING_SQL})
        assert hooked.json()["on_create"] is True
    # Created on connect: the very first query already sees masked rows.
    first = await _value(prism.dsn("postgres@dev"), "SELECT name, email, phone FROM customers")
    assert first == "Customer 1|customer1@example.invalid|+1-555-0001"
    assert "Ada" in await _value(prism.dsn(), "SELECT name FROM customers")


async def test_failing_hook_fails_the_create_and_leaves_nothing(prism: PrismHandle) -> None:
    async with prism.manager.events.subscribe() as events, api(prism) as http:
        await http.patch(f"{V1}/branches/main", json={"on_create": "UPDATE nowhere SET x = 1"})
        response = await http.post(f"{V1}/branches", json={"name": "broken"})
        with trio.fail_after(10):
            await wait_for(events, type="failed", branch="broken")
        listed = (await http.get(f"{V1}/branches")).json()["branches"]
    assert response.status_code == 500 and response.json()["code"] == "provision_failed"
    assert (
        'the on_create hook failed: relation "nowhere" does not exist'
        in (response.json()["message"])
    )
    assert [b["name"] for b in listed] == ["main"]
    assert sorted(prism.manager.storage.list()) == ["main"]
    assert prism.manager.runtime.address("broken") is None
    assert prism.manager.policies.get("broken") == prism.manager.policies.get("nobody")


async def test_failing_hook_refuses_a_create_on_connect_with_its_error(prism: PrismHandle) -> None:
    async with api(prism) as http:
        await http.patch(f"{V1}/branches/main", json={"on_create": "SELECT 1/0"})
    refused = await psql(prism.dsn("postgres@nope"), "SELECT 1", check=False)
    assert refused.returncode != 0
    assert "the on_create hook failed: division by zero" in refused.stderr.decode()
    assert await refused_sqlstate(prism, "nope") == "22012"  # the hook's own SQLSTATE
    assert prism.manager.get("nope") is None


# ---- the recent-events ring -------------------------------------------------------------------


async def test_recent_events_are_served_since_a_seq(prism: PrismHandle) -> None:
    async with api(prism) as http:
        before = (await http.get(f"{V1}/events")).json()["events"]
        await http.post(f"{V1}/branches", json={"name": "ringed"})
        since = before[-1]["seq"] if before else 0
        after = (await http.get(f"{V1}/events", params={"since": since})).json()["events"]
        bad = await http.get(f"{V1}/events", params={"since": "x"})
    assert [e["type"] for e in after if e["branch"] == "ringed"][-1] == "created"
    assert all(e["seq"] > since for e in after)
    assert bad.status_code == 422


# ---- disk use -------------------------------------------------------------------------------


async def test_disk_use_is_shown_per_branch_and_in_metrics(prism: PrismHandle) -> None:
    async with api(prism) as http:
        await http.post(f"{V1}/branches", json={"name": "sized"})
        disk = (await http.get(f"{V1}/branches/sized")).json()["disk"]
        metrics = (await http.get("/metrics")).text.splitlines()
    # The copy driver: a full copy, nothing shared.
    assert disk["basis"].startswith("copy") and disk["shared"] == 0
    assert disk["own"] == disk["total"] and disk["total"] > 1_000_000
    assert f'prism_branch_disk_bytes{{branch="sized",kind="own"}} {disk["own"]}' in metrics
    assert any(line.startswith('prism_disk_bytes{kind="total"} ') for line in metrics)
