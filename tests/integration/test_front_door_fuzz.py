"""A live-socket fuzz run against the front door of a running Prism.

The unit property tests (tests/unit/test_wire.py, test_front_door_parsing.py) prove the decoders
turn any bytes into a message or a clean protocol error. This proves the same of the whole
front door on real sockets — encryption negotiation, TLS handshakes, cancel forwarding, the
start-up timeout, closes in every state: hundreds of random and mutated start-up packets,
truncated TLS ClientHellos (after an SSLRequest and as direct TLS), mutated packets inside a
completed handshake, cancel requests with garbage keys and broken first SCRAM messages, many at
a time. Afterwards Prism must still serve a real client, have no task or file descriptor left
over, and have logged no traceback.

The run is seeded, so a failure replays exactly; bounded to well under 30 s.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import random
import ssl
import struct
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from prism.postgres import wire

from .harness import PrismHandle, psql

SEED = 20261125
CASES_PER_KIND = 60
CONCURRENCY = 40
STARTUP_TIMEOUT = 1.0


class Ending(enum.Enum):
    """How the fuzzing client leaves: each is a different path through Prism's clean-up."""

    HALF_CLOSE = "eof"  # send EOF and read the answer
    CLOSE = "close"  # hang up at once, maybe mid-handshake
    WAIT = "wait"  # say nothing more until Prism's start-up timeout cuts us off


@dataclass(frozen=True)
class Case:
    kind: str
    first: bytes
    after_answer: bytes | None = None
    """Sent once Prism answered ``first`` with one byte (``S``/``N`` to an SSLRequest)."""
    ending: Ending = Ending.HALF_CLOSE
    inside_tls: bool = False
    """Send ``first`` inside a completed TLS handshake (TLS cannot half-close: read on)."""


