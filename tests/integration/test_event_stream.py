"""The WebSocket event stream: a snapshot first, then live events; slow readers never block."""

from __future__ import annotations

import itertools
import json
from typing import Any

import psycopg
import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from .api_helpers import api
from .harness import PrismHandle, psql


def _ws_url(prism: PrismHandle, query: str = "") -> str:
    return prism.info.api_url.replace("http", "ws", 1) + "/api/v1/events" + query


async def test_subscriber_gets_a_snapshot_then_a_create_connect_stop_cycle_in_order(
    prism: PrismHandle,
) -> None:
    async with open_websocket_url(_ws_url(prism)) as socket, api(prism) as http:
        snapshot = json.loads(await socket.get_message())
        assert snapshot["type"] == "snapshot"
        assert [(b["name"], b["status"]) for b in snapshot["branches"]] == [("main", "running")]

        seen: list[dict[str, Any]] = []

        async def read_until(kind: str) -> None:
            with trio.fail_after(10):
                while not seen or seen[-1]["type"] != kind:
                    event = json.loads(await socket.get_message())
                    if event["branch"] == "cycle":
                        seen.append(event)

        await http.post("/api/v1/branches", json={"name": "cycle"})
        await psql(prism.dsn("postgres@cycle"), "SELECT 1")
        # Prism sees psql's goodbye a moment after psql exits; stop only once it has gone,
        # or the stop would (rightly) be the one to end the session.
        await read_until("disconnected")
        await http.post("/api/v1/branches/cycle/stop")
        await read_until("stopped")
    assert [e["type"] for e in seen] == [
        "provisioning",
        "starting",
        "running",
        "created",
        "connected",
        "disconnected",
        "stopping",
        "stopped",
    ]
    assert all(a["seq"] < b["seq"] for a, b in itertools.pairwise(seen))
    assert seen[4]["client"].startswith("127.0.0.1:")
    assert seen[5]["duration_ms"] >= 0
    assert seen[3]["duration_ms"] > 0 and seen[3]["parent"] == "main"


async def test_stalled_subscribers_do_not_block_proxied_queries(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(event_buffer=4)
    async with (
        open_websocket_url(_ws_url(prism)) as stalled_socket,
        prism.manager.events.subscribe() as stalled,
    ):
        with trio.fail_after(30):
            for i in range(6):  # 12 events: three times the buffer
                out = await psql(prism.dsn(), f"SELECT {i}")
                assert out.stdout.decode().strip() == str(i)
        assert stalled.overflowed
        assert stalled_socket.closed is None  # a reader that is just slow is not refused


async def test_event_stream_needs_the_token_when_one_is_set(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(api_token="s3cret")
    try:
        async with open_websocket_url(_ws_url(prism)):
            raise AssertionError("subscribed without a token")
    except HandshakeError as exc:
        assert getattr(exc, "status_code", None) == 401
    async with open_websocket_url(_ws_url(prism, "?token=s3cret")) as socket:
        assert json.loads(await socket.get_message())["type"] == "snapshot"
    headers = [(b"Authorization", b"Bearer s3cret")]
    async with open_websocket_url(_ws_url(prism), extra_headers=headers) as socket:
        assert json.loads(await socket.get_message())["type"] == "snapshot"


async def test_overflowing_subscriber_is_told_then_closed_to_resubscribe(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(event_buffer=4)
    async with open_websocket_url(_ws_url(prism)) as socket:
        assert json.loads(await socket.get_message())["type"] == "snapshot"
        for n in range(10):  # no checkpoint in between: the handler cannot keep up
            prism.manager.events.publish("probe", None, n=n)
        received = []
        with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            while True:
                received.append(json.loads(await socket.get_message()))
    # The buffer's 4, plus one more if the handler was already waiting to take it.
    probes = [e["n"] for e in received[:-1]]
    assert probes == list(range(len(probes))) and 4 <= len(probes) <= 5
    assert received[-1]["type"] == "overflow"
    assert "fell more than 4 events behind" in received[-1]["error"]
    assert closed.value.reason.code == 1013
    assert prism.manager.events.subscriber_count == 0


async def test_session_ended_by_an_operation_is_reported_with_its_reason(
    prism: PrismHandle,
) -> None:
    conn = await trio.to_thread.run_sync(
        lambda: psycopg.connect(prism.dsn("postgres@ended"), autocommit=True)
    )
    try:
        async with open_websocket_url(_ws_url(prism)) as socket, api(prism) as http:
            snapshot = json.loads(await socket.get_message())
            assert ("ended", 1) in [(b["name"], b["connections"]) for b in snapshot["branches"]]
            await http.post("/api/v1/branches/ended/reset")
            with trio.fail_after(10):
                while (event := json.loads(await socket.get_message()))["type"] != "disconnected":
                    pass
    finally:
        await trio.to_thread.run_sync(conn.close)
    assert event["branch"] == "ended" and event["client"].startswith("127.0.0.1:")
    assert event["error"] == 'branch "ended" is being reset: its changes were thrown away'
