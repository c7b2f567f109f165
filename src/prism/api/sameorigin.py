"""Who may drive the API without a token: the pure rules, no quart, no sockets.

With no API token a web page in the developer's browser is the attacker (see
docs/security.md, "The API's trust boundary"). A browser gives it two ways in, and each has its
own rule here:

- **DNS rebinding**: a page at ``evil.example`` re-points its name at 127.0.0.1 and then calls
  Prism *same-origin* and reads the answers. The browser still sends ``Host: evil.example``, so
  only requests whose ``Host`` is a name Prism serves are answered (:func:`is_served_host`).
  The port in ``Host`` is not checked: rebinding needs a *name* we do not serve, whatever the
  port, and a port forward (``ssh -L 9000:localhost:8080``, ``docker -p``) legitimately changes
  the port the browser sees.
- **Cross-site requests**: a page may send a "simple" POST (``text/plain``, a form) to any
  origin without asking first; it cannot read the answer, but the branch is already made. A
  state-changing request is refused when its ``Origin`` (else ``Referer``) is not the origin the
  request was addressed to (:func:`same_origin`), and a body must be declared JSON
  (:func:`refuses_body`), which a page can only send cross-origin after a CORS preflight that
  Prism never grants. A request with neither header comes from curl, the CLI or a script — not
  from a page, which browsers always label — and is let through.

:func:`refusal` puts the rules in order for one request; ``prism.api.origin`` applies it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from prism.core.hostnames import host_name

#: Methods that only read. Everything else is checked: a whitelist, so a verb added later (or an
#: odd one a client makes up) is state-changing until someone says otherwise.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: Liveness probes come from other hosts (a kubelet asks by pod IP, a load balancer by its own
#: name); ``/healthz`` tells them only "ok", a branch count and the data plane's name.
_ANY_HOST_PATHS = frozenset({"/healthz"})

_DEFAULT_PORT = {"http": 80, "https": 443}
#: A WebSocket handshake's scheme, as the page that opened it sees its own origin.
_PAGE_SCHEME = {"ws": "http", "wss": "https", "http": "http", "https": "https"}
_HOST_PORT = re.compile(r"(?P<name>\[[^\]]*\]|[^:\[\]]*)(?::(?P<port>\d{1,5}))?")


def split_host(header: str) -> tuple[str, int | None] | None:
    """A ``Host`` header's name (see :func:`host_name`) and port (None if absent); None if
    the header is not ``name[:port]``."""
    match = _HOST_PORT.fullmatch(header.strip())
    if match is None:
        return None
    name = host_name(match["name"])
    port = None if match["port"] is None else int(match["port"])
    if name is None or (port is not None and port > 65535):
        return None
    return name, port


def is_loopback(name: str) -> bool:
    """``localhost`` or a loopback address (all of 127.0.0.0/8, ``::1``); ``name`` normalised."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_served_host(header: str | None, served: Iterable[str], arrived_on: str | None) -> bool:
    """Whether a ``Host`` header names this Prism.

    Served are the loopback names, the names in ``served`` (``--api``'s host and every
    ``--api-hostname``, normalised by :func:`host_name`) and ``arrived_on``, the address the
    connection was accepted on: a browser sends an IP literal only when it was pointed at that
    IP itself, so the page is then Prism's own and rebinding is not in play.
    """
    parsed = None if header is None else split_host(header)
    if parsed is None:
        return False
    name = parsed[0]
    own = None if arrived_on is None else host_name(arrived_on)
    return is_loopback(name) or name == own or name in set(served)


