"""The I/O half of a client's first packets: its connection and the TLS handshake.

What the packets mean — SSLRequest, GSSENCRequest, a direct ClientHello, the start-up packet,
and Postgres's answers to each — is decided by :class:`prism.frontdoor.startup.Startup`; this module
does the two things that machine cannot: hold the client's stream, and run a TLS handshake
when it asks for one (:func:`start_tls`). The SNI host name is read from the ClientHello bytes
(:mod:`prism.frontdoor.clienthello`) before they reach OpenSSL. A direct handshake
(``sslnegotiation= direct``) must agree on ALPN ``postgresql``, as Postgres insists, so a TLS client
of another protocol is cut off without a word (:class:`wire.UnansweredViolation`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from prism.frontdoor import clienthello
from prism.frontdoor.startup import ClientGone
from prism.frontdoor.tls import ALPN_PROTOCOL, PrefixedStream, TlsConfig, accept_tls
from prism.postgres import wire

log = logging.getLogger(__name__)

_RECEIVE_SIZE = 65536


@dataclass
class ClientConn:
    """A client connection: the stream to use (TLS once started), its peer and SNI name."""

    stream: trio.abc.HalfCloseableStream
    peer: str
    sni: str | None = None

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self) -> bytes:
        """The next bytes from the client; ``b""`` once it closed its side."""
        return bytes(await self.stream.receive_some(_RECEIVE_SIZE))


async def _read_client_hello(conn: ClientConn, hello: bytes) -> tuple[bytes, str | None]:
    """Read on until the ClientHello is complete: its bytes so far and its server name."""
    while (name := clienthello.server_name(hello)) is clienthello.NEED_MORE:
        data = await conn.receive()
        if not data:
            raise ClientGone
        hello += data
    assert not isinstance(name, clienthello.NeedMore)
    return hello, name


async def start_tls(conn: ClientConn, received: bytes, tls: TlsConfig, *, direct: bool) -> None:
    """Handshake on ``conn``; ``received`` is the start of the ClientHello, if read already.

    ``conn`` is updated in place, so an error raised later can still be sent to the client
    over the channel it is listening on.
    """
    hello, sni = await _read_client_hello(conn, received)
    try:
        stream = await accept_tls(PrefixedStream(conn.stream, hello), tls, sni)
    except trio.BrokenResourceError as exc:
        # Not worth an error message: there is no channel left to send it on.
        log.debug("tls: handshake with %s failed: %r", conn.peer, exc.__cause__ or exc)
        raise ClientGone from exc
    conn.stream, conn.sni = stream, stream.sni
    if direct and stream.selected_alpn_protocol() != ALPN_PROTOCOL:
        raise wire.UnansweredViolation(
            "received direct SSL connection request without ALPN protocol negotiation extension"
        )
