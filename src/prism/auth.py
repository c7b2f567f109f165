"""Authentication at the front door: who may create, start or wake a branch.

``--auth verify`` (the default) checks the client itself, with SCRAM-SHA-256 against the role's
verifier in the branch (or, for a branch that does not exist yet, in its parent), *before* the
proxy creates, starts or wakes anything: a stranger who can reach the port cannot make Prism
clone or start a server. Prism then logs in to the branch server as the same role with the
ClientKey the client's proof revealed (SCRAM pass-through, the technique PgBouncer uses): the
server still checks the login against its own verifier, and the client's password never
reaches Prism.

``--auth passthrough`` keeps the first design for trusted networks: the branch is provisioned
first and the client authenticates with the branch server through Prism.

Verifiers are read from ``pg_authid`` over the branch's private service socket (trust, only
Prism's OS user can enter its directory) at every login to a running branch: SCRAM's salt
changes with the password, so a cached verifier cannot be re-checked after a mismatch, and a
stale one would refuse a password the branch accepts (``ALTER ROLE ... PASSWORD`` a moment
ago). A snapshot is written into the branch's data directory (0600) when the roles read differ
from the last read, after every start and just before every stop, so a stopped branch checks a
login against its snapshot (or, for a clone that never ran, its parent's) and is never woken
by a password check; the snapshot lives and dies with the branch's data.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from prism import scram, wire
from prism.address import BackendAddress
from prism.branches import BranchManager
from prism.errors import PrismError, ProtocolViolation
from prism.frontdoor import ClientConn
from prism.pgclient import connect_service

log = logging.getLogger(__name__)

SNAPSHOT_NAME: Final = "prism_roles.json"
_SERVICE_TIMEOUT: Final = 10.0
_ROLES_SQL: Final = (
    "SELECT rolname, rolpassword, rolcanlogin::text, "
    "extract(epoch FROM rolvaliduntil)::text FROM pg_authid"
)

# Authentication request codes (the int32 at the start of an 'R' message).
AUTH_OK: Final = 0
AUTH_CLEARTEXT: Final = 3
AUTH_MD5: Final = 5
AUTH_SASL: Final = 10
AUTH_SASL_CONTINUE: Final = 11
AUTH_SASL_FINAL: Final = 12
_NEEDS_ANSWER: Final = frozenset({AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL, AUTH_SASL_CONTINUE})


class AuthMode(enum.Enum):
    """``--auth``: who checks the client's password, and when."""

    VERIFY = "verify"
    PASSTHROUGH = "passthrough"


@dataclass(frozen=True)
class RoleSecret:
    """What ``pg_authid`` says about one role, as far as logging in is concerned."""

    password: str | None
    can_login: bool
    valid_until: float | None

    def usable_verifier(self, now: float) -> scram.ScramVerifier | None:
        """The SCRAM verifier a login can be checked against, or None if none can pass.

        As Postgres with ``scram-sha-256`` in pg_hba: no password, an md5 hash or an expired
        password fail. A role without LOGIN is left to the server, which says so itself once
        the password was right.
        """
        if self.valid_until is not None and self.valid_until < now:
            return None
        return scram.ScramVerifier.parse(self.password)


Roles = dict[str, RoleSecret]


def authentication(code: int, data: bytes = b"") -> bytes:
    """An Authentication ('R') message."""
    return wire.Message(b"R", code.to_bytes(4, "big") + data).raw


