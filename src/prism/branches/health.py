"""Whether each branch server that was up still serves: ``running``, ``recovering``, ``unhealthy``.

A server's process can be alive while it serves nobody: looping in crash recovery after a
PANIC (a full disk), frozen, or refusing connections. ``Runtime.address`` only knows the
process, so a watcher asks the server itself, the way ``pg_isready`` does: a start-up packet
on Prism's service socket, and the first message back decides (an authentication request:
it serves; ``57P03``: it starts up or recovers; nothing in time, or the door shut: it is
unhealthy). No log-in is finished and no query runs, so a probe costs the server one backend
fork; a healthy branch is asked every ``--health-interval`` (5 s), an unwell one every second.

The rules are pure (``classify``, ``judge``) and the task that acts on them is thin
(``HealthWatch``): every change goes through the registry's one ``transition`` with the
``Trouble`` (the reason and the last lines of the server's log), so the API, the events, the
CLI and the page say the same. A client of an unwell branch is refused at once with
``ServerUnwell`` (57P03, the reason and the log's last lines) instead of waiting on a server
that cannot answer. Nothing is written to the state file: the disk may be what is full.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio

from prism.branches.status import (
    SERVED,
    UNWELL,
    Branch,
    BranchLocks,
    BranchRegistry,
    BranchStatus,
    Trouble,
)
from prism.core.address import BackendAddress
from prism.core.errors import PrismError, ServerUnwell
from prism.core.settings import Settings
from prism.durable.state import utcnow
from prism.postgres import wire
from prism.postgres.client import first_reply
from prism.runtime.base import Runtime

log = logging.getLogger(__name__)

HEALTH_INTERVAL: Final = Settings.health_interval
"""How often a healthy server is asked (``--health-interval``)."""
UNWELL_INTERVAL: Final = 1.0
"""How often a server that failed its last probe, or is unwell, is asked again."""
PROBE_TIMEOUT: Final = 2.0
"""How long a server has to answer a start-up packet."""
MISSES: Final = 2
"""Probes in a row a server must fail before it is unhealthy: one slow answer on a loaded
machine is no outage. An answer of "in recovery" is sure at once."""
GOOD_ANSWERS: Final = 2
"""Probes in a row an unwell server must pass (a second apart) before it is running again:
a server that crashes again and again stays ``recovering`` rather than flapping."""
LOG_LINES: Final = 20
"""Lines of the server's log an unwell branch carries."""
_HINT_LINES: Final = 5
# SQLSTATE classes of refusals that only a serving server gives: bad role or password (28),
# no such database (3D), too many connections (53).
_SERVING_CLASSES: Final = ("28", "3D", "53")
_CANNOT_CONNECT_NOW: Final = "57P03"


class Answer(enum.Enum):
    """What a probe found."""

    SERVING = "serving"
    RECOVERING = "recovering"
    """57P03: starting up, in recovery (after a crash), not yet consistent."""
    REFUSED = "refused"
    """The door is shut: no socket, closed at once, going down, or an error it cannot serve past."""
    SILENT = "silent"
    """No answer within ``PROBE_TIMEOUT``."""


@dataclass(frozen=True)
class Probe:
    """One probe's finding, and the server's own words for it."""

    answer: Answer
    detail: str = ""


Prober = Callable[[BackendAddress], Awaitable[Probe]]
"""Asks one server; raises nothing but cancellation (the caller times it out)."""


def classify(message: wire.Message) -> Probe:
    """What the first message a server answers a start-up with says about it."""
    if message.type == b"R":
        return Probe(Answer.SERVING)
    if message.type != b"E":
        return Probe(Answer.REFUSED, f"answers a start-up with message type {message.type!r}")
    error = wire.ErrorResponse.decode(message.payload)
    said = f"{error.message} ({error.sqlstate})"
    if error.sqlstate == _CANNOT_CONNECT_NOW:
        # Postgres's own words: "the database system is shutting down" is no recovery.
        going = "shutting down" in error.message
        return Probe(Answer.REFUSED if going else Answer.RECOVERING, said)
    if error.sqlstate[:2] in _SERVING_CLASSES:
        return Probe(Answer.SERVING)
    return Probe(Answer.REFUSED, said)


def judge(status: BranchStatus, probe: Probe, against: int) -> tuple[BranchStatus, int]:
    """The status a branch whose server was up should have after ``probe``, and how many
    probes in a row have now gone against its status (``against``: before this one).

    Only a status in ``SERVED`` is judged. A status changes after ``MISSES`` failures or
    ``GOOD_ANSWERS`` passes in a row, except that "in recovery" is believed at once.
    """
    unwell = status in UNWELL
    if probe.answer is Answer.SERVING:
        if not unwell:
            return status, 0
        return _count(status, BranchStatus.RUNNING, against + 1, GOOD_ANSWERS)
    if probe.answer is Answer.RECOVERING:
        return BranchStatus.RECOVERING, 0
    if status is BranchStatus.UNHEALTHY:
        return status, 0
    return _count(status, BranchStatus.UNHEALTHY, against + 1, MISSES)


def _count(
    status: BranchStatus, then: BranchStatus, against: int, enough: int
) -> tuple[BranchStatus, int]:
    """``then`` once ``against`` reaches ``enough`` (counting starts again), else as it was."""
    return (then, 0) if against >= enough else (status, against)


def reason_of(probe: Probe) -> str:
    """The reason an unwell branch shows, in words an operator acts on."""
    if probe.answer is Answer.RECOVERING:
        return f"its server is not accepting connections: {probe.detail}"
    if probe.answer is Answer.SILENT:
        return f"its server does not answer (nothing within {PROBE_TIMEOUT:g} s)"
    return f"its server refuses connections: {probe.detail}"


