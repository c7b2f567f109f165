"""The API's trust boundary without a token: refuse what a foreign web page could send.

Installed before ``auth`` on every route, the page and the event stream included (DNS
rebinding reads data too); the rules are ``prism.api.sameorigin``'s, this module only reads
them off the request, logs the refusal (WARNING, once per request) and raises it as an
``ApiError`` so it reaches the client in the API's usual JSON shape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from quart import request, websocket
from quart.wrappers.base import BaseRequestWebsocket
from quart_trio import QuartTrio

from prism.api.errors import ApiError
from prism.api.sameorigin import Arrival, refusal
from prism.core.hostnames import host_name

log = logging.getLogger(__name__)


def _enforce(incoming: BaseRequestWebsocket, served: frozenset[str], *, is_websocket: bool) -> None:
    """Refuse ``incoming`` (a request or a WebSocket handshake) if it breaks a rule."""
    headers = incoming.headers
    arrival = Arrival(
        method=incoming.method,
        path=incoming.path,
        scheme=incoming.scheme,
        host=headers.get("Host"),
        origin=headers.get("Origin"),
        referer=headers.get("Referer"),
        content_type=headers.get("Content-Type"),
        content_length=headers.get("Content-Length"),
        transfer_encoding=headers.get("Transfer-Encoding"),
        arrived_on=None if incoming.server is None else incoming.server[0],
        websocket=is_websocket,
    )
    refused = refusal(arrival, served)
    if refused is None:
        return
    log.warning(
        "api: refused %s %s from %s: %s",
        "WEBSOCKET" if is_websocket else arrival.method,
        arrival.path,
        incoming.remote_addr or "unknown",
        refused.reason,
    )
    raise ApiError(refused.status, refused.code, refused.message, hint=refused.hint)


def install_origin_checks(app: QuartTrio, served_names: Iterable[str]) -> None:
    """Check ``Host``, ``Origin``/``Referer`` and body type on every request and handshake.

    ``served_names`` are the host names Prism answers to besides the loopback ones (the
    ``--api`` host and ``--api-hostname``); install this before ``install_auth`` so a rebound
    page learns nothing, not even that a token is needed.
    """
    served = frozenset(n for n in (host_name(name) for name in served_names) if n is not None)

    @app.before_request
    async def _check_request() -> None:
        _enforce(request, served, is_websocket=False)

    @app.before_websocket
    async def _check_websocket() -> None:
        _enforce(websocket, served, is_websocket=True)
