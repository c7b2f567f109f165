"""The branch manager's part of start-up recovery: its recoverers, then its sweep.

The journal holds an intent for each create, reset and initdb of main a crash may have cut
short; each recoverer here finishes or undoes one (``prism.durable.recovery`` runs them, in its
declared order, before the sweep). The sweep then makes records, directories and servers agree: it
fills the registry the manager serves from, adopts servers still running, stops those of no
branch, and empties the trash and staging areas.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import trio

from prism.branches.clone import remove_parent_lock_file
from prism.branches.policy import PolicyStore
from prism.branches.status import Branch, BranchRegistry, BranchStatus
from prism.core.errors import PrismError
from prism.core.names import MAIN_BRANCH, is_generation_name, is_snapshot_name
from prism.durable.intents import CreateIntent, InitdbIntent, Intent, ResetIntent, ResetPhase
from prism.durable.recovery import Owner, Recoverer
from prism.durable.state import StateStore, utcnow
from prism.postgres.serverconf import detach_clone
from prism.runtime.base import Runtime
from prism.storage.base import Storage

log = logging.getLogger(__name__)

# Files every data directory initdb finished has; a directory without them is half-made.
_PGDATA_MARKERS = ("PG_VERSION", "postgresql.conf", "global/pg_control")


class BranchRecovery:
    """Finishes or undoes the branch operations a crash interrupted; fills the registry."""

    def __init__(
        self,
        registry: BranchRegistry,
        *,
        storage: Storage,
        runtime: Runtime,
        state: StateStore,
        policies: PolicyStore,
    ) -> None:
        self._registry = registry
        self._storage = storage
        self._runtime = runtime
        self._state = state
        self._policies = policies

    def owner(
        self,
        more: Mapping[type[Intent], Recoverer] | None = None,
        *,
        then: Callable[[], Awaitable[None]] | None = None,
    ) -> Owner:
        """The manager's part of start-up recovery: undo interrupted creates, resets and
        initdbs (and the kinds in ``more``, which the manager's other parts recover), then
        make records, disk and servers agree (``sweep``), then run ``then`` (the trash's)."""

        async def sweep() -> None:
            await self.sweep()
            if then is not None:
                await then()

        return Owner(
            "branches",
            {
                CreateIntent: self._recover_create,
                ResetIntent: self._recover_reset,
                InitdbIntent: self._recover_initdb,
                **(more or {}),
            },
            sweep=sweep,
        )

    async def sweep(self) -> None:
        """Make records, disk and servers agree again after the journal's intents are done.

        In order: forget records whose directory is gone; register whole directories found
        without a record and retire half-made ones; adopt servers of branches; stop every
        other server running under the storage root; empty the trash and staging areas; drop
        the policies of branches that are gone.
        """
        records = {record.name: record for record in await self._state.all()}
        on_disk = {
            name
            for name in self._storage.list()
            if not (is_snapshot_name(name) or is_generation_name(name))
        }
        for name, record in records.items():
            if name not in on_disk:
                log.warning("reconcile: forgetting branch %s: its data directory is gone", name)
                await self._state.delete(name)
                continue
            branch = Branch(
                name=name,
                parent=record.parent,
                created_at=record.created_at,
                status=BranchStatus.STOPPED,
                last_active_ts=record.last_active.timestamp(),
                at=record.at,
            )
            self._registry.add(branch)
        for name in sorted(on_disk - records.keys()):
            parent = None if name == MAIN_BRANCH else MAIN_BRANCH
            if not await trio.to_thread.run_sync(_is_whole_pgdata, self._storage.path(name)):
                log.warning("reconcile: removing half-made directory of %s (no record)", name)
                await self._undo_on_disk(name)
                continue
            log.warning("reconcile: registering branch %s found on disk without a record", name)
            now = utcnow()
            found = Branch(name, parent, now, BranchStatus.STOPPED)
            self._registry.add(found)
            await self._state.put(found.record())
        for branch in self._registry.list():
            address = await self._runtime.adopt(branch.name, self._storage.path(branch.name))
            if address is not None:
                log.info("reconcile: adopted running server of branch %s", branch.name)
                self._registry.transition(branch, BranchStatus.RUNNING, address=address)
            await self._state.put(branch.record())
        for stray in await self._runtime.reap_strays(self._storage.root):
            log.warning("reconcile: stopped a server that belongs to no branch: %s", stray)
        for leftover in await self._storage.sweep():
            log.warning("reconcile: removed leftover %s", leftover)
        await self._policies.prune(self._registry.names())

    async def _recover_initdb(self, intent: InitdbIntent) -> None:
        """Main is not serving until its intent is gone, so nobody can have used it yet:
        throw the attempt away and let ``open_main`` make it again from scratch."""
        log.warning("reconcile: discarding the interrupted initdb of branch %s", intent.name)
        await self._undo_on_disk(intent.name)
        await self._state.delete(intent.name)

    async def _recover_create(self, intent: CreateIntent) -> None:
        """A create cut short: no client was told it exists, so it is rolled back."""
        log.warning("reconcile: rolling back branch %s, left half-made by a crash", intent.name)
        await self._undo_on_disk(intent.name)
        await self._state.delete(intent.name)

    async def _recover_reset(self, intent: ResetIntent) -> None:
        """Keep what a reset cut short left whole, or put the old data back."""
        name, token, phase = intent.name, intent.token, intent.phase
        await self._stop_leftover(name)
        if self._storage.exists(name) and phase is ResetPhase.HOOKED_CLONE:
            await self._undo_unhooked_reset(name, token)
        elif self._storage.exists(name) and phase is ResetPhase.CLONING:
            await self._recover_unfinished_clone(name, token)
        elif self._storage.exists(name):
            # The old data (crash before the retire) or the finished new clone.
            log.warning("reconcile: the interrupted reset of branch %s left it whole", name)
        elif token and await self._storage.restore(name, token):
            log.warning("reconcile: undid the interrupted reset of branch %s", name)
        else:
            log.error("reconcile: branch %s was lost by an interrupted reset", name)

    async def _undo_unhooked_reset(self, name: str, token: str) -> None:
        """Throw away an interrupted reset's clone that may lack its parent's hook.

        The hook (a sanitized template's masking, say) runs after the clone appears, so such a
        clone cannot be kept: the old data goes back if the storage kept it (ZFS does not, and
        the branch is then removed, as a failed reset on ZFS removes it).
        """
        await self._put_old_data_back(name, token)

    async def _recover_unfinished_clone(self, name: str, token: str) -> None:
        """Make whole a reset whose crash may have cut its new clone short.

        A snapshot (btrfs, ZFS) is whole the moment it appears but for the parent's lock file,
        so it is kept (ZFS keeps no old data to go back to anyway). A copy may lack the files
        that make it consistent, so it is thrown away and the old data put back.
        """
        if self._storage.atomic:
            path = self._storage.path(name)
            await trio.to_thread.run_sync(remove_parent_lock_file, path)
            await trio.to_thread.run_sync(detach_clone, path)
            log.warning("reconcile: finished the new clone of interrupted reset of %s", name)
            return
        await self._put_old_data_back(name, token)

    async def _put_old_data_back(self, name: str, token: str) -> None:
        """Replace what stands under ``name`` with the old data a reset put in the trash."""
        await self._storage.retire(name)
        if await self._storage.restore(name, token):
            log.warning("reconcile: undid the interrupted reset of branch %s", name)
        else:
            log.error("reconcile: removed branch %s: its reset was interrupted", name)
            await self._policies.forget(name)

    async def _stop_leftover(self, name: str) -> None:
        """Stop a server an earlier Prism left running on ``name``'s directory, if any."""
        try:
            if await self._runtime.adopt(name, self._storage.path(name)) is not None:
                await self._runtime.stop(name)
        except PrismError as exc:
            # The stray sweep at the end of reconcile kills it by force instead.
            log.warning("reconcile: could not stop the server of %s: %s", name, exc.message)

    async def _undo_on_disk(self, name: str) -> None:
        """Stop ``name``'s server and retire its directory (the sweep removes it later)."""
        await self._stop_leftover(name)
        await self._storage.retire(name)


def _is_whole_pgdata(path: Path) -> bool:
    """Whether ``path`` looks like a data directory initdb finished (blocking, cheap)."""
    return all((path / marker).exists() for marker in _PGDATA_MARKERS)
