"""The REST API under ``/api/v1``: every call is one ``BranchManager`` operation.

Bodies are validated here (shape and types); everything about branches themselves (names,
parents, conflicts) is decided by the manager, so the proxy, the API and the CLI agree.
"""

from __future__ import annotations

import json
from typing import Any

from quart import Response, jsonify, request
from quart_trio import QuartTrio

from prism.api.errors import ApiError
from prism.api.views import branch_view
from prism.branches import Branch, BranchManager
from prism.dataplane import DataPlane
from prism.names import MAIN_BRANCH

PREFIX = "/api/v1"
_CREATE_FIELDS = {"name", "parent"}
_TRUE = ("1", "true", "yes")


#: Deeper JSON than any request needs; refused before it can exhaust the parser's stack.
MAX_JSON_DEPTH = 32


def json_depth(raw: str) -> int:
    """How deeply ``raw``'s arrays and objects nest (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in raw:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


async def _json_body() -> dict[str, Any]:
    data = await request.get_data(as_text=True)
    raw = data if isinstance(data, str) else data.decode(errors="replace")
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise ApiError(
            400,
            "json_too_deep",
            f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels",
            hint='send a flat object such as {"name": "feature-x"}',
        )
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


def register_routes(app: QuartTrio, manager: BranchManager, data_plane: DataPlane) -> None:
    """Add the REST routes, ``/healthz`` and the seed's ``/branches`` to ``app``."""

    async def view(branch: Branch) -> dict[str, Any]:
        return branch_view(branch, disk_bytes=await manager.usage_bytes(branch.name))

    @app.get("/healthz")
    async def healthz() -> Response:
        """Liveness: the event loop answers and the manager is open; which data plane is in use."""
        return jsonify(
            {
                "status": "ok",
                "branches": len(manager.list()),
                "data_plane": {"name": data_plane.name, "reason": data_plane.reason},
            }
        )

    @app.get(f"{PREFIX}/branches")
    async def list_branches() -> Response:
        return jsonify({"branches": [await view(b) for b in manager.list()]})

    @app.get(f"{PREFIX}/branches/<name>")
    async def get_branch(name: str) -> Response:
        return jsonify(await view(manager.require(name)))

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
