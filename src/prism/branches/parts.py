"""The collaborators every part of the branch manager works with, in one value.

The manager builds them once and hands the same ``BranchParts`` to each of its parts (reset,
the trash, main), instead of a dozen constructor arguments apiece repeated in each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from prism.branches.data import BranchData
from prism.branches.policy import PolicyStore
from prism.branches.servers import Servers
from prism.branches.sessions import SessionRegistry
from prism.branches.status import BranchLocks, BranchRegistry
from prism.core.events import EventBus
from prism.durable.journal import Journal
from prism.durable.state import StateStore
from prism.runtime.base import Runtime
from prism.storage.base import Storage
from prism.storage.budget import DiskBudget, SpaceReclaimer


@dataclass(frozen=True)
class BranchParts:
    """The registry, locks, sessions, servers and data of the branches, the drivers, the
    state file's stores and the event bus: what the manager's parts share."""

    registry: BranchRegistry
    locks: BranchLocks
    sessions: SessionRegistry
    servers: Servers
    data: BranchData
    storage: Storage
    runtime: Runtime
    state: StateStore
    policies: PolicyStore
    journal: Journal
    events: EventBus
    budget: DiskBudget | None = None
    """The disk budget every operation that grows the disk asks first (None: no checks)."""
    reclaimer: SpaceReclaimer | None = None
    """What frees space (the trash, expired and idle branches) before the budget refuses."""

    async def hold_clone(
        self, parent: str, what: str, *, at: datetime | None = None
    ) -> Callable[[], None]:
        """Ask the disk budget for what cloning ``parent`` costs (``DiskFull`` if it does not
        fit, once the reclaimer has tried); returns the release of the bytes held, called when
        the clone is done."""
        if self.budget is None:
            return lambda: None
        # A branch as of a time is a clone of a snapshot, which no server runs on.
        running = at is None and self.runtime.address(parent) is not None
        hold = await self.budget.hold_clone(
            parent, running=running, what=what, reclaimer=self.reclaimer
        )
        return hold.release


__all__ = ["BranchParts"]