def refusal(branch: Branch) -> ServerUnwell:
    """The error a client of an unwell branch gets at once, instead of a wait."""
    assert branch.trouble is not None
    tail = "\n".join(branch.trouble.log[-_HINT_LINES:])
    return ServerUnwell(
        f'branch "{branch.name}" is {branch.status.value}: {branch.trouble.reason}',
        hint="Prism asks it again every second and lets clients in once it serves; "
        f"GET /api/v1/branches/{branch.name} shows its log. Its server's log ends:\n{tail}",
    )


def tail_lines(text: str, count: int = LOG_LINES) -> tuple[str, ...]:
    """The last ``count`` non-empty lines of ``text``, oldest first."""
    return tuple(line for line in text.splitlines() if line.strip())[-count:]


async def probe_server(address: BackendAddress, *, user: str) -> Probe:
    """Ask the server at ``address`` (its service socket, else its TCP port) what it answers a
    start-up with; a failure to connect or a close is ``REFUSED``."""
    try:
        return classify(await first_reply(address, user=user))
    except PrismError as exc:  # connecting failed, the server hung up, or spoke gibberish
        return Probe(Answer.REFUSED, exc.message)


@dataclass
class _Watched:
    """What the watcher keeps of one branch between probes."""

    branch: Branch
    due: float
    against: int = 0
    """Probes in a row that went against its status (``judge``)."""
    since: float | None = None
    """When it stopped serving (Trio time), for the ``running`` event's ``duration_ms``."""


class HealthWatch:
    """Probes every branch server that was up, on an interval, and moves its branch between
    ``running``, ``recovering`` and ``unhealthy`` through the registry's ``transition``."""

    def __init__(
        self,
        registry: BranchRegistry,
        locks: BranchLocks,
        *,
        runtime: Runtime,
        probe: Prober,
    ) -> None:
        self._registry = registry
        self._locks = locks
        self._runtime = runtime
        self._probe = probe
        self._watched: dict[str, _Watched] = {}

    async def run(self, *, every: float = HEALTH_INTERVAL) -> None:
        """Probe each served branch every ``every`` seconds (every ``UNWELL_INTERVAL`` while it
        fails), each probe a task of its own so a silent server delays no other; ``every`` 0:
        never (the process is still watched for exits)."""
        if every <= 0:
            return
        tick = min(every, UNWELL_INTERVAL) / 4
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                for branch in self._due(now, every):
                    nursery.start_soon(self._check, branch, every)
                await trio.sleep(tick)

    def _due(self, now: float, every: float) -> list[Branch]:
        """The branches to probe now; each is then not due again until its probe is over."""
        due = []
        for branch in self._registry.list():
            watched = self._watched.get(branch.name)
            if branch.status not in SERVED:
                self._watched.pop(branch.name, None)
            elif watched is None or watched.branch is not branch:
                # Just started (ready, so known to serve): first asked one interval from now.
                self._watched[branch.name] = _Watched(branch, now + every)
            elif now >= watched.due and not self._locks.busy(branch.name):
                watched.due = float("inf")
                due.append(branch)
        return due

    async def _check(self, branch: Branch, every: float) -> None:
        """Probe ``branch``'s server once, apply the verdict, and say when it is due again.

        A failure here is one branch's: it is logged and the watch of the others goes on.
        """
        watched = self._watched.get(branch.name)
        if watched is None or watched.branch is not branch:
            return
        try:
            await self._probe_and_judge(branch, watched)
        except Exception:
            log.exception("branch %s: the health probe failed", branch.name)
        finally:
            # Asked again soon while its status may be about to change.
            failing = branch.status in UNWELL or watched.against > 0
            watched.due = trio.current_time() + (UNWELL_INTERVAL if failing else every)

    async def _probe_and_judge(self, branch: Branch, watched: _Watched) -> None:
        """Probe, then move the branch as ``judge`` says, unless it changed meanwhile (an
        operation under its lock, a stop, an exit): then the probe says nothing."""
        name, status = branch.name, branch.status
        address = self._runtime.address(name)
        if address is None:
            return  # exited: Servers.watch reports it
        probe = Probe(Answer.SILENT)
        with trio.move_on_after(PROBE_TIMEOUT):
            probe = await self._probe(address)
        verdict, watched.against = judge(status, probe, watched.against)
        trouble = None
        if verdict in UNWELL and verdict is not status:
            text = await self._runtime.server_log(name)
            trouble = Trouble(reason_of(probe), tail_lines(text), utcnow())
        # No await from here: the branch is still as probed, or the finding is dropped.
        if (
            self._registry.get(name) is not branch
            or branch.status is not status
            or self._runtime.address(name) != address
            or self._locks.busy(name)
            or verdict is status
        ):
            return
        if trouble is not None:
            log.warning("branch %s: %s; %s", name, verdict.value, trouble.reason)
            if watched.since is None:
                watched.since = trio.current_time()
            self._registry.transition(branch, verdict, verdict.value, trouble=trouble)
            return
        began = trio.current_time() if watched.since is None else watched.since
        outage_ms = round((trio.current_time() - began) * 1000, 1)
        watched.since = None
        log.info("branch %s: its server serves again after %.0f ms", name, outage_ms)
        self._registry.transition(
            branch, BranchStatus.RUNNING, "running", reason="recovered", duration_ms=outage_ms
        )
