"""Event delivery: a lifecycle transition → the event on a WebSocket subscriber.

Prism runs in this process (copy driver on the root disk; the transitions are cheap stop/start
cycles of one branch), so the moment each event is published can be read from the bus itself
(``EventBus.add_listener`` is called synchronously inside ``publish``). A real WebSocket client
on ``/api/v1/events`` records when each event arrives; the delivery latency is the difference,
matched by the event's ``seq``. Both clocks are this process's ``perf_counter``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import open_websocket_url

from prism.core.events import Event
from tools.bench.common import SUPERUSER, first_query, percentile
from tools.bench.targets import Target, data_dir, prism_in_process

BRANCH = "events"


@dataclass
class EventsResult:
    """Delivery latencies (µs) of every event seen, by event type."""

    cycles: int
    latencies_us: dict[str, list[float]] = field(default_factory=dict)

    def all_us(self) -> list[float]:
        return [value for values in self.latencies_us.values() for value in values]

    def p(self, q: float) -> float:
        return percentile(self.all_us(), q)


async def measure(
    target: Target, *, cycles: int, log: Callable[[str], None] = print
) -> EventsResult:
    """Stop and start one branch ``cycles`` times while a WebSocket subscriber listens."""
    published: dict[int, float] = {}

    def stamp(event: Event) -> None:
        published[int(event["seq"])] = time.perf_counter()

    result = EventsResult(cycles)
    async with data_dir(target) as (_root, settings), prism_in_process(settings) as info:
        info.manager.events.add_listener(stamp)
        await first_query(info.listen[1], f"{SUPERUSER}@{BRANCH}")
        url = info.api_url.replace("http", "ws", 1) + "/api/v1/events"
        async with open_websocket_url(url) as socket, trio.open_nursery() as nursery:
            await socket.get_message()  # the snapshot

            async def read() -> None:
                # Always waiting in get_message, so the stamp is the arrival, not a later read.
                while True:
                    event: dict[str, Any] = json.loads(await socket.get_message())
                    arrived = time.perf_counter()
                    if event.get("branch") == BRANCH and event.get("seq") in published:
                        latency = (arrived - published[event["seq"]]) * 1e6
                        result.latencies_us.setdefault(event["type"], []).append(latency)

            nursery.start_soon(read)
            for _ in range(cycles):
                await info.manager.stop(BRANCH)
                await info.manager.start(BRANCH)
                await trio.sleep(0.05)  # each cycle starts from a quiet bus
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        await info.manager.delete(BRANCH)
    log(f"events: {len(result.all_us())} events, delivery p50 {result.p(50):.0f} us")
    return result
