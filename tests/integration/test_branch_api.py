"""The REST API end to end: every branch operation, its conflicts and its refusals."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from tests.waiting import wait_until

from .api_helpers import api, error_of_next_query, open_session, status
from .harness import PrismHandle, psql

V1 = "/api/v1"


async def _value(prism: PrismHandle, branch: str, sql: str) -> str:
    return (await psql(prism.dsn(f"postgres@{branch}"), sql)).stdout.decode().strip()


async def test_created_branch_is_listed_and_described(prism: PrismHandle) -> None:
    async with api(prism) as http:
        created = await http.post(f"{V1}/branches", json={"name": "made"})
        assert created.status_code == 201
        assert created.headers["location"] == f"{V1}/branches/made"
        listed = (await http.get(f"{V1}/branches")).json()["branches"]
        one = (await http.get(f"{V1}/branches/made")).json()
    assert [b["name"] for b in listed] == ["made", "main"]
    assert one == created.json()
    assert one["connection"]["user"] == "postgres@made"
    assert one["parent"] == "main" and one["status"] == "running"
    assert one["connections"] == 0 and one["address"].startswith("127.0.0.1:")
    assert one["created_at"].endswith("Z") and one["last_active"].endswith("Z")
    assert isinstance(one["disk_bytes"], int) and one["disk_bytes"] > 0  # copy driver knows
    assert await _value(prism, "made", "SELECT 1") == "1"


async def test_branch_can_be_created_from_any_existing_branch(prism: PrismHandle) -> None:
    await psql(prism.dsn("postgres@mid"), "CREATE TABLE mid_only AS SELECT 'from mid' AS v")
    async with api(prism) as http:
        response = await http.post(f"{V1}/branches", json={"name": "leaf", "parent": "mid"})
    assert response.json()["parent"] == "mid"
    assert await _value(prism, "leaf", "SELECT v FROM mid_only") == "from mid"


async def test_stop_keeps_data_and_start_brings_the_branch_back(prism: PrismHandle) -> None:
    await psql(prism.dsn("postgres@pausable"), "CREATE TABLE t AS SELECT 5 AS v")
    async with api(prism) as http:
        stopped = (await http.post(f"{V1}/branches/pausable/stop")).json()
        assert stopped["status"] == "stopped" and stopped["address"] is None
        assert prism.manager.runtime.address("pausable") is None
        started = (await http.post(f"{V1}/branches/pausable/start")).json()
    assert started["status"] == "running"
    assert await _value(prism, "pausable", "SELECT v FROM t") == "5"


async def test_reset_throws_changes_away_and_ends_open_sessions_with_a_reason(
    prism: PrismHandle,
) -> None:
    await psql(prism.dsn(), "CREATE TABLE base AS SELECT 'v1' AS v")
    await psql(prism.dsn("postgres@work"), "CREATE TABLE scratch (x int); UPDATE base SET v='w'")
    await psql(prism.dsn(), "UPDATE base SET v = 'v2'")
    session = await trio.to_thread.run_sync(open_session, prism.dsn("postgres@work"))
    async with api(prism) as http:
        response = await http.post(f"{V1}/branches/work/reset")
    assert response.status_code == 200 and response.json()["status"] == "running"
    message = await trio.to_thread.run_sync(error_of_next_query, session)
    assert 'branch "work" is being reset' in message
    check = "SELECT to_regclass('scratch') IS NULL, (SELECT v FROM base)"
    assert await _value(prism, "work", check) == "t|v2"  # the parent's current state


async def test_two_resets_at_once_queue_and_both_succeed(prism: PrismHandle) -> None:
    await psql(prism.dsn("postgres@twice"), "SELECT 1")
    codes: list[int] = []
    async with prism.manager.events.subscribe() as events, api(prism) as http:

        async def reset() -> None:
            codes.append((await http.post(f"{V1}/branches/twice/reset")).status_code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reset)
            nursery.start_soon(reset)
        kinds = []
        while True:
            try:
                event = events.receive_nowait()
            except trio.WouldBlock:
                break
            if event["branch"] == "twice" and event["type"] in ("resetting", "reset"):
                kinds.append(event["type"])
    assert codes == [200, 200]
    assert kinds == ["resetting", "reset", "resetting", "reset"]  # one after the other
    assert status(prism, "twice") == "running"


async def test_delete_refuses_main(prism: PrismHandle) -> None:
    async with api(prism) as http:
        response = await http.delete(f"{V1}/branches/main")
    assert response.status_code == 409
    assert response.json()["code"] == "branch_protected"
    assert status(prism, "main") == "running"


async def test_reset_refuses_main(prism: PrismHandle) -> None:
    async with api(prism) as http:
        response = await http.post(f"{V1}/branches/main/reset")
    assert response.status_code == 409
    assert response.json()["code"] == "branch_protected"


async def test_delete_refuses_a_branch_with_children_unless_asked(prism: PrismHandle) -> None:
    async with api(prism) as http:
        await http.post(f"{V1}/branches", json={"name": "parent-b"})
        await http.post(f"{V1}/branches", json={"name": "child-b", "parent": "parent-b"})
        refused = await http.delete(f"{V1}/branches/parent-b")
        assert refused.status_code == 409
        assert refused.json()["code"] == "branch_has_children"
        assert "child-b" in refused.json()["message"]
        deleted = await http.delete(f"{V1}/branches/parent-b", params={"with_children": "true"})
    assert deleted.json() == {"deleted": ["child-b", "parent-b"]}
    assert [b.name for b in prism.manager.list()] == ["main"]
    assert sorted(prism.manager.storage.list()) == ["main"]


async def test_deleting_a_branch_ends_its_sessions_and_removes_its_data(
    prism: PrismHandle,
) -> None:
    session = await trio.to_thread.run_sync(open_session, prism.dsn("postgres@doomed"))
    async with api(prism) as http:
        response = await http.delete(f"{V1}/branches/doomed")
    assert response.json() == {"deleted": ["doomed"]}
    assert 'branch "doomed" was deleted' in await trio.to_thread.run_sync(
        error_of_next_query, session
    )
    assert not prism.manager.storage.path("doomed").exists()


@pytest.mark.parametrize(
    ("body", "status_code", "code"),
    [
        (b'{"name": ', 400, "malformed_json"),
        (b"[1, 2]", 422, "invalid_request"),
        (b"{}", 422, "invalid_request"),
        (b'{"name": 7}', 422, "invalid_request"),
        (b'{"name": "ok", "colour": "red"}', 422, "invalid_request"),
        (b'{"name": "Bad Name"}', 422, "invalid_branch_name"),
        (b'{"name": "orphan", "parent": "nope"}', 422, "unknown_parent"),
        (b'{"name": "main"}', 409, "branch_exists"),
    ],
)
async def test_bad_create_requests_are_refused_with_a_stable_code(
    prism: PrismHandle, body: bytes, status_code: int, code: str
) -> None:
    async with api(prism) as http:
        response = await http.post(
            f"{V1}/branches", content=body, headers={"Content-Type": "application/json"}
        )
    assert (response.status_code, response.json()["code"]) == (status_code, code)
    assert response.json()["message"]
    assert [b.name for b in prism.manager.list()] == ["main"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/branches/ghost"),
        ("DELETE", "/branches/ghost"),
        ("POST", "/branches/ghost/reset"),
        ("POST", "/branches/ghost/stop"),
        ("POST", "/branches/ghost/start"),
    ],
)
async def test_operations_on_an_unknown_branch_are_404(
    prism: PrismHandle, method: str, path: str
) -> None:
    async with api(prism) as http:
        response = await http.request(method, V1 + path)
    assert response.status_code == 404
    assert response.json()["code"] == "branch_not_found"


async def test_unknown_route_is_a_json_404(prism: PrismHandle) -> None:
    async with api(prism) as http:
        response = await http.get(f"{V1}/nothing-here")
    assert response.status_code == 404 and response.json()["code"] == "not_found"


async def test_healthz_answers_and_names_the_data_plane_and_the_sandbox(
    prism: PrismHandle,
) -> None:
    async with api(prism) as http:
        response = await http.get("/healthz")
        metrics = (await http.get("/metrics")).text.splitlines()
    plane = prism.info.data_plane
    confinement = prism.manager.runtime.confinement()
    health = response.json()
    disk = health.pop("disk")
    assert health == {
        "status": "ok",
        "branches": 1,
        "data_plane": {"name": plane.name, "reason": plane.reason},
        "sandbox": {
            "mechanism": confinement.mechanism,
            "complete": not confinement.missing,
            "enforced": list(confinement.enforced),
            "missing": list(confinement.missing),
        },
    }
    # Free, used and kept in reserve on each file system Prism writes, and what uses it.
    assert disk["reserve"] == "10%,2GiB"
    assert {"main", "branches", "data"} <= {r for fs in disk["filesystems"] for r in fs["holds"]}
    for fs in disk["filesystems"]:
        assert fs["free"] + fs["used"] == fs["total"] and fs["reserve"] > 0
    assert set(disk["use"]) == {"branches", "snapshots", "wal_archive", "trash"}
    assert confinement.mechanism.startswith("landlock")
    assert f'prism_data_plane_info{{plane="{plane.name}",reason="{plane.reason}"}} 1' in metrics
    assert f"prism_sandbox_missing_guards {len(confinement.missing)}" in metrics


async def test_metrics_count_branches_connections_provisions_and_wakes(
    prism: PrismHandle,
) -> None:
    await psql(prism.dsn("postgres@measured"), "SELECT 1")
    async with api(prism) as http:
        await http.post(f"{V1}/branches/measured/stop")
        await psql(prism.dsn("postgres@measured"), "SELECT 1")
        # psql has exited; Prism notices its close a moment later (the pump's worker thread
        # hands the end of stream back to trio), so wait for the session count to settle.
        closed = 'prism_open_connections{branch="measured"} 0'

        async def settled() -> httpx.Response | None:
            response = await http.get("/metrics")
            return response if closed in response.text else None

        response = await wait_until(settled, what=closed, within=5)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = response.text.splitlines()
    assert 'prism_branches{status="running"} 2' in lines
    assert 'prism_open_connections{branch="measured"} 0' in lines
    assert "prism_provision_duration_seconds_count 1" in lines
    assert "prism_wake_duration_seconds_count 1" in lines
    assert "prism_reaper_stops_total 0" in lines
    proxied = next(x for x in lines if x.startswith('prism_bytes_proxied_total{branch="measured"}'))
    assert int(proxied.split()[-1]) > 0


async def test_with_a_token_every_api_call_needs_it(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(api_token="s3cret")
    async with api(prism) as anonymous, api(prism, token="wrong") as wrong:
        for path in (f"{V1}/branches", "/metrics", "/branches"):
            refused = await anonymous.get(path)
            assert refused.status_code == 401, path
            assert refused.json()["code"] == "unauthorized"
        assert (await wrong.get(f"{V1}/branches")).status_code == 401
        assert (await anonymous.post(f"{V1}/branches", json={"name": "x"})).status_code == 401
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get("/")).status_code == 200  # the page shell asks for it
    async with api(prism, token="s3cret") as http:
        assert (await http.get(f"{V1}/branches")).status_code == 200
    assert [b.name for b in prism.manager.list()] == ["main"]
