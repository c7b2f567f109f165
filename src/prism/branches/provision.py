"""Making a new branch: a clone of its parent (or of its parent as of a time), started, with
its parent's hook run in it before anyone gets in.

Its own module because it is the one long operation of the manager with the most steps, each
with its crash point: the manager checks the name and takes the branch's lock, then hands over
here (``BranchManager.create``, and a client's create-on-connect).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

import trio

from prism.branches.capacity import Caps, check_branch_cap
from prism.branches.creation import CreationPolicy
from prism.branches.health import refusal
from prism.branches.parts import BranchParts
from prism.branches.pitr import PointInTime
from prism.branches.snapshots import precise_time
from prism.branches.status import UNWELL, Branch, BranchStatus, elapsed_ms
from prism.core.address import BackendAddress
from prism.core.crashpoints import crash_point
from prism.core.errors import BranchNotFound, HookFailed, OutsideWindow, PrismError, ProvisionFailed
from prism.durable.intents import CreateIntent
from prism.durable.state import utcnow

log = logging.getLogger(__name__)


class Provisioner:
    """Creates branches for the manager, each all or nothing."""

    def __init__(
        self,
        parts: BranchParts,
        *,
        creation: CreationPolicy,
        caps: Caps,
        parent_address: Callable[[str], Awaitable[BackendAddress]],
    ) -> None:
        """``parent_address`` starts the parent if it is stopped (a branch as of a time reads
        its parent's WAL archive through its running server)."""
        self._parts = parts
        self._creation = creation
        self._caps = caps
        self._parent_address = parent_address

    async def provision(self, name: str, parent_name: str, *, at: datetime | None = None) -> Branch:
        """Clone ``parent_name`` (as of ``at``, if given) into a new branch ``name`` and start
        it; on any failure remove every trace of it (a ``CreateIntent`` first, so a crash is
        undone by reconcile too). The caller holds ``name``'s lock."""
        parent = self._parts.registry.get(parent_name)
        if parent is None:
            raise BranchNotFound(f'parent branch "{parent_name}" does not exist')
        if parent.status in UNWELL:
            # A clone of a server that serves nobody (and may not answer the backup calls a
            # clone makes) would only copy its trouble: say why now, before anything is made.
            raise refusal(parent)
        started = trio.current_time()
        # Refuse before stopping anyone for room, and again after: others may have been
        # created meanwhile.
        check_branch_cap(name, count=len(self._parts.registry), caps=self._caps)
        await self._parts.servers.make_room(name)
        # A copy of a running parent costs its size and archives a WAL segment: refused here,
        # before anything is written, if it would cut into the reserve.
        release = await self._parts.hold_clone(parent_name, f'create branch "{name}"', at=at)
        try:
            check_branch_cap(name, count=len(self._parts.registry), caps=self._caps)
        except BaseException:
            release()
            raise
        branch = Branch(name, parent_name, utcnow(), BranchStatus.PROVISIONING, at=at)
        self._parts.registry.add(branch)
        self._parts.registry.transition(
            branch, BranchStatus.PROVISIONING, "provisioning", parent=parent_name
        )
        intent = CreateIntent(name, parent_name)
        try:
            await self._parts.journal.record(intent)
            await self._parts.state.put(branch.record())
            crash_point("create:recorded")
            if at is None:
                await self._parts.data.clone_from(parent_name, name)
            else:
                await self._parts.data.clone_at(
                    name,
                    parent_name,
                    at,
                    parent_address=await self._parent_address(parent_name),
                )
            crash_point("create:cloned")
            clone_ms = elapsed_ms(started)
            await self._parts.servers.start(
                branch, reason="create", before_running=self._creation.run_parent_hook
            )
            await self._parts.journal.done(intent)
            crash_point("create:started")
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await self._parts.data.roll_back(name)
                await self._parts.journal.done(intent)
            self._parts.registry.failed(name, exc, started)
            if isinstance(exc, PrismError):
                raise ProvisionFailed(
                    f'could not create branch "{name}": {exc.message}',
                    hint=exc.hint,
                    detail="the partial branch was removed; nothing was kept",
                    # A connecting client sees the hook's own SQLSTATE (42P01, say).
                    sqlstate=exc.sqlstate if isinstance(exc, HookFailed) else None,
                ) from exc
            raise
        finally:
            release()
        self._parts.events.publish(
            "created", name, parent=parent_name, duration_ms=elapsed_ms(started), **_at(at)
        )
        log.info(
            "provision: branch %s from %s in %.1f ms (clone %.1f ms)",
            name,
            parent_name,
            elapsed_ms(started),
            clone_ms,
        )
        return branch


def _at(at: datetime | None) -> dict[str, str]:
    """An event's ``at`` of the data for a point-in-time branch: named ``data_at``, as every
    event's own ``at`` is when it happened."""
    return {} if at is None else {"data_at": precise_time(at)}


def check_at(point_in_time: PointInTime | None, parent: str, at: datetime) -> None:
    """Refuse a point-in-time create before anything is made, saying why."""
    if point_in_time is None:
        raise OutsideWindow(
            "branches as of a time are off: Prism keeps no snapshots or WAL",
            hint="start Prism with --snapshot-every",
        )
    point_in_time.check(at, utcnow(), parent)


__all__ = ["Provisioner", "check_at"]
