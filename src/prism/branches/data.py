"""A branch's data: cloned (consistently, or as of a time), removed, and its followers told.

The manager's operations decide when; this is how, on the storage (and, where a clone needs
its parent's server or a hook needs the child's, the runtime). Callers hold the branch's lock;
a clone also takes its parent's, so the parent holds still.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from prism.branches.clone import clone_consistent
from prism.branches.creation import CreationPolicy
from prism.branches.pitr import PointInTime
from prism.branches.policy import PolicyStore
from prism.branches.servers import Servers
from prism.branches.status import Branch, BranchLocks, BranchRegistry
from prism.core.address import BackendAddress
from prism.core.errors import PrismError, StorageError
from prism.core.followers import Followers
from prism.durable.state import StateStore
from prism.runtime.base import Runtime
from prism.storage.base import Storage

log = logging.getLogger(__name__)


class BranchData:
    """Clones, rollbacks and removals of branches' data directories and records."""

    def __init__(
        self,
        registry: BranchRegistry,
        locks: BranchLocks,
        *,
        storage: Storage,
        runtime: Runtime,
        servers: Servers,
        state: StateStore,
        policies: PolicyStore,
        creation: CreationPolicy,
        followers: Followers,
        point_in_time: PointInTime | None,
        superuser: str,
    ) -> None:
        self._registry = registry
        self._locks = locks
        self._storage = storage
        self._runtime = runtime
        self._servers = servers
        self._state = state
        self._policies = policies
        self._creation = creation
        self._followers = followers
        self._point_in_time = point_in_time
        self._superuser = superuser

    async def run_hook_unseen(self, branch: Branch) -> None:
        """Run the parent's hook in a re-cloned branch that no client can reach yet.

        A reset is a fresh clone of the parent, so a sanitized template must be masked again
        before anyone sees it. The branch is still ``resetting`` and its lock is held, so the
        server started here is Prism's alone; it is stopped again afterwards.
        """
        if branch.parent is None or not self._creation.has_hook(branch.parent):
            return
        address = await self._servers.start_server(branch)
        try:
            await self._creation.run_parent_hook(branch, address)
        finally:
            await self._runtime.stop(branch.name)

    async def clone_at(
        self, child: str, parent: str, at: datetime, *, parent_address: BackendAddress
    ) -> None:
        """Make ``child`` hold ``parent``'s data as of ``at`` (``prism.branches.pitr``), from the
        parent's running server at ``parent_address``."""
        assert self._point_in_time is not None  # checked by create
        await self._point_in_time.clone(
            child,
            at,
            parent=parent,
            address=parent_address,
            superuser=self._superuser,
            clone_current=lambda: self.clone_from(parent, child),
        )

    async def clone_from(self, parent: str, child: str) -> None:
        """Clone ``parent`` into ``child`` holding the parent's lock, so it holds still."""
        async with self._locks[parent]:
            await clone_consistent(
                self._storage,
                parent,
                child,
                parent_address=self._runtime.address(parent),
                superuser=self._superuser,
            )
            for hook in self._followers.after_clone:
                await hook(parent, child)

    async def roll_back(self, name: str) -> None:
        try:
            await self._runtime.stop(name)
        except PrismError as exc:
            log.error("rollback: could not stop branch %s: %s", name, exc.message)
        await self.destroy_quietly(name)
        await self._state.delete(name)
        await self._policies.forget(name)
        self._registry.remove(name)
        self.discarded(name)

    async def destroy_quietly(self, name: str) -> None:
        try:
            await self._storage.destroy(name)
        except StorageError as exc:
            log.error("rollback: could not remove data of branch %s: %s", name, exc.message)

    def discarded(self, name: str) -> None:
        for hook in self._followers.after_discard:
            hook(name)

    async def remove_retired(self, path: Path) -> None:
        """Free a retired directory now; on failure reconcile's sweep removes it later."""
        try:
            await self._storage.remove_path(path)
        except StorageError as exc:
            log.error("could not remove %s (removed at next start): %s", path, exc.message)

    async def forget_record(self, name: str) -> None:
        """Drop a deleted branch's record; if the disk is still full (btrfs frees a deleted
        subvolume's space in the background), reconcile forgets it at the next start, since
        its directory is gone, and a new branch of the same name simply replaces it."""
        try:
            await self._state.delete(name)
            await self._policies.forget(name)
        except StorageError as exc:
            log.warning("branch %s: deleted, but its record stays until restart: %s", name, exc)
