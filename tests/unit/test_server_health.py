"""Truthful health: a server that was up and serves nobody is ``recovering`` or ``unhealthy``,
with its log, in one transition; it is ``running`` again once it serves. On the fakes, under a
MockClock, with probes scripted per branch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from prism.api.views import branch_view, readiness
from prism.branches.health import (
    GOOD_ANSWERS,
    MISSES,
    PROBE_TIMEOUT,
    UNWELL_INTERVAL,
    Answer,
    Probe,
    classify,
    judge,
)
from prism.branches.manager import BranchManager
from prism.branches.status import BranchStatus
from prism.core.address import BackendAddress
from prism.core.errors import ServerUnwell
from prism.core.events import Event
from prism.postgres import wire
from tests.fakes import FakeRuntime
from tests.manager_kit import open_manager

EVERY = 5.0
IN_RECOVERY = Probe(Answer.RECOVERING, "the database system is in recovery mode (57P03)")
SERVING = Probe(Answer.SERVING)
SILENT = Probe(Answer.SILENT)
LOG = "\n".join(f"line {n}" for n in range(30)) + "\nPANIC:  could not write to file: No space"


def _error(sqlstate: str, message: str) -> wire.Message:
    encoded = wire.ErrorResponse(sqlstate=sqlstate, message=message).encode()
    return wire.Message(b"E", encoded[5:])


@pytest.mark.parametrize(
    ("message", "answer"),
    [
        (wire.Message(b"R", b"\0\0\0\0"), Answer.SERVING),
        (wire.Message(b"R", b"\0\0\0\x0aSCRAM-SHA-256\0\0"), Answer.SERVING),
        (_error("57P03", "the database system is in recovery mode"), Answer.RECOVERING),
        (_error("57P03", "the database system is starting up"), Answer.RECOVERING),
        (_error("57P03", "the database system is shutting down"), Answer.REFUSED),
        (_error("53300", "sorry, too many clients already"), Answer.SERVING),
        (_error("3D000", 'database "postgres" does not exist'), Answer.SERVING),
        (_error("XX000", "could not open file global/pg_filenode.map"), Answer.REFUSED),
        (wire.Message(b"Z", b"I"), Answer.REFUSED),
    ],
)
def test_the_first_answer_to_a_start_up_says_whether_a_server_serves(
    message: wire.Message, answer: Answer
) -> None:
    assert classify(message).answer is answer


def test_a_sure_answer_counts_at_once_and_silence_or_health_only_twice_in_a_row() -> None:
    running, recovering, unhealthy = (
        BranchStatus.RUNNING,
        BranchStatus.RECOVERING,
        BranchStatus.UNHEALTHY,
    )
    assert judge(running, SERVING, 0) == (running, 0)
    assert judge(running, IN_RECOVERY, 0) == (recovering, 0)
    assert judge(running, SILENT, 0) == (running, 1)
    assert judge(running, SILENT, MISSES - 1) == (unhealthy, 0)
    assert judge(running, SERVING, 1) == (running, 0)  # a miss forgiven
    assert judge(recovering, SILENT, 0) == (recovering, 1)
    assert judge(recovering, SILENT, MISSES - 1) == (unhealthy, 0)
    assert judge(unhealthy, IN_RECOVERY, 0) == (recovering, 0)
    assert judge(unhealthy, SILENT, 0) == (unhealthy, 0)
    assert judge(unhealthy, SERVING, 0) == (unhealthy, 1)
    assert judge(unhealthy, SERVING, GOOD_ANSWERS - 1) == (running, 0)
    assert judge(recovering, IN_RECOVERY, 1) == (recovering, 0)  # crashed again: start over


class ScriptedProbes:
    """Each branch's server answers as its entry says (SERVING by default); SILENT never
    answers, so the watcher's timeout decides."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self._runtime = runtime
        self.answers: dict[str, Probe] = {}
        self.asked: list[str] = []
        self.next_asked = trio.Event()
        """Set once a server is asked next."""

    async def __call__(self, address: BackendAddress) -> Probe:
        name = next(n for n, a in self._runtime.running.items() if a == address)
        self.asked.append(name)
        self.next_asked.set()
        self.next_asked = trio.Event()
        probe = self.answers.get(name, SERVING)
        if probe.answer is Answer.SILENT:
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        return probe


@asynccontextmanager
async def watched(
    tmp_path: Path,
) -> AsyncIterator[tuple[BranchManager, FakeRuntime, ScriptedProbes, list[Event]]]:
    """An opened manager whose watchers run, its runtime, its probes and the events seen."""
    runtime = FakeRuntime()
    probes = ScriptedProbes(runtime)
    async with open_manager(tmp_path, runtime=runtime, probe=probes) as (manager, _, _):
        seen: list[Event] = []
        manager.events.add_listener(seen.append)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: manager.watch(health_every=EVERY))
            yield manager, runtime, probes, seen
            nursery.cancel_scope.cancel()


def _statuses(seen: list[Event]) -> list[str]:
    return [e["type"] for e in seen if e["type"] in {s.value for s in BranchStatus}]


