"""The REST API's edges: racing operations, resetting a stopped branch, refusals and their log."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from .api_helpers import api, status, wait_for
from .harness import PrismHandle, psql

V1 = "/api/v1"


async def test_two_creates_of_one_name_at_once_make_one_branch(prism: PrismHandle) -> None:
    answers: list[tuple[int, str | None]] = []
    async with prism.manager.events.subscribe() as events, api(prism) as http:

        async def create() -> None:
            response = await http.post(f"{V1}/branches", json={"name": "raced"})
            answers.append((response.status_code, response.json().get("code")))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(create)
            nursery.start_soon(create)
        provisions = 0
        while True:
            try:
                event = events.receive_nowait()
            except trio.WouldBlock:
                break
            provisions += event["type"] == "provisioning" and event["branch"] == "raced"
    assert sorted(answers, key=lambda a: a[0]) == [(201, None), (409, "branch_exists")]
    assert provisions == 1
    assert status(prism, "raced") == "running"


async def test_reset_of_a_stopped_branch_leaves_it_stopped_with_its_parents_data(
    prism: PrismHandle,
) -> None:
    await psql(prism.dsn("postgres@napping"), "CREATE TABLE scratch (x int)")
    async with api(prism) as http:
        await http.post(f"{V1}/branches/napping/stop")
        response = await http.post(f"{V1}/branches/napping/reset")
    assert response.status_code == 200
    assert response.json()["status"] == "stopped" and response.json()["address"] is None
    assert prism.manager.runtime.address("napping") is None
    out = await psql(prism.dsn("postgres@napping"), "SELECT to_regclass('scratch') IS NULL")
    assert out.stdout.decode().strip() == "t"


async def test_reset_and_stop_at_once_queue_and_both_take_effect(prism: PrismHandle) -> None:
    await psql(prism.dsn("postgres@busy-ops"), "SELECT 1")
    codes: dict[str, int] = {}
    async with prism.manager.events.subscribe() as events, api(prism) as http:

        async def post(verb: str) -> None:
            codes[verb] = (await http.post(f"{V1}/branches/busy-ops/{verb}")).status_code

        async with trio.open_nursery() as nursery:
            nursery.start_soon(post, "reset")
            with trio.fail_after(10):
                await wait_for(events, type="resetting", branch="busy-ops")
            nursery.start_soon(post, "stop")  # waits for the reset's lock
        seen = await wait_for(events, type="stopped", branch="busy-ops", reason="stop")
    assert codes == {"reset": 200, "stop": 200}
    kinds = [e["type"] for e in seen if e["branch"] == "busy-ops"]
    assert kinds == ["starting", "running", "reset", "stopping", "stopped"]
    assert status(prism, "busy-ops") == "stopped"


async def test_deleting_with_children_asked_removes_grandchildren_first(
    prism: PrismHandle,
) -> None:
    async with api(prism) as http:
        await http.post(f"{V1}/branches", json={"name": "gen-1"})
        await http.post(f"{V1}/branches", json={"name": "gen-2", "parent": "gen-1"})
        await http.post(f"{V1}/branches", json={"name": "gen-3", "parent": "gen-2"})
        refused = await http.delete(f"{V1}/branches/gen-1", params={"with_children": "no"})
        assert (refused.status_code, refused.json()["code"]) == (409, "branch_has_children")
        deleted = await http.delete(f"{V1}/branches/gen-1", params={"with_children": "1"})
    assert deleted.json() == {"deleted": ["gen-3", "gen-2", "gen-1"]}
    assert [b.name for b in prism.manager.list()] == ["main"]


@pytest.mark.parametrize(
    ("method", "path", "status_code", "code"),
    [
        ("PUT", "/branches", 405, "method_not_allowed"),
        ("PUT", "/branches/main", 405, "method_not_allowed"),
        ("GET", "/branches/main/reset", 405, "method_not_allowed"),
        ("POST", "/branches/main/explode", 404, "not_found"),
    ],
)
async def test_wrong_method_or_verb_is_a_json_error(
    prism: PrismHandle, method: str, path: str, status_code: int, code: str
) -> None:
    async with api(prism) as http:
        response = await http.request(method, V1 + path)
    assert (response.status_code, response.json()["code"]) == (status_code, code)


async def test_create_with_a_non_string_parent_is_refused(prism: PrismHandle) -> None:
    async with api(prism) as http:
        response = await http.post(f"{V1}/branches", json={"name": "x", "parent": None})
    assert (response.status_code, response.json()["code"]) == (422, "invalid_request")
    assert '"parent" must be a string' in response.json()["message"]


async def test_refused_calls_are_401_and_logged_with_path_and_reason(
    start_prism: Any, caplog: pytest.LogCaptureFixture
) -> None:
    prism: PrismHandle = await start_prism(api_token="s3cret")
    caplog.set_level(logging.WARNING, logger="prism.api")
    async with api(prism) as anonymous, api(prism, token="guess") as wrong:
        assert (await anonymous.delete(f"{V1}/branches/main")).status_code == 401
        assert (await wrong.post(f"{V1}/branches/main/stop")).status_code == 401
    refusals = [r.getMessage() for r in caplog.records if r.name == "prism.api.auth"]
    assert len(refusals) == 2
    assert refusals[0].startswith(f"api: refused {V1}/branches/main from 127.0.0.1")
    assert refusals[0].endswith("no token")
    assert refusals[1].endswith("wrong token")
    assert status(prism, "main") == "running"


async def test_a_failed_start_leaves_the_branch_stopped_and_says_why(prism: PrismHandle) -> None:
    await psql(prism.dsn("postgres@fragile"), "SELECT 1")
    async with prism.manager.events.subscribe() as events, api(prism) as http:
        await http.post(f"{V1}/branches/fragile/stop")
        conf = prism.manager.storage.path("fragile") / "postgresql.auto.conf"
        original = conf.read_text()
        conf.write_text(original + "\nthis is not a setting\n")
        refused = await http.post(f"{V1}/branches/fragile/start")
        assert (refused.status_code, refused.json()["code"]) == (503, "start_failed")
        with trio.fail_after(10):
            await wait_for(events, type="starting", branch="fragile", reason="start")
            [failed] = (await wait_for(events, branch="fragile"))[-1:]
        assert (failed["type"], failed["reason"]) == ("stopped", "start")
        assert failed["error"] == refused.json()["message"]
        assert (await http.get(f"{V1}/branches/fragile")).json()["status"] == "stopped"

        conf.write_text(original)
        assert (await http.post(f"{V1}/branches/fragile/start")).json()["status"] == "running"


async def test_the_api_is_held_to_max_branches_like_a_connecting_client(start_prism: Any) -> None:
    prism = await start_prism(max_branches=2)
    async with api(prism) as http:
        first = await http.post(f"{V1}/branches", json={"name": "first"})
        second = await http.post(f"{V1}/branches", json={"name": "second"})
    assert first.status_code == 201
    assert (second.status_code, second.json()["code"]) == (409, "limit_exceeded")
    assert "limit of 2 branches" in second.json()["message"]
    assert prism.manager.get("second") is None
