"""The Postgres front door: one task per client connection, sniff → route → hold → splice.

* **sniff**: read the start-up packets within ``startup_timeout`` (SSLRequest and GSSENCRequest
  are declined with ``N`` for now, a CancelRequest is forwarded and the connection closed);
* **route**: ``user@branch`` → branch and the start-up packet to replay;
* **hold**: ``BranchManager.ensure_running`` creates, starts or wakes the branch while the client
  waits — nothing is read from the client meanwhile;
* **splice**: replay the start-up packet (plus anything the client already pipelined) to the
  branch server and pump both ways. The server's messages are watched until its first
  ReadyForQuery to learn the BackendKeyData, so a later CancelRequest reaches the right server.

Whatever goes wrong, the client is answered with a FATAL ErrorResponse carrying a SQLSTATE and a
message that says what to do — never a silent close, never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import trio

from prism import wire
from prism.address import BackendAddress
from prism.branches import BranchManager
from prism.errors import PrismError, ProtocolViolation, find_prism_error
from prism.pump import splice
from prism.router import route

log = logging.getLogger(__name__)


class _ClientGone(Exception):
    """The client closed before sending a complete start-up packet."""


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()
    except (OSError, ValueError):
        return "unknown"
    return f"{host}:{port}"


class _KeyWatcher:
    """Watches a server's start-up replies for BackendKeyData, stopping at ReadyForQuery."""

    def __init__(self, on_key: Callable[[int, bytes], None]) -> None:
        self._reader = wire.MessageReader()
        self._on_key = on_key

    def __call__(self, data: bytes) -> bool:
        self._reader.feed(data)
        while (message := self._reader.next_message()) is not None:
            if message.type == b"K":
                self._on_key(*wire.parse_backend_key_data(message.payload))
            elif message.type in (b"Z", b"E"):
                return True
        return False


class Proxy:
    """Serves client connections for one Prism server."""

    def __init__(self, manager: BranchManager, *, startup_timeout: float) -> None:
        self._manager = manager
        self._startup_timeout = startup_timeout
        self._cancel_targets: dict[tuple[int, bytes], BackendAddress] = {}

    async def handle(self, client: trio.SocketStream) -> None:
        """Serve one client connection from its first byte to its close."""
        peer = _peer_name(client)
        async with client:
            try:
                await self._serve(client, peer)
            except _ClientGone:
                log.debug("proxy: client %s closed before its start-up packet", peer)
            except PrismError as exc:
                log.info("proxy: refused client %s: %s (%s)", peer, exc.message, exc.sqlstate)
                await self._refuse(client, exc)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("proxy: connection to %s broke", peer)
            except Exception as exc:
                error = find_prism_error(exc)
                if error is None:
                    log.exception("proxy: unexpected error serving %s", peer)
                    error = PrismError(
                        "internal error in Prism while opening this connection",
                        hint="see the Prism server log for details",
                    )
                await self._refuse(client, error)

    async def _refuse(self, client: trio.SocketStream, exc: PrismError) -> None:
        with (
            trio.move_on_after(1),
            trio.CancelScope(shield=True),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await client.send_all(wire.error_from(exc))

    async def _serve(self, client: trio.SocketStream, peer: str) -> None:
        reader = wire.StartupReader()
        message = await self._sniff(client, reader)
        if isinstance(message, wire.CancelRequest):
            await self._forward_cancel(message, peer)
            return
        target = route(message)
        address = await self._manager.ensure_running(target.branch)
        try:
            server = await address.connect()
        except OSError as exc:
            raise PrismError(
                f'cannot reach the server of branch "{target.branch}": {exc.strerror or exc}',
                hint="the branch server may have just stopped; connect again",
                sqlstate="08006",
            ) from exc
        keys: list[tuple[int, bytes]] = []

        def remember_key(pid: int, secret: bytes) -> None:
            keys.append((pid, secret))
            self._cancel_targets[(pid, secret)] = address

        branch = self._manager.get(target.branch)

        def count(nbytes: int) -> None:
            if branch is not None:
                branch.bytes_proxied += nbytes
                branch.last_active_ts = time.time()

        self._manager.connection_opened(target.branch, peer)
        try:
            async with server:
                await server.send_all(target.startup.encode() + reader.pending())
                await splice(
                    client, server, on_bytes=count, observe_server=_KeyWatcher(remember_key)
                )
        finally:
            for key in keys:
                self._cancel_targets.pop(key, None)
            self._manager.connection_closed(target.branch, peer)

    async def _sniff(
        self, client: trio.SocketStream, reader: wire.StartupReader
    ) -> wire.StartupMessage | wire.CancelRequest:
        with trio.move_on_after(self._startup_timeout):
            while True:
                message = reader.next_message()
                if message is None:
                    data = await client.receive_some(wire.MAX_STARTUP_PACKET)
                    if not data:
                        raise _ClientGone
                    reader.feed(data)
                elif isinstance(message, wire.SSLRequest | wire.GSSENCRequest):
                    await client.send_all(b"N")
                else:
                    return message
        raise ProtocolViolation(
            f"no complete start-up packet within {self._startup_timeout:g} s",
            hint="connect with a PostgreSQL client; Prism speaks the Postgres protocol",
        )

    async def _forward_cancel(self, request: wire.CancelRequest, peer: str) -> None:
        address = self._cancel_targets.get((request.pid, request.secret))
        if address is None:
            log.debug("proxy: cancel request from %s with an unknown key: ignored", peer)
            return
        try:
            server = await address.connect()
            async with server:
                await server.send_all(request.encode())
                await server.receive_some(1)
        except (OSError, trio.BrokenResourceError):
            log.info("proxy: could not forward a cancel request from %s", peer)
