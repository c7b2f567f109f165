"""No input gives the REST API a 500, and none is saved half-valid (issue 19).

Each value here once answered 500, and some were saved on the way: an ``expires_at`` that could
not be shown in UTC made every later listing 500, also after a restart. Against a real Prism,
each is now a 4xx naming the field, the branch is as it was, and the listing stays 200.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from prism.branches.manager import BranchManager
from prism.server import PrismServer

from .api_helpers import api
from .harness import PrismHandle, make_settings

V1 = "/api/v1"

_BAD_PATCHES = [
    ({"expires_at": "9999-12-31T23:59:59-14:00"}, "expires_at"),
    ({"expires_at": "0001-01-01T00:00:00+14:00"}, "expires_at"),
    ({"expires_at": "2000-01-01T00:00:00Z"}, "expires_at"),
    ({"protected": True, "expires_at": "9999-12-31T23:59:59Z"}, "expires_at"),
    ({"ttl": 1e308}, "ttl"),
    ({"ttl": "999999999999d"}, "ttl"),
    ({"ttl": 10**30}, "ttl"),
    ({"ttl": "\u0661\u0662h"}, "ttl"),
    ({"ttl": True}, "ttl"),
    ({"protected": None}, "protected"),
    ({"on_create": "SELECT 1\x00"}, "on_create"),
    ({"on_create_command": ["psql", "\x00"]}, "on_create_command"),
]

_JSON = {"Content-Type": "application/json"}


def _refused_naming(response: httpx.Response, field: str) -> None:
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert body["field"] == field and f'"{field}"' in body["message"], body


async def _state_of(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    listing = await http.get(f"{V1}/branches")
    assert listing.status_code == 200, listing.text
    [branch] = [b for b in listing.json()["branches"] if b["name"] == name]
    return {key: branch[key] for key in ("protected", "expires_at", "on_create", "status")}


@pytest.mark.parametrize(("body", "field"), _BAD_PATCHES)
async def test_a_bad_patch_is_refused_naming_the_field_and_changes_nothing(
    prism: PrismHandle, body: dict[str, Any], field: str
) -> None:
    async with api(prism) as http:
        assert (await http.post(f"{V1}/branches", json={"name": "target"})).status_code == 201
        before = await _state_of(http, "target")
        _refused_naming(await http.patch(f"{V1}/branches/target", json=body), field)
        assert await _state_of(http, "target") == before


async def test_nan_and_infinity_are_not_json(prism: PrismHandle) -> None:
    async with api(prism) as http:
        for raw in ('{"name": "nan", "ttl": NaN}', '{"name": "inf", "ttl": Infinity}'):
            response = await http.post(f"{V1}/branches", content=raw, headers=_JSON)
            assert (response.status_code, response.json()["code"]) == (400, "malformed_json")
        huge = '{"name": "huge", "ttl": ' + "9" * 5000 + "}"
        response = await http.post(f"{V1}/branches", content=huge, headers=_JSON)
        assert (response.status_code, response.json()["code"]) == (400, "malformed_json")
        assert {b["name"] for b in (await http.get(f"{V1}/branches")).json()["branches"]} == {
            "main"
        }


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"name": "x", "parent": "\\ud800"}', "parent"),
        ('{"name": "x", "\\ud800": 1}', "\ud800"),
        ('{"name": "\\ud800\\u0000"}', "name"),
    ],
)
async def test_strings_that_cannot_be_stored_are_refused(
    prism: PrismHandle, raw: str, field: str
) -> None:
    async with api(prism) as http:
        response = await http.post(f"{V1}/branches", content=raw, headers=_JSON)
    assert response.status_code == 422 and response.json()["field"] == field, response.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "bad", "ttl": 1e308}, "ttl"),
        ({"name": "bad", "ttl": "999999999999d"}, "ttl"),
        ({"name": "bad", "at": "-999999999999d"}, "at"),
        ({"name": "bad", "at": "0001-01-01T00:00:00+14:00"}, "at"),
        ({"name": "bad", "protected": "yes"}, "protected"),
        ({"name": "bad\x00"}, "name"),
        ({"name": "bad", "parent": 7}, "parent"),
    ],
)
async def test_a_bad_create_is_refused_naming_the_field_and_makes_nothing(
    prism: PrismHandle, body: dict[str, Any], field: str
) -> None:
    async with api(prism) as http:
        _refused_naming(await http.post(f"{V1}/branches", json=body), field)
        listing = await http.get(f"{V1}/branches")
    assert listing.status_code == 200
    assert [b["name"] for b in listing.json()["branches"]] == ["main"]
    assert prism.manager.policies.get("bad").expires_at is None


@pytest.mark.parametrize("since", ["\u0661\u0662", "\u00b2", "9" * 5000, "-1"])
async def test_since_that_is_not_a_seq_is_refused(prism: PrismHandle, since: str) -> None:
    async with api(prism) as http:
        _refused_naming(await http.get(f"{V1}/events", params={"since": since}), "since")
        assert (await http.get(f"{V1}/events", params={"since": "0"})).status_code == 200


async def test_a_diff_of_an_impossible_database_is_refused(prism: PrismHandle) -> None:
    async with api(prism) as http:
        response = await http.get(
            f"{V1}/branches/main/diff", params={"against": "main", "database": "a\x00b"}
        )
    _refused_naming(response, "database")


async def test_an_unhandled_error_is_500_internal_error(
    prism: PrismHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(name: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(prism.manager, "policy", broken)
    async with api(prism) as http:
        response = await http.get(f"{V1}/branches/main")
    assert (response.status_code, response.json()["code"]) == (500, "internal_error")


async def test_an_unreadable_stored_expiry_is_read_as_none_and_the_listing_works(
    data_dir: Path,
) -> None:
    """What an older Prism saved for ``9999-12-31T23:59:59-14:00``: the branch is kept."""

    async def run_once(step: Any) -> Any:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(PrismServer(make_settings(data_dir)).run)
            try:
                return await step(info.manager, info.api_url)
            finally:
                nursery.cancel_scope.cancel()

    async def create(manager: BranchManager, url: str) -> None:
        await manager.create("old", ttl=3600.0)

    async def listing(manager: BranchManager, url: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            return await http.get(f"{V1}/branches")

    await run_once(create)
    with sqlite3.connect(data_dir / "prism.db") as db:
        db.execute(
            "UPDATE branch_policy SET expires_at = '9999-12-31T23:59:59-14:00' WHERE name = 'old'"
        )
    db.close()
    response = await run_once(listing)
    assert response.status_code == 200, response.text
    [old] = [b for b in response.json()["branches"] if b["name"] == "old"]
    assert old["expires_at"] is None
