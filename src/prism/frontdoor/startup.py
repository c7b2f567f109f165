"""The start-up of one client connection as a pure state machine, in the style of h11.

Everything between a client's first byte and the branch server's first ReadyForQuery is
decided here: encryption negotiation and the start-up packet (:mod:`prism.postgres.wire`), protocol
negotiation, routing (:mod:`prism.frontdoor.router`), SCRAM with the client
(:mod:`prism.frontdoor.clientauth`), the log-in to the branch server
(:mod:`prism.frontdoor.backendlogin`) and the replacement of the server's cancel key by one Prism
issued. Nothing here touches a socket, a clock or a task: bytes go in
(:meth:`Startup.receive_client`, :meth:`Startup.receive_backend`), events come out of
:meth:`Startup.next_event`, and the bytes to send wait in :meth:`Startup.data_for_client` and
:meth:`Startup.data_for_backend`. An event that needs the outside world (a TLS handshake, a role
lookup, admission, a cancel key) is answered by the driver — the thin async loop in
:mod:`prism.frontdoor.proxy` — through the matching method, and is returned again until it is.

So every path a client can take through start-up, hostile ones included, is a unit test of
bytes in and bytes out (tests/unit/test_startup.py), and the proxy keeps only the I/O.

Errors are raised from :meth:`Startup.next_event` as :class:`~prism.core.errors.PrismError` (the
client gets a FATAL with its SQLSTATE, after whatever :meth:`Startup.data_for_client` still
holds), :class:`~prism.postgres.wire.UnansweredViolation` (closed without a word, as Postgres does)
or :class:`ClientGone`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from prism.core.errors import PrismError, ProtocolViolation
from prism.frontdoor.backendlogin import BackendLogin, Outcome
from prism.frontdoor.clientauth import ClientVerification, RoleSecret, Verified
from prism.frontdoor.clienthello import TLS_HANDSHAKE_RECORD
from prism.frontdoor.router import Route, route
from prism.postgres import wire

MAX_AUTH_MESSAGE: Final = 65535
"""Largest message a client may send before it is authenticated (Postgres's auth token cap)."""

_PQ_PREFIX: Final = "_pq_."
_MITM_DETAIL: Final = (
    "This could be either a client-software bug or evidence of an attempted "
    "man-in-the-middle attack."
)


class ClientGone(Exception):
    """The client closed the connection during start-up."""


class State(enum.Enum):
    """Where a start-up is; the states that wait for the driver name what they wait for."""

    HELLO = "hello"
    TLS_HANDSHAKE = "tls handshake"
    LOOKUP_ROLE = "lookup role"
    SASL_INITIAL = "sasl initial response"
    SASL_FINAL = "sasl final response"
    ADMIT = "admit"
    BACKEND_LOGIN = "backend login"
    CLIENT_ANSWER = "client answer"
    UNTIL_READY = "until ready"
    ISSUE_KEY = "issue key"
    READY = "ready"
    CANCEL = "cancel"
    REFUSED = "refused"


# Events. The Need* ones ask for bytes; the others for the driver to act (and answer).


@dataclass(frozen=True)
class NeedClientData:
    """Flush, then feed :meth:`Startup.receive_client` what the client sends next."""


@dataclass(frozen=True)
class NeedBackendData:
    """Flush, then feed :meth:`Startup.receive_backend` what the branch server sends next."""


NEED_CLIENT_DATA: Final = NeedClientData()
NEED_BACKEND_DATA: Final = NeedBackendData()


@dataclass(frozen=True)
class StartTls:
    """Flush, then run the TLS handshake; ``received`` is the start of the ClientHello.

    ``direct`` when the client opened with a ClientHello (``sslnegotiation=direct``), which
    must agree on ALPN ``postgresql``. Answer with :meth:`Startup.tls_started`.
    """

    received: bytes
    direct: bool


@dataclass(frozen=True)
class Cancel:
    """The connection is a CancelRequest: forward it and close, without an answer."""

    request: wire.CancelRequest


@dataclass(frozen=True)
class LookupRole:
    """The secret of ``role`` as the server of ``branch`` would check it is needed.

    Answer with :meth:`Startup.role_found`.
    """

    branch: str
    role: str


@dataclass(frozen=True)
class Admit:
    """The client may have its branch: create, start or wake it and connect to its server.

    Answer with :meth:`Startup.connected`.
    """

    route: Route


@dataclass(frozen=True)
class IssueKey:
    """The server's cancel key: answer with :meth:`Startup.key_issued` and Prism's own."""

    pid: int
    secret: bytes


@dataclass(frozen=True)
class Refused:
    """The branch server refused the session; its ErrorResponse waits for the client."""


@dataclass(frozen=True)
class Ready:
    """The session is open: flush, forward :meth:`Startup.leftovers`, then splice."""


Event = (
    NeedClientData
    | NeedBackendData
    | StartTls
    | Cancel
    | LookupRole
    | Admit
    | IssueKey
    | Refused
    | Ready
)


@dataclass(frozen=True)
class StartupConfig:
    """What a Prism server's settings say about every start-up."""

    tls: bool = False
    """TLS is on: an SSLRequest is answered ``S`` and a direct ClientHello accepted."""
    tls_required: bool = False
    """A StartupMessage in plaintext is refused."""
    verify: bool = False
    """``--auth verify``: SCRAM with the client before anything is created or woken."""
    mock_secret: bytes = b""
    """Salts the mock SCRAM challenge of a role that does not exist (see
    :mod:`prism.postgres.scram`)."""
    sni_domain: str = ""


def negotiate(startup: wire.StartupMessage) -> tuple[bytes, wire.StartupMessage]:
    """The NegotiateProtocolVersion for the client (or b"") and the start-up for the backend.

    As Postgres: one message when the client asked for a newer minor version or for any
    ``_pq_.*`` protocol option (Prism knows none), naming the newest version we speak and
    every option we ignore. The backend is asked for the same version, without the options.
    """
    major, minor = startup.version
    unknown = [name for name, _ in startup.params if name.startswith(_PQ_PREFIX)]
    agreed = min(minor, wire.NEWEST_MINOR)
    message = b""
    if minor > agreed or unknown:
        message = wire.NegotiateProtocolVersion(agreed, tuple(unknown)).encode()
    params = tuple(p for p in startup.params if not p[0].startswith(_PQ_PREFIX))
    return message, wire.StartupMessage(major << 16 | agreed, params)


class Startup:
    """One connection's start-up, from its first byte to the backend's first ReadyForQuery."""

    def __init__(self, config: StartupConfig, *, peer: str = "unknown") -> None:
        self._config = config
        self._peer = peer
        self.state = State.HELLO
        self.route: Route | None = None
        """Where the client goes, once its start-up packet is read."""
        self.protocol_minor = 0
        """The protocol minor version agreed with the client."""
        self.tls = False
        self.sni: str | None = None
        self._hello = wire.StartupReader()
        self._client = wire.MessageReader(max_length=MAX_AUTH_MESSAGE)
        self._backend = wire.MessageReader()
        self._client_eof = self._backend_eof = False
        self._to_client = bytearray()
        self._to_backend = bytearray()
        # Postgres 18 lets each encryption request be asked once; an accepted one (only TLS
        # here) ends the negotiation. A direct ClientHello is judged on the first byte only.
        self._ssl_done = self._gss_done = False
        self._direct_possible = config.tls
        self._channel_binding: bytes | None = None
        self._verification: ClientVerification | None = None
        self._verified: Verified | None = None
        self._login: BackendLogin | None = None
        self._request: Event | None = None

    # -- bytes in and out ---------------------------------------------------------------------

    def receive_client(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` when it closed its side."""
        if not data:
            self._client_eof = True
        elif self.state in (State.HELLO, State.TLS_HANDSHAKE):
            self._hello.feed(data)
        else:
            self._client.feed(data)

    def receive_backend(self, data: bytes) -> None:
        """Bytes from the branch server; ``b""`` when it closed the connection."""
        if not data:
            self._backend_eof = True
        self._backend.feed(data)

    def data_for_client(self) -> bytes:
        """What must go to the client now (taken: a second call gives only what is new)."""
        data = bytes(self._to_client)
        self._to_client.clear()
        return data

    def data_for_backend(self) -> bytes:
        """What must go to the branch server now (taken, as :meth:`data_for_client`)."""
        data = bytes(self._to_backend)
        self._to_backend.clear()
        return data

    def leftovers(self) -> tuple[bytes, bytes]:
        """Once :class:`Ready`: bytes each side sent past start-up, ``(client's, server's)``.

        A client may pipeline its first query behind its log-in, and a server may send its
        first notices right behind ReadyForQuery; both belong to the session.
        """
        return self._client.pending(), self._backend.pending()

    # -- answers to the events that need the driver -----------------------------------------

    def tls_started(self, *, sni: str | None, channel_binding: bytes | None) -> None:
        """The TLS handshake asked by :class:`StartTls` is done; bytes now come decrypted."""
        self._expect(State.TLS_HANDSHAKE)
        self.tls, self.sni, self._channel_binding = True, sni, channel_binding
        self._hello = wire.StartupReader()
        self.state = State.HELLO

    def role_found(self, secret: RoleSecret | None, *, now: float) -> None:
        """The answer to :class:`LookupRole` (None: no such role); ``now`` judges expiry."""
        self._expect(State.LOOKUP_ROLE)
        assert self.route is not None
        self._verification = ClientVerification(
            self.route.startup.get("user") or "",
            secret,
            now=now,
            channel_binding=self._channel_binding,
            mock_secret=self._config.mock_secret,
        )
        self._to_client += self._verification.challenge()
        self.state = State.SASL_INITIAL

    def connected(self) -> None:
        """The branch server of :class:`Admit` is connected: log the session in."""
        self._expect(State.ADMIT)
        assert self.route is not None
        self._login = BackendLogin(self._verified)
        self._to_backend += self.route.startup.encode()
        self.state = State.BACKEND_LOGIN

    def key_issued(self, pid: int, secret: bytes) -> None:
        """Prism's own cancel key, for the server's one in :class:`IssueKey`."""
        self._expect(State.ISSUE_KEY)
        self._to_client += wire.BackendKeyData(pid, secret).encode()
        self.state = State.UNTIL_READY

    def _expect(self, state: State) -> None:
        if self.state is not state:
            raise RuntimeError(f"start-up is in state {self.state.value}, not {state.value}")
        self._request = None

    # -- events -----------------------------------------------------------------------------

    def next_event(self) -> Event:
        """What happens next; the same request again until the driver has answered it."""
        while True:
            if self._request is not None:
                return self._request
            event = self._step()
            if event is not None:
                if isinstance(event, (StartTls, LookupRole, Admit, IssueKey)):
                    self._request = event
                return event

    def _step(self) -> Event | None:
        """One transition; None when it made progress without anything to report."""
        match self.state:
            case State.HELLO:
                return self._on_hello()
            case State.SASL_INITIAL | State.SASL_FINAL:
                return self._on_sasl()
            case State.BACKEND_LOGIN:
                return self._on_login()
            case State.CLIENT_ANSWER:
                answer = self._client_message()
                if answer is None:
                    return NEED_CLIENT_DATA
                self._to_backend += answer.raw
                self.state = State.BACKEND_LOGIN
                return None
            case State.UNTIL_READY:
                return self._on_until_ready()
            case State.READY:
                return Ready()
            case State.REFUSED:
                return Refused()
        raise RuntimeError(f"start-up in state {self.state.value} has nothing more to do")

    def _on_hello(self) -> Event | None:
        if self._direct_possible and self._hello.pending():
            self._direct_possible = False
            if self._hello.pending()[0] == TLS_HANDSHAKE_RECORD:
                return self._start_tls(direct=True)
        packet = self._hello.next_message()
        if packet is None:
            if not self._client_eof:
                return NEED_CLIENT_DATA
            if self._hello.pending():
                raise wire.UnansweredViolation("incomplete startup packet")
            raise ClientGone
        self._direct_possible = False
        if isinstance(packet, wire.SSLRequest) and not self._ssl_done:
            accept = self._config.tls and not self.tls
            self._to_client += b"S" if accept else b"N"
            self._ssl_done, self._gss_done = True, self._gss_done or accept
            if accept:
                return self._start_tls(direct=False)
            if self._hello.pending():
                raise ProtocolViolation(
                    "received unencrypted data after SSL request", detail=_MITM_DETAIL
                )
            return None
        if isinstance(packet, wire.GSSENCRequest) and not self._gss_done:
            self._to_client += b"N"
            self._gss_done = True
            if self._hello.pending():
                raise ProtocolViolation(
                    "received unencrypted data after GSSAPI encryption request",
                    detail=_MITM_DETAIL,
                )
            return None
        if isinstance(packet, (wire.SSLRequest, wire.GSSENCRequest)):
            raise wire.UnsupportedProtocol(packet.code)
        if isinstance(packet, wire.CancelRequest):
            self.state = State.CANCEL
            return Cancel(packet)
        if not self.tls and self._config.tls_required:
            raise PrismError(
                "this Prism server accepts connections only over TLS",
                hint="connect with sslmode=require (or verify-full)",
                sqlstate="28000",
            )
        self._client.feed(self._hello.pending())
        return self._routed(packet)

    def _start_tls(self, *, direct: bool) -> StartTls:
        # Bytes after the request go into the handshake, never read as if they came over TLS.
        received = self._hello.pending()
        self._hello = wire.StartupReader()
        self.state = State.TLS_HANDSHAKE
        return StartTls(received, direct=direct)

    def _routed(self, packet: wire.StartupMessage) -> Event:
        # As Postgres: the version is negotiated before a missing user is refused.
        negotiation, packet = negotiate(packet)
        self._to_client += negotiation
        self.protocol_minor = packet.version[1]
        self.route = route(packet, sni=self.sni, sni_domain=self._config.sni_domain)
        if not self._config.verify:
            self.state = State.ADMIT
            return Admit(self.route)
        self.state = State.LOOKUP_ROLE
        return LookupRole(self.route.branch, self.route.startup.get("user") or "")

    def _on_sasl(self) -> Event | None:
        message = self._client_message()
        if message is None:
            return NEED_CLIENT_DATA
        assert self._verification is not None and self.route is not None
        if self.state is State.SASL_INITIAL:
            self._to_client += self._verification.client_first(message)
            self.state = State.SASL_FINAL
            return None
        self._verified = self._verification.client_final(message, self._peer)
        self.state = State.ADMIT
        return Admit(self.route)

    def _on_login(self) -> Event | None:
        message = self._backend_message()
        if message is None:
            return NEED_BACKEND_DATA
        assert self._login is not None
        step = self._login.handle(message)
        self._to_client += step.to_client
        self._to_backend += step.to_backend
        match step.outcome:
            case Outcome.CLIENT_ANSWER:
                self.state = State.CLIENT_ANSWER
            case Outcome.LOGGED_IN:
                self.state = State.UNTIL_READY
            case Outcome.REFUSED:
                self.state = State.REFUSED
        return None

    def _on_until_ready(self) -> Event | None:
        """Pass the server's post-login messages on, up to ReadyForQuery or an error."""
        message = self._backend_message()
        if message is None:
            return NEED_BACKEND_DATA
        if message.type == b"K":
            key = wire.BackendKeyData.decode(message.payload)
            self.state = State.ISSUE_KEY
            return IssueKey(key.pid, key.secret)
        if message.type != b"v":
            self._to_client += message.raw
        if message.type == b"Z":
            self.state = State.READY
        elif message.type == b"E":
            self.state = State.REFUSED
        return None

    def _client_message(self) -> wire.Message | None:
        message = self._client.next_message()
        if message is None and self._client_eof:
            raise ClientGone
        return message

    def _backend_message(self) -> wire.Message | None:
        message = self._backend.next_message()
        if message is None and self._backend_eof:
            raise PrismError(
                "the branch server closed the connection during start-up",
                hint="see the branch's server log",
                sqlstate="08006",
            )
        return message
