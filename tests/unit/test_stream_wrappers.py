"""Prism's own stream wrappers keep trio's stream contract (trio.testing's generic checks)."""

from __future__ import annotations

import trio
import trio.testing

from prism.frontdoor.tls import PrefixedStream

Pair = tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]


async def _socket_pair() -> Pair:
    left, right = trio.socket.socketpair()
    return PrefixedStream(trio.SocketStream(left), b""), PrefixedStream(
        trio.SocketStream(right), b""
    )


async def _fill(stream: trio.abc.SendStream) -> None:
    """Send until the kernel buffers are full, so the next send blocks."""
    async with trio.open_nursery() as nursery:

        async def sender() -> None:
            while True:
                await stream.send_all(b"x" * 65536)

        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


async def _clogged_socket_pair() -> Pair:
    left, right = await _socket_pair()
    await _fill(left)
    await _fill(right)
    return left, right


async def test_prefixed_stream_is_a_half_closeable_stream() -> None:
    await trio.testing.check_half_closeable_stream(_socket_pair, _clogged_socket_pair)


async def test_prefixed_stream_returns_the_bytes_already_read_first() -> None:
    left, right = trio.testing.memory_stream_pair()
    stream = PrefixedStream(right, b"hello")
    await left.send_all(b" world")
    assert await stream.receive_some(3) == b"hel"
    assert await stream.receive_some() == b"lo"
    assert await stream.receive_some() == b" world"
