"""The first packets of a client connection: encryption negotiation and the start-up packet.

Postgres clients open in one of three ways, and Prism answers each as Postgres 17+ does:

* an **SSLRequest**: answered ``S`` and followed by a TLS handshake when TLS is on, else ``N``
  and the client goes on in plaintext (or gives up, with ``sslmode=require``). Bytes the
  client sent after its SSLRequest but before the handshake are refused, never read as if
  they had come over TLS (CVE-2021-23214, which Postgres and PgBouncer fixed the same way);
* a **GSSENCRequest**: answered ``N`` (Prism has no Kerberos), then the next packet is read —
  libpq sends GSSENC first where it finds Kerberos credentials, then falls back to TLS;
* a **TLS ClientHello** straight away (``sslnegotiation=direct``): the handshake must agree on
  ALPN ``postgresql``, as Postgres insists, so a TLS client of another protocol is refused.

After that comes a StartupMessage or a CancelRequest, inside or outside TLS. With
``--tls required`` a StartupMessage in plaintext is refused (a CancelRequest is not: older
clients always cancel in plaintext, and a cancel key is its own credential).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import trio

from prism import clienthello, wire
from prism.errors import PrismError, ProtocolViolation
from prism.tls import ALPN_PROTOCOL, TLS_HANDSHAKE_RECORD, PrefixedStream, TlsConfig, accept_tls

log = logging.getLogger(__name__)

MAX_AUTH_MESSAGE: Final = 65535
"""Largest message a client may send before it is authenticated (Postgres's auth token cap)."""


class ClientGone(Exception):
    """The client closed the connection during start-up."""


@dataclass
class ClientConn:
    """A client connection after encryption negotiation: the stream to use and what we know.

    ``reader`` frames the typed messages the client sends after its start-up packet; it is
    bounded while the client is not authenticated yet.
    """

    stream: trio.abc.HalfCloseableStream
    peer: str
    tls: bool = False
    sni: str | None = None
    reader: wire.MessageReader | None = None

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive_message(self) -> wire.Message:
        """The next typed message from the client; ClientGone if it hung up."""
        if self.reader is None:
            raise RuntimeError("receive_message() before the start-up packet was read")
        while (message := self.reader.next_message()) is None:
            data = await self.stream.receive_some(MAX_AUTH_MESSAGE)
            if not data:
                raise ClientGone
            self.reader.feed(data)
        return message


async def _receive(stream: trio.abc.Stream) -> bytes:
    data = await stream.receive_some(wire.MAX_STARTUP_PACKET)
    if not data:
        raise ClientGone
    return bytes(data)


async def read_hello(
    conn: ClientConn, tls: TlsConfig | None
) -> wire.StartupMessage | wire.CancelRequest:
    """Negotiate encryption and read the start-up packet (the caller bounds the time).

    ``conn`` is updated in place as TLS starts, so an error raised here can still be sent
    to the client over the channel it is listening on.
    """
    first = await _receive(conn.stream)
    if tls is not None and first[0] == TLS_HANDSHAKE_RECORD:
        await _start_tls(conn, first, tls, direct=True)
        first = b""
    reader = wire.StartupReader()
    reader.feed(first)
    while True:
        message = reader.next_message()
        if message is None:
            reader.feed(await _receive(conn.stream))
        elif isinstance(message, wire.GSSENCRequest):
            if conn.tls:
                raise ProtocolViolation("GSSAPI encryption request inside a TLS connection")
            await conn.send(b"N")
        elif isinstance(message, wire.SSLRequest):
            if conn.tls:
                raise ProtocolViolation("SSL request inside a TLS connection")
            if tls is None:
                await conn.send(b"N")
                continue
            if reader.pending():
                raise ProtocolViolation(
                    "received unencrypted data after SSL request",
                    hint="this could be either a client-software bug or evidence of an "
                    "attempted man-in-the-middle attack",
                )
            await conn.send(b"S")
            await _start_tls(conn, b"", tls, direct=False)
            reader = wire.StartupReader()
        else:
            plaintext = isinstance(message, wire.StartupMessage) and not conn.tls
            if plaintext and tls is not None and tls.required:
                raise PrismError(
                    "this Prism server accepts connections only over TLS",
                    hint="connect with sslmode=require (or verify-full)",
                    sqlstate="28000",
                )
            conn.reader = wire.MessageReader(max_length=MAX_AUTH_MESSAGE)
            conn.reader.feed(reader.pending())
            return message


async def _read_client_hello(conn: ClientConn, hello: bytes) -> tuple[bytes, str | None]:
    """Read on until the ClientHello is complete: its bytes so far and its server name."""
    while (name := clienthello.server_name(hello)) is clienthello.NEED_MORE:
        hello += await _receive(conn.stream)
    assert not isinstance(name, clienthello.NeedMore)
    return hello, name


async def _start_tls(conn: ClientConn, received: bytes, tls: TlsConfig, *, direct: bool) -> None:
    """Handshake on ``conn``; ``received`` is the start of the ClientHello, if read already."""
    hello, sni = await _read_client_hello(conn, received)
    try:
        stream = await accept_tls(PrefixedStream(conn.stream, hello), tls, sni)
    except trio.BrokenResourceError as exc:
        # Not worth an error message: there is no channel left to send it on.
        log.debug("tls: handshake with %s failed: %r", conn.peer, exc.__cause__ or exc)
        raise ClientGone from exc
    conn.stream, conn.tls, conn.sni = stream, True, stream.sni
    if direct and stream.selected_alpn_protocol() != ALPN_PROTOCOL:
        raise ProtocolViolation(
            "received direct SSL connection request without ALPN protocol negotiation extension",
            hint=f'direct TLS needs ALPN "{ALPN_PROTOCOL}" (PostgreSQL 17+ clients send it)',
        )