@dataclass(frozen=True)
class Origin:
    """A web origin: what the browser compares to decide "same origin"."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of_url(cls, url: str) -> Origin | None:
        """The origin of an ``Origin`` or ``Referer`` value; None for ``null`` or garbage."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        host = None if parts.hostname is None else host_name(parts.hostname)
        if scheme not in _DEFAULT_PORT or host is None:
            return None
        return cls(scheme, host, _DEFAULT_PORT[scheme] if port is None else port)

    @classmethod
    def of_request(cls, scheme: str, host: str) -> Origin | None:
        """The origin a request was addressed to: its scheme and its ``Host`` header."""
        page_scheme = _PAGE_SCHEME.get(scheme.lower())
        parsed = split_host(host)
        if page_scheme is None or parsed is None:
            return None
        name, port = parsed
        return cls(page_scheme, name, _DEFAULT_PORT[page_scheme] if port is None else port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def same_origin(source: str, scheme: str, host: str) -> bool:
    """Whether ``source`` (an ``Origin`` or ``Referer`` value) is the origin of a request made
    with ``scheme`` to ``Host: host`` — scheme, host and port all equal."""
    theirs = Origin.of_url(source)
    return theirs is not None and theirs == Origin.of_request(scheme, host)


def is_json(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` is ``application/json`` (parameters such as charset aside)."""
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def refuses_body(
    content_type: str | None, content_length: str | None, transfer_encoding: str | None
) -> bool:
    """Whether a state-changing request's body must be refused: it is declared as something
    other than JSON, or it is there (a length above 0, or chunked) and declared as nothing."""
    if content_type is not None:
        return not is_json(content_type)
    has_body = transfer_encoding is not None or (content_length or "0").strip() not in ("", "0")
    return has_body


@dataclass(frozen=True)
class Arrival:
    """What the checks read of one HTTP request or WebSocket handshake."""

    method: str
    path: str
    scheme: str
    host: str | None
    origin: str | None = None
    referer: str | None = None
    content_type: str | None = None
    content_length: str | None = None
    transfer_encoding: str | None = None
    arrived_on: str | None = None
    websocket: bool = False


@dataclass(frozen=True)
class Refusal:
    """Why an arrival is refused: the API error to send, and ``reason`` for the log line."""

    status: int
    code: str
    message: str
    hint: str
    reason: str


def refusal(arrival: Arrival, served: Iterable[str]) -> Refusal | None:
    """The first rule ``arrival`` breaks, or None to let it through.

    In order: the ``Host`` (421: the request was meant for a server that is not this one —
    RFC 9110's "misdirected request", and a different status from a cross-origin 403 so a
    person can tell the two apart), then, for a WebSocket or a state-changing request, the
    ``Origin``/``Referer`` (403), then, for a state-changing request, the body's type (415).
    """
    if arrival.path not in _ANY_HOST_PATHS and not is_served_host(
        arrival.host, served, arrival.arrived_on
    ):
        return _foreign_host(arrival.host)
    if not (arrival.websocket or arrival.method.upper() not in SAFE_METHODS):
        return None
    source = arrival.origin if arrival.origin is not None else arrival.referer
    if source is not None and not same_origin(source, arrival.scheme, arrival.host or ""):
        return _cross_origin(arrival, source)
    if not arrival.websocket and refuses_body(
        arrival.content_type, arrival.content_length, arrival.transfer_encoding
    ):
        return Refusal(
            415,
            "unsupported_media_type",
            f"the request body must be JSON, not {arrival.content_type or 'undeclared'}",
            hint="send it with 'Content-Type: application/json' "
            "(curl: -H 'Content-Type: application/json')",
            reason=f"body of type {arrival.content_type or 'none'}",
        )
    return None


def _foreign_host(host: str | None) -> Refusal:
    if host is None:
        return Refusal(
            421,
            "unknown_host",
            "the request has no Host header, so Prism cannot tell it is meant for it",
            hint="send 'Host:' with the name you reach Prism by",
            reason="no Host",
        )
    parsed = split_host(host)
    name = host if parsed is None else parsed[0]
    return Refusal(
        421,
        "unknown_host",
        f"this Prism does not answer to the host name {name!r}",
        hint=f"if you reach Prism as {name!r}, add it with --api-hostname {name} "
        "(or $PRISM_API_HOSTNAME); otherwise a web page may be trying to reach Prism "
        "through DNS rebinding",
        reason=f"Host {host!r} not served",
    )


def _cross_origin(arrival: Arrival, source: str) -> Refusal:
    page = Origin.of_url(source)
    own = Origin.of_request(arrival.scheme, arrival.host or "")
    shown = str(page) if page is not None else repr(source)
    what = "open the event stream" if arrival.websocket else "change Prism"
    return Refusal(
        403,
        "cross_origin",
        f"a page from {shown} may not {what}: only Prism's own page ({own}) may",
        hint="use Prism's web page, the prism CLI or curl; a page from another site "
        "cannot drive this API",
        reason=f"cross-origin from {shown}",
    )
