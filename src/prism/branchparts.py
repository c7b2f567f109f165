"""The collaborators every part of the branch manager works with, in one value.

The manager builds them once and hands the same ``BranchParts`` to each of its parts (reset,
the trash, main), instead of a dozen constructor arguments apiece repeated in each.
"""

from __future__ import annotations

from dataclasses import dataclass

from prism.branchdata import BranchData
from prism.branchservers import Servers
from prism.branchstate import BranchLocks, BranchRegistry
from prism.events import EventBus
from prism.journal import Journal
from prism.policy import PolicyStore
from prism.runtime.base import Runtime
from prism.sessions import SessionRegistry
from prism.state import StateStore
from prism.storage.base import Storage


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


__all__ = ["BranchParts"]
