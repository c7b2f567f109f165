"""The first packets of a client connection: encryption negotiation and the start-up packet.

Postgres clients open in one of three ways, and Prism answers each as Postgres 18 does:

* an **SSLRequest**: answered ``S`` and followed by a TLS handshake when TLS is on (and the
  connection is not encrypted already), else ``N`` and the client goes on in plaintext (or
  gives up, with ``sslmode=require``). Bytes the client sent after its SSLRequest but before
  the ``S`` go into the TLS handshake, as in Postgres 17+, so they can never be read as if
  they had come over TLS (CVE-2021-23214); after an ``N`` they are refused;
* a **GSSENCRequest**: answered ``N`` (Prism has no Kerberos), then the next packet is read —
  libpq sends GSSENC first where it finds Kerberos credentials, then falls back to TLS;
* a **TLS ClientHello** straight away (``sslnegotiation=direct``): the handshake must agree on
  ALPN ``postgresql``, as Postgres insists, so a TLS client of another protocol is cut off.

A second SSLRequest after the first was answered (or a second GSSENCRequest) is not one any
more: as in Postgres it reads as a start-up packet of an unknown protocol version, refused
with Postgres's own FATAL. After the negotiation comes a StartupMessage or a CancelRequest,
inside or outside TLS. With ``--tls required`` a StartupMessage in plaintext is refused (a
CancelRequest is not: older clients always cancel in plaintext, and a cancel key is its own
credential).

Where Postgres closes without a word (a length word out of range, a packet cut short, a
malformed CancelRequest, direct TLS without ALPN) :class:`wire.UnansweredViolation` is raised,
which the proxy logs and answers with silence; every other refusal is a FATAL as from Postgres.
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


_MITM_DETAIL: Final = (
    "This could be either a client-software bug or evidence of an attempted "
    "man-in-the-middle attack."
)


async def _receive(stream: trio.abc.Stream) -> bytes:
    data = await stream.receive_some(wire.MAX_STARTUP_PACKET)
    if not data:
        raise ClientGone
    return bytes(data)


async def _receive_more(conn: ClientConn, reader: wire.StartupReader) -> None:
    """Feed ``reader`` the next bytes; a hang-up in the middle of a packet is worth a log line."""
    try:
        reader.feed(await _receive(conn.stream))
    except ClientGone:
        if reader.pending():
            raise wire.UnansweredViolation("incomplete startup packet") from None
        raise


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
    # Which encryption requests may still come, as Postgres 18 tracks them: each may be asked
    # once, and an accepted one (only TLS here) ends the negotiation.
    ssl_done = gss_done = False
    while True:
        message = reader.next_message()
        if message is None:
            await _receive_more(conn, reader)
        elif isinstance(message, wire.SSLRequest) and not ssl_done:
            accept = tls is not None and not conn.tls
            await conn.send(b"S" if accept else b"N")
            if accept:
                assert tls is not None
                await _start_tls(conn, reader.pending(), tls, direct=False)
                reader = wire.StartupReader()
            elif reader.pending():
                raise ProtocolViolation(
                    "received unencrypted data after SSL request", detail=_MITM_DETAIL
                )
            ssl_done, gss_done = True, gss_done or accept
        elif isinstance(message, wire.GSSENCRequest) and not gss_done:
            await conn.send(b"N")
            if reader.pending():
                raise ProtocolViolation(
                    "received unencrypted data after GSSAPI encryption request",
                    detail=_MITM_DETAIL,
                )
            gss_done = True
        elif isinstance(message, (wire.SSLRequest, wire.GSSENCRequest)):
            raise wire.UnsupportedProtocol(message.code)
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
        raise wire.UnansweredViolation(
            "received direct SSL connection request without ALPN protocol negotiation extension"
        )
