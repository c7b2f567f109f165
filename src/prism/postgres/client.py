"""Prism's own small Postgres client, for service work on a branch server.

Prism needs a handful of statements per branch (CHECKPOINT, backup mode, reading role
verifiers), normally over the branch's private Unix socket where pg_hba trusts local
connections. Pulling in a full driver for that would bring its own event loop assumptions;
this is a thin trio layer over :mod:`prism.postgres.wire` framing and :mod:`prism.postgres.scram`,
speaking only the simple query protocol with text results. It is deliberately not a general driver.

Timeouts are the caller's: wrap calls in ``trio.fail_after``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from types import TracebackType

import trio

from prism.core.address import BackendAddress
from prism.core.errors import BackendQueryError, PrismError
from prism.postgres import scram, wire

log = logging.getLogger(__name__)

_RECEIVE_SIZE = 65536

Row = tuple[str | None, ...]


def _server_error(error: wire.ErrorResponse) -> BackendQueryError:
    """A BackendQueryError carrying what the server said, SQLSTATE included."""
    return BackendQueryError(
        error.message or "unknown server error",
        sqlstate=error.sqlstate,
        hint=error.hint,
        detail=error.detail,
    )


def _lost(why: str) -> BackendQueryError:
    # 08006 connection_failure: callers treat it as "reconnect", not "the SQL is wrong".
    return BackendQueryError(f"service connection lost: {why}", sqlstate="08006")


class ServiceConnection:
    """One authenticated session, used by one caller at a time (others queue on a lock).

    A query interrupted half-way (cancelled, timed out) leaves unread replies in the socket;
    the connection is then marked broken and refuses further queries instead of handing
    one caller another's results.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._reader = wire.MessageReader()
        self._lock = trio.Lock()
        self._broken = False
        self._closed = False
        self.parameters: dict[str, str] = {}
        """ParameterStatus values reported by the server (server_version, ...)."""
        self.backend_pid: int | None = None
        self.backend_secret: bytes | None = None

    async def __aenter__(self) -> ServiceConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _receive(self) -> wire.Message:
        while True:
            message = self._reader.next_message()
            if message is not None:
                return message
            try:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, OSError) as exc:
                self._broken = True
                raise _lost(str(exc) or type(exc).__name__) from exc
            if not data:
                self._broken = True
                raise _lost("server closed the connection")
            self._reader.feed(data)

    async def _send(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, OSError) as exc:
            self._broken = True
            raise _lost(str(exc) or type(exc).__name__) from exc

    def _absorb(self, message: wire.Message) -> bool:
        """Handle asynchronous messages any phase may see; True if it was one."""
        if message.type == b"S":
            status = wire.ParameterStatus.decode(message.payload)
            self.parameters[status.name] = status.value
        elif message.type == b"N":
            notice = wire.NoticeResponse.decode(message.payload)
            log.debug("server notice severity=%s message=%s", notice.severity, notice.message)
        elif message.type != b"A":  # NotificationResponse: nobody LISTENs here
            return False
        return True

    async def _startup(
        self, startup: wire.StartupMessage, *, user: str, password: str | None
    ) -> None:
        await self._send(startup.encode())
        sasl: scram.ScramClient | None = None
        while True:
            message = await self._receive()
            if message.type == b"E":
                raise _server_error(wire.ErrorResponse.decode(message.payload))
            if message.type == b"R":
                request = wire.Authentication.decode(message.payload)
                if request.code == wire.AuthCode.OK:
                    continue
                sasl = await self._authenticate(request, sasl, user=user, password=password)
            elif message.type == b"K":
                key = wire.BackendKeyData.decode(message.payload)
                self.backend_pid, self.backend_secret = key.pid, key.secret
            elif message.type == b"Z":
                return
            elif message.type == b"v" or self._absorb(message):
                # NegotiateProtocolVersion: we ask for 3.0 and no _pq_ options; nothing to do.
                continue
            else:
                raise _lost(f"unexpected message {message.type!r} during start-up")

    async def _authenticate(
        self,
        request: wire.Authentication,
        sasl: scram.ScramClient | None,
        *,
        user: str,
        password: str | None,
    ) -> scram.ScramClient | None:
        """Answer one authentication request; returns the SCRAM exchange in progress."""
        code, data = request.code, request.data
        if code in (wire.AuthCode.SASL_CONTINUE, wire.AuthCode.SASL_FINAL):
            if sasl is None:
                raise _lost("SASL message before SASL started")
            if code == wire.AuthCode.SASL_CONTINUE:
                await self._send(wire.PasswordMessage(sasl.client_final(data)).encode())
            else:
                sasl.verify_server_final(data)
            return sasl
        if code not in (
            wire.AuthCode.CLEARTEXT_PASSWORD,
            wire.AuthCode.MD5_PASSWORD,
            wire.AuthCode.SASL,
        ):
            raise PrismError(
                f"server asks for authentication method {code}, which Prism does not support",
                sqlstate="28000",
            )
        if password is None:
            raise PrismError(
                "server asks for a password but none was given for the service connection",
                sqlstate="28000",
            )
        if code == wire.AuthCode.CLEARTEXT_PASSWORD:
            await self._send(wire.PasswordMessage(password.encode() + b"\0").encode())
        elif code == wire.AuthCode.MD5_PASSWORD:
            await self._send(wire.PasswordMessage(_md5_password(user, password, data)).encode())
        else:
            mechanisms = [m.decode(errors="replace") for m in data.split(b"\0") if m]
            if scram.MECHANISM not in mechanisms:
                raise PrismError(
                    f"server offers SASL mechanisms {mechanisms}, not {scram.MECHANISM}",
                    sqlstate="28000",
                )
            sasl = scram.ScramClient(password)
            await self._send(
                wire.SASLInitialResponse(scram.MECHANISM, sasl.client_first()).encode()
            )
        return sasl

    async def query(self, sql: str) -> list[Row]:
        """Run ``sql`` (one or more statements) and return the rows of the last statement.

        Values come back as text, SQL NULL as None. A statement without a result set (SET,
        CREATE ...) as the last one gives ``[]``. If any statement fails, Postgres skips the
        rest; the error is raised once the server is ready again, so the connection stays
        usable.
        """
        async with self._lock:
            if self._closed:
                raise BackendQueryError("service connection is closed", sqlstate="08003")
            if self._broken:
                raise _lost("an earlier query was interrupted or the server went away")
            try:
                rows, error = await self._query(sql)
            except BaseException:
                # Replies may still be in flight; nobody can safely read after us.
                self._broken = True
                raise
        if error is not None:
            raise error
        return rows

    async def _query(self, sql: str) -> tuple[list[Row], BackendQueryError | None]:
        """Send one Query and read up to ReadyForQuery: the last rows and any error."""
        await self._send(wire.Query(sql).encode())
        last: list[Row] = []
        current: list[Row] | None = None
        error: BackendQueryError | None = None
        while True:
            message = await self._receive()
            kind = message.type
            if kind == b"T":
                current = []
            elif kind == b"D":
                if current is None:
                    raise _lost("DataRow without RowDescription")
                values = wire.DataRow.decode(message.payload).values
                current.append(tuple(None if v is None else v.decode() for v in values))
            elif kind in (b"C", b"I"):
                last, current = current or [], None
            elif kind == b"E":
                error = _server_error(wire.ErrorResponse.decode(message.payload))
            elif kind == b"G":
                # COPY FROM STDIN: refuse, the server answers with an error and carries on.
                await self._send(wire.CopyFail("COPY FROM STDIN is not supported here").encode())
            elif kind in (b"H", b"d", b"c"):
                pass  # COPY TO STDOUT data: not ours to keep
            elif kind == b"Z":
                return last, error
            elif not self._absorb(message):
                raise _lost(f"unexpected message {kind!r} in query response")

    async def aclose(self) -> None:
        """Say goodbye to the server (if it is still listening) and close the socket."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._broken:
                await self._stream.send_all(wire.Terminate().encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("server gone before Terminate: %s", exc)
        finally:
            await self._stream.aclose()


def _md5_password(user: str, password: str, salt: bytes) -> bytes:
    """Postgres's md5 answer: ``"md5" + md5(md5(password + user) + salt)``, NUL-terminated."""
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode() + b"\0"


