"""The REST API under ``/api/v1``: every call is one ``BranchManager`` operation.

Bodies are validated here (shape and types); everything about branches themselves (names,
parents, conflicts) is decided by the manager, so the proxy, the API and the CLI agree.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from prism.api.errors import ApiError
from prism.api.views import branch_view
from prism.branches import Branch, BranchManager
from prism.storage.base import MAIN_BRANCH

PREFIX = "/api/v1"
_CREATE_FIELDS = {"name", "parent"}
_TRUE = ("1", "true", "yes")


async def _json_body() -> dict[str, Any]:
    raw = await request.get_data(as_text=True)
    try:
        body = json.loads(raw or "null")
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, "malformed_json", f"the request body is not valid JSON: {exc}"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the request body must be a JSON object")
    return body


def _string_field(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise ApiError(422, "invalid_request", f'"{name}" must be a string')
    return value


def register_routes(
    app: QuartTrio,
    manager: BranchManager,
    source_health: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> None:
    """Add the REST routes, ``/healthz`` and the seed's ``/branches`` to ``app``."""

    async def view(branch: Branch) -> dict[str, Any]:
        # Drivers that can tell may walk the directory: keep that off the event loop.
        usage = await trio.to_thread.run_sync(manager.storage.usage_bytes, branch.name)
        return branch_view(branch, disk_bytes=usage)

    @app.get("/healthz")
    async def healthz() -> Response:
        """Liveness: the event loop answers and the manager is open."""
        return jsonify({"status": "ok", "branches": len(manager.list())})

    @app.get(f"{PREFIX}/branches")
    async def list_branches() -> Response:
        return jsonify({"branches": [await view(b) for b in manager.list()]})

    @app.get(f"{PREFIX}/branches/<name>")
    async def get_branch(name: str) -> Response:
        shown = await view(manager.require(name))
        if name == MAIN_BRANCH and source_health is not None:
            shown["source"] = await source_health()
        return jsonify(shown)

    @app.post(f"{PREFIX}/branches")
    async def create_branch() -> tuple[Response, int, dict[str, str]]:
        body = await _json_body()
        unknown = sorted(set(body) - _CREATE_FIELDS)
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown field(s): {', '.join(unknown)}")
        if "name" not in body:
            raise ApiError(422, "invalid_request", 'the "name" of the new branch is required')
        name = _string_field(body, "name")
        parent = _string_field(body, "parent", MAIN_BRANCH)
        if manager.get(parent) is None:
            raise ApiError(
                422,
                "unknown_parent",
                f'parent branch "{parent}" does not exist',
                hint="list branches with GET /api/v1/branches",
            )
        branch = await manager.create(name, parent)
        return jsonify(await view(branch)), 201, {"Location": f"{PREFIX}/branches/{name}"}

    @app.delete(f"{PREFIX}/branches/<name>")
    async def delete_branch(name: str) -> Response:
        with_children = request.args.get("with_children", "").lower() in _TRUE
        deleted = await manager.delete(name, with_children=with_children)
        return jsonify({"deleted": deleted})

    @app.post(f"{PREFIX}/branches/<name>/reset")
    async def reset_branch(name: str) -> Response:
        return jsonify(await view(await manager.reset(name)))

    @app.post(f"{PREFIX}/branches/<name>/stop")
    async def stop_branch(name: str) -> Response:
        return jsonify(await view(await manager.stop(name)))

    @app.post(f"{PREFIX}/branches/<name>/start")
    async def start_branch(name: str) -> Response:
        return jsonify(await view(await manager.start(name)))
