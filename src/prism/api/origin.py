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
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers

from prism.api.errors import ApiError
from prism.api.sameorigin import Arrival, host_name, refusal

log = logging.getLogger(__name__)


def _arrival(
    method: str,
    path: str,
    scheme: str,
    headers: Headers,
    server: tuple[str, int | None] | None,
    *,
    is_websocket: bool,
) -> Arrival:
    return Arrival(
        method=method,
        path=path,
        scheme=scheme,
        host=headers.get("Host"),
        origin=headers.get("Origin"),
        referer=headers.get("Referer"),
        content_type=headers.get("Content-Type"),
        content_length=headers.get("Content-Length"),
        transfer_encoding=headers.get("Transfer-Encoding"),
        arrived_on=None if server is None else server[0],
        websocket=is_websocket,
    )


def _enforce(arrival: Arrival, served: frozenset[str], remote: str | None) -> None:
    refused = refusal(arrival, served)
    if refused is None:
        return
    log.warning(
        "api: refused %s %s from %s: %s",
        "WEBSOCKET" if arrival.websocket else arrival.method,
        arrival.path,
        remote or "unknown",
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
        arrival = _arrival(
            request.method,
            request.path,
            request.scheme,
            request.headers,
            request.server,
            is_websocket=False,
        )
        _enforce(arrival, served, request.remote_addr)

    @app.before_websocket
    async def _check_websocket() -> None:
        arrival = _arrival(
            "GET",
            websocket.path,
            websocket.scheme,
            websocket.headers,
            websocket.server,
            is_websocket=True,
        )
        _enforce(arrival, served, websocket.remote_addr)
