"""Handing a logged-in plain-TCP session to the kernel, watching it, and taking it back.

After log-in both sockets of a session go into the :class:`~prism.frontdoor.sockmap.Sockmap`; from
then on the kernel relays every segment and Prism is off the byte path. What Prism still does:

* **hand-over without loss or reordering.** Bytes that reached a socket's receive queue before
  it entered the map are not redirected by themselves. Setting ``SO_RCVLOWAT`` makes TCP call
  the socket's data-ready hook, which the sockmap has replaced: the kernel then runs the queued
  bytes through the verdict program, under the socket lock and ahead of anything that arrives
  later, so order holds without Prism reading a byte.
* **end of session.** Prism waits on an epoll set of the two sockets registered for
  EPOLLRDHUP only, so the kernel wakes it for a FIN or an error and never for the segments it
  redirects (waiting for readability would wake Prism once per segment, putting it back on
  the byte path it just left; docs/benchmarks.md says what that cost). End of
  stream is passed on as a half-close once everything received before it has left through the
  peer (TCP_INFO counters say so); a reset ends both directions. Leaving the map comes before
  any write Prism makes afterwards (a FATAL 57P01 on reset / stop / delete).
* **accounting.** Bytes moved are read from TCP_INFO every
  :data:`~prism.frontdoor.pump.REPORT_EVERY`, never per packet, and fed to the branch's activity
  like the pump's.
"""

from __future__ import annotations

import fcntl
import logging
import select
import socket
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

from prism.frontdoor.pump import REPORT_EVERY, TICK
from prism.frontdoor.sockmap import Sockmap

log = logging.getLogger(__name__)

FLUSH_WAIT: Final = 2.0
"""Longest wait for redirected bytes to leave before a half-close is passed on (seconds)."""

_TCP_INFO_SIZE: Final = 144
_BYTES_ACKED_AT: Final = 120  # struct tcp_info: tcpi_bytes_acked, tcpi_bytes_received (u64)
_PEER_CLOSED: Final = frozenset({6, 7, 8, 9, 11})
"""TCP states after the peer's FIN: TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING."""


def _ioctl_int(sock: trio.socket.SocketType, request: int) -> int:
    value: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0]
    return value


def _acked_received(sock: trio.socket.SocketType) -> tuple[int, int]:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    acked, received = struct.unpack_from("=QQ", info, _BYTES_ACKED_AT)
    return acked, received


def _tcp_state(sock: trio.socket.SocketType) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def _steady(sock: trio.socket.SocketType, field: int, request: int) -> tuple[int, int]:
    """A TCP_INFO counter and a queue length read together: retried until the counter held still.

    The two come from separate calls; a segment or an ACK between them would skew their sum,
    and with it the wait before a half-close (too long) or its bytes (too few).
    """
    while True:
        counter = _acked_received(sock)[field]
        queued = _ioctl_int(sock, request)
        if _acked_received(sock)[field] == counter:
            return counter, queued


def _written(sock: trio.socket.SocketType) -> int:
    """Bytes written to ``sock`` so far (acked + still queued), up to a constant."""
    acked, unacked = _steady(sock, 0, termios.TIOCOUTQ)
    return acked + unacked


def _consumed(sock: trio.socket.SocketType) -> int:
    """Bytes ``sock`` received that are no longer in its receive queue, up to a constant."""
    received, queued = _steady(sock, 1, termios.FIONREAD)
    return received - queued


