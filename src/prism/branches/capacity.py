"""Admission as pure decisions: may a branch be made, may it hold a server, whom to evict.

The manager acts on these (``BranchManager._make_room``): it asks, and when the answer is to
admit, reserves in its next synchronous step, with no ``await`` between the check and the
reservation. The rules live here, decided from a snapshot of the branches, so they are
unit-tested without drivers or a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prism.branches.status import HOLDS_SERVER, Branch, BranchStatus
from prism.core.errors import LimitExceeded, TooManyConnections
from prism.core.names import MAIN_BRANCH


@dataclass(frozen=True)
class Caps:
    """``--max-branches`` and ``--max-running``; 0: no cap."""

    branches: int = 0
    running: int = 0


@dataclass(frozen=True)
class Admit:
    """The branch may hold a server now."""


@dataclass(frozen=True)
class Evict:
    """Stop ``victim`` (idle, least recently used) for room, then ask again."""

    victim: Branch


@dataclass(frozen=True)
class Refuse:
    """No room and nobody to stop: ``error`` says so to the client."""

    error: TooManyConnections


Room = Admit | Evict | Refuse


def check_branch_cap(name: str, *, count: int, caps: Caps) -> None:
    """Refuse (``LimitExceeded``) a new branch ``name`` when ``count`` branches reach the cap."""
    cap = caps.branches
    if cap and count >= cap:
        raise LimitExceeded(
            f'cannot create branch "{name}": the server has reached its limit of {cap} '
            "branches (--max-branches)",
            hint="delete branches you no longer need",
        )


def evictable(branch: Branch, *, for_branch: str) -> bool:
    """Whether ``branch`` may be stopped to make room for ``for_branch``: never main, never
    the branch itself, only a running one with no session."""
    return (
        branch.name not in (for_branch, MAIN_BRANCH)
        and branch.status is BranchStatus.RUNNING
        and branch.connections == 0
    )


def room_for(
    name: str,
    branches: Iterable[Branch],
    *,
    caps: Caps,
    has_server: Callable[[str], bool],
    busy: Callable[[str], bool],
) -> Room:
    """Whether ``name`` may hold a server beside ``branches``.

    ``has_server``: the runtime reports a server of that branch; ``busy``: its lock is held (it
    may have a session being set up, so it is never a victim).
    """
    cap = caps.running
    if not cap:
        return Admit()
    branches = list(branches)
    holding = sum(
        1
        for branch in branches
        if branch.name != name and (branch.status in HOLDS_SERVER or has_server(branch.name))
    )
    if holding < cap:
        return Admit()
    idle = [
        branch
        for branch in branches
        if evictable(branch, for_branch=name) and not busy(branch.name)
    ]
    victim = min(idle, key=lambda branch: branch.last_active_ts, default=None)
    if victim is None:
        return Refuse(
            TooManyConnections(
                f'cannot start branch "{name}": {cap} branch servers are running '
                "(--max-running) and all of them have clients",
                hint="close sessions on other branches, or try again later",
            )
        )
    return Evict(victim)
