"""The ``prism`` CLI as a person uses it, in a real process against a real daemon: a pipe
closed early, the daemon stopping under ``prism events``, Ctrl-C during a create."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from prism.core.errors import INTERRUPTED
from tests.waiting import wait_until

from .harness import PrismHandle, running_prism

_CLI = [sys.executable, "-m", "prism.cli.main"]


@pytest.mark.parametrize("command", [("branch", "ls"), ("events",)])
async def test_a_pipe_closed_early_ends_the_command_quietly(
    prism: PrismHandle, command: tuple[str, ...]
) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before a byte is written, as `| head -0` would be
    try:
        result = await trio.run_process(
            [*_CLI, *command, "--api", prism.info.api_url],
            stdout=write,
            capture_stderr=True,
            check=False,
        )
    finally:
        os.close(write)
    assert (result.returncode, result.stderr.decode()) == (0, "")


async def test_events_with_no_daemon_say_why_and_what_to_do() -> None:
    result = await trio.run_process(
        [*_CLI, "events", "--api", "127.0.0.1:1"], capture_stderr=True, check=False
    )
    error, hint = result.stderr.decode().splitlines()
    assert result.returncode == 1
    assert error.startswith("prism: error: cannot subscribe to ws://127.0.0.1:1/api/v1/events: ")
    assert not error.endswith(": ")  # a reason, not nothing
    assert hint == "prism: hint: is `prism serve` running? set --api or $PRISM_API"


async def test_events_end_cleanly_with_the_shutdown_event_when_the_daemon_stops(
    data_dir: Path,
) -> None:
    async with running_prism(data_dir) as (daemon, _, api_port):
        events = await trio.lowlevel.open_process(
            [*_CLI, "events", "--json", "--api", f"127.0.0.1:{api_port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert events.stdout is not None and events.stderr is not None
        received = b""
        with trio.fail_after(30):
            while b"\n" not in received:  # the snapshot: subscribed
                received += await events.stdout.receive_some()
            daemon.send_signal(signal.SIGTERM)
            while chunk := await events.stdout.receive_some():
                received += chunk
            errors = b""
            while chunk := await events.stderr.receive_some():
                errors += chunk
            assert await events.wait() == 0
            assert await daemon.wait() == 0
    lines = [json.loads(line) for line in received.decode().splitlines()]
    assert lines[0]["type"] == "snapshot"
    assert lines[-1]["type"] == "shutdown"
    assert lines[-1]["reason"] == "Prism is shutting down (SIGTERM)"
    assert errors == b""


async def test_ctrl_c_during_a_create_leaves_a_readable_failed_event(
    prism: PrismHandle, caplog: pytest.LogCaptureFixture
) -> None:
    # A parent whose hook takes its time, so the create is surely still running at Ctrl-C.
    await prism.manager.create("slow-parent", "main")
    await prism.manager.set_policy("slow-parent", on_create="SELECT pg_sleep(20)")
    seen = len(prism.manager.events.recent())
    create = ["branch", "create", "cut-short", "--parent", "slow-parent"]
    cli = await trio.lowlevel.open_process(
        [*_CLI, *create, "--api", prism.info.api_url], stderr=subprocess.PIPE
    )

    def events_of(kind: str) -> list[dict[str, object]]:
        recent = prism.manager.events.recent()[seen:]
        return [e for e in recent if e["type"] == kind and e["branch"] == "cut-short"]

    await wait_until(lambda: events_of("provisioning"), what="the create to start", within=30)
    cli.send_signal(signal.SIGINT)
    with trio.fail_after(30):
        assert await cli.wait() == 130
    await wait_until(lambda: events_of("failed"), what="the roll-back", within=30)
    (event,) = events_of("failed")
    assert event["error"] == INTERRUPTED
    assert prism.manager.get("cut-short") is None
    said = caplog.text + "\n".join(json.dumps(e) for e in prism.manager.events.recent())
    for raw in ("Cancelled", "ExceptionGroup"):
        assert raw not in said
    assert any(INTERRUPTED in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