@dataclass
class _Direction:
    """One direction of a session in the kernel, with TCP_INFO baselines from the hand-over."""

    source: trio.socket.SocketType
    sink: trio.socket.SocketType
    base_in: int = 0
    base_out: int = 0
    reported: int = 0
    done: bool = False

    def __post_init__(self) -> None:
        self.base_in = _consumed(self.source)
        self.base_out = _written(self.sink)

    def moved(self) -> int:
        """Bytes that left through the sink since the hand-over."""
        return _written(self.sink) - self.base_out

    def report(self, on_bytes: Callable[[int], None]) -> None:
        moved = self.moved()
        if moved > self.reported:
            on_bytes(moved - self.reported)
            self.reported = moved

    async def flushed(self) -> None:
        """Wait (at most :data:`FLUSH_WAIT`) until all the source received, bar its FIN, left."""
        with trio.move_on_after(FLUSH_WAIT) as waited:
            pause = TICK / 20
            while (missing := self._received() - 1 - self.moved()) > 0:
                await trio.sleep(pause)
                pause = min(pause * 2, TICK)
        if waited.cancelled_caught:
            log.debug("kernel splice: %d byte(s) had not left after %g s", missing, FLUSH_WAIT)

    def _received(self) -> int:
        return _acked_received(self.source)[1] - self.base_in


class _Broken(Exception):
    """A reset or a failed write: the session ends, both ways at once."""


async def _step(direction: _Direction, on_bytes: Callable[[int], None]) -> None:
    """Look at one open direction: pass an end of stream on, relay stray bytes, or raise."""
    source = direction.source
    if source.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):  # a reset, mostly
        raise _Broken
    try:
        if _ioctl_int(source, termios.FIONREAD):
            # The verdict redirects every segment, so this is not expected; relay rather than lose.
            data = await source.recv(65536)
            log.debug("kernel splice: %d byte(s) reached user space; relaying", len(data))
            await _send_all(direction.sink, data)
        elif _tcp_state(source) in _PEER_CLOSED:
            await direction.flushed()
            direction.report(on_bytes)
            direction.done = True
            direction.sink.shutdown(socket.SHUT_WR)
    except OSError as exc:
        raise _Broken from exc


async def _watch(session: Session, ends: select.epoll, on_bytes: Callable[[int], None]) -> None:
    """Report bytes every so often; pass each end of stream on; return when both ended or broke.

    ``ends`` is an epoll set of both sockets registered for EPOLLRDHUP only (errors and hang-ups
    are always reported): the kernel wakes it on a FIN or an error, never for the data it
    redirects, which ``wait_readable`` on the sockets themselves would (a wake-up per segment).
    """
    while not all(direction.done for direction in session.directions):
        with trio.move_on_after(REPORT_EVERY):
            await trio.lowlevel.wait_readable(ends.fileno())
        for direction in session.directions:
            if direction.done:
                continue
            direction.report(on_bytes)
            try:
                await _step(direction, on_bytes)
            except _Broken:
                return
            if direction.done:
                ends.unregister(direction.source.fileno())


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


@dataclass(frozen=True)
class Session:
    """A session whose sockets are in the sockmap: the keys to take them out, and the counters."""

    sockmap: Sockmap
    keys: tuple[int, int]
    directions: tuple[_Direction, _Direction]


def enter(sockmap: Sockmap, client: trio.SocketStream, server: trio.SocketStream) -> Session | None:
    """Put a session's sockets in the sockmap; None, having changed nothing, if the kernel refuses.

    The kernel refuses, e.g., a socket that already saw its peer's FIN; the caller then uses the
    pump. Whatever was queued before is run through the verdict here, ahead of later bytes.
    """
    a, b = client.socket, server.socket
    directions = (_Direction(a, b), _Direction(b, a))
    try:
        keys = sockmap.join(a, b)
    except OSError as exc:
        log.debug("kernel splice: the sockmap refused a session (%s); using the pump", exc)
        return None
    for sock in (a, b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
    return Session(sockmap, keys, directions)


async def relay(session: Session, *, on_bytes: Callable[[int], None]) -> None:
    """Watch an entered session until both ends closed or one broke; then take it out."""
    try:
        with select.epoll() as ends:
            for direction in session.directions:
                ends.register(direction.source.fileno(), select.EPOLLRDHUP)
            await _watch(session, ends, on_bytes)
    finally:
        session.sockmap.leave(session.keys)
        for direction in session.directions:
            if not direction.done:
                direction.report(on_bytes)
