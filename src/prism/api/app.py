"""The control plane: a quart-trio app served by hypercorn inside Prism's own trio run.

One module per concern: ``routes`` (REST + ``/healthz`` + the seed's ``/branches``), ``stream``
(the event WebSocket), ``page`` (the web page), ``origin`` (which hosts and pages may call it),
``auth`` (the optional bearer token), ``errors`` (JSON errors), ``views`` (a branch's JSON
shape). ``/metrics`` is served here from ``prism.api.metrics``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from quart import Response, jsonify
from quart_trio import QuartTrio

from prism.api.auth import install_auth
from prism.api.errors import install_error_handlers
from prism.api.metrics import Metrics
from prism.api.origin import install_origin_checks
from prism.api.page import register_page
from prism.api.routes import register_routes
from prism.api.stream import register_stream
from prism.branches.manager import BranchManager
from prism.core.settings import Settings
from prism.durable.state import rfc3339
from prism.frontdoor.dataplane import PUMP, DataPlane
from prism.postgres.dsn import PasswordCheck

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"

#: Request bodies are a branch name and a parent; anything near this size is not a request.
MAX_BODY_BYTES = 64 * 1024


def create_app(
    manager: BranchManager,
    *,
    api_token: str = "",
    served_names: Sequence[str] = (),
    data_plane: DataPlane = PUMP,
    body_timeout: float = Settings.api_body_timeout,
    source_health: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    password_check: PasswordCheck | None = None,
) -> QuartTrio:
    """Build the HTTP app over ``manager``; every route reads or changes branches through it.

    ``served_names`` are the host names the API answers to besides the loopback ones (see
    ``prism.api.origin``). ``data_plane`` is only reported (``/healthz``, ``/metrics``): the
    proxy owns it.
    ``source_health`` reads main's replication from its source, when main follows one.
    ``password_check`` tells whether a password logs a role in to a branch (``--auth verify``
    has the verifiers): a password asked for that does not is withheld.
    A client that sent its headers has ``body_timeout`` seconds to send the body, or gets 408
    and is closed (see ``prism.api.closing``): a local user must not be able to pin Prism's
    descriptors with bodies that never come.
    """
    app = QuartTrio("prism.api", static_folder="static", static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["BODY_TIMEOUT"] = body_timeout
    metrics = Metrics(manager, data_plane, manager.runtime.confinement())
    install_error_handlers(app)
    install_origin_checks(app, served_names)
    install_auth(app, api_token)
    register_routes(app, manager, data_plane, source_health, password_check)
    register_stream(app, manager)
    register_page(app)

    @app.get("/branches")
    async def branches_seed_format() -> Response:
        """The seed's format: each branch name → its last activity time (RFC 3339, UTC)."""
        return jsonify({b.name: rfc3339(b.last_active) for b in manager.list()})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        source = None if source_health is None else await source_health()
        return Response(metrics.render(source=source), content_type=PROMETHEUS_TEXT)

    return app
