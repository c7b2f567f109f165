"""How failures look on the API: JSON ``{"code", "message", "hint"}`` with a fitting status.

``code`` is stable (scripts and the CLI match on it); ``message`` is for people. Every
``PrismError`` a branch operation raises maps to one entry here, so the API, the CLI and the web
page all report the same failure the same way.
"""

from __future__ import annotations

import logging

from quart import Response, jsonify
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from prism.core.errors import (
    BackendQueryError,
    BranchConflict,
    BranchExists,
    BranchHasChildren,
    BranchNotFound,
    BranchProtected,
    DiskFull,
    HookCommandsNotAllowed,
    HookFailed,
    InvalidBranchName,
    LimitExceeded,
    OutsideWindow,
    PrismError,
    ProvisionFailed,
    RuntimeStartFailed,
    ServerUnwell,
    StartingUp,
    StorageError,
    TooManyConnections,
)
from prism.source.basebackup import SourceError

log = logging.getLogger(__name__)

# Most specific first: the first class the error is an instance of wins.
_STATUS: tuple[tuple[type[PrismError], int, str], ...] = (
    (BranchNotFound, 404, "branch_not_found"),
    (InvalidBranchName, 422, "invalid_branch_name"),
    (BranchExists, 409, "branch_exists"),
    (BranchHasChildren, 409, "branch_has_children"),
    (BranchProtected, 409, "branch_protected"),
    (BranchConflict, 409, "conflict"),
    (LimitExceeded, 409, "limit_exceeded"),
    (OutsideWindow, 422, "outside_window"),
    (DiskFull, 507, "disk_full"),
    (TooManyConnections, 503, "too_many_running"),
    (StartingUp, 503, "starting_up"),
    (ServerUnwell, 503, "server_unwell"),
    (ProvisionFailed, 500, "provision_failed"),
    (HookFailed, 500, "hook_failed"),
    (HookCommandsNotAllowed, 403, "hook_commands_not_allowed"),
    (RuntimeStartFailed, 503, "start_failed"),
    (StorageError, 500, "storage_error"),
    (BackendQueryError, 422, "query_failed"),
    (SourceError, 502, "source_failed"),
)

#: Statuses sent before the request body was read to its end (too slow, too large).
_BODY_LEFT_UNREAD = (408, 413)


class ApiError(Exception):
    """A request the API refuses before it reaches the manager (bad body, bad token)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        hint: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.hint = status, code, message, hint
        self.field = field
        """The body field or query parameter refused, so a script or form can point at it."""


def error_response(
    status: int, code: str, message: str, hint: str | None = None, field: str | None = None
) -> Response:
    body: dict[str, str] = {"code": code, "message": message}
    if hint:
        body["hint"] = hint
    if field:
        body["field"] = field
    response = jsonify(body)
    response.status_code = status
    return response


def status_of(error: PrismError) -> tuple[int, str]:
    """The HTTP status and stable code for a branch operation's error."""
    for kind, status, code in _STATUS:
        if isinstance(error, kind):
            return status, code
    return 500, "internal_error"


def install_error_handlers(app: QuartTrio) -> None:
    """Turn every failure into a JSON error; never an HTML page or a traceback."""

    @app.errorhandler(ApiError)
    async def _api_error(error: ApiError) -> Response:
        return error_response(error.status, error.code, error.message, error.hint, error.field)

    @app.errorhandler(PrismError)
    async def _prism_error(error: PrismError) -> Response:
        status, code = status_of(error)
        if status >= 500:
            log.error("api: %s: %s", code, error.message)
        return error_response(status, code, error.message, error.hint)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        # An unhandled exception arrives as InternalServerError (Quart has logged its
        # traceback); its code is the documented ``internal_error``, like status_of's fallback.
        if error.code == 500:
            code = "internal_error"
        else:
            code = (error.name or "error").lower().replace(" ", "_")
        response = error_response(error.code or 500, code, error.description or code)
        if error.code in _BODY_LEFT_UNREAD:
            # Part of the body may still be on its way: this connection carries no more requests.
            response.headers["Connection"] = "close"
        return response