class VerifierStore:
    """Role verifiers per branch: live from a running server, else from its snapshot."""

    def __init__(self, manager: BranchManager, *, superuser: str, password: str) -> None:
        self._manager = manager
        self._superuser = superuser
        self._password = password
        # What the snapshot file of each branch holds, as this Prism last wrote or saw it.
        self._written: dict[str, Roles] = {}
        self._locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)

    async def lookup(self, branch: str, role: str) -> RoleSecret | None:
        """The secret of ``role`` as the server of ``branch`` would check it."""
        # A branch about to be created on connect has its default parent's roles.
        source = branch if self._manager.get(branch) is not None else self._manager.defaults.parent
        roles = await self._roles(source)
        return roles.get(role)

    async def _roles(self, branch: str) -> Roles:
        """The roles of ``branch`` as its server would check them, never starting it."""
        name: str | None = branch
        while name is not None:
            async with self._locks[name]:
                address = self._manager.address(name)
                if address is not None:
                    try:
                        return await self._read_live(name, address)
                    except (PrismError, trio.TooSlowError) as exc:
                        # It died or hangs: its snapshot is the best word on it now.
                        why = exc.message if isinstance(exc, PrismError) else "timed out"
                        log.warning("auth: cannot read roles of branch %s: %s", name, why)
                roles = await trio.to_thread.run_sync(self._read_snapshot, name)
                if roles is not None:
                    return roles
            # A clone that never ran here has its parent's roles; the parent knows them.
            record = self._manager.get(name)
            name = None if record is None else record.parent
        log.warning("auth: no role snapshot for branch %s or its parents: login refused", branch)
        return {}

    async def _read_live(self, branch: str, address: BackendAddress) -> Roles:
        roles = await self._fetch(address)
        # The file only needs a write when the roles changed since it was last written.
        if self._written.get(branch) != roles:
            await trio.to_thread.run_sync(self._write_snapshot, branch, roles)
        return roles

    async def snapshot(self, branch: str, address: BackendAddress) -> None:
        """Save ``branch``'s roles next to its data (called after a start and before a stop).

        Must not raise: a failure only means the snapshot may be older than the roles.
        """
        async with self._locks[branch]:
            try:
                await self._read_live(branch, address)
            except (PrismError, trio.TooSlowError) as exc:
                why = exc.message if isinstance(exc, PrismError) else "timed out"
                log.warning("auth: could not snapshot roles of branch %s: %s", branch, why)

    def forget(self, branch: str) -> None:
        """Drop what is known of ``branch``'s snapshot (it was reset, deleted or re-created)."""
        self._written.pop(branch, None)

    async def _fetch(self, address: BackendAddress) -> Roles:
        socket = address.service_socket_path()
        with trio.fail_after(_SERVICE_TIMEOUT):
            if socket is not None:
                connection = await connect_service(unix_socket=socket, user=self._superuser)
            else:
                connection = await connect_service(
                    host=address.host,
                    port=address.port,
                    user=self._superuser,
                    password=self._password,
                )
            async with connection:
                rows = await connection.query(_ROLES_SQL)
        return {
            str(name): RoleSecret(
                password=password,
                can_login=can_login == "true",
                valid_until=None if until in (None, "infinity") else float(until),
            )
            for name, password, can_login, until in rows
        }

    def _snapshot_path(self, branch: str) -> Path:
        return self._manager.data_path(branch) / SNAPSHOT_NAME

    def _read_snapshot(self, branch: str) -> Roles | None:
        try:
            raw = json.loads(self._snapshot_path(branch).read_text())
            return {name: RoleSecret(*fields) for name, fields in raw.items()}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("auth: ignoring unreadable role snapshot of branch %s: %s", branch, exc)
            return None

    def _write_snapshot(self, branch: str, roles: Roles) -> None:
        path = self._snapshot_path(branch)
        data = {
            name: [secret.password, secret.can_login, secret.valid_until]
            for name, secret in roles.items()
        }
        temporary = path.with_name(f".{SNAPSHOT_NAME}.{secrets.token_hex(4)}")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle)
            temporary.replace(path)
            self._written[branch] = roles
        except OSError as exc:
            log.warning("auth: could not write role snapshot of branch %s: %s", branch, exc)
            temporary.unlink(missing_ok=True)


@dataclass(frozen=True)
class Verified:
    """A client that proved it knows the role's password; what logging it in further needs."""

    verifier: scram.ScramVerifier
    client_key: bytes
    server_final: bytes


def _parse_sasl_initial(payload: bytes) -> tuple[str, bytes]:
    end = payload.find(b"\0")
    if end < 0 or len(payload) < end + 5:
        raise ProtocolViolation("malformed SASLInitialResponse message")
    mechanism = payload[:end].decode("utf-8", errors="replace")
    length = int.from_bytes(payload[end + 1 : end + 5], "big", signed=True)
    data = payload[end + 5 :]
    if length != len(data):
        raise ProtocolViolation("malformed SASLInitialResponse message: wrong length")
    return mechanism, data


async def _expect_password_message(conn: ClientConn) -> bytes:
    message = await conn.receive_message()
    if message.type != b"p":
        raise ProtocolViolation(
            f"expected SASL response, got message type {message.type.decode('latin-1')!r}"
        )
    return message.payload