def _client_hello(rng: random.Random) -> bytes:
    """A real TLS ClientHello, as libpq would send it (ALPN and SNI vary)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if rng.random() < 0.7:
        context.set_alpn_protocols([rng.choice(["postgresql", "http/1.1", "x" * 40])])
    tls = context.wrap_bio(
        ssl.MemoryBIO(),
        outgoing := ssl.MemoryBIO(),
        server_hostname=rng.choice(["localhost", "feature.db.localhost", "a" * 63 + ".example"]),
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _valid_packets(rng: random.Random) -> list[bytes]:
    params = [("user", rng.choice(["postgres", "postgres@fuzz", "x@@", "nobody@Bad Name"]))]
    params += [(f"p{i}", "v" * rng.randrange(20)) for i in range(rng.randrange(4))]
    if rng.random() < 0.3:
        params.append(("options", "-c prism.branch=" + rng.choice(["ok", "NO", "x" * 70])))
    protocol = rng.choice([wire.PROTOCOL_3_0, 3 << 16 | 2, 3 << 16 | 9999, 2 << 16])
    return [
        wire.StartupMessage(protocol, tuple(params)).encode(),
        wire.SSLRequest().encode(),
        wire.GSSENCRequest().encode(),
        wire.CancelRequest(rng.randrange(2**31), rng.randbytes(rng.choice([4, 32]))).encode(),
    ]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        action = rng.randrange(4)
        if action == 0 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif action == 1:
            out = out[: rng.randrange(len(out) + 1)]
        elif action == 2:
            out[rng.randrange(len(out) + 1) : 0] = rng.randbytes(rng.randrange(1, 16))
        else:
            out += rng.choice(_valid_packets(rng))
    return bytes(out)


def _garbage_cancel(rng: random.Random) -> bytes:
    length = rng.choice([8, 11, 12, 16, 44, 268, 269, 10_001, rng.randrange(-5, 300)])
    body = struct.pack("!iii", length, wire.CANCEL_REQUEST_CODE, rng.randrange(-(2**31), 2**31))
    return body + rng.randbytes(max(0, min(length, 400) - 12))


def _sasl_garbage(rng: random.Random) -> bytes:
    """A good start-up for a new branch, then a broken first SCRAM message: the auth path."""
    startup = wire.StartupMessage(wire.PROTOCOL_3_0, (("user", "postgres@fuzz-auth"),))
    first = wire.SASLInitialResponse(
        "SCRAM-SHA-256", b"n,,n=,r=" + rng.randbytes(8).hex().encode()
    ).encode()
    return startup.encode() + _mutate(rng, first)


def _cases(rng: random.Random) -> list[Case]:
    endings = list(Ending)
    cases: list[Case] = []
    for _ in range(CASES_PER_KIND):
        hello = _client_hello(rng)
        truncated = hello[: rng.randrange(len(hello))]
        cases += [
            Case("random", rng.randbytes(rng.randrange(1, 300)), ending=rng.choice(endings)),
            Case(
                "mutated", _mutate(rng, rng.choice(_valid_packets(rng))), ending=rng.choice(endings)
            ),
            Case("cancel", _garbage_cancel(rng), ending=rng.choice(endings)),
            Case("sasl", _sasl_garbage(rng), ending=rng.choice(endings)),
            Case("inside-tls", _mutate(rng, rng.choice(_valid_packets(rng))), inside_tls=True),
            Case("direct-tls", truncated or b"\x16", ending=rng.choice(endings)),
            Case(
                "tls-after-ssl-request", wire.SSLRequest().encode(), truncated, rng.choice(endings)
            ),
            Case(
                "mutated-hello", wire.SSLRequest().encode(), _mutate(rng, hello), Ending.HALF_CLOSE
            ),
        ]
    rng.shuffle(cases)
    return cases


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _play_inside_tls(port: int, case: Case) -> bytes:
    """Run a case over TLS, after a real handshake; everything Prism sent back in it."""
    received = bytearray()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(wire.SSLRequest().encode())
        assert await stream.receive_some(1) == b"S"
        tls = trio.SSLStream(stream, _unverified(), server_hostname="localhost")
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await tls.do_handshake()
            await tls.send_all(case.first)
            if case.ending is Ending.CLOSE:
                return bytes(received)
            with trio.fail_after(STARTUP_TIMEOUT + 5):
                while chunk := await tls.receive_some(65536):
                    received += chunk
    return bytes(received)


async def _play(port: int, case: Case) -> bytes:
    """Run one case; everything Prism sent back."""
    if case.inside_tls:
        return await _play_inside_tls(port, case)
    received = bytearray()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(case.first)
            if case.after_answer is not None:
                with trio.move_on_after(5):
                    received += await stream.receive_some(1)
                await stream.send_all(case.after_answer)
            if case.ending is Ending.CLOSE:
                return bytes(received)
            if case.ending is Ending.HALF_CLOSE:
                await stream.send_eof()
            with trio.fail_after(STARTUP_TIMEOUT + 5):
                while chunk := await stream.receive_some(65536):
                    received += chunk
    return bytes(received)


def _errors_in(answer: bytes) -> list[wire.ErrorResponse]:
    """The ErrorResponses in an answer (after any one-byte S/N replies), each parsed."""
    reader = wire.MessageReader()
    reader.feed(answer.lstrip(b"SN") if answer[:1] in (b"S", b"N") else answer)
    errors = []
    with contextlib.suppress(wire.ProtocolViolation):
        while (message := reader.next_message()) is not None:
            if message.type == b"E":
                errors.append(wire.ErrorResponse.decode(message.payload))
    return errors


def _task_count() -> int:
    def walk(task: Any) -> int:
        return 1 + sum(walk(child) for n in task.child_nurseries for child in n.child_tasks)

    return walk(trio.lowlevel.current_root_task())


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _settled() -> tuple[int, int]:
    """The task and fd counts once they have stopped changing for half a second (bounded).

    A connection's task and socket go away a moment after its client is done; waiting for
    quiet, rather than for a number, makes the same helper serve before and after the run.
    """
    counts, still_since = (_task_count(), _fd_count()), trio.current_time()
    with trio.move_on_after(STARTUP_TIMEOUT + 10):
        while trio.current_time() - still_since < 0.5:
            await trio.sleep(0.05)
            now = (_task_count(), _fd_count())
            if now != counts:
                counts, still_since = now, trio.current_time()
    return counts


async def test_fuzzed_front_door_keeps_serving_and_leaks_nothing(
    start_prism: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="prism")
    prism: PrismHandle = await start_prism(startup_timeout=STARTUP_TIMEOUT)
    # A first real client warms up what stays open by design (main's server, role cache).
    await psql(prism.dsn(), "SELECT 1")
    tasks, fds = await _settled()

    cases = _cases(random.Random(SEED))
    answers: list[tuple[Case, bytes]] = []
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def run(case: Case) -> None:
        async with limiter:
            answers.append((case, await _play(prism.port, case)))

    with trio.fail_after(25):
        async with trio.open_nursery() as nursery:
            for case in cases:
                nursery.start_soon(run, case)

    assert len(answers) == len(cases)
    for case, answer in answers:
        for error in _errors_in(answer):
            assert error.severity == "FATAL", (case, error)
            assert error.sqlstate != "XX000", (case, error)  # an unexpected exception in Prism
    refused = {case.kind for case, answer in answers if _errors_in(answer)}
    assert refused >= {"mutated", "sasl", "inside-tls"}
    # Random bytes hardly ever open with a length word Postgres would read on: it answers
    # them with silence, and so must Prism (tests/integration/test_front_door_conformance.py).
    assert any(case.kind == "random" and not answer for case, answer in answers)
    assert prism.manager.get("fuzz-auth") is None  # no one authenticated, nothing was created

    tasks_after, fds_after = await _settled()
    assert tasks_after <= tasks, "a connection's task outlived it"
    assert fds_after <= fds, "a connection's socket was never closed"
    out = await psql(prism.dsn("postgres@after-fuzz", sslmode="require"), "SELECT 42")
    assert out.stdout.decode().strip() == "42"
    tracebacks = [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
