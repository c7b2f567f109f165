"""Connection strings for a branch, ready to paste into psql, an app's env, JDBC or Prisma.

A branch is reached through Prism's front door as the role ``user@branch``. The ``@`` is what
trips people up: inside a URI it must be written ``%40`` or the client takes everything before
it for the user and password, so every format is built here, once, from the same parameters.
The password is left out unless asked for (strings get pasted into chats and CI logs); TLS
parameters follow the daemon's ``tls`` setting. Pure: no I/O, unit-tested.

Asked for, the password is given only when it logs in; else it is withheld with a note saying
why (``password_note``). Prism knows one password, the ``--password`` it gave the superuser at
``initdb``: a main that follows a source has the source's roles and passwords, and a password
changed in a branch (``ALTER ROLE``) is the branch's own.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlencode

from prism.core.values import TlsMode

FORMATS = ("uri", "keyword", "env", "jdbc", "prisma")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class Endpoint:
    """Where and how clients reach Prism's front door (from the settings and the bound port)."""

    host: str
    port: int
    superuser: str
    password: str | None
    """The superuser's password as Prism set it at initdb; None when main's roles are the
    source's (a standby of it), whose passwords Prism does not know."""
    tls: TlsMode = TlsMode.ON
    dbname: str = "postgres"


ROLES_FROM_SOURCE: Final = (
    "main follows a source (--source), so its roles and their passwords are the source's: "
    "Prism does not know them. Log in with the password {user} has on the source"
)
PASSWORD_CHANGED: Final = (
    "the password of {user} in this branch is not the one Prism set at initdb (--password): "
    "it was changed or removed (ALTER ROLE), or main was made with another. Prism does not "
    "know it"
)


@dataclass(frozen=True)
class ConnectionParams:
    """The parameters every format is built from."""

    host: str
    port: int
    user: str
    dbname: str
    sslmode: str
    password: str | None = None
    password_note: str | None = None
    """Why a password asked for is not given (then ``password`` is None)."""

    def as_dict(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.dbname,
            "sslmode": self.sslmode,
        }
        if self.password is not None:
            params["password"] = self.password
        return params


def params_for(
    endpoint: Endpoint, branch: str, *, host: str | None = None, with_password: bool = False
) -> ConnectionParams:
    """The parameters for ``branch``; ``host`` is how the caller reached Prism, used when the
    front door listens on a wildcard address (its own address would mean nothing elsewhere)."""
    chosen = endpoint.host
    if chosen in _WILDCARD_HOSTS:
        chosen = host or "127.0.0.1"
    # "on" offers TLS: require it, since the client can; "required" refuses plaintext anyway.
    sslmode = "disable" if endpoint.tls == TlsMode.OFF else "require"
    params = ConnectionParams(
        host=chosen,
        port=endpoint.port,
        user=f"{endpoint.superuser}@{branch}",
        dbname=endpoint.dbname,
        sslmode=sslmode,
        password=endpoint.password if with_password else None,
    )
    if with_password and endpoint.password is None:
        return withheld(params, ROLES_FROM_SOURCE.format(user=endpoint.superuser))
    return params


PasswordCheck = Callable[[str, str, str], Awaitable[bool | None]]
"""``(branch, role, password)`` → whether that password logs the role in to the branch (None:
unknown), as ``prism.frontdoor.auth.VerifierStore.logs_in`` tells from the branch's verifiers."""


async def confirmed(
    p: ConnectionParams, branch: str, superuser: str, check: PasswordCheck | None
) -> ConnectionParams:
    """``p``, its password withheld if ``check`` says it does not log in (kept when unknown:
    it is the one Prism set, and nothing says it changed)."""
    if p.password is None or check is None:
        return p
    if await check(branch, superuser, p.password) is False:
        return withheld(p, PASSWORD_CHANGED.format(user=superuser))
    return p


def withheld(p: ConnectionParams, note: str) -> ConnectionParams:
    """``p`` without its password, saying why: a password that does not log in is worse than
    none, since the client's error then blames the user."""
    return dataclasses.replace(p, password=None, password_note=note)


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _keyword_value(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in " '\\"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _uri(p: ConnectionParams, scheme: str, extra: dict[str, str] | None = None) -> str:
    userinfo = quote(p.user, safe="")
    if p.password is not None:
        userinfo += ":" + quote(p.password, safe="")
    query = urlencode({"sslmode": p.sslmode, **(extra or {})})
    return f"{scheme}://{userinfo}@{_uri_host(p.host)}:{p.port}/{quote(p.dbname, safe='')}?{query}"


_ENV_NAMES = {
    "host": "PGHOST",
    "port": "PGPORT",
    "user": "PGUSER",
    "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE",
    "password": "PGPASSWORD",
}


def environment(p: ConnectionParams) -> dict[str, str]:
    """``p`` as libpq's environment variables (``PGHOST``, ``PGPORT``, ...)."""
    return {_ENV_NAMES[key]: str(value) for key, value in p.as_dict().items()}


def render(p: ConnectionParams, fmt: str) -> str:
    """``p`` in one of ``FORMATS``; ``ValueError`` for an unknown format."""
    if fmt == "uri":
        return _uri(p, "postgresql")
    if fmt == "prisma":
        # Prisma reads libpq's URI; a self-signed certificate needs sslaccept to be usable.
        extra = {"schema": "public"}
        if p.sslmode != "disable":
            extra["sslaccept"] = "accept_invalid_certs"
        return _uri(p, "postgresql", extra)
    if fmt == "keyword":
        return " ".join(f"{key}={_keyword_value(value)}" for key, value in p.as_dict().items())
    if fmt == "env":
        return "\n".join(f"{key}={shlex.quote(value)}" for key, value in environment(p).items())
    if fmt == "jdbc":
        query = {"user": p.user, "sslmode": p.sslmode}
        if p.password is not None:
            query["password"] = p.password
        dbname = quote(p.dbname, safe="")
        return f"jdbc:postgresql://{_uri_host(p.host)}:{p.port}/{dbname}?{urlencode(query)}"
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


def connection_view(p: ConnectionParams) -> dict[str, Any]:
    """The ``connection`` object of the API: the parameters and every format; a password asked
    for but withheld is ``"password": null`` with its ``password_note``."""
    view = {**p.as_dict(), **{fmt: render(p, fmt) for fmt in FORMATS}}
    if p.password_note is not None:
        view.update(password=None, password_note=p.password_note)
    return view
