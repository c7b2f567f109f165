"""The REST API under ``/api/v1``: every call is one ``BranchManager`` operation.

Bodies and query parameters are checked whole by ``prism.api.fields`` before the manager is
called, so a refused request changes nothing; everything about branches themselves (names,
parents, conflicts) is decided by the manager, so the proxy, the API and the CLI agree.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn
from urllib.parse import urlsplit

from quart import Response, jsonify, request
from quart_trio import QuartTrio

from prism import __version__
from prism.api import fields
from prism.api.errors import ApiError
from prism.api.views import branch_view, confinement_view, readiness, trash_view
from prism.branches.activity import ActivityLog
from prism.branches.manager import Branch, BranchManager
from prism.branches.schemadiff import diff_view, format_diff
from prism.branches.snapshots import precise_time
from prism.core.names import MAIN_BRANCH
from prism.durable.state import utcnow
from prism.frontdoor.dataplane import DataPlane
from prism.postgres.dsn import PasswordCheck, confirmed, connection_view

PREFIX = "/api/v1"
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


def _refuse_constant(name: str) -> NoReturn:
    """``NaN`` and ``Infinity`` are not JSON (RFC 8259), though Python's parser takes them."""
    raise ValueError(f"{name} is not a JSON number")


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
        body = json.loads(raw or "null", parse_constant=_refuse_constant)
    except ValueError as exc:  # also a number past int()'s 4300 digits, not a JSONDecodeError
        raise ApiError(
            400, "malformed_json", f"the request body is not valid JSON: {exc}"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the request body must be a JSON object")
    return body


def _request_host() -> str | None:
    """The host name the caller reached the API under (for a wildcard front door)."""
    return urlsplit("//" + request.host).hostname if request.host else None


def register_routes(
    app: QuartTrio,
    manager: BranchManager,
    data_plane: DataPlane,
    source_health: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    password_check: PasswordCheck | None = None,
) -> None:
    """Add the REST routes, ``/healthz`` and the seed's ``/branches`` to ``app``."""

    async def view(branch: Branch, *, with_password: bool = False) -> dict[str, Any]:
        usage = await manager.usage_bytes(branch.name)
        params = manager.connection(branch.name, host=_request_host(), with_password=with_password)
        if params is not None and manager.endpoint is not None:
            superuser = manager.endpoint.superuser
            params = await confirmed(params, branch.name, superuser, password_check)
        kept = manager.point_in_time
        return branch_view(
            branch,
            disk_bytes=usage,
            policy=manager.policy(branch.name),
            disk=(await manager.disk_use(branch.name)).as_dict(),
            connection=None if params is None else connection_view(params),
            keeps_wal=kept is not None and kept.keeps_wal(branch.name),
        )

    def bytes_of(name: str) -> int | None:
        branch = manager.get(name)
        return None if branch is None else branch.bytes_proxied

    activity = ActivityLog(bytes_of)
    manager.events.add_listener(activity.observe)

    @app.get(f"{PREFIX}/activity")
    async def branch_activity() -> Response:
        """Each branch's sessions and bytes per minute over the last hour (the sparklines)."""
        return jsonify({b.name: activity.sparkline(b.name) for b in manager.list()})

    @app.get("/healthz")
    async def healthz() -> Response:
        """Readiness: the event loop answers and main is made and serving (503 while main is
        made: a base backup is served but not ready; or while main's server does not serve);
        which data plane is in use; what the branch servers' sandbox enforces and what this
        host leaves unenforced."""
        code, verdict = readiness(manager)
        response = jsonify(
            {
                **verdict,
                "branches": len(manager.list()),
                "data_plane": {"name": data_plane.name, "reason": data_plane.reason},
                "sandbox": confinement_view(manager.runtime.confinement()),
                "disk": None if manager.budget is None else manager.budget.view(),
            }
        )
        response.status_code = code
        return response

    @app.get(f"{PREFIX}/status")
    async def daemon_status() -> Response:
        """One screen of the daemon's state (``prism status``): version, addresses, where
        data lives and on what, how servers run and are confined, main and its source, disk,
        branch counts."""
        branches = manager.list()
        main = manager.get(MAIN_BRANCH)
        endpoint = manager.endpoint
        return jsonify(
            {
                "version": __version__,
                "ready": manager.opened,
                "listen": None if endpoint is None else f"{endpoint.host}:{endpoint.port}",
                "api": request.host_url.rstrip("/"),
                "data_dir": str(manager.state.path.parent),
                "storage": {"name": manager.storage.name, "root": str(manager.storage.root)},
                "runtime": manager.runtime.name,
                "main": None if main is None else {"status": main.status.value},
                "source": {
                    "made_by": manager.main_made_by,
                    "health": None if source_health is None else await source_health(),
                },
                "branches": dict(Counter(branch.status.value for branch in branches)),
                "data_plane": data_plane.name,
                "data_plane_reason": data_plane.reason,
                "sandbox": confinement_view(manager.runtime.confinement()),
                "disk": None if manager.budget is None else manager.budget.view(),
            }
        )

    @app.post(f"{PREFIX}/archive/prune")
    async def prune_archive() -> Response:
        """Start a branch's point-in-time window at ``before``: the snapshots and archived WAL
        no branch as of a time from then on needs are removed now, freeing their space."""
        body = await _json_body()
        kept = manager.point_in_time
        if kept is None:
            raise ApiError(
                409,
                "no_archive",
                "Prism keeps no snapshots or WAL archive (--snapshot-every 0)",
            )
        branch, before = fields.prune_request(body, utcnow())
        manager.require(branch)
        removed = await kept.prune_before(before, branch)
        snapshots = kept.snapshots(branch)
        return jsonify(
            {
                "branch": branch,
                "removed_snapshots": removed,
                "window_start": precise_time(snapshots[0].taken_at) if snapshots else None,
            }
        )

    async def full_view(branch: Branch, *, with_password: bool = False) -> dict[str, Any]:
        """``view``, and for main following a source its ``source`` (a base backup's progress)."""
        shown = await view(branch, with_password=with_password)
        if branch.name == MAIN_BRANCH and source_health is not None:
            shown["source"] = await source_health()
        return shown

    @app.get(f"{PREFIX}/branches")
    async def list_branches() -> Response:
        shown = [await full_view(b) for b in manager.list()]
        disk = None if manager.budget is None else manager.budget.view()
        return jsonify({"branches": shown, "disk": disk})

    @app.get(f"{PREFIX}/branches/<name>")
    async def get_branch(name: str) -> Response:
        with_password = request.args.get("password", "").lower() in _TRUE
        return jsonify(await full_view(manager.require(name), with_password=with_password))

    @app.get(f"{PREFIX}/branches/<name>/snapshots")
    async def list_snapshots(name: str) -> Response:
        """The snapshots kept of ``name``, whether it keeps WAL, and the window ``at`` may
        name."""
        manager.require(name)
        kept = manager.point_in_time
        keeps_wal = kept is not None and kept.keeps_wal(name)
        snapshots = kept.snapshots(name) if kept is not None and keeps_wal else []
        window = None
        if snapshots:
            window = {"start": precise_time(snapshots[0].taken_at), "end": precise_time(utcnow())}
        shown = [snapshot.view() for snapshot in snapshots]
        return jsonify({"snapshots": shown, "window": window, "keeps_wal": keeps_wal})

    @app.delete(f"{PREFIX}/branches/<name>/snapshots/<snapshot>")
    async def delete_snapshot(name: str, snapshot: str) -> Response:
        """Remove one snapshot of ``name`` and the archived WAL only it needed, at once."""
        manager.require(name)
        kept = manager.point_in_time
        if kept is None or not await kept.delete_snapshot(name, snapshot):
            raise ApiError(
                404,
                "snapshot_not_found",
                f'branch "{name}" has no snapshot "{snapshot}"',
                hint=f"list them with GET {PREFIX}/branches/{name}/snapshots",
            )
        return jsonify({"deleted": [snapshot]})

    @app.get(f"{PREFIX}/branches/<name>/diff")
    async def diff_branch(name: str) -> Response:
        against = request.args.get("against")
        if not against:
            raise ApiError(
                422, "invalid_request", '"against" (the branch to compare with) is required'
            )
        database = fields.database(request.args.get("database"))
        if request.args.get("format") == "pg_dump":
            dumped = await manager.schema_dump_diff(name, against, database=database)
            return Response(dumped, content_type="text/plain; charset=utf-8")
        diff = await manager.schema_diff(name, against, database=database)
        described = diff_view(diff, a=name, b=against, database=database)
        if request.args.get("format") == "text":  # the page shows what `prism diff` prints
            return Response(format_diff(described), content_type="text/plain; charset=utf-8")
        return jsonify(described)

    @app.patch(f"{PREFIX}/branches/<name>")
    async def patch_branch(name: str) -> Response:
        manager.require(name)
        await manager.set_policy(name, **fields.policy_changes(await _json_body(), utcnow()))
        return jsonify(await view(manager.require(name)))

    @app.post(f"{PREFIX}/branches")
    async def create_branch() -> tuple[Response, int, dict[str, str]]:
        asked = fields.create_request(await _json_body(), utcnow())
        if manager.get(asked.parent) is None:
            raise ApiError(
                422,
                "unknown_parent",
                f'parent branch "{asked.parent}" does not exist',
                hint="list branches with GET /api/v1/branches",
                field="parent",
            )
        branch = await manager.create(
            asked.name, asked.parent, ttl=asked.ttl, protected=asked.protected, at=asked.at
        )
        location = f"{PREFIX}/branches/{branch.name}"
        return jsonify(await view(branch)), 201, {"Location": location}

    @app.delete(f"{PREFIX}/branches/<name>")
    async def delete_branch(name: str) -> Response:
        with_children = request.args.get("with_children", "").lower() in _TRUE
        # purge=true: freed at once, not kept for undelete (a CI job's clean-up, say).
        purge = "asked for (purge=true)" if request.args.get("purge", "").lower() in _TRUE else None
        deleted = await manager.delete(name, with_children=with_children, purge=purge)
        return jsonify({"deleted": deleted})

    @app.post(f"{PREFIX}/branches/<name>/undelete")
    async def undelete_branch(name: str) -> Response:
        """Bring back the last deleted branch called ``name`` (and what the same delete took
        below it) from the trash."""
        return jsonify({"undeleted": await manager.undelete(name)})

    @app.get(f"{PREFIX}/trash")
    async def list_trash() -> Response:
        """The deleted branches kept for undelete, oldest deletion first, with their purge
        times."""
        window = manager.trash.window
        entries = [trash_view(entry, window=window) for entry in manager.trash.list()]
        return jsonify({"trash": entries, "undelete_window": window})

    @app.post(f"{PREFIX}/branches/<name>/reset")
    async def reset_branch(name: str) -> Response:
        return jsonify(await view(await manager.reset(name)))

    @app.post(f"{PREFIX}/branches/main/refresh")
    async def refresh_main() -> Response:
        """A new generation of main from the source (``--source-mode dump``), once it serves."""
        if manager.refresh_main is None:
            raise ApiError(
                409,
                "not_dump_mode",
                "refreshing main needs --source-mode dump (a source copied with pg_dump)",
                hint="start Prism with --source CONNINFO --source-mode dump",
            )
        await manager.refresh_main()
        return jsonify(await view(manager.require(MAIN_BRANCH)))

    @app.post(f"{PREFIX}/branches/<name>/stop")
    async def stop_branch(name: str) -> Response:
        return jsonify(await view(await manager.stop(name)))

    @app.post(f"{PREFIX}/branches/<name>/start")
    async def start_branch(name: str) -> Response:
        return jsonify(await view(await manager.start(name)))