async def _open_stream(
    unix_socket: Path | None, host: str | None, port: int | None
) -> trio.abc.Stream:
    if (unix_socket is None) == (host is None):
        raise ValueError("give exactly one of unix_socket or host")
    try:
        if unix_socket is not None:
            name = str(unix_socket)
            # libpq's spelling of an abstract socket ("@name") is a leading NUL for the kernel.
            return await trio.open_unix_socket("\0" + name[1:] if name.startswith("@") else name)
        assert host is not None
        return await trio.open_tcp_stream(host, port if port is not None else 5432)
    except OSError as exc:
        where = unix_socket if unix_socket is not None else f"{host}:{port}"
        raise BackendQueryError(
            f"could not connect to server at {where}: {exc.strerror or exc}",
            sqlstate="08001",
        ) from exc


async def first_reply(address: BackendAddress, *, user: str) -> wire.Message:
    """The first message the server at ``address`` answers a start-up with: a health probe
    (``prism.branches.health``), in the way ``pg_isready`` asks.

    Its service socket is used where there is one, else its TCP port; no log-in is finished.
    A server that lets Prism in at once (trust) is sent a Terminate and read to its end, so
    its backend exits cleanly instead of logging a broken pipe; one that asks for a password
    is left at that, which it takes quietly. Timeouts are the caller's.
    """
    socket = address.service_socket_path()
    if socket is not None:
        stream = await _open_stream(socket, None, None)
    else:
        stream = await _open_stream(None, address.host, address.port)
    startup = wire.StartupMessage(
        wire.PROTOCOL_3_0,
        (("user", user), ("database", "postgres"), ("application_name", "prism health")),
    )
    reader = wire.MessageReader()
    try:
        async with stream:
            await stream.send_all(startup.encode())
            while (message := reader.next_message()) is None:
                data = await stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    raise _lost("server closed the connection")
                reader.feed(data)
            auth = wire.Authentication.decode(message.payload) if message.type == b"R" else None
            if auth is not None and auth.code == wire.AuthCode.OK:
                await stream.send_all(wire.Terminate().encode())
                while await stream.receive_some(_RECEIVE_SIZE):
                    pass
    except (trio.BrokenResourceError, OSError) as exc:
        raise _lost(str(exc) or type(exc).__name__) from exc
    return message


