"""The branch servers: started and stopped under ``--max-running``, watched for exits.

Starting makes room first (``prism.branches.capacity`` decides: admit, evict the least recently used
idle branch, or refuse) and marks the branch ``starting`` in the step after the last check,
with no ``await`` between, so that step is the reservation. Every status change goes through
the registry's one ``transition``, which publishes its event. Callers hold the branch's lock.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable

import trio

from prism.branches.capacity import Admit, Caps, Evict, evictable, room_for
from prism.branches.status import (
    SERVED,
    Branch,
    BranchLocks,
    BranchRegistry,
    BranchStatus,
    elapsed_ms,
)
from prism.core.address import BackendAddress
from prism.core.config import format_duration
from prism.core.crashpoints import crash_point
from prism.core.errors import StorageError, describe
from prism.core.followers import Followers
from prism.durable.state import StateStore
from prism.runtime.base import Runtime, ServerExtrasSource
from prism.storage.base import Storage

log = logging.getLogger(__name__)

# How often ``watch`` looks for branch servers that exited behind Prism's back.
WATCH_INTERVAL = 0.2


class Servers:
    """Starts, stops and watches the branches' servers; the only caller of the runtime's
    start and stop for a branch clients can reach."""

    def __init__(
        self,
        registry: BranchRegistry,
        locks: BranchLocks,
        *,
        runtime: Runtime,
        storage: Storage,
        state: StateStore,
        caps: Caps,
        followers: Followers,
        extras: ServerExtrasSource | None = None,
    ) -> None:
        self._registry = registry
        self._locks = locks
        self._runtime = runtime
        self._storage = storage
        self._state = state
        self._caps = caps
        self._followers = followers
        # What a server is started with beyond Prism's own settings (a WAL archive: pitr).
        self._extras = extras

    async def watch(self, *, interval: float = WATCH_INTERVAL) -> None:
        """Notice branch servers that exit behind Prism's back (killed, crashed) within
        ``interval``: mark them stopped and publish ``stopped`` with reason ``exited`` (from
        running, or from unwell: ``prism.branches.health``).

        Asking the runtime is cheap (the process runtime owns each server process and checks
        its status; nothing is sent to the server), so polling costs next to nothing.
        """
        while True:
            await trio.sleep(interval)
            for branch in self._registry.list():
                if branch.status not in SERVED:
                    continue
                if self._runtime.address(branch.name) is not None:
                    continue
                log.warning("branch %s: server exited; the next client restarts it", branch.name)
                self._registry.transition(
                    branch, BranchStatus.STOPPED, "stopped", address=None, reason="exited"
                )
                await self.save(branch)

    async def start(
        self,
        branch: Branch,
        *,
        reason: str,
        before_running: Callable[[Branch, BackendAddress], Awaitable[None]] | None = None,
    ) -> None:
        """Start ``branch``'s server once there is room; ``before_running`` (the parent's hook
        in a new child) runs in it before it is marked running, so no client gets in first."""
        started = trio.current_time()
        await self.make_room(branch.name)
        previous = branch.status
        self._registry.transition(branch, BranchStatus.STARTING, "starting", reason=reason)
        try:
            address = await self.start_server(branch)
            crash_point(f"{reason}:server-up")
            branch.address = address
            if before_running is not None:
                await before_running(branch, address)
        except BaseException as exc:
            if previous is BranchStatus.RUNNING or previous is BranchStatus.STOPPED:
                # Back to stopped: say so, or subscribers would show "starting" for good. (A
                # new branch is rolled back instead, and its "failed" event says why.)
                self._registry.transition(
                    branch,
                    BranchStatus.STOPPED,
                    "stopped",
                    reason=reason,
                    error=describe(exc),
                    duration_ms=elapsed_ms(started),
                )
            else:
                self._registry.transition(branch, previous)
            raise
        # Followers never raise; they run before clients are let in by the running status.
        for hook in self._followers.after_start:
            await hook(branch.name, address)
        branch.last_active_ts = time.time()
        self._registry.transition(
            branch, BranchStatus.RUNNING, "running", reason=reason, duration_ms=elapsed_ms(started)
        )
        await self._state.put(branch.record())

    async def start_server(self, branch: Branch) -> BackendAddress:
        """Start ``branch``'s server with the extras its ``extras`` source gives; no status
        change (``start`` makes one; a reset's unseen hook needs none)."""
        path = self._storage.path(branch.name)
        extras = None
        if self._extras is not None:
            extras = await trio.to_thread.run_sync(
                self._extras.server_extras, branch.name, path, branch.parent
            )
        return await self._runtime.start(branch.name, path, parent=branch.parent, extras=extras)

    async def stop(self, branch: Branch, *, reason: str) -> None:
        """Stop ``branch``'s server (if it has one), its followers told first."""
        if self._runtime.address(branch.name) is None and branch.status is BranchStatus.STOPPED:
            return
        started = trio.current_time()
        self._registry.transition(branch, BranchStatus.STOPPING, "stopping", reason=reason)
        address = self._runtime.address(branch.name)
        if address is not None:
            for hook in self._followers.before_stop:
                await hook(branch.name, address)
        await self._runtime.stop(branch.name)
        crash_point(f"{reason}:server-down")
        self._registry.transition(
            branch,
            BranchStatus.STOPPED,
            "stopped",
            address=None,
            reason=reason,
            duration_ms=elapsed_ms(started),
        )
        await self.save(branch)

    async def close(
        self, stop: Callable[[str], Awaitable[object]], *, kill_after: float = math.inf
    ) -> dict[str, str]:
        """Stop every running server with ``stop`` (the manager's, which ends sessions under
        the branch's lock) and save last-activity times (runs shielded).

        One server that will not stop must not keep the others running: each stop runs on its
        own, every failure is logged, and the failures come back as branch → reason. Prism's
        exit must not wait on a hung server either: whatever still runs after ``kill_after``
        seconds is killed (``Runtime.kill``) and named in the log.
        """
        failures: dict[str, str] = {}

        async def stop_one(name: str) -> None:
            try:
                await stop(name)
            except Exception as exc:  # reported below, with every other failure
                failures[name] = describe(exc)

        with trio.CancelScope(shield=True):
            with trio.move_on_after(kill_after) as deadline:
                async with trio.open_nursery() as nursery:
                    for branch in self._registry.list():
                        if self._runtime.address(branch.name) is not None:
                            nursery.start_soon(stop_one, branch.name)
            if deadline.cancelled_caught:
                async with trio.open_nursery() as nursery:
                    for branch in self._still_running():
                        if branch.name not in failures:  # a stop that failed in time was reported
                            nursery.start_soon(self._kill, branch, failures, kill_after)
            for branch in self._registry.list():
                await self.save(branch)
        for name, error in sorted(failures.items()):
            log.error("shutdown: could not stop the server of branch %s: %s", name, error)
        return failures

    def _still_running(self) -> list[Branch]:
        """Branches whose server runs, or whose stop was cut short after it began."""
        return [
            branch
            for branch in self._registry.list()
            if self._runtime.address(branch.name) is not None
            or branch.status is BranchStatus.STOPPING
        ]

    async def _kill(self, branch: Branch, failures: dict[str, str], waited: float) -> None:
        """Kill ``branch``'s server for a shutdown out of time; record a failure to do so."""
        log.warning(
            "shutdown: killing the server of branch %s: not stopped within %s",
            branch.name,
            format_duration(waited),
        )
        try:
            await self._runtime.kill(branch.name)
        except Exception as exc:  # reported with the other failures by close()
            failures[branch.name] = describe(exc)
            return
        self._registry.transition(
            branch, BranchStatus.STOPPED, "stopped", address=None, reason="killed"
        )

    # ---- admission (the rules are ``prism.branches.capacity``) -----------------------------------

    async def make_room(self, name: str) -> None:
        """Return once ``name`` may hold a server, stopping idle branches for room if needed.

        The last check before returning is not followed by an ``await``, so the caller's next
        synchronous step (marking the branch provisioning or starting) is the reservation.
        """
        while True:
            room = room_for(
                name,
                self._registry,
                caps=self._caps,
                has_server=lambda other: self._runtime.address(other) is not None,
                busy=self._locks.busy,
            )
            if isinstance(room, Admit):
                return
            if not isinstance(room, Evict):
                raise room.error
            await self._evict(room.victim, for_branch=name)

    async def _evict(self, victim: Branch, *, for_branch: str) -> None:
        """Stop ``victim`` for room if, under its lock, it may still be taken."""
        async with self._locks[victim.name]:
            if self._registry.get(victim.name) is not victim:
                return
            if not evictable(victim, for_branch=for_branch):
                return
            log.info(
                "admission: stopping idle branch %s to make room for %s", victim.name, for_branch
            )
            await self.stop(victim, reason="max-running")

    async def save(self, branch: Branch) -> None:
        """Write ``branch``'s record where a failed write must not fail the operation.

        Status and last activity are advisory across a restart (reconcile adopts or stops
        every server anyway), so a full disk here is logged rather than raised: it must never
        keep a server from stopping or a branch from being deleted.
        """
        try:
            await self._state.put(branch.record())
        except StorageError as exc:
            log.warning("branch %s: could not record its status: %s", branch.name, exc.message)
