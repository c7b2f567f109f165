"""Routing: which branch a connection wants, and the startup message its backend should see.

Pure functions over a decoded :class:`~prism.postgres.wire.StartupMessage`, so every rule about
branch selection is unit-tested without a socket. Today the branch comes from the user name
(``alice@feature-1``); tools that cannot change the user name can use the startup option
``options=-c prism.branch=<name>`` (or a ``prism.branch`` startup parameter, which drivers such
as asyncpg and pgjdbc can send), or the TLS SNI host name ``<name>.<sni-domain>``.

Precedence, most explicit first: ``user@branch`` > ``prism.branch`` > SNI > main. Prism's own
parameters are always removed before the startup message reaches Postgres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from prism.core.errors import PrismError
from prism.core.names import validate_branch_name
from prism.postgres.wire import StartupMessage


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


BRANCH_PARAM: Final = "prism.branch"


def _split_options(options: str) -> list[str]:
    """Split ``options`` as Postgres's ``pg_split_opts``: spaces separate, ``\\`` escapes."""
    words: list[str] = []
    current: list[str] = []
    in_word = False
    chars = iter(options)
    for ch in chars:
        if ch.isspace():
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
            continue
        in_word = True
        current.append(next(chars, "") if ch == "\\" else ch)
    if in_word:
        words.append("".join(current))
    return words


def _join_options(words: list[str]) -> str:
    def escape(word: str) -> str:
        return "".join("\\" + ch if ch == "\\" or ch.isspace() else ch for ch in word)

    return " ".join(escape(word) for word in words)


def take_branch_option(options: str) -> tuple[str | None, str]:
    """``(branch, remaining options)``: pull ``-c prism.branch=<name>`` out of ``options``.

    Accepts the forms Postgres accepts for any setting: ``-c name=value``, ``-cname=value``
    and ``--name=value``; the last occurrence wins, as for any repeated setting.
    """
    words = _split_options(options)
    kept: list[str] = []
    branch: str | None = None
    prefix = BRANCH_PARAM + "="
    i = 0
    while i < len(words):
        word = words[i]
        setting: str | None = None
        if word == "-c" and i + 1 < len(words):
            setting, step = words[i + 1], 2
        elif word.startswith(("-c", "--")):
            setting, step = word[2:], 1
        else:
            step = 1
        if setting is not None and setting.startswith(prefix):
            branch = setting[len(prefix) :]
        else:
            kept.extend(words[i : i + step])
        i += step
    return branch, _join_options(kept) if branch is not None else options


def branch_from_sni(host: str | None, domain: str) -> str | None:
    """``feature-1`` from ``feature-1.db.example.com`` when ``domain`` is ``db.example.com``."""
    if not host or not domain:
        return None
    suffix = "." + domain.strip(".").lower()
    host = host.lower().rstrip(".")
    if not host.endswith(suffix) or host == suffix[1:]:
        return None
    return host[: -len(suffix)]


def route(
    startup: StartupMessage,
    *,
    main_branch: str = "main",
    sni: str | None = None,
    sni_domain: str = "",
) -> Route:
    """Pick the branch a client asked for and rewrite its startup message for the backend.

    Only ``user`` changes (the ``@branch`` suffix is removed), in place. Every other
    parameter is passed on untouched and in order, unknown ``_pq_.*`` ones included: the
    backend, not Prism, decides what it understands.

    When the client sent no ``database`` (or an empty one), Postgres would default it to the
    user name it receives, which after rewriting is the bare role. A ``database`` equal to
    the whole ``role@branch`` is libpq's client-side version of that default and becomes the
    role too. Prism sets ``database`` to
    that role explicitly (right after ``user``) so the message the backend gets says plainly
    what the client will be connected to, independent of that default, whether a branch
    suffix was removed or not.
    """
    user = startup.get("user")
    if not user:
        raise PrismError("no PostgreSQL user name specified in startup packet", sqlstate="28000")
    role, requested = split_user(user)
    rewritten = startup.with_param("user", role)
    from_param = rewritten.get(BRANCH_PARAM)
    rewritten = rewritten.without(BRANCH_PARAM)
    from_options: str | None = None
    options = rewritten.get("options")
    if options is not None:
        from_options, remaining = take_branch_option(options)
        if from_options is not None:
            rewritten = (
                rewritten.with_param("options", remaining)
                if remaining
                else rewritten.without("options")
            )
    for candidate in (from_options, from_param, branch_from_sni(sni, sni_domain)):
        if requested is None:
            requested = candidate
    branch = main_branch if requested is None else validate_branch_name(requested)
    database = rewritten.get("database")
    if not database:
        rewritten = rewritten.with_param("database", role, after="user")
    elif database == user and role != user:
        # libpq (psql, psycopg, ...) fills in a missing dbname with the user name client-side,
        # so "user=postgres@feature" alone asks for database "postgres@feature": what the
        # client meant is the default, the role's own database.
        rewritten = rewritten.with_param("database", role)
    return Route(branch=branch, startup=rewritten)