async def connect_service(
    *,
    unix_socket: Path | None = None,
    host: str | None = None,
    port: int | None = None,
    user: str,
    database: str = "postgres",
    password: str | None = None,
    application_name: str = "prism",
) -> ServiceConnection:
    """Open and authenticate a service connection to one server.

    ``unix_socket`` is the socket file itself (``.../.s.PGSQL.<port>``, see
    :meth:`prism.core.address.BackendAddress.service_socket_path`). Failures raise
    BackendQueryError (or PrismError) with the server's SQLSTATE where there is one, so a
    caller can retry on 57P03 (server starting up) and give up on 28P01 (wrong password).
    """
    stream = await _open_stream(unix_socket, host, port)
    connection = ServiceConnection(stream)
    startup = wire.StartupMessage(
        wire.PROTOCOL_3_0,
        (
            ("user", user),
            ("database", database),
            ("application_name", application_name),
            ("client_encoding", "UTF8"),
        ),
    )
    try:
        await connection._startup(startup, user=user, password=password)
    except BaseException:
        connection._broken = True
        await connection.aclose()
        raise
    return connection


async def connect_branch(
    address: BackendAddress,
    *,
    user: str,
    password: str | None = None,
    database: str = "postgres",
    application_name: str = "prism",
) -> ServiceConnection:
    """Prism's trusted service connection to a running branch server: the one way in.

    The branch's private socket (a file, or a name in the abstract namespace, as
    ``address`` says) is trusted by its pg_hba, so no password goes over it. Only a runtime
    that offers no such socket makes Prism log in over TCP, with ``password``; a caller that
    has none gets a clear error instead of a connection the server would refuse anyway.
    """
    socket = address.service_socket_path()
    if socket is not None:
        return await connect_service(
            unix_socket=socket, user=user, database=database, application_name=application_name
        )
    if password is None:
        raise BackendQueryError(
            f"the branch server at {address.host}:{address.port} offers no private service "
            "socket, and a login over TCP needs a password",
            sqlstate="08001",
        )
    return await connect_service(
        host=address.host,
        port=address.port,
        user=user,
        password=password,
        database=database,
        application_name=application_name,
    )
