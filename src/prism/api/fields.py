"""What the REST API accepts in each body field and query parameter, checked before any change.

Pure: decoded JSON (or a query string) and the time now in, checked values or an ``ApiError``
out, so one request is refused whole or taken whole and nothing half-valid is ever saved. Every
refusal is ``422 invalid_request`` with ``field`` set and a message naming the field and what it
accepts. The ranges (docs/api.md, "Accepted values") keep every later step in range: adding a
TTL to now, showing an expiry in UTC, comparing it with now, never overflows ``datetime``.

- ``ttl``: a duration (``"72h"``) or a JSON number of seconds; finite, above 0, at most
  ``MAX_LIFETIME`` (100 years).
- ``expires_at``: an RFC 3339 time with its zone, later than now and at most ``MAX_LIFETIME``
  from now; or null (never). Now or earlier is refused: to be rid of a branch, delete it.
- ``at``: an RFC 3339 time with its zone or ``-DURATION``, at most ``MAX_LIFETIME`` back; a
  time in the future or outside the kept window is the window's refusal (``outside_window``).
- ``since``: an event seq, ASCII digits only, at most ``MAX_SEQ_DIGITS`` of them.
- Text (``name``, ``parent``, ``on_create``, the command's arguments, ``database``): a JSON
  string without NUL or unpaired surrogates, which neither sqlite nor Postgres can hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prism.api.errors import ApiError
from prism.branches.pitr import parse_at
from prism.core.config import parse_duration
from prism.core.errors import ConfigError
from prism.core.names import MAIN_BRANCH
from prism.durable.state import parse_rfc3339

MAX_LIFETIME = timedelta(days=100 * 365)
"""The longest ``ttl``, the furthest ``expires_at`` and the furthest back ``at`` can reach."""
MAX_SEQ_DIGITS = 18
"""``since`` fits a 64-bit seq; more digits cannot name an event that happened."""
MAX_DATABASE_BYTES = 63
"""Postgres's longest identifier (NAMEDATALEN - 1)."""

CREATE_FIELDS = frozenset({"name", "parent", "ttl", "protected", "at"})
PATCH_FIELDS = frozenset({"protected", "expires_at", "ttl", "on_create", "on_create_command"})

_TTL_RANGE = 'a duration such as "72h" or a number of seconds, above 0 and at most 100 years'
_EXPIRES_RANGE = (
    'an RFC 3339 time with its zone (e.g. "2026-12-01T00:00:00Z") after now and at most '
    "100 years from now, or null"
)
_AT_RANGE = "an RFC 3339 time with its zone or -DURATION (e.g. -15m), at most 100 years back"


def invalid(field: str, accepts: str, *, why: str | None = None) -> ApiError:
    """The refusal of ``field``: what it accepts, and (when it helps) what was wrong."""
    message = f'"{field}" must be {accepts}' + (f": {why}" if why else "")
    return ApiError(422, "invalid_request", message, field=field)


def text(field: str, value: Any, accepts: str = "a string") -> str:
    """``value`` if it is a string sqlite and Postgres can hold (UTF-8, no NUL)."""
    if not isinstance(value, str):
        raise invalid(field, accepts)
    if "\x00" in value:
        raise invalid(field, accepts, why="it holds a NUL character")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise invalid(field, accepts, why="it is not valid UTF-8 (an unpaired surrogate)") from None
    return value


def flag(field: str, value: Any) -> bool:
    """A JSON ``true`` or ``false`` (not 1, "yes" or null)."""
    if not isinstance(value, bool):
        raise invalid(field, "true or false")
    return value