async def test_main_in_crash_recovery_is_recovering_with_its_log_until_it_serves(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with watched(tmp_path) as (manager, runtime, probes, seen):
        runtime.logs["main"] = LOG
        await trio.sleep(EVERY * 3)
        assert manager.require("main").status is BranchStatus.RUNNING
        assert readiness(manager) == (200, {"status": "ok"})

        probes.answers["main"] = IN_RECOVERY
        await trio.sleep(EVERY + 1)
        main = manager.require("main")
        assert main.status is BranchStatus.RECOVERING
        assert main.trouble is not None and "in recovery mode" in main.trouble.reason
        assert main.trouble.log[-1].startswith("PANIC:") and len(main.trouble.log) == 20
        [event] = [e for e in seen if e["type"] == "recovering"]
        assert event["error"] == main.trouble.reason and event["log"] == list(main.trouble.log)
        assert branch_view(main)["trouble"]["log"] == list(main.trouble.log)
        code, verdict = readiness(manager)
        assert code == 503 and verdict["status"] == "recovering"
        assert "in recovery mode" in verdict["main"]["reason"]

        with pytest.raises(ServerUnwell, match=r"main.* is recovering") as refused:
            await manager.admit("main", "127.0.0.1:5555")
        assert refused.value.sqlstate == "57P03"
        assert refused.value.hint is not None and "PANIC:" in refused.value.hint
        assert main.connections == 0

        del probes.answers["main"]
        await probes.next_asked.wait()
        await trio.sleep(0.01)
        assert main.status is BranchStatus.RECOVERING  # one good answer is not enough
        await trio.sleep(UNWELL_INTERVAL + 0.5)
        assert branch_view(main)["status"] == "running" and main.trouble is None
        assert branch_view(main)["trouble"] is None
        assert seen[-1]["type"] == "running" and seen[-1]["reason"] == "recovered"
        assert readiness(manager)[0] == 200
        await manager.admit("main", "127.0.0.1:5555")
        assert _statuses(seen) == ["recovering", "running"]


async def test_a_silent_server_is_unhealthy_only_after_two_misses_and_never_flaps(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with watched(tmp_path) as (manager, _, probes, seen):
        await trio.sleep(EVERY / 2)
        probes.answers["main"] = SILENT
        await trio.sleep(EVERY / 2 + PROBE_TIMEOUT + 0.5)
        assert manager.require("main").status is BranchStatus.RUNNING  # one miss only
        await trio.sleep(UNWELL_INTERVAL + PROBE_TIMEOUT)
        main = manager.require("main")
        assert main.status is BranchStatus.UNHEALTHY
        assert main.trouble is not None and "does not answer" in main.trouble.reason
        await trio.sleep(EVERY * 4)  # still silent: no more events
        assert _statuses(seen) == ["unhealthy"]
        del probes.answers["main"]
        await trio.sleep(UNWELL_INTERVAL * GOOD_ANSWERS + PROBE_TIMEOUT)
        assert manager.require("main").status is BranchStatus.RUNNING
        assert _statuses(seen) == ["unhealthy", "running"]


async def test_a_healthy_server_is_asked_once_an_interval(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with watched(tmp_path) as (manager, _, probes, seen):
        await manager.ensure_running("feature")
        await trio.sleep(EVERY * 2)
        before = len(probes.asked)
        await trio.sleep(EVERY * 10)
        asked = probes.asked[before:]
        assert asked.count("main") == asked.count("feature") == 10
        assert _statuses(seen) == ["provisioning", "starting", "running"]


async def test_a_probe_that_ends_after_an_operation_changed_the_branch_says_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The probe is out while an operator stops the branch: its finding is dropped rather
    than turning a stopped branch unhealthy."""
    async with watched(tmp_path) as (manager, _, probes, seen):
        await manager.ensure_running("feature")
        await trio.sleep(EVERY / 2)
        probes.answers["feature"] = SILENT
        await trio.sleep(EVERY / 2 + PROBE_TIMEOUT + UNWELL_INTERVAL + 0.1)  # second probe out
        await manager.stop("feature")
        await trio.sleep(PROBE_TIMEOUT * 2)
        assert manager.require("feature").status is BranchStatus.STOPPED
        assert "unhealthy" not in _statuses(seen)


async def test_an_unwell_server_that_exits_is_stopped_and_woken_by_the_next_client(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with watched(tmp_path) as (manager, runtime, probes, seen):
        await manager.ensure_running("feature")
        probes.answers["feature"] = IN_RECOVERY
        await trio.sleep(EVERY + 1)
        assert manager.require("feature").status is BranchStatus.RECOVERING
        del runtime.running["feature"]
        del probes.answers["feature"]
        await trio.sleep(1)
        assert manager.require("feature").status is BranchStatus.STOPPED
        assert seen[-1]["type"] == "stopped" and seen[-1]["reason"] == "exited"
        await manager.admit("feature", "127.0.0.1:5555")
        assert manager.require("feature").status is BranchStatus.RUNNING


async def test_a_probe_that_fails_unexpectedly_is_logged_and_the_watch_goes_on(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with watched(tmp_path) as (manager, runtime, probes, _):
        await manager.ensure_running("feature")
        real = runtime.server_log
        runtime.server_log = _broken_log  # type: ignore[method-assign]
        probes.answers["feature"] = IN_RECOVERY
        await trio.sleep(EVERY + 1)
        assert "the health probe failed" in caplog.text
        assert manager.require("feature").status is BranchStatus.RUNNING
        runtime.server_log = real  # type: ignore[method-assign]
        await trio.sleep(EVERY + 1)
        assert manager.require("feature").status is BranchStatus.RECOVERING


async def _broken_log(branch: str) -> str:
    raise OSError("a bug in a runtime")


async def test_no_branch_is_cut_from_an_unwell_parent(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with watched(tmp_path) as (manager, _, probes, seen):
        probes.answers["main"] = IN_RECOVERY
        await trio.sleep(EVERY + 1)
        with pytest.raises(ServerUnwell, match="recovering"):
            await manager.create("feature")
        with pytest.raises(ServerUnwell, match="recovering"):
            await manager.admit("made-on-connect", "127.0.0.1:5555")
        assert manager.get("feature") is None and manager.get("made-on-connect") is None
        assert "provisioning" not in _statuses(seen)
