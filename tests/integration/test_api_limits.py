"""The control plane against slow, huge and deeply nested request bodies: 4xx, never a hang
or a 500."""

from __future__ import annotations

import httpx
import trio

from prism.api.app import BODY_TIMEOUT_SECONDS, MAX_BODY_BYTES

from .harness import PrismHandle


async def _raw_request(prism: PrismHandle, head: bytes, body: bytes = b"") -> bytes:
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


async def test_a_body_that_never_arrives_is_answered_408_in_time(prism: PrismHandle) -> None:
    head = (
        b"POST /api/v1/branches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    with trio.fail_after(BODY_TIMEOUT_SECONDS + 20):
        answer = await _raw_request(prism, head, b'{"name":')
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"request_timeout"' in answer.replace(b" ", b"")


async def test_a_huge_body_is_refused_with_413(prism: PrismHandle) -> None:
    body = b'{"name": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}'
    head = (
        b"POST /api/v1/branches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with trio.fail_after(60):
        answer = await _raw_request(prism, head, body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert [b.name for b in prism.manager.list()] == ["main"]


async def test_deeply_nested_json_is_a_400_with_a_stable_code(prism: PrismHandle) -> None:
    async with httpx.AsyncClient(base_url=prism.info.api_url) as http:
        for depth in (33, 20_000):
            nested = "[" * depth + "]" * depth
            response = await http.post(
                "/api/v1/branches",
                content=f'{{"name": "deep", "parent": {nested}}}',
                headers={"Content-Type": "application/json"},
            )
            assert response.status_code == 400, response.text
            assert response.json()["code"] == "json_too_deep"
        # A bracket inside a string is text, not nesting.
        response = await http.post("/api/v1/branches", json={"name": "[" * 40})
        assert response.json()["code"] == "invalid_branch_name"
