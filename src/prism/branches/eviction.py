"""Eviction under disk pressure: what Prism frees, in which order, before it refuses anything.

In order: the trash (deleted branches waiting out ``--undelete-window``, oldest deletion
first), then expired branches (oldest expiry first), then idle branches with the most own
bytes. Never ``main``, a protected branch, a branch with an open session or one with children
(its children would go with it). An evicted live branch is deleted *and purged*: putting it in
the trash would free nothing, which is the point; its ``evicted`` event says so and why.

The choice is pure (``plan_eviction``: candidates, bytes needed, now → ordered evictions with
their reasons), unit-tested with fakes; ``Reclaimer`` gathers the candidates, acts on the plan
and stops as soon as enough is free. The disk budget calls ``Reclaimer.reclaim`` before it
refuses an operation for lack of space; ``--evict-on-pressure off`` makes it free nothing.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from prism.branches.trash import TrashEntry
from prism.core.errors import PrismError
from prism.core.names import MAIN_BRANCH
from prism.durable.state import rfc3339, utcnow

if TYPE_CHECKING:  # the manager builds its reclaimer: a run-time import would be a cycle
    from prism.branches.manager import BranchManager

log = logging.getLogger(__name__)


class Tier(enum.IntEnum):
    """Why a candidate may go, in the order they go."""

    TRASH = 1
    EXPIRED = 2
    IDLE = 3


@dataclass(frozen=True)
class Candidate:
    """A branch (live, or deleted and kept in the trash) as eviction sees it."""

    name: str
    own_bytes: int | None
    """What freeing it gives back, as far as the storage can tell (None: unknown)."""
    last_active: datetime
    protected: bool = False
    sessions: int = 0
    has_children: bool = False
    expires_at: datetime | None = None
    trash: TrashEntry | None = None
    """Set for a deleted branch kept for undelete."""


@dataclass(frozen=True)
class Eviction:
    """One step of a plan: who goes, in which tier, and the reason its event gives."""

    candidate: Candidate
    tier: Tier
    reason: str


def _tier(candidate: Candidate, now: datetime) -> Tier | None:
    if candidate.trash is not None:
        return Tier.TRASH
    if (
        candidate.name == MAIN_BRANCH
        or candidate.protected
        or candidate.sessions > 0
        or candidate.has_children
    ):
        return None
    expired = candidate.expires_at is not None and candidate.expires_at <= now
    return Tier.EXPIRED if expired else Tier.IDLE


def _order(candidate: Candidate, tier: Tier) -> tuple[object, ...]:
    if tier is Tier.TRASH:
        assert candidate.trash is not None
        return (tier, candidate.trash.deleted_at, candidate.name)
    if tier is Tier.EXPIRED:
        return (tier, candidate.expires_at, candidate.name)
    # Most own bytes first (unknown last: it may free nothing), then the longest idle.
    return (tier, -(candidate.own_bytes or -1), candidate.last_active, candidate.name)


def _reason(candidate: Candidate, tier: Tier) -> str:
    size = "unknown size" if candidate.own_bytes is None else f"{candidate.own_bytes} own bytes"
    if tier is Tier.TRASH:
        assert candidate.trash is not None
        return (
            f"disk pressure: purged from the trash early (deleted "
            f"{rfc3339(candidate.trash.deleted_at)}, {size})"
        )
    if tier is Tier.EXPIRED:
        assert candidate.expires_at is not None
        return (
            f"disk pressure: expired at {rfc3339(candidate.expires_at)}; deleted and purged, "
            f"not kept for undelete ({size})"
        )
    return (
        f"disk pressure: idle since {rfc3339(candidate.last_active)} and among the largest "
        f"({size}); deleted and purged, not kept for undelete"
    )


def plan_eviction(
    candidates: Iterable[Candidate], need_bytes: int, now: datetime
) -> list[Eviction]:
    """What to free, in order, until the known own bytes reach ``need_bytes``.

    Candidates whose size is unknown are planned too (they may free something) but count as
    nothing towards the need, so the plan goes on past them; the executor stops once the
    space it measures is enough.
    """
    eligible = [
        (candidate, tier) for candidate in candidates if (tier := _tier(candidate, now)) is not None
    ]
    eligible.sort(key=lambda pair: _order(*pair))
    plan: list[Eviction] = []
    planned = 0
    for candidate, tier in eligible:
        if planned >= need_bytes:
            break
        plan.append(Eviction(candidate, tier, _reason(candidate, tier)))
        planned += candidate.own_bytes or 0
    return plan


class Reclaimer:
    """Frees space by the plan, before anything is refused for lack of it (a ``SpaceReclaimer``
    of the disk budget)."""

    def __init__(
        self,
        manager: BranchManager,
        *,
        enabled: bool = True,
        free_bytes: Callable[[], int] | None = None,
        own_bytes: Callable[[str], Awaitable[int | None]] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._manager = manager
        self._own_bytes = own_bytes or self._measured
        self.enabled = enabled
        """``--evict-on-pressure``: off, ``reclaim`` frees nothing."""
        self._free_bytes = free_bytes
        self._clock = clock

    async def reclaim(self, need_bytes: int) -> int:
        """Free at least ``need_bytes`` if the plan can; the bytes freed (per step, what the
        ``free_bytes`` gauge shows or what was last known of what went, whichever is more).

        A step that fails is logged and skipped: one stuck branch must not stop the rest
        from freeing what they can.
        """
        if not self.enabled or need_bytes <= 0:
            return 0
        plan = plan_eviction(await self._candidates(), need_bytes, self._clock())
        freed = 0
        gauge = self._free_bytes
        for step in plan:
            before = None if gauge is None else gauge()
            try:
                estimate = await self._evict(step)
            except PrismError as exc:
                log.warning("evict: could not free %s: %s", step.candidate.name, exc.message)
                continue
            measured = 0 if gauge is None or before is None else gauge() - before
            # btrfs frees a deleted subvolume's space in the background: a gauge read at once
            # may not show it yet, and evicting more for that would take branches for nothing.
            freed += max(measured, estimate)
            if freed >= need_bytes:
                break
        log.info("evict: freed %d of the %d bytes needed", freed, need_bytes)
        return freed

    async def _evict(self, step: Eviction) -> int:
        candidate = step.candidate
        manager = self._manager
        manager.events.publish(
            "evicted",
            candidate.name,
            reason=step.reason,
            tier=step.tier.name.lower(),
            own_bytes=candidate.own_bytes,
        )
        if candidate.trash is not None:
            return await manager.trash.purge(candidate.trash, reason=step.reason)
        await manager.delete(candidate.name, purge=step.reason, if_idle=True)
        return candidate.own_bytes or 0

    async def _measured(self, name: str) -> int | None:
        """What ``name`` holds alone, as the disk-use cache knows it (``prism.storage.diskuse``)."""
        return (await self._manager.disk_use(name)).own

    async def _candidates(self) -> list[Candidate]:
        manager = self._manager
        found = [
            Candidate(entry.name, entry.own_bytes, entry.deleted_at, trash=entry)
            for entry in manager.trash.list()
        ]
        for branch in manager.list():
            policy = manager.policies.get(branch.name)
            if branch.name == MAIN_BRANCH or policy.protected or branch.connections:
                continue  # never evicted: spare measuring them
            found.append(
                Candidate(
                    branch.name,
                    await self._own_bytes(branch.name),
                    branch.last_active,
                    protected=policy.protected,
                    sessions=branch.connections,
                    has_children=bool(manager.children(branch.name)),
                    expires_at=policy.expires_at,
                )
            )
        return found


__all__ = ["Candidate", "Eviction", "Reclaimer", "Tier", "plan_eviction"]