async def verify_client(
    conn: ClientConn,
    role: str,
    secret: RoleSecret | None,
    *,
    channel_binding: bytes | None,
    mock_secret: bytes,
) -> Verified:
    """Run the server side of SCRAM with the client; AuthenticationFailed unless it proves.

    The final message (with Prism's server signature) is not sent yet: the client gets it
    together with AuthenticationOk once the branch server has accepted the login too.
    """
    verifier = secret.usable_verifier(time.time()) if secret is not None else None
    server = scram.ScramServer(
        role, verifier, mock_secret=mock_secret, channel_binding=channel_binding
    )
    mechanisms = b"".join(m.encode() + b"\0" for m in server.mechanisms) + b"\0"
    await conn.send(authentication(AUTH_SASL, mechanisms))
    mechanism, first = _parse_sasl_initial(await _expect_password_message(conn))
    await conn.send(authentication(AUTH_SASL_CONTINUE, server.server_first(mechanism, first)))
    try:
        final = server.server_final(await _expect_password_message(conn))
    except scram.AuthenticationFailed:
        why = "no such role" if secret is None else "wrong password or no usable SCRAM secret"
        log.info("auth: login of role %r from %s failed: %s", role, conn.peer, why)
        raise
    assert server.client_key is not None
    return Verified(server.verifier, server.client_key, final)


class BackendLogin:
    """Logs a client's session in to its branch server, up to the server's AuthenticationOk.

    With a :class:`Verified` client, Prism answers the server's SCRAM challenge itself with
    the client's ClientKey; otherwise (passthrough) each challenge is relayed to the client
    and its answer back. Either way the client gets exactly one AuthenticationOk.
    """

    def __init__(self, conn: ClientConn, server: trio.abc.Stream, verified: Verified | None):
        self._conn = conn
        self._server = server
        self._verified = verified
        self.reader = wire.MessageReader()
        """Server messages; whatever it holds after :meth:`run` belongs to the session."""

    async def receive(self) -> wire.Message:
        """The next message from the server."""
        while (message := self.reader.next_message()) is None:
            data = await self._server.receive_some(65536)
            if not data:
                raise PrismError(
                    "the branch server closed the connection during start-up",
                    hint="see the branch's server log",
                    sqlstate="08006",
                )
            self.reader.feed(data)
        return message

    async def run(self, startup: wire.StartupMessage) -> wire.Message | None:
        """Send ``startup`` and authenticate; an ErrorResponse from the server, or None."""
        await self._server.send_all(startup.encode())
        client: scram.ScramClient | None = None
        while True:
            message = await self.receive()
            if message.type == b"E":
                return message
            if message.type == b"v":
                # Prism told the client what it gets; the server's own answer is absorbed
                # (Prism re-issues the cancel key, the only thing that differs by version).
                continue
            if message.type == b"N":
                await self._conn.send(message.raw)
                continue
            if message.type != b"R":
                raise ProtocolViolation(
                    f"branch server sent {message.type!r} before authentication finished"
                )
            code, data = wire.parse_authentication(message.payload)
            if self._verified is None:
                await self._conn.send(message.raw)
                if code == AUTH_OK:
                    return None
                if code in _NEEDS_ANSWER:
                    answer = await self._conn.receive_message()
                    await self._server.send_all(answer.raw)
                continue
            if code == AUTH_OK:
                await self._conn.send(
                    authentication(AUTH_SASL_FINAL, self._verified.server_final)
                    + authentication(AUTH_OK)
                )
                return None
            client = await self._answer(code, data, client)

    async def _answer(
        self, code: int, data: bytes, client: scram.ScramClient | None
    ) -> scram.ScramClient | None:
        assert self._verified is not None
        if code == AUTH_SASL:
            mechanisms = [m.decode(errors="replace") for m in data.split(b"\0") if m]
            if scram.MECHANISM not in mechanisms:
                raise PrismError(
                    f"the branch server offers {mechanisms}, not {scram.MECHANISM}",
                    sqlstate="28000",
                )
            client = scram.ScramClient.from_client_key(
                self._verified.verifier, self._verified.client_key
            )
            await self._server.send_all(
                wire.sasl_initial_response(scram.MECHANISM, client.client_first())
            )
        elif code == AUTH_SASL_CONTINUE and client is not None:
            await self._server.send_all(wire.password_message(client.client_final(data)))
        elif code == AUTH_SASL_FINAL and client is not None:
            client.verify_server_final(data)
        else:
            raise PrismError(
                f"the branch server asks for authentication method {code}; --auth verify "
                "needs scram-sha-256 for TCP connections in the branch's pg_hba.conf",
                hint="fix pg_hba.conf, or run Prism with --auth passthrough",
                sqlstate="28000",
            )
        return client
