"""Moving bytes between a client and its branch server, both ways, until either side is done.

Each direction is one task in a nursery owned by the connection. End of stream on one side is
passed on as a half-close (``send_eof``) so the protocol's own goodbye (Terminate, then the
server closing) completes; a reset or broken pipe on either side ends both directions at once.

Two ways to move the bytes, chosen per connection:

* **plain sockets on Linux** (:func:`_pump_socket`): a hybrid. While a direction is quiet it
  waits in trio (``wait_readable``: no thread, almost no memory, so thousands of idle sessions
  are cheap). Once bytes arrive it moves to a worker thread that runs blocking ``os.splice``
  through a pipe (socket → pipe → socket, never copied into Python), and hands the direction back
  to trio after :data:`IDLE_RETURN` of silence. A pure trio pump pays for epoll waits and
  trio's scheduler around every receive and send, where a thread blocked in the kernel wakes
  straight into the next ``splice``; what this costs and saves against a direct connection is
  measured by ``tools.bench --only proxy`` (docs/benchmarks.md, "Proxy overhead").
* **anything else** (TLS streams, platforms without ``os.splice``): a plain trio
  ``receive_some``/``send_all`` loop (:func:`_pump_stream`), simple and portable.

A worker thread still belongs to its direction's task: it runs in ``trio.to_thread.run_sync``
without abandoning on cancel, so the task waits for it and cannot finish before it, and the
thread looks for a cancellation of the task (``trio.from_thread.check_cancelled``) after every
message and every :data:`TICK` of silence, so a branch reset/stop/delete or Prism's shutdown
ends spliced sessions within a tick.
"""

from __future__ import annotations

import enum
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

CHUNK: Final = 65536
TICK: Final = 0.02
"""How often a worker thread blocked on a socket looks whether it was cancelled (seconds)."""
IDLE_RETURN: Final = 0.1
"""Silence after which a worker thread hands its direction back to trio (seconds)."""
REPORT_EVERY: Final = 1.0
"""How often a busy worker thread reports bytes moved to trio, for metrics (seconds)."""
MAX_THREADS: Final = 512
"""Directions moving bytes in threads at once; more wait for a slot (rare: threads leave
after :data:`IDLE_RETURN` of silence)."""

_IDLE_TICKS: Final = round(IDLE_RETURN / TICK)
_CLOCK_EVERY: Final = 64
#: Per trio run, as trio's own default thread limiter: a limiter's waiters belong to one run.
_threads: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("prism_pump_threads")
_can_splice: Final = hasattr(os, "splice")
_TIMEVAL: Final = struct.pack("ll", 0, int(TICK * 1_000_000))
_NO_TIMEOUT: Final = struct.pack("ll", 0, 0)


def _limiter() -> trio.CapacityLimiter:
    try:
        return _threads.get()
    except LookupError:
        limiter = trio.CapacityLimiter(MAX_THREADS)
        _threads.set(limiter)
        return limiter


def threads_in_use() -> int:
    """Directions moving bytes in worker threads right now (the rest wait in trio)."""
    return int(_limiter().borrowed_tokens)


class _End(enum.Enum):
    """Why a worker thread handed its direction back."""

    IDLE = "idle"  # no bytes for IDLE_RETURN: wait in trio again
    EOF = "eof"  # the source half-closed: pass the half-close on
    BROKEN = "broken"  # reset, broken pipe: end both directions


@dataclass
class _Job:
    """One activation of a worker thread for one direction."""

    source: int
    sink: int
    report: Callable[[int], None]
    moved: int = 0
    """Bytes moved but not yet reported when the thread returned."""


def _drain(pipe_r: int, sink: int, count: int) -> None:
    """Write the ``count`` bytes left in the pipe to ``sink``, unless cancelled first."""
    while count:
        try:
            count -= os.splice(pipe_r, sink, count)
        except BlockingIOError:  # SO_SNDTIMEO: the peer is slow to read; look for a cancel
            trio.from_thread.check_cancelled()


