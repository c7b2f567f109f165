"""Routing: which branch a connection wants, and the startup message its backend should see.

Pure functions over a decoded :class:`~prism.wire.StartupMessage`, so every rule about branch
selection is unit-tested without a socket. Today the branch comes from the user name
(``alice@feature-1``); other selectors (TLS SNI, ``options=-c prism.branch=...``) are meant to
slot into :func:`route` as further steps that may pick the branch and rewrite the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from prism.errors import InvalidBranchName, PrismError
from prism.wire import StartupMessage

BRANCH_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
"""A branch name: safe as a directory, dataset, container and DNS label without quoting."""

_VALID_NAME = (
    "a branch name is 1 to 63 characters: lower-case letters, digits, '-' and '_', "
    "starting with a letter or digit"
)


def validate_branch_name(name: str) -> str:
    """Return ``name`` if Prism accepts it as a branch name, else raise InvalidBranchName.

    Names end up in paths, dataset names and container names, so they are checked before
    anything touches the disk; ``..`` or ``a/b`` never get that far.
    """
    if BRANCH_NAME_RE.fullmatch(name) is None:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise InvalidBranchName(f"invalid branch name {shown!r}: {_VALID_NAME}")
    return name


@dataclass(frozen=True)
class Route:
    """Where a connection goes: the branch, and the startup message to replay to its server."""

    branch: str
    startup: StartupMessage


def split_user(user: str) -> tuple[str, str | None]:
    """Split ``role@branch`` into ``(role, branch)``; ``(user, None)`` when there is no ``@``.

    The split is on the last ``@`` because role names may themselves contain ``@`` (e-mail
    style roles): ``a@b@feat`` is role ``a@b`` on branch ``feat``. The branch is not validated
    here; :func:`route` does that.
    """
    role, at, branch = user.rpartition("@")
    if not at:
        return user, None
    if not role:
        raise PrismError(
            f"no user name before the '@' in {user!r}",
            hint="connect as user@branch, e.g. postgres@feature-1",
            sqlstate="28000",
        )
    return role, branch


def route(startup: StartupMessage, *, main_branch: str = "main") -> Route:
    """Pick the branch a client asked for and rewrite its startup message for the backend.

    Only ``user`` changes (the ``@branch`` suffix is removed), in place. Every other
    parameter is passed on untouched and in order, unknown ``_pq_.*`` ones included: the
    backend, not Prism, decides what it understands.

    When the client sent no ``database`` (or an empty one), Postgres would default it to the
    user name it receives, which after rewriting is the bare role. Prism sets ``database`` to
    that role explicitly (right after ``user``) so the message the backend gets says plainly
    what the client will be connected to, independent of that default, whether a branch
    suffix was removed or not.
    """
    user = startup.get("user")
    if not user:
        raise PrismError("no PostgreSQL user name specified in startup packet", sqlstate="28000")
    role, requested = split_user(user)
    branch = main_branch if requested is None else validate_branch_name(requested)
    rewritten = startup.with_param("user", role)
    if not rewritten.get("database"):
        rewritten = rewritten.with_param("database", role, after="user")
    return Route(branch=branch, startup=rewritten)
