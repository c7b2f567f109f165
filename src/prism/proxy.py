"""The Postgres front door: one task per client connection, from its first byte to its close.

1. **hello** (:mod:`prism.frontdoor`): negotiate TLS (SSLRequest, direct TLS) and read the
   start-up packet, within ``--startup-timeout``. A CancelRequest is forwarded by Prism's
   own cancel key (:mod:`prism.cancel`) and the connection closed.
2. **route** (:mod:`prism.router`): ``user@branch``, ``prism.branch`` or the SNI host name →
   branch, and the start-up packet for the backend without Prism's own parameters.
3. **negotiate**: a client asking for a protocol newer than 3.2 or for ``_pq_.*`` options
   gets one NegotiateProtocolVersion from Prism; the backend is asked for what the client was
   told, so it never sends a second one. It goes out before routing, as from Postgres, so it
   comes before a missing-user FATAL.
4. **authenticate** (``--auth verify``, :mod:`prism.auth`): SCRAM against the role's verifier
   before anything is created, started or woken.
5. **hold**: the create policy (:mod:`prism.limits`), then ``BranchManager.admit`` creates,
   starts or wakes the branch within its caps while the client waits, and counts the session.
6. **log in** to the branch server (with the client's ClientKey, or relaying the client's
   answers in passthrough), relay its replies up to ReadyForQuery with BackendKeyData replaced
   by a Prism-issued key, then **splice** both ways.

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
from typing import Final

import trio

from prism import wire
from prism.address import BackendAddress
from prism.auth import AuthMode, BackendLogin, Verified, VerifierStore, verify_client
from prism.branches import BranchManager, ClientSession
from prism.cancel import CancelKeys, CancelTarget
from prism.config import Settings
from prism.dataplane import PUMP, DataPlane
from prism.errors import PrismError, ProtocolViolation, find_prism_error
from prism.frontdoor import ClientConn, ClientGone, read_hello
from prism.limits import Gate, Limits, parse_create_policy
from prism.router import route
from prism.tls import TlsConfig, TlsMode, load_tls

log = logging.getLogger(__name__)

_PQ_PREFIX: Final = "_pq_."
_MOCK_SECRET_FILE: Final = "mock_auth_secret"


class _SessionRefused(Exception):
    """The branch server refused the session; its ErrorResponse was relayed already."""


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()
    except (OSError, ValueError):
        return "unknown"
    return f"{host}:{port}"


def negotiate(startup: wire.StartupMessage) -> tuple[bytes, wire.StartupMessage]:
    """The NegotiateProtocolVersion for the client (or b"") and the start-up for the backend.

    As Postgres: one message when the client asked for a newer minor version or for any
    ``_pq_.*`` protocol option (Prism knows none), naming the newest version we speak and
    every option we ignore. The backend is asked for the same version, without the options.
    """
    major, minor = startup.version
    unknown = [name for name, _ in startup.params if name.startswith(_PQ_PREFIX)]
    agreed = min(minor, wire.NEWEST_MINOR)
    message = wire.negotiate_protocol_version(agreed, unknown) if minor > agreed or unknown else b""
    params = tuple(p for p in startup.params if not p[0].startswith(_PQ_PREFIX))
    return message, wire.StartupMessage(major << 16 | agreed, params)


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


class Proxy:
    """Serves client connections for one Prism server."""

    def __init__(
        self,
        manager: BranchManager,
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
        self._auth = auth
        self._verifiers = verifiers
        self._mock_secret = mock_secret or secrets.token_bytes(32)
        self._sni_domain = sni_domain
        self.gate = Gate(manager, limits or Limits())
        self.cancel_keys = CancelKeys()
        self.data_plane = data_plane

    @classmethod
    def from_settings(
        cls,
        manager: BranchManager,
        settings: Settings,
        data_dir: Path,
        data_plane: DataPlane = PUMP,
    ) -> Proxy:
        """A proxy configured by ``settings`` (TLS material and secrets live in ``data_dir``)."""
        auth = AuthMode(settings.auth)
        verifiers = None
        if auth is AuthMode.PASSTHROUGH:
            log.warning(
                "auth: --auth passthrough: branches are created and woken before clients "
                "authenticate; use it only on a trusted network"
            )
        else:
            verifiers = VerifierStore(
                manager, superuser=settings.superuser, password=settings.password
            )
            manager.before_stop.append(verifiers.snapshot)
            manager.after_start.append(verifiers.snapshot)
            manager.after_discard.append(verifiers.forget)
        return cls(
            manager,
            startup_timeout=settings.startup_timeout,
            tls=load_tls(
                TlsMode(settings.tls),
                cert=settings.tls_cert,
                key=settings.tls_key,
                data_dir=data_dir,
            ),
            auth=auth,
            verifiers=verifiers,
            mock_secret=_mock_secret(data_dir),
            sni_domain=settings.sni_domain,
            limits=Limits(
                max_startup=settings.max_startup_connections,
                create_on_connect=parse_create_policy(settings.create_on_connect),
            ),
            data_plane=data_plane,
        )

    @property
    def verifiers(self) -> VerifierStore | None:
        return self._verifiers

    async def handle(self, client: trio.SocketStream) -> None:
        """Serve one client connection from its first byte to its close."""
        conn = ClientConn(client, _peer_name(client))
        try:
            await self._serve(conn)
        except ClientGone:
            log.debug("proxy: client %s closed during start-up", conn.peer)
        except wire.UnansweredViolation as exc:
            log.info("proxy: closed connection from %s without an answer: %s", conn.peer, exc)
        except _SessionRefused:
            log.debug("proxy: branch server refused client %s", conn.peer)
        except PrismError as exc:
            log.info("proxy: refused client %s: %s (%s)", conn.peer, exc.message, exc.sqlstate)
            await self._refuse(conn, exc)
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
            await self._refuse(conn, error)
        finally:
            with (
                trio.move_on_after(1),
                trio.CancelScope(shield=True),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await conn.stream.aclose()
            await client.aclose()

    async def _refuse(self, conn: ClientConn, exc: PrismError) -> None:
        with (
            trio.move_on_after(1),
            trio.CancelScope(shield=True),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await conn.send(wire.error_from(exc))

    async def _serve(self, conn: ClientConn) -> None:
        with self.gate.startup_slot():
            opened = await self._open(conn)
        if opened is None:
            return
        session, server, login, keys = opened
        branch = session.branch

        def count(nbytes: int) -> None:
            branch.bytes_proxied += nbytes
            branch.last_active_ts = time.time()

        try:
            async with server:
                assert conn.reader is not None
                if pending := conn.reader.pending():
                    await server.send_all(pending)
                if pending := login.reader.pending():
                    await conn.send(pending)
                # Reset, stop and delete end the session here, with a reason for the client.
                with self._manager.terminable(session):
                    await self.data_plane.splice(conn.stream, server, on_bytes=count)
        finally:
            for key in keys:
                self.cancel_keys.revoke(*key)
            self._manager.connection_closed(session)

    async def _open(
        self, conn: ClientConn
    ) -> (
        tuple[ClientSession, trio.abc.HalfCloseableStream, BackendLogin, list[tuple[int, bytes]]]
        | None
    ):
        """Everything up to the backend's first ReadyForQuery; None after a cancel request."""
        verified: Verified | None = None
        with trio.move_on_after(self._startup_timeout) as deadline:
            packet = await read_hello(conn, self._tls)
            if isinstance(packet, wire.CancelRequest):
                await self.cancel_keys.forward(packet, conn.peer)
                return None
            # As Postgres: the version is negotiated before a missing user is refused.
            negotiation, packet = negotiate(packet)
            if negotiation:
                await conn.send(negotiation)
            target = route(packet, sni=conn.sni, sni_domain=self._sni_domain)
            startup = target.startup
            if self._verifiers is not None:
                role = startup.get("user") or ""
                secret = await self._verifiers.lookup(target.branch, role)
                verified = await verify_client(
                    conn,
                    role,
                    secret,
                    channel_binding=self._tls.channel_binding if conn.tls and self._tls else None,
                    mock_secret=self._mock_secret,
                )
        if deadline.cancelled_caught:
            what = "start-up packet" if conn.reader is None else "authentication"
            raise ProtocolViolation(
                f"no complete {what} within {self._startup_timeout:g} s",
                hint="connect with a PostgreSQL client; Prism speaks the Postgres protocol",
            )
        self.gate.may_create(target.branch)
        session = await self._manager.admit(target.branch, conn.peer)
        address = session.address
        keys: list[tuple[int, bytes]] = []
        server: trio.SocketStream | None = None
        try:
            server = await self._connect(target.branch, address)
            login = BackendLogin(conn, server, verified)
            error = await login.run(startup)
            if error is not None:
                await conn.send(error.raw)
                raise _SessionRefused
            minor = startup.version[1]
            await self._relay_until_ready(conn, login, address, target.branch, minor, keys)
        except BaseException:
            for key in keys:
                self.cancel_keys.revoke(*key)
            self._manager.connection_closed(session)
            if server is not None:
                with trio.CancelScope(shield=True):
                    await server.aclose()
            raise
        return session, server, login, keys

    async def _connect(self, branch: str, address: BackendAddress) -> trio.SocketStream:
        try:
            return await address.connect()
        except OSError as exc:
            raise PrismError(
                f'cannot reach the server of branch "{branch}": {exc.strerror or exc}',
                hint="the branch server may have just stopped; connect again",
                sqlstate="08006",
            ) from exc

    async def _relay_until_ready(
        self,
        conn: ClientConn,
        login: BackendLogin,
        address: BackendAddress,
        branch: str,
        minor: int,
        keys: list[tuple[int, bytes]],
    ) -> None:
        """Pass the server's post-login messages on, with Prism's own cancel key."""
        out = bytearray()
        while True:
            message = login.reader.next_message()
            if message is None:
                if out:
                    await conn.send(bytes(out))
                    out.clear()
                message = await login.receive()
            if message.type == b"K":
                pid, secret = wire.parse_backend_key_data(message.payload)
                target = CancelTarget(address, pid, secret, branch)
                issued_pid, issued_secret = self.cancel_keys.issue(target, protocol_minor=minor)
                keys.append((issued_pid, issued_secret))
                out += wire.backend_key_data(issued_pid, issued_secret)
            elif message.type != b"v":
                out += message.raw
            if message.type in (b"Z", b"E"):
                await conn.send(bytes(out))
                if message.type == b"E":
                    raise _SessionRefused
                return
