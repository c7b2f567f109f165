"""The event bus: ordering, sequence numbers, listeners, and dropping a subscriber that lags."""

from __future__ import annotations

import trio

from prism.core.events import EventBus


def _drain(subscription: object) -> list[dict[str, object]]:
    events = []
    while True:
        try:
            events.append(subscription.receive_nowait())  # type: ignore[attr-defined]
        except (trio.WouldBlock, trio.EndOfChannel):
            return events


async def test_subscriber_receives_events_in_order_with_increasing_seq() -> None:
    bus = EventBus()
    async with bus.subscribe() as subscription:
        for kind in ("starting", "running", "stopped"):
            bus.publish(kind, "b")
        events = _drain(subscription)
    assert [e["type"] for e in events] == ["starting", "running", "stopped"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert str(events[0]["at"]).endswith("Z") and "." in str(events[0]["at"])


async def test_lagging_subscriber_is_dropped_and_told_while_others_keep_receiving() -> None:
    bus = EventBus(buffer=3)
    async with bus.subscribe() as slow, bus.subscribe() as fast:
        for i in range(3):
            bus.publish("connected", f"b{i}")
        assert len(_drain(fast)) == 3
        bus.publish("connected", "overflowing")  # publish never blocks, even with slow full
        assert bus.subscriber_count == 1
        assert [e["branch"] for e in _drain(fast)] == ["overflowing"]
        events = _drain(slow)
    assert [e["type"] for e in events] == ["connected"] * 3 + ["overflow"]
    assert slow.overflowed and "fell more than 3 events behind" in events[-1]["error"]


async def test_listener_sees_every_event_synchronously() -> None:
    bus = EventBus()
    seen: list[str] = []
    bus.add_listener(lambda event: seen.append(event["type"]))
    bus.publish("created", "x")
    assert seen == ["created"]


async def test_async_iteration_ends_after_overflow_event() -> None:
    bus = EventBus(buffer=1)
    async with bus.subscribe() as subscription:
        bus.publish("a")
        bus.publish("b")
        types = [event["type"] async for event in subscription]
    assert types == ["a", "overflow"]


async def test_close_sends_shutdown_last_and_waits_for_every_subscriber_to_leave() -> None:
    bus = EventBus()
    left = trio.Event()

    async def subscriber(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with bus.subscribe() as subscription:
            task_status.started()
            seen = [event["type"] async for event in subscription]
        assert seen == ["stopped", "shutdown"]
        left.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(subscriber)
        bus.publish("stopped", "b")
        bus.close("Prism is shutting down (SIGTERM)")
        with trio.fail_after(5):
            await bus.wait_drained()
        assert left.is_set()
    async with bus.subscribe() as late:  # after close, a subscription ends at once
        assert _drain(late) == []
