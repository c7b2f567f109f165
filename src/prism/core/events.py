"""Fan-out of branch events to any number of subscribers, none of which can slow the publisher.

Each subscriber gets a bounded buffer. Publishing never waits: when a subscriber's buffer is
full it is dropped, and once it has read what was buffered it receives one final ``overflow``
event, so a stalled browser tab or WebSocket never holds up the proxy and never silently misses
events either.

Listeners (``add_listener``) are called synchronously on every event; they are for Prism's own
bookkeeping (metrics), must be quick and must not raise.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import trio

log = logging.getLogger(__name__)

Event = dict[str, Any]
Listener = Callable[[Event], None]
# Events a page shows on load, so it is never an empty list until something happens.
RECENT_EVENTS = 100


def event_time() -> str:
    """``2026-11-24T22:01:43.123Z``: RFC 3339, UTC, milliseconds (events are often sub-second)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Subscription:
    """One subscriber's view of the bus: events in order, then ``overflow`` if it fell behind."""

    def __init__(self, receive: trio.MemoryReceiveChannel[Event], buffer: int) -> None:
        self._receive = receive
        self._buffer = buffer
        self.overflowed = False
        self._told = False

    def _overflow_event(self) -> Event:
        self._told = True
        return {
            "type": "overflow",
            "branch": None,
            "at": event_time(),
            "error": f"subscriber fell more than {self._buffer} events behind and was dropped",
        }

    def receive_nowait(self) -> Event:
        """The next buffered event; ``trio.WouldBlock`` if none, ``EndOfChannel`` when over."""
        try:
            return self._receive.receive_nowait()
        except trio.EndOfChannel:
            if self.overflowed and not self._told:
                return self._overflow_event()
            raise

    async def receive(self) -> Event:
        """The next event, waiting for it; ``trio.EndOfChannel`` once the subscription ended."""
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self.overflowed and not self._told:
                return self._overflow_event()
            raise

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            try:
                yield await self.receive()
            except trio.EndOfChannel:
                return


class EventBus:
    """Publishes events to current subscribers and listeners."""

    def __init__(self, buffer: int = 1000) -> None:
        self.buffer = buffer
        self._subscribers: dict[trio.MemorySendChannel[Event], Subscription] = {}
        self._listeners: list[Listener] = []
        self._seq = itertools.count(1)
        self._recent: collections.deque[Event] = collections.deque(maxlen=RECENT_EVENTS)
        self.closed = False
        self._open = 0  # subscriptions not yet left, sent to or not: what a shutdown waits for
        self._drained = trio.Event()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with every event from now on (synchronously, in publish order)."""
        self._listeners.append(listener)

    def publish(self, type_: str, branch: str | None = None, **fields: Any) -> Event:
        """Send an event to every subscriber now; returns the event.

        ``seq`` numbers events from 1 so a subscriber (or a benchmark) can match them up.
        """
        event: Event = {
            "type": type_,
            "branch": branch,
            "at": event_time(),
            "seq": next(self._seq),
            **fields,
        }
        self._recent.append(event)
        for listener in self._listeners:
            listener(event)
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                self._drop(send, overflow=True)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._drop(send, overflow=False)
        return event

    def close(self, reason: str) -> None:
        """Send a last ``shutdown`` event and end every subscription after it.

        The daemon calls this before it stops serving, so a subscriber (``prism events``, the
        page) learns that Prism stopped, and why, instead of seeing its connection cut.
        """
        self.publish("shutdown", None, reason=reason)
        self.closed = True
        for send in list(self._subscribers):
            self._drop(send, overflow=False)
        if not self._open:
            self._drained.set()

    async def wait_drained(self) -> None:
        """Return once ``close`` was called and every subscriber has read its last event and
        left."""
        await self._drained.wait()

    def _drop(self, send: trio.MemorySendChannel[Event], *, overflow: bool) -> None:
        subscription = self._subscribers.pop(send, None)
        if overflow and subscription is not None:
            subscription.overflowed = True
            log.warning("events: dropping a subscriber that fell %d events behind", self.buffer)
        send.close()

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        """Receive events published from now on; ends with ``overflow`` if the reader lags."""
        send, receive = trio.open_memory_channel[Event](self.buffer)
        subscription = Subscription(receive, self.buffer)
        if self.closed:  # nothing more will come: the subscription ends at once
            send.close()
        else:
            self._subscribers[send] = subscription
        self._open += 1
        try:
            async with receive:
                yield subscription
        finally:
            self._open -= 1
            self._subscribers.pop(send, None)
            send.close()
            if self.closed and not self._open:
                self._drained.set()

    def recent(self, since: int = 0) -> list[Event]:
        """The last ``RECENT_EVENTS`` events with ``seq`` above ``since``, oldest first."""
        return [event for event in self._recent if event["seq"] > since]

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
