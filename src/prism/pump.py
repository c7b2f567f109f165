"""Moving bytes between a client and its branch server, both ways, until either side is done.

Each direction is one task in a nursery owned by the connection. End of stream on one side is
passed on as a half-close (``send_eof``) so the protocol's own goodbye (Terminate, then the
server closing) completes; a reset or broken pipe on either side ends both directions at once.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

CHUNK = 65536

Observer = Callable[[bytes], bool]
"""Looks at each chunk of one direction until it returns True (then it is no longer called)."""


async def _pump(
    source: trio.SocketStream,
    sink: trio.SocketStream,
    on_bytes: Callable[[int], None],
    observe: Observer | None,
    both: trio.CancelScope,
) -> None:
    try:
        while data := await source.receive_some(CHUNK):
            if observe is not None and observe(data):
                observe = None
            await sink.send_all(data)
            on_bytes(len(data))
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        both.cancel()


async def splice(
    client: trio.SocketStream,
    server: trio.SocketStream,
    *,
    on_bytes: Callable[[int], None],
    observe_server: Observer | None = None,
) -> None:
    """Pump ``client`` ⇄ ``server`` until both directions have ended or one side broke."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump, client, server, on_bytes, None, nursery.cancel_scope)
        nursery.start_soon(_pump, server, client, on_bytes, observe_server, nursery.cancel_scope)
