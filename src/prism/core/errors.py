"""Exceptions that carry a message a person can act on and the SQLSTATE a Postgres client sees.

Every failure that can reach a client is one of these, so the proxy can always answer with a
proper ErrorResponse instead of closing the socket or leaking a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator


class PrismError(Exception):
    """Base for Prism's user-facing errors."""

    sqlstate: str = "XX000"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        detail: str | None = None,
        sqlstate: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.detail = detail
        if sqlstate is not None:
            self.sqlstate = sqlstate


class ProtocolViolation(PrismError):
    """The client sent bytes that are not a valid start-up of the Postgres protocol."""

    sqlstate = "08P01"


class InvalidBranchName(PrismError):
    """A branch name that Prism refuses, before anything touches the disk."""

    sqlstate = "42602"


class BranchNotFound(PrismError):
    """An operation names a branch that does not exist."""

    sqlstate = "3D000"


class TooManyConnections(PrismError):
    """A cap on connections or running servers is reached (Postgres's own SQLSTATE for it)."""

    sqlstate = "53300"


class LimitExceeded(PrismError):
    """A configured cap, such as ``--max-branches``, refuses the operation."""

    sqlstate = "53400"


class DiskFull(PrismError):
    """An operation would cut into the disk reserve (``--disk-reserve``), or a file system is
    too full for a server to write WAL: refused before anything is written.

    53100 is Postgres's own disk_full, so clients and poolers read it as "no space"."""

    sqlstate = "53100"


class BranchConflict(PrismError):
    """An operation that clashes with a branch's current state (exists, has children)."""

    sqlstate = "55006"


class BranchExists(BranchConflict):
    """A branch of that name already exists."""


class BranchHasChildren(BranchConflict):
    """Deleting a branch would orphan branches cloned from it."""


class BranchProtected(BranchConflict):
    """The operation is not allowed on this branch (main cannot be deleted or reset)."""


class StorageError(PrismError):
    """A storage driver could not clone, create or remove a branch's data directory."""

    sqlstate = "58030"


class RuntimeStartFailed(PrismError):
    """A branch's Postgres server could not be started or did not become ready."""

    sqlstate = "57P03"


class StartingUp(PrismError):
    """Main is still being made (a base backup of the source, initdb): nothing can use it yet.

    57P03 (cannot_connect_now) is what Postgres itself answers while it starts up, so clients
    and poolers already know to try again later.
    """

    sqlstate = "57P03"


class ServerUnwell(PrismError):
    """A branch's server was up and does not serve now (crash recovery, no answer, refusing):
    its clients are told so at once, with the reason and its log's last lines.

    57P03 (cannot_connect_now), as Postgres answers during recovery: clients retry later.
    """

    sqlstate = "57P03"


class RuntimeStopFailed(PrismError):
    """A branch's Postgres server did not stop when asked."""

    sqlstate = "58000"


class ConnectionTerminated(PrismError):
    """Prism closed a client's session because an operator reset, stopped or deleted its branch."""

    sqlstate = "57P01"  # admin_shutdown: what clients already treat as "reconnect later"


class ProvisionFailed(PrismError):
    """Creating a branch failed; the partial branch has been rolled back."""

    sqlstate = "58000"


class BackendQueryError(PrismError):
    """A query on Prism's own service connection to a branch failed."""


class HookFailed(PrismError):
    """A parent's ``on_create`` SQL or command failed in a new child; the child was rolled back.

    Failed SQL carries the server's SQLSTATE; a failed command this one (system_error)."""

    sqlstate = "58000"


class HookCommandsNotAllowed(PrismError):
    """An ``on_create`` command was to be set or run in a Prism started without
    ``--allow-hook-commands``; nothing was changed."""

    sqlstate = "42501"  # insufficient_privilege: the operator has not granted it


class OutsideWindow(PrismError):
    """A point-in-time branch asks for a time Prism kept no snapshot and WAL for."""

    sqlstate = "22023"  # invalid_parameter_value


class DataDirInUse(PrismError):
    """Another Prism holds the data directory: one daemon per data dir (``datadirlock``)."""

    sqlstate = "55006"  # object_in_use


class ConfigError(PrismError):
    """A setting is missing, malformed or contradicts another one."""


def find_prism_error(exc: BaseException) -> PrismError | None:
    """The user-facing error inside ``exc``, looking through (nested) exception groups.

    Trio's nurseries wrap errors in ExceptionGroups; a failure deep in a driver must still reach
    the client or the terminal as its own clear message.
    """
    if isinstance(exc, PrismError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_prism_error(inner)
            if found is not None:
                return found
    return None


#: What a failure that was only cancellation says: no ``Cancelled`` or group text for people.
INTERRUPTED = "interrupted before it finished (the request was abandoned or Prism is stopping)"


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _is_cancellation(exc: BaseException) -> bool:
    # trio is looked up, not imported: this module stays pure for the sans-IO modules, and a
    # trio.Cancelled cannot exist unless trio is loaded.
    trio = sys.modules.get("trio")
    stops = (KeyboardInterrupt, GeneratorExit, *((trio.Cancelled,) if trio else ()))
    return isinstance(exc, stops)


def describe(exc: BaseException) -> str:
    """One readable line about a failure, for an event's ``error``, a log line or a message.

    The user-facing message when there is one; a cancellation (a client gone, Ctrl-C, a
    shutdown) as ``INTERRUPTED``; anything else as its type and text. Never the repr of an
    exception group or of ``trio.Cancelled``, which tell a user nothing.
    """
    found = find_prism_error(exc)
    if found is not None:
        return found.message
    causes = [leaf for leaf in _leaves(exc) if not _is_cancellation(leaf)]
    if not causes:
        return INTERRUPTED
    first = causes[0]
    return f"{type(first).__name__}: {first}" if str(first) else type(first).__name__
