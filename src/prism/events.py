"""Fan-out of branch events to any number of subscribers, none of which can slow the publisher.

Each subscriber gets a bounded buffer. Publishing never waits: when a subscriber's buffer is
full it is told it fell behind (a final ``overflow`` event) and dropped, so a stalled browser
tab or WebSocket never holds up the proxy.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from prism.state import rfc3339, utcnow

log = logging.getLogger(__name__)

Event = dict[str, Any]


class EventBus:
    """Publishes events to the receive channels of current subscribers."""

    def __init__(self, buffer: int = 1000) -> None:
        self._buffer = buffer
        self._subscribers: set[trio.MemorySendChannel[Event]] = set()

    def publish(self, type_: str, branch: str | None = None, **fields: Any) -> Event:
        """Send an event to every subscriber now; returns the event."""
        event: Event = {"type": type_, "branch": branch, "at": rfc3339(utcnow()), **fields}
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                self._drop(send, overflow=True)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._drop(send, overflow=False)
        return event

    def _drop(self, send: trio.MemorySendChannel[Event], *, overflow: bool) -> None:
        self._subscribers.discard(send)
        if overflow:
            log.warning("events: dropping a subscriber that fell %d events behind", self._buffer)
        send.close()

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[trio.MemoryReceiveChannel[Event]]:
        """Receive events published from now on; the channel ends if the subscriber overflows."""
        send, receive = trio.open_memory_channel[Event](self._buffer)
        self._subscribers.add(send)
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers.discard(send)
            send.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
