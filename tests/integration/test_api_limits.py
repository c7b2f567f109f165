"""The control plane against slow, huge and deeply nested request bodies: 4xx, never a hang
or a 500."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import trio

from prism.api.app import MAX_BODY_BYTES
from prism.core.settings import Settings
from tests.waiting import wait_until

from .api_helpers import raw_request
from .harness import PASSWORD, PrismHandle, psql, running_prism

#: A body that was announced (Content-Length: 100) and never comes.
_STALLED = (
    b"POST /api/v1/branches HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    b'Content-Length: 100\r\n\r\n{"name":'
)


async def test_a_body_that_never_arrives_is_answered_408_in_time(prism: PrismHandle) -> None:
    with trio.fail_after(Settings.api_body_timeout + 20):
        answer = await raw_request(prism, _STALLED)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert b'"code":"request_timeout"' in answer.replace(b" ", b"")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _sockets_held_for(pid: int, client_ports: set[int]) -> int:
    """How many of ``pid``'s descriptors are TCP sockets whose peer is one of ``client_ports``."""
    held = {
        target[len("socket:[") : -1]
        for fd in os.listdir(f"/proc/{pid}/fd")
        if (target := _readlink(f"/proc/{pid}/fd/{fd}")).startswith("socket:[")
    }
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].rpartition(":")[2], 16) in client_ports and fields[9] in held:
            count += 1
    return count


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except FileNotFoundError:  # closed since the listing
        return ""


async def _answer_then_eof(stream: trio.SocketStream, answers: list[bytes]) -> None:
    """Read until the server closes; keep what it said."""
    answer = b""
    async with stream:
        while chunk := await stream.receive_some(65536):
            answer += chunk
    answers.append(answer)


async def test_stalled_bodies_are_closed_and_free_their_descriptors(data_dir: Path) -> None:
    """The issue's descriptor exhaustion: 50 requests whose body never comes. Each gets its
    408 and then EOF, and ``prism serve`` is back to the descriptors it held before, while the
    API and the Postgres port keep serving all along."""
    env = {**os.environ, "PRISM_API_BODY_TIMEOUT": "5s"}
    async with running_prism(data_dir, env=env) as (process, pg_port, api_port):
        dsn = f"host=127.0.0.1 port={pg_port} user=postgres password={PASSWORD} dbname=postgres"
        await psql(dsn, "SELECT 1")  # main runs from here on: its descriptors are the baseline
        baseline = _open_fds(process.pid)
        answers: list[bytes] = []
        ports: set[int] = set()
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                stream = await trio.open_tcp_stream("127.0.0.1", api_port)
                ports.add(stream.socket.getsockname()[1])
                await stream.send_all(_STALLED)
                nursery.start_soon(_answer_then_eof, stream, answers)
            # Accepted by the kernel is not yet accepted by Prism.
            await wait_until(
                lambda: _sockets_held_for(process.pid, ports) == 50,
                what="Prism to hold all 50 stalled requests",
                within=30,
            )
            async with httpx.AsyncClient() as http:
                listed = await http.get(f"http://127.0.0.1:{api_port}/api/v1/branches")
            assert listed.is_success, listed.text
            assert (await psql(dsn, "SELECT 7")).stdout.decode().strip() == "7"
            # Every reader returns only on EOF; the deadline is 5 s, so this bound is generous.
            nursery.cancel_scope.deadline = trio.current_time() + 60
        assert len(answers) == 50, "some stalled requests were never closed by the server"
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers)
        await wait_until(
            lambda: not _sockets_held_for(process.pid, ports),
            what="Prism to close every stalled request",
            within=30,
        )
        assert _open_fds(process.pid) <= baseline


async def test_a_huge_body_is_refused_with_413(prism: PrismHandle) -> None:
    body = b'{"name": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}'
    head = (
        b"POST /api/v1/branches HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with trio.fail_after(60):
        answer = await raw_request(prism, head, body)
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