def ttl_seconds(value: Any) -> float | None:
    """``ttl`` in seconds; None for null or absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise invalid("ttl", _TTL_RANGE)
    if isinstance(value, int) and abs(value) > MAX_LIFETIME.total_seconds():
        # Checked as an int: float() of a 400-digit number raises instead of answering.
        raise invalid("ttl", _TTL_RANGE)
    try:
        seconds = float(value) if not isinstance(value, str) else parse_duration(value)
    except ConfigError as exc:
        raise invalid("ttl", _TTL_RANGE, why=exc.message) from None
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_LIFETIME.total_seconds()):
        raise invalid("ttl", _TTL_RANGE)
    return seconds


def expiry_after(ttl: float, now: datetime) -> datetime:
    """When a branch given ``ttl`` (as checked by ``ttl_seconds``) at ``now`` expires."""
    return now + timedelta(seconds=ttl)


def expires_at(value: Any, now: datetime) -> datetime | None:
    """``expires_at`` in UTC; None for null (never expires)."""
    if value is None:
        return None
    try:
        moment = parse_rfc3339(text("expires_at", value, _EXPIRES_RANGE))
    except ValueError as exc:
        raise invalid("expires_at", _EXPIRES_RANGE, why=str(exc)) from None
    if not now < moment <= now + MAX_LIFETIME:
        raise invalid("expires_at", _EXPIRES_RANGE)
    return moment


def at(value: Any, now: datetime, field: str = "at") -> datetime | None:
    """``at`` (or another time ``field``) in UTC; None for null or absent. The window is
    checked by the manager."""
    if value is None:
        return None
    try:
        moment = parse_at(text(field, value, _AT_RANGE), now)
    except ValueError as exc:
        raise invalid(field, _AT_RANGE, why=str(exc)) from None
    if moment < now - MAX_LIFETIME:
        raise invalid(field, _AT_RANGE)
    return moment


def prune_request(body: dict[str, Any], now: datetime) -> tuple[str, datetime]:
    """A ``POST /archive/prune`` body: whose archive (main by default), and ``before``."""
    _refuse_unknown(body, frozenset({"branch", "before"}))
    before = at(body.get("before"), now, "before")
    if before is None:
        raise ApiError(422, "invalid_request", '"before" (a time) is required', field="before")
    return text("branch", body.get("branch", MAIN_BRANCH)), before


def on_create(value: Any) -> str | None:
    """``on_create``: SQL text, or null to remove it."""
    if value is None:
        return None
    sql = text("on_create", value, "SQL text or null")
    if not sql.strip():
        raise invalid("on_create", "SQL text or null", why="it is blank")
    return sql


def command(value: Any) -> tuple[str, ...] | None:
    """``on_create_command``: a program and its arguments as a list of strings, or null."""
    accepts = 'a program and its arguments, e.g. ["psql", "-f", "/etc/prism/mask.sql"], or null'
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise invalid("on_create_command", accepts)
    argv = tuple(text("on_create_command", arg, accepts) for arg in value)
    if not argv[0].strip():
        raise invalid("on_create_command", accepts, why="the program is blank")
    return argv


@dataclass(frozen=True)
class CreateRequest:
    """A checked ``POST /branches`` body."""

    name: str
    parent: str
    ttl: float | None
    protected: bool
    at: datetime | None


def _refuse_unknown(body: dict[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        shown = ", ".join(name[:40] for name in unknown[:10])
        raise ApiError(422, "invalid_request", f"unknown field(s): {shown}", field=unknown[0])


def create_request(body: dict[str, Any], now: datetime) -> CreateRequest:
    """A create body, every field checked (the parent's existence is the caller's)."""
    _refuse_unknown(body, CREATE_FIELDS)
    if "name" not in body:
        raise ApiError(
            422, "invalid_request", 'the "name" of the new branch is required', field="name"
        )
    return CreateRequest(
        name=text("name", body["name"]),
        parent=text("parent", body.get("parent", MAIN_BRANCH)),
        ttl=ttl_seconds(body.get("ttl")),
        protected=flag("protected", body.get("protected", False)),
        at=at(body.get("at"), now),
    )


def policy_changes(body: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The policy fields a PATCH body changes, every one checked."""
    _refuse_unknown(body, PATCH_FIELDS)
    if "ttl" in body and "expires_at" in body:
        raise ApiError(
            422, "invalid_request", 'give "ttl" or "expires_at", not both', field="expires_at"
        )
    changes: dict[str, Any] = {}
    if "protected" in body:
        changes["protected"] = flag("protected", body["protected"])
    if "expires_at" in body:
        changes["expires_at"] = expires_at(body["expires_at"], now)
    ttl = ttl_seconds(body.get("ttl"))
    if ttl is not None:
        changes["expires_at"] = expiry_after(ttl, now)
    if "on_create" in body:
        changes["on_create"] = on_create(body["on_create"])
    if "on_create_command" in body:
        changes["on_create_command"] = command(body["on_create_command"])
    if not changes:
        fields = ", ".join(sorted(PATCH_FIELDS))
        raise ApiError(422, "invalid_request", f"nothing to change: give one of {fields}")
    return changes


def event_seq(value: str | None) -> int:
    """The ``since`` query parameter: an event seq; absent: 0."""
    if value is None:
        return 0
    if not (value.isascii() and value.isdigit() and len(value) <= MAX_SEQ_DIGITS):
        raise invalid("since", f"an event seq: 1 to {MAX_SEQ_DIGITS} ASCII digits")
    return int(value)


def database(value: str | None) -> str:
    """The ``database`` query parameter of a diff; absent: ``postgres``."""
    if value is None:
        return "postgres"
    accepts = f"a database name of 1 to {MAX_DATABASE_BYTES} bytes"
    name = text("database", value, accepts)
    if not 0 < len(name.encode()) <= MAX_DATABASE_BYTES:
        raise invalid("database", accepts)
    return name
