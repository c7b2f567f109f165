"""The event stream: WebSocket ``/api/v1/events``, a snapshot of the branches then live events.

The subscription is opened *before* the snapshot is taken, so no transition can fall between
the two (at worst one is both in the snapshot and sent after it, which a client applies twice
harmlessly). When the daemon stops, every subscriber gets its ``shutdown`` event and a close
with 1001 (going away). A subscriber that reads too slowly is dropped by the bus; it is sent a last
``overflow`` event and the socket is closed with 1013 (try again later) so it can re-subscribe
and get a fresh snapshot.
"""

from __future__ import annotations

import json

from quart import Response, jsonify, request, websocket
from quart_trio import QuartTrio

from prism.api import fields
from prism.api.routes import PREFIX
from prism.api.views import branch_view
from prism.branches.manager import BranchManager
from prism.core.events import event_time

_TRY_AGAIN_LATER = 1013
_GOING_AWAY = 1001


def register_stream(app: QuartTrio, manager: BranchManager) -> None:
    """Add the ``/api/v1/events`` WebSocket and its plain-GET ring of recent events."""

    @app.get(f"{PREFIX}/events")
    async def recent_events() -> Response:
        since = fields.event_seq(request.args.get("since"))
        return jsonify({"events": manager.events.recent(since)})

    @app.websocket(f"{PREFIX}/events")
    async def events() -> None:
        async with manager.events.subscribe() as subscription:
            snapshot = {
                "type": "snapshot",
                "branch": None,
                "at": event_time(),
                "branches": [branch_view(b) for b in manager.list()],
            }
            await websocket.accept()
            await websocket.send(json.dumps(snapshot))
            async for event in subscription:
                await websocket.send(json.dumps(event))
            if subscription.overflowed:
                await websocket.close(_TRY_AGAIN_LATER, "fell behind; subscribe again")
            elif manager.events.closed:
                await websocket.close(_GOING_AWAY, "Prism is shutting down")
