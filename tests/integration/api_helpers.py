"""Helpers for tests of the control plane: an HTTP client on a running Prism, event waits."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest
import trio

from .harness import PrismHandle


def api(prism: PrismHandle, token: str | None = None) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` on ``prism``'s API (use as ``async with``)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=prism.info.api_url, headers=headers, timeout=120)


async def raw_request(prism: PrismHandle, head: bytes, body: bytes = b"") -> bytes:
    """Send ``head`` (and ``body``) on a raw socket; return the server's whole first response."""
    host, port = prism.info.api
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(head + body)
        answer = b""
        while not _complete(answer):
            chunk = await stream.receive_some(65536)
            assert chunk, f"connection closed before a full response: {answer!r}"
            answer += chunk
    return answer


def _complete(answer: bytes) -> bool:
    """Whether ``answer`` holds a status line, headers and the whole Content-Length body."""
    head, sep, rest = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(rest) >= int(value)
    return True


async def wait_for(subscription: Any, **fields: Any) -> list[dict[str, Any]]:
    """Read events until one has all of ``fields``; returns every event read, that one last.

    Callers bound the wait with ``trio.fail_after``.
    """
    seen = []
    async for event in subscription:
        seen.append(event)
        if all(event.get(key) == value for key, value in fields.items()):
            return seen
    raise AssertionError(f"event stream ended before an event with {fields}: {seen}")


def status(prism: PrismHandle, name: str) -> str | None:
    branch: Any = prism.manager.get(name)
    return None if branch is None else str(branch.status.value)


def open_session(dsn: str) -> psycopg.Connection[Any]:
    """A psycopg session that has run one query (blocking: call it in a thread)."""
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SELECT 1")
    return conn


def error_of_next_query(conn: psycopg.Connection[Any]) -> str:
    """The error a session that Prism ended gets at its next query (blocking)."""
    with pytest.raises(psycopg.OperationalError) as caught:
        conn.execute("SELECT 1")
    conn.close()
    return str(caught.value)
