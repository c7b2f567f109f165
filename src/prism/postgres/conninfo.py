"""libpq connection strings, sans-IO: parse ``key=value`` or ``postgres://`` URLs, write them back.

Prism must take the password out of the source's connection string: it is stored once in a
private passfile, so it never shows in ``ps``, in a log line or in a branch's copy of main's
configuration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from prism.core.errors import ConfigError

_URL_SCHEMES = ("postgres://", "postgresql://")
_KEY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")


@dataclass(frozen=True)
class ConnInfo:
    """A source connection: its libpq parameters without the password, and the password."""

    params: tuple[tuple[str, str], ...]
    password: str | None

    def get(self, key: str, default: str | None = None) -> str | None:
        for name, value in self.params:
            if name == key:
                return value
        return default

    def render(self, **extra: str) -> str:
        """A ``key=value`` string of the parameters (plus ``extra``); never the password."""
        items = dict(self.params)
        items.update(extra)
        return " ".join(f"{key}={quote(value)}" for key, value in items.items())

    def describe(self) -> str:
        """Where the source is, for logs and errors: ``user@host:port``."""
        host = self.get("host") or self.get("hostaddr") or "localhost"
        return f"{self.get('user') or '?'}@{host}:{self.get('port') or '5432'}"


def quote(value: str) -> str:
    """One libpq value, quoted when it is empty or holds spaces, quotes or backslashes."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_conninfo(text: str) -> ConnInfo:
    """Parse a libpq connection string or URL; the password is taken out of the parameters."""
    text = text.strip()
    if not text:
        raise ConfigError("the source connection string is empty")
    pairs = _parse_url(text) if text.startswith(_URL_SCHEMES) else _parse_pairs(text)
    password = None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key == "password":
            password = value
        else:
            params[key] = value
    return ConnInfo(tuple(params.items()), password)


def _parse_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    index = 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        match = _KEY.match(text, index)
        if match is None:
            # The text there may be part of a password: say where, never what.
            raise ConfigError(
                f"invalid source connection string at character {index + 1}",
                hint="write key=value pairs (host=db.example.com port=5432 user=replicator) "
                "or a postgres:// URL",
            )
        key, index = match.group(1), match.end()
        value: list[str] = []
        if index < len(text) and text[index] == "'":
            index += 1
            while index < len(text) and text[index] != "'":
                if text[index] == "\\" and index + 1 < len(text):
                    index += 1
                value.append(text[index])
                index += 1
            if index >= len(text):
                raise ConfigError("unterminated quoted value in the source connection string")
            index += 1
        else:
            while index < len(text) and not text[index].isspace():
                if text[index] == "\\" and index + 1 < len(text):
                    index += 1
                value.append(text[index])
                index += 1
        pairs.append((key, "".join(value)))
    return pairs


def _parse_url(text: str) -> list[tuple[str, str]]:
    url = urlsplit(text)
    pairs: list[tuple[str, str]] = []
    if url.hostname:
        pairs.append(("host", unquote(url.hostname)))
    try:
        port = url.port
    except ValueError:
        # The netloc holds the password: name the host alone.
        raise ConfigError(f"invalid port in the source URL for host {url.hostname!r}") from None
    if port is not None:
        pairs.append(("port", str(port)))
    if url.username:
        pairs.append(("user", unquote(url.username)))
    if url.password is not None:
        pairs.append(("password", unquote(url.password)))
    if url.path.strip("/"):
        pairs.append(("dbname", unquote(url.path.lstrip("/"))))
    pairs += parse_qsl(url.query, keep_blank_values=True)
    return pairs


def pgpass_line(password: str) -> str:
    """A ``.pgpass`` line that gives ``password`` to any host, port, database and user."""
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n"