def _move(job: _Job) -> _End:
    """Worker thread: splice ``source`` → pipe → ``sink`` until silence, EOF, error or cancel.

    The sockets are blocking with a :data:`TICK` send/receive timeout while the connection is
    spliced, so each call blocks in the kernel and a timeout is a chance to look for a
    cancellation (raised here as ``trio.Cancelled``) and to count a tick of silence. The
    per-message path is two ``splice`` calls and a few local operations (it is the proxy's
    hot loop): the clock is read only every :data:`_CLOCK_EVERY` messages.
    """
    pipe_r, pipe_w = os.pipe()
    source, sink, splice_ = job.source, job.sink, os.splice
    check_cancelled = trio.from_thread.check_cancelled
    quiet_ticks = unreported = messages = 0
    reported_at = time.monotonic()
    try:
        while True:
            check_cancelled()
            try:
                count = splice_(source, pipe_w, CHUNK)
            except BlockingIOError:  # SO_RCVTIMEO: a tick without bytes
                quiet_ticks += 1
                if quiet_ticks >= _IDLE_TICKS:
                    return _End.IDLE
                continue
            if count == 0:
                return _End.EOF
            try:
                written = splice_(pipe_r, sink, count)
            except BlockingIOError:  # SO_SNDTIMEO: the peer is slow to read
                written = 0
            if written != count:
                _drain(pipe_r, sink, count - written)
            quiet_ticks = 0
            unreported += count
            messages += 1
            if messages % _CLOCK_EVERY == 0 and time.monotonic() - reported_at >= REPORT_EVERY:
                job.report(unreported)
                unreported, reported_at = 0, time.monotonic()
    except OSError:
        return _End.BROKEN
    finally:
        os.close(pipe_r)
        os.close(pipe_w)
        job.moved = unreported


async def _pump_socket(
    source: trio.SocketStream,
    sink: trio.SocketStream,
    on_bytes: Callable[[int], None],
    both: trio.CancelScope,
) -> None:
    """One direction between two plain sockets: wait in trio, move bytes in a thread."""
    token = trio.lowlevel.current_trio_token()

    def report(count: int) -> None:  # called from the worker thread
        token.run_sync_soon(on_bytes, count)

    job = _Job(source.socket.fileno(), sink.socket.fileno(), report)
    while True:
        await trio.lowlevel.wait_readable(source.socket)
        job.moved = 0
        try:
            end = await trio.to_thread.run_sync(_move, job, limiter=_limiter())
        finally:
            if job.moved:
                on_bytes(job.moved)
        if end is _End.EOF:
            try:
                sink.socket.shutdown(socket.SHUT_WR)
            except OSError:
                both.cancel()
            return
        if end is _End.BROKEN:
            both.cancel()
            return
        # IDLE: wait in trio again.


def _set_spliceable(streams: tuple[trio.SocketStream, ...], on: bool) -> None:
    """Blocking sockets with a TICK timeout while threads splice them; trio's usual after."""
    for stream in streams:
        fd = stream.socket.fileno()
        if fd < 0:
            continue
        os.set_blocking(fd, on)
        timeout = _TIMEVAL if on else _NO_TIMEOUT
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)


async def _pump_stream(
    source: trio.abc.HalfCloseableStream,
    sink: trio.abc.HalfCloseableStream,
    on_bytes: Callable[[int], None],
    both: trio.CancelScope,
) -> None:
    """One direction between any two streams, all in trio (the TLS and portable fallback)."""
    try:
        while data := await source.receive_some(CHUNK):
            await sink.send_all(data)
            on_bytes(len(data))
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        both.cancel()


async def splice(
    client: trio.abc.HalfCloseableStream,
    server: trio.abc.HalfCloseableStream,
    *,
    on_bytes: Callable[[int], None],
) -> None:
    """Pump ``client`` ⇄ ``server`` until both directions have ended or one side broke.

    ``on_bytes`` is called in trio with the bytes moved (in batches while a thread moves them).
    """
    if (
        _can_splice
        and isinstance(client, trio.SocketStream)
        and isinstance(server, trio.SocketStream)
    ):
        pair = (client, server)
        _set_spliceable(pair, True)
        try:
            async with trio.open_nursery() as nursery:
                both = nursery.cancel_scope
                nursery.start_soon(_pump_socket, client, server, on_bytes, both)
                nursery.start_soon(_pump_socket, server, client, on_bytes, both)
        finally:
            _set_spliceable(pair, False)
        return
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump_stream, client, server, on_bytes, nursery.cancel_scope)
        nursery.start_soon(_pump_stream, server, client, on_bytes, nursery.cancel_scope)
