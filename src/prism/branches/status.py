"""What Prism knows about its branches right now: statuses, the ``Branch``, the registry.

A branch's status changes in one place, :meth:`BranchRegistry.transition`, which publishes the
status's event in the same step (no ``await`` between): a subscriber never sees a status the
branch is not in, and a status is never entered without its event. Events that tell of an
operation rather than a status (``created``, ``reset``, ``deleted``, ``failed``, ...) are
published by the operation itself.
"""

from __future__ import annotations

import builtins
import enum
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import trio

from prism.core.address import BackendAddress
from prism.core.errors import BranchNotFound, describe
from prism.core.events import EventBus
from prism.durable.state import BranchRecord, Generation

log = logging.getLogger(__name__)


class BranchStatus(enum.Enum):
    BACKING_UP = "backing_up"  # main only: being made from a base backup of the source
    PROVISIONING = "provisioning"
    STARTING = "starting"
    RUNNING = "running"
    RECOVERING = "recovering"  # its server was up and now answers "starting up"/"in recovery"
    UNHEALTHY = "unhealthy"  # its server does not answer, refuses connections or is going down
    STOPPING = "stopping"
    STOPPED = "stopped"
    RESETTING = "resetting"
    DELETING = "deleting"


#: Main's statuses while it is being made: nothing can use it yet.
MAKING: Final = (BranchStatus.BACKING_UP, BranchStatus.PROVISIONING)

#: A server was up and Prism is watching it: running, or found not serving since.
SERVED: Final = (BranchStatus.RUNNING, BranchStatus.RECOVERING, BranchStatus.UNHEALTHY)

#: A server was up and is not serving now (``prism.branches.health`` found out).
UNWELL: Final = (BranchStatus.RECOVERING, BranchStatus.UNHEALTHY)

#: States in which a branch holds (or is about to hold) a server: what --max-running counts.
HOLDS_SERVER: Final = frozenset(
    {BranchStatus.PROVISIONING, BranchStatus.STARTING, BranchStatus.STOPPING, *SERVED}
)


@dataclass(frozen=True)
class Trouble:
    """Why a branch whose server was up is not serving: what the API, events, CLI and page
    show beside a ``recovering`` or ``unhealthy`` status."""

    reason: str
    """What the server answered, or that it did not (``prism.branches.health``)."""
    log: tuple[str, ...]
    """The last lines of its server log, oldest first: what it was doing."""
    since: datetime
    """When Prism first saw it so."""


@dataclass
class Branch:
    """What Prism knows about one branch right now."""

    name: str
    parent: str | None
    created_at: datetime
    status: BranchStatus
    last_active_ts: float = field(default_factory=time.time)
    address: BackendAddress | None = None
    connections: int = 0
    bytes_proxied: int = 0
    generation: Generation | None = None
    """The generation of main this branch holds (``--source-mode dump``; else None)."""
    trouble: Trouble | None = None
    """Why its server is not serving, while ``recovering`` or ``unhealthy``; else None."""
    at: datetime | None = None
    """The time of its parent's data it holds, made with ``--at``; None for one made from the
    parent's present (and again after a reset, which re-clones the present)."""

    @property
    def last_active(self) -> datetime:
        return datetime.fromtimestamp(self.last_active_ts, UTC)

    def record(self) -> BranchRecord:
        return BranchRecord(
            name=self.name,
            parent=self.parent,
            created_at=self.created_at,
            last_active=self.last_active,
            status=self.status.value,
            at=self.at,
        )


class _Keep(enum.Enum):
    ADDRESS = enum.auto()


#: ``transition``'s ``address`` when the branch keeps the one it has.
KEEP: Final = _Keep.ADDRESS


class BranchRegistry:
    """The branches by name, and the one way their status changes."""

    def __init__(self, events: EventBus) -> None:
        self._events = events
        self._branches: dict[str, Branch] = {}

    def get(self, name: str) -> Branch | None:
        return self._branches.get(name)

    def require(self, name: str) -> Branch:
        """The branch called ``name``, or ``BranchNotFound``."""
        branch = self._branches.get(name)
        if branch is None:
            raise BranchNotFound(f'branch "{name}" does not exist')
        return branch

    def list(self) -> builtins.list[Branch]:
        return sorted(self._branches.values(), key=lambda branch: branch.name)

    def names(self) -> set[str]:
        return set(self._branches)

    def children(self, name: str) -> builtins.list[str]:
        return sorted(b.name for b in self._branches.values() if b.parent == name)

    def descendants(self, name: str) -> builtins.list[str]:
        """Every branch cloned, directly or not, from ``name``."""
        found = []
        for child in self.children(name):
            found += [child, *self.descendants(child)]
        return found

    def __contains__(self, name: object) -> bool:
        return name in self._branches

    def __len__(self) -> int:
        return len(self._branches)

    def __iter__(self) -> Iterator[Branch]:
        return iter(self._branches.values())

    def add(self, branch: Branch) -> None:
        self._branches[branch.name] = branch

    def remove(self, name: str) -> None:
        self._branches.pop(name, None)

    def transition(
        self,
        branch: Branch,
        status: BranchStatus,
        event: str | None = None,
        *,
        address: BackendAddress | _Keep | None = KEEP,
        trouble: Trouble | None = None,
        **fields: object,
    ) -> None:
        """Put ``branch`` in ``status`` (and at ``address``, if given) and publish ``event``
        with ``fields`` in the same step; ``event`` None: a change nobody is told of (recovery,
        a rollback whose ``failed`` event says it all).

        ``trouble`` goes with an unwell status (its reason and log in the event too); every
        other transition clears it, so no status is shown with a stale reason.
        """
        branch.status = status
        branch.trouble = trouble
        if trouble is not None:
            fields = {"error": trouble.reason, "log": list(trouble.log), **fields}
        if not isinstance(address, _Keep):
            branch.address = address
        if event is not None:
            self._events.publish(event, branch.name, **fields)

    def failed(self, name: str, exc: BaseException, started: float) -> None:
        """Tell of an operation on ``name`` that failed and was rolled back (a ``failed``
        event with the error and how long it took, and the log)."""
        error = describe(exc)
        log.error("branch %s: operation failed and was rolled back: %s", name, error)
        self._events.publish("failed", name, error=error, duration_ms=elapsed_ms(started))


class BranchLocks:
    """One ``trio.Lock`` per branch name: every operation on a branch holds it."""

    def __init__(self) -> None:
        self._locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)

    def __getitem__(self, name: str) -> trio.Lock:
        return self._locks[name]

    def busy(self, name: str) -> bool:
        """Whether an operation holds ``name``'s lock (without making one)."""
        lock = self._locks.get(name)
        return lock is not None and lock.locked()


def is_idle(branch: Branch, *, now: float, idle_for: float) -> bool:
    """Whether the reaper may stop ``branch``: running, no open session, quiet for ``idle_for``."""
    return (
        branch.status is BranchStatus.RUNNING
        and branch.connections == 0
        and now - branch.last_active_ts >= idle_for
    )


def elapsed_ms(started: float) -> float:
    return round((trio.current_time() - started) * 1000, 1)
