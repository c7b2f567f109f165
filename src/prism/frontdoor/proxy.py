"""The Postgres front door: one task per client connection, from its first byte to its close.

What each start-up step decides lives in one pure state machine,
:class:`prism.frontdoor.startup.Startup` (bytes in, events out); this module is the thin async loop
that drives it — it reads and sends, runs the TLS handshake, looks up roles, admits the client to
its branch and issues cancel keys when the machine asks — and then splices.

1. **hello**: negotiate TLS (SSLRequest, direct TLS) and read the
   start-up packet, within ``--startup-timeout``. A CancelRequest is forwarded by Prism's
   own cancel key (:mod:`prism.frontdoor.cancel`) and the connection closed.
2. **route** (:mod:`prism.frontdoor.router`): ``user@branch``, ``prism.branch`` or the SNI host name
   → branch, and the start-up packet for the backend without Prism's own parameters.
3. **negotiate**: a client asking for a protocol newer than 3.2 or for ``_pq_.*`` options
   gets one NegotiateProtocolVersion from Prism; the backend is asked for what the client was
   told, so it never sends a second one. It goes out before routing, as from Postgres, so it
   comes before a missing-user FATAL.
4. **authenticate** (``--auth verify``, :mod:`prism.frontdoor.clientauth`, roles from
   :mod:`prism.frontdoor.auth`): SCRAM against the role's verifier before anything is created,
   started or woken.
5. **hold**: the create policy (:mod:`prism.frontdoor.limits`), then ``FrontDoor.admit`` (the
   manager's, :mod:`prism.frontdoor.admission`) creates, starts or wakes the branch within its caps
   while the client waits, and counts the session.
6. **log in** (:mod:`prism.frontdoor.backendlogin`) to the branch server (with the client's
   ClientKey, or relaying the client's answers in passthrough), relay its replies up to
   ReadyForQuery with BackendKeyData replaced by a Prism-issued key, then **splice** both ways.

Whatever goes wrong, the client is answered with a FATAL ErrorResponse carrying a SQLSTATE and a
message that says what to do — never a traceback — with the exceptions Postgres makes itself.
Where the first bytes are not a start-up packet a Postgres client could have meant, Postgres
logs the reason and closes without a word, and so does Prism (logged at INFO with the peer):

* a length word below 8 or above 10,004 bytes (a Terminate sent before the start-up packet,
  as node-postgres does when ``end()`` follows ``connect()`` at once; an HTTP request; a TLS
  ClientHello when TLS is off);
* a packet cut short by the client's hang-up ("incomplete startup packet");
* a malformed CancelRequest, and every CancelRequest (no answer is part of the protocol);
* direct TLS without ALPN ``postgresql``, after the handshake.

Answering those would not help anyone: the peer may not speak Postgres at all, and a client
that hung up or is closing cannot read the answer — but one that can (node-postgres) reports
an unexpected FATAL as an error where Postgres's silence lets it end quietly. Everything else
(an unknown protocol version, a broken parameter list, no user, a repeated encryption request,
bytes pipelined after an SSLRequest answered ``N``) gets Postgres's own FATAL, SQLSTATE and text.
tests/integration/test_front_door_conformance.py holds the two side by side, case by case.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Final, Generic

import trio

from prism.core.address import BackendAddress
from prism.core.errors import PrismError, ProtocolViolation, find_prism_error
from prism.core.settings import Settings
from prism.core.values import AuthMode
from prism.frontdoor import startup
from prism.frontdoor.admission import FrontDoor, SessionT
from prism.frontdoor.auth import VerifierStore
from prism.frontdoor.cancel import CancelKeys, CancelTarget
from prism.frontdoor.dataplane import PUMP, DataPlane
from prism.frontdoor.handshake import ClientConn, start_tls
from prism.frontdoor.limits import Gate, Limits
from prism.frontdoor.phases import Phases, stopwatch
from prism.frontdoor.startup import ClientGone, Startup, StartupConfig
from prism.frontdoor.tls import TlsConfig, load_tls
from prism.postgres import wire

log = logging.getLogger(__name__)

_MOCK_SECRET_FILE: Final = "mock_auth_secret"
_RECEIVE_SIZE: Final = 65536


class _SessionRefused(Exception):
    """The branch server refused the session; its ErrorResponse was relayed already."""


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()
    except (OSError, ValueError):
        return "unknown"
    return f"{host}:{port}"


def _mock_secret(data_dir: Path) -> bytes:
    """A per-installation secret for mock SCRAM salts, stable across restarts."""
    path = data_dir / _MOCK_SECRET_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        secret = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secret)
        return secret


class Proxy(Generic[SessionT]):
    """Serves client connections for one Prism server.

    It reaches the branches only through :class:`~prism.frontdoor.admission.FrontDoor` (the manager
    in production), so what the front door may ask of them is written down in one place.
    """

    def __init__(
        self,
        manager: FrontDoor[SessionT],
        *,
        startup_timeout: float,
        tls: TlsConfig | None = None,
        auth: AuthMode = AuthMode.PASSTHROUGH,
        verifiers: VerifierStore | None = None,
        mock_secret: bytes = b"",
        sni_domain: str = "",
        limits: Limits | None = None,
        data_plane: DataPlane = PUMP,
    ) -> None:
        if auth is AuthMode.VERIFY and verifiers is None:
            raise ValueError("--auth verify needs a VerifierStore")
        self._manager = manager
        self._startup_timeout = startup_timeout
        self._tls = tls
        self._verifiers = verifiers
        self._mock_secret = mock_secret or secrets.token_bytes(32)
        self._sni_domain = sni_domain
        self.gate = Gate(manager, limits or Limits())
        self.cancel_keys = CancelKeys()
        self.data_plane = data_plane

    @classmethod
    def from_settings(
        cls,
        manager: FrontDoor[SessionT],
        settings: Settings,
        data_dir: Path,
        verifiers: VerifierStore | None,
        data_plane: DataPlane = PUMP,
    ) -> Proxy[SessionT]:
        """A proxy configured by ``settings`` (TLS material and secrets live in ``data_dir``).

        ``verifiers`` is the role store of ``--auth verify``
        (:func:`prism.frontdoor.auth.open_verifiers`, which needs the whole manager and so is made
        by the caller), None in passthrough.
        """
        return cls(
            manager,
            startup_timeout=settings.startup_timeout,
            tls=load_tls(
                settings.tls,
                cert=settings.tls_cert,
                key=settings.tls_key,
                data_dir=data_dir,
            ),
            auth=settings.auth,
            verifiers=verifiers,
            mock_secret=_mock_secret(data_dir),
            sni_domain=settings.sni_domain,
            limits=Limits(
                max_startup=settings.max_startup_connections,
                create_on_connect=settings.create_on_connect,
            ),
            data_plane=data_plane,
        )

    @property
    def verifiers(self) -> VerifierStore | None:
        return self._verifiers

    async def handle(self, client: trio.SocketStream) -> None:
        """Serve one client connection from its first byte to its close."""
        phases = stopwatch()
        conn = ClientConn(client, _peer_name(client))
        machine = Startup(
            StartupConfig(
                tls=self._tls is not None,
                tls_required=self._tls is not None and self._tls.required,
                verify=self._verifiers is not None,
                mock_secret=self._mock_secret,
                sni_domain=self._sni_domain,
            ),
            peer=conn.peer,
        )
        try:
            await self._serve(conn, machine, phases)
        except ClientGone:
            log.debug("proxy: client %s closed during start-up", conn.peer)
        except wire.UnansweredViolation as exc:
            log.info("proxy: closed connection from %s without an answer: %s", conn.peer, exc)
        except _SessionRefused:
            log.debug("proxy: branch server refused client %s", conn.peer)
        except PrismError as exc:
            log.info("proxy: refused client %s: %s (%s)", conn.peer, exc.message, exc.sqlstate)
            await self._refuse(conn, machine, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("proxy: connection to %s broke", conn.peer)
        except Exception as exc:
            error = find_prism_error(exc)
            if error is None:
                log.exception("proxy: unexpected error serving %s", conn.peer)
                error = PrismError(
                    "internal error in Prism while opening this connection",
                    hint="see the Prism server log for details",
                )
            await self._refuse(conn, machine, error)
        finally:
            with (
                trio.move_on_after(1),
                trio.CancelScope(shield=True),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await conn.stream.aclose()
            await client.aclose()

    async def _refuse(self, conn: ClientConn, machine: Startup, exc: PrismError) -> None:
        """The FATAL for ``exc``, after what the machine still had for the client (an ``N``)."""
        with (
            trio.move_on_after(1),
            trio.CancelScope(shield=True),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await conn.send(machine.data_for_client() + wire.error_from(exc))

    async def _serve(self, conn: ClientConn, machine: Startup, phases: Phases) -> None:
        with self.gate.startup_slot():
            opened = await self._open(conn, machine, phases)
        if opened is None:
            return
        session, server, keys = opened
        branch = session.branch

        def count(nbytes: int) -> None:
            branch.bytes_proxied += nbytes
            branch.last_active_ts = time.time()

        try:
            async with server:
                from_client, from_server = machine.leftovers()
                if from_client:
                    await server.send_all(from_client)
                if from_server:
                    await conn.send(from_server)
                phases.lap("leftovers")

                def started() -> None:
                    phases.lap("splice")
                    phases.report(conn.peer)

                # Reset, stop and delete end the session here, with a reason for the client.
                with self._manager.terminable(session):
                    await self.data_plane.splice(
                        conn.stream, server, on_bytes=count, started=started
                    )
        finally:
            for key in keys:
                self.cancel_keys.revoke(*key)
            self._manager.connection_closed(session)

    async def _open(
        self, conn: ClientConn, machine: Startup, phases: Phases
    ) -> tuple[SessionT, trio.SocketStream, list[tuple[int, bytes]]] | None:
        """Everything up to the backend's first ReadyForQuery; None after a cancel request."""
        with trio.move_on_after(self._startup_timeout) as deadline:
            event = await self._drive(conn, machine, phases)
            if isinstance(event, startup.Cancel):
                await self.cancel_keys.forward(event.request, conn.peer)
                return None
        if deadline.cancelled_caught:
            hello = machine.state in (startup.State.HELLO, startup.State.TLS_HANDSHAKE)
            what = "start-up packet" if hello else "authentication"
            raise ProtocolViolation(
                f"no complete {what} within {self._startup_timeout:g} s",
                hint="connect with a PostgreSQL client; Prism speaks the Postgres protocol",
            )
        assert isinstance(event, startup.Admit)
        target = event.route
        self.gate.may_create(target.branch)
        session = await self._manager.admit(target.branch, conn.peer)
        phases.lap("admit")
        keys: list[tuple[int, bytes]] = []
        server: trio.SocketStream | None = None
        try:
            server = await self._connect(target.branch, session.address)
            phases.lap("connect")
            machine.connected()
            event = await self._drive(conn, machine, phases, server, session.address, keys)
            phases.lap("login")
            if isinstance(event, startup.Refused):
                raise _SessionRefused
        except BaseException:
            for key in keys:
                self.cancel_keys.revoke(*key)
            self._manager.connection_closed(session)
            if server is not None:
                with trio.CancelScope(shield=True):
                    await server.aclose()
            raise
        return session, server, keys

    async def _drive(
        self,
        conn: ClientConn,
        machine: Startup,
        phases: Phases,
        server: trio.SocketStream | None = None,
        address: BackendAddress | None = None,
        keys: list[tuple[int, bytes]] | None = None,
    ) -> startup.Event:
        """Do what the machine asks until it asks for admission, a cancel, or is done."""
        while True:
            event = machine.next_event()
            if isinstance(event, startup.IssueKey):
                assert address is not None and keys is not None and machine.route is not None
                target = CancelTarget(address, event.pid, event.secret, machine.route.branch)
                key = self.cancel_keys.issue(target, protocol_minor=machine.protocol_minor)
                keys.append(key)
                machine.key_issued(*key)
                continue
            # Flush before anything that waits, so each side has what it must answer.
            if data := machine.data_for_client():
                await conn.send(data)
            if data := machine.data_for_backend():
                assert server is not None
                await server.send_all(data)
            if isinstance(event, startup.NeedClientData):
                machine.receive_client(await conn.receive())
            elif isinstance(event, startup.NeedBackendData):
                assert server is not None
                machine.receive_backend(await server.receive_some(_RECEIVE_SIZE))
            elif isinstance(event, startup.StartTls):
                assert self._tls is not None
                phases.lap("hello")
                await start_tls(conn, event.received, self._tls, direct=event.direct)
                phases.lap("tls")
                machine.tls_started(sni=conn.sni, channel_binding=self._tls.channel_binding)
            elif isinstance(event, startup.LookupRole):
                assert self._verifiers is not None
                phases.lap("hello")
                # While main is made it has no roles yet: say so, not "password failed".
                self._manager.check_available(event.branch)
                secret = await self._verifiers.lookup(event.branch, event.role)
                phases.lap("lookup")
                machine.role_found(secret, now=time.time())
            else:
                if isinstance(event, startup.Admit):
                    phases.lap("client_auth")
                return event

    async def _connect(self, branch: str, address: BackendAddress) -> trio.SocketStream:
        try:
            return await address.connect()
        except OSError as exc:
            raise PrismError(
                f'cannot reach the server of branch "{branch}": {exc.strerror or exc}',
                hint="the branch server may have just stopped; connect again",
                sqlstate="08006",
            ) from exc
