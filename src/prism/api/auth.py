"""API access control: with ``api_token`` set, data and operations need ``Bearer <token>``.

The page's shell (``/`` and ``/static``) holds no data and stays open so a browser can load it
and ask for the token; ``/healthz`` stays open for liveness probes. Everything else — the REST
API, the event stream, ``/metrics`` and the seed's ``/branches`` — is refused with 401 (logged)
without the right token. Browsers cannot set headers on a WebSocket, so the event stream also
accepts the token as the ``token`` query parameter.
"""

from __future__ import annotations

import hmac
import logging

from quart import request, websocket
from quart_trio import QuartTrio

from prism.api.errors import ApiError

log = logging.getLogger(__name__)

_OPEN_PATHS = ("/", "/healthz", "/favicon.ico")
_OPEN_PREFIXES = ("/static/",)


def _needs_token(path: str) -> bool:
    return path not in _OPEN_PATHS and not path.startswith(_OPEN_PREFIXES)


def _presented(authorization: str | None, query_token: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return query_token


def _check(token: str, path: str, remote: str | None, presented: str | None) -> None:
    if presented is not None and hmac.compare_digest(presented.encode(), token.encode()):
        return
    reason = "no token" if presented is None else "wrong token"
    log.warning("api: refused %s from %s: %s", path, remote or "unknown", reason)
    raise ApiError(
        401,
        "unauthorized",
        f"this Prism API needs a token ({reason} given)",
        hint="send 'Authorization: Bearer <token>' (prism: --api-token or $PRISM_API_TOKEN)",
    )


def install_auth(app: QuartTrio, token: str) -> None:
    """Require ``token`` on every protected route of ``app``; nothing to do if it is empty."""
    if not token:
        return

    @app.before_request
    async def _check_request() -> None:
        if _needs_token(request.path):
            presented = _presented(request.headers.get("Authorization"), None)
            _check(token, request.path, request.remote_addr, presented)

    @app.before_websocket
    async def _check_websocket() -> None:
        presented = _presented(websocket.headers.get("Authorization"), websocket.args.get("token"))
        _check(token, websocket.path, websocket.remote_addr, presented)
