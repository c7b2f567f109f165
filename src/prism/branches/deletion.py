"""Delete, undelete and purge: a deleted branch waits in the trash for ``--undelete-window``.

``delete`` takes a branch away from its clients at once (sessions ended, server stopped, gone
from the registry), but keeps it whole: its data renamed aside (``Storage.trash``: O(1) on every
driver, no free space needed) and its record, parent link and policy moved into the trash
table (``prism.branches.trash``). ``undelete`` puts it back as it was, stopped; the reaper purges it
once its window has passed, and the reclaimer (``prism.branches.eviction``) sooner under disk
pressure.

Names: a new branch may take a deleted branch's name (create-on-connect of ``dev`` must not be
refused because yesterday's ``dev`` is in the trash); an undelete of that name is then refused
with ``BranchExists`` until the new branch is gone.

Crash safety: a delete records a ``DeleteIntent`` and the trash row, then renames the data (the
commit point); an undelete records an ``UndeleteIntent``, the branch's record and policy, then
renames it back (the commit point). Start-up recovery finishes whichever side of the rename a
crash left and its sweep matches trash rows to kept data. A purge moves the kept data into the
storage's trash (the instant it is gone) before it frees it and drops the row.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import secrets
from collections.abc import Callable
from datetime import datetime

import trio

from prism.branches.capacity import Caps, check_branch_cap
from prism.branches.parts import BranchParts
from prism.branches.policy import grace_over, is_expired, refuse_if_protected
from prism.branches.status import Branch, BranchStatus
from prism.branches.trash import TrashEntry, TrashStore, due_for_purge, latest, restored_with
from prism.core.crashpoints import crash_point
from prism.core.errors import (
    BranchConflict,
    BranchExists,
    BranchHasChildren,
    BranchNotFound,
    BranchProtected,
    StorageError,
)
from prism.core.names import MAIN_BRANCH
from prism.durable.intents import DeleteIntent, Intent, UndeleteIntent
from prism.durable.recovery import Recoverer
from prism.durable.state import rfc3339
from prism.storage.diskuse import DiskUseCache

log = logging.getLogger(__name__)

#: The default ``--undelete-window``: an hour to notice a mistaken delete.
UNDELETE_WINDOW = 3600.0


class BranchTrash:
    """Deletes branches into the trash, brings them back, purges them; recovers all three."""

    def __init__(
        self,
        parts: BranchParts,
        *,
        disk: DiskUseCache,
        caps: Caps,
        window: float,
        now: Callable[[], datetime],
    ) -> None:
        self._parts = parts
        self._disk = disk
        self._caps = caps
        self.store = TrashStore(parts.state)
        self.window = window
        """Seconds a deleted branch can be undeleted (``--undelete-window``; 0: none)."""
        self._now = now

    def list(self) -> builtins.list[TrashEntry]:
        """The deleted branches still kept, oldest deletion first."""
        return self.store.list()

    # ---- delete ---------------------------------------------------------------------------

    async def delete(
        self,
        name: str,
        *,
        with_children: bool = False,
        purge: str | None = None,
        if_idle: bool = False,
    ) -> builtins.list[str]:
        """Move a branch (and, if asked, its descendants) into the trash; the names, descendants
        first. ``purge``: free them at once, for that reason (eviction), skipping the window.
        ``if_idle``: refuse (``BranchConflict``), under the branch's lock, if a session is open
        or being admitted, instead of ending it (eviction never takes a branch in use)."""
        if name == MAIN_BRANCH:
            raise BranchProtected("the main branch cannot be deleted")
        self._parts.registry.require(name)
        children = self._parts.registry.children(name)
        doomed = [name, *self._parts.registry.descendants(name)] if with_children else [name]
        for each in doomed:
            refuse_if_protected(each, self._parts.policies.get(each), "deleted")
        if children and not with_children:
            raise BranchHasChildren(
                f'branch "{name}" has child branches: {", ".join(children)}',
                hint="delete them first, or ask to delete the children too",
            )
        batch = secrets.token_hex(4)
        return await self._delete_tree(name, batch=batch, purge=purge, if_idle=if_idle)

    async def _delete_tree(
        self, name: str, *, batch: str, purge: str | None, if_idle: bool
    ) -> builtins.list[str]:
        deleted: builtins.list[str] = []
        for child in self._parts.registry.children(name):
            deleted += await self._delete_tree(child, batch=batch, purge=purge, if_idle=if_idle)
        async with self._parts.locks[name]:
            branch = self._parts.registry.require(name)
            if if_idle and (branch.connections or self._parts.sessions.any_open(name)):
                raise BranchConflict(f'branch "{name}" has an open session: it was left alone')
            await self._parts.sessions.terminate(name, f'branch "{name}" was deleted')
            await self._parts.servers.stop(branch, reason="delete")
            crash_point("delete:stopped")
            self._parts.registry.transition(branch, BranchStatus.DELETING, "deleting")
            entry = await self._trash(branch, batch)
            self._parts.registry.remove(name)
            self._parts.data.discarded(name)
            await self._parts.data.forget_record(name)
            if entry is None:
                self._parts.events.publish("deleted", name, undelete_until=None)
            else:
                await self._parts.journal.done(DeleteIntent(name, entry.token))
                until = entry.purge_at(self.window)
                self._parts.events.publish("deleted", name, undelete_until=rfc3339(until))
        if entry is not None and (purge is not None or self.window <= 0):
            await self.purge(entry, reason=purge or "no undelete window (--undelete-window 0)")
        return [*deleted, name]

    async def _trash(self, branch: Branch, batch: str) -> TrashEntry | None:
        """Keep ``branch``'s data and record in the trash; None if it was freed instead.

        The state file may not take a write on a full disk, and deleting must work there: the
        data is then taken away for good, as a rename into the storage's trash needs no space.
        """
        name = branch.name
        known = self._disk.known([name]).get(name)
        entry = TrashEntry(
            token=secrets.token_hex(6),
            name=name,
            parent=branch.parent,
            created_at=branch.created_at,
            deleted_at=self._now(),
            batch=batch,
            policy=self._parts.policies.get(name),
            own_bytes=None if known is None else known.own,
        )
        intent = DeleteIntent(name, entry.token)
        try:
            await self._parts.journal.record(intent)
            await self.store.add(entry)
        except StorageError as exc:
            log.warning("delete: branch %s cannot wait in the trash, freed now: %s", name, exc)
            retired = await self._parts.storage.retire(name)
            if retired is not None:
                await self._parts.data.remove_retired(retired)
            try:
                await self._parts.journal.done(intent)
            except StorageError as still:
                # Harmless if left: at the next start its branch is gone, so it is finished.
                log.warning("delete: the intent of %s stays until restart: %s", name, still)
            return None
        crash_point("delete:recorded")
        try:
            await self._parts.storage.trash(name, entry.token)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.store.remove(entry.token)
                await self._parts.journal.done(intent)
            self._parts.registry.transition(branch, BranchStatus.STOPPED)
            raise
        crash_point("delete:trashed")
        return entry

    async def expire_if_due(self, name: str, *, grace: float) -> bool:
        """Delete ``name`` if its time is up (into the trash, like any delete): at once with no
        session open, else only after ``grace`` seconds, ending the sessions with 57P01. An
        ``expired`` event comes first."""
        branch = self._parts.registry.get(name)
        now = self._now()
        if (
            branch is None
            or name == MAIN_BRANCH  # cannot be deleted at all: an expiry on it means nothing
            or not is_expired(self._parts.policies.get(name), now)
            or self._parts.registry.children(name)
        ):
            return False
        if self._parts.sessions.any_open(name) and not grace_over(
            self._parts.policies.get(name), now, grace
        ):
            return False
        self._parts.events.publish("expired", name)
        await self._parts.sessions.terminate(
            name, f'branch "{name}" expired and was deleted', hint="create it again if needed"
        )
        await self.delete(name)
        return True

    # ---- undelete -------------------------------------------------------------------------

    async def undelete(self, name: str) -> builtins.list[str]:
        """Bring back the last deleted branch called ``name`` whole (data, parent link, policy;
        stopped), with what the same delete took below it; the names, parents first.

        Refused with ``BranchNotFound`` when nothing of that name is kept (never deleted, its
        window passed, or purged), when its parent is gone; ``BranchExists`` when a branch of
        that name (or of one brought back with it) exists now.
        """
        entries = self.store.list()
        top = latest(entries, name)
        if top is None:
            raise BranchNotFound(
                f'no deleted branch "{name}" is kept in the trash',
                hint=f"deleted branches are kept for --undelete-window ({self.window:g} s); "
                "list them with: prism branch trash",
            )
        if top.purge_at(self.window) <= self._now():
            raise BranchNotFound(
                f'the undelete window of branch "{name}" passed at '
                f"{rfc3339(top.purge_at(self.window))}",
                hint="it is being purged; a longer --undelete-window keeps branches longer",
            )
        group = restored_with(entries, top)
        for entry in group:
            if entry.name in self._parts.registry:
                raise BranchExists(
                    f'cannot undelete branch "{entry.name}": a branch of that name exists now',
                    hint=f"delete the new one first (prism branch rm {entry.name}), then undelete",
                )
        if top.parent is not None and top.parent not in self._parts.registry:
            raise BranchNotFound(
                f'cannot undelete branch "{name}": its parent "{top.parent}" no longer exists',
                hint=f"undelete {top.parent} first if it is in the trash",
            )
        for entry in group:
            await self._put_back(entry)
        return [entry.name for entry in group]

    async def _put_back(self, entry: TrashEntry) -> None:
        name = entry.name
        async with self._parts.locks[name]:
            if name in self._parts.registry:
                raise BranchExists(f'cannot undelete branch "{name}": a branch of that name exists')
            # A branch back counts like a new one: checked, then reserved in the registry with
            # no await between (clients of the name wait on its lock until it is back).
            check_branch_cap(name, count=len(self._parts.registry), caps=self._caps)
            branch = Branch(name, entry.parent, entry.created_at, BranchStatus.STOPPED)
            self._parts.registry.add(branch)
            policy = entry.policy
            if is_expired(policy, self._now()):
                # An expired branch back would be deleted again within seconds.
                policy = dataclasses.replace(policy, expires_at=None)
            intent = UndeleteIntent(name, entry.token)
            try:
                await self._parts.journal.record(intent)
                await self._parts.state.put(branch.record())
                await self._parts.policies.put(name, policy)
                crash_point("undelete:recorded")
                back = await self._parts.storage.untrash(name, entry.token)
                if not back:
                    await self.store.remove(entry.token)
                    raise StorageError(
                        f'the kept data of deleted branch "{name}" is gone: it cannot be undeleted',
                        hint="it was purged meanwhile; its trash entry is dropped",
                    )
            except BaseException:
                self._parts.registry.remove(name)
                with trio.CancelScope(shield=True):
                    await self._forget(name)
                    await self._parts.journal.done(intent)
                raise
            crash_point("undelete:restored")
            await self.store.remove(entry.token)
            await self._parts.journal.done(intent)
        expiry_cleared = policy.expires_at != entry.policy.expires_at
        self._parts.events.publish(
            "undeleted", name, parent=entry.parent, expiry_cleared=expiry_cleared
        )
        log.info("undelete: branch %s is back (deleted %s)", name, rfc3339(entry.deleted_at))

    # ---- purge ----------------------------------------------------------------------------

    async def purge(self, entry: TrashEntry, *, reason: str) -> int:
        """Free a deleted branch's kept data for good; the bytes it held, as last known (0 if
        an undelete or another purge took it first).

        Under the name's lock, so an undelete of the same entry is either before (nothing
        left to purge) or after (nothing left to undelete), never halfway.
        """
        async with self._parts.locks[entry.name]:
            if self.store.get(entry.token) is None:
                return 0
            await self._parts.storage.purge(entry.name, entry.token)
            try:
                await self.store.remove(entry.token)
            except StorageError as exc:
                # The data is gone: start-up's sweep drops a row whose data is missing.
                log.warning("purge: the trash row of %s stays until restart: %s", entry.name, exc)
        self._parts.events.publish("purged", entry.name, reason=reason, own_bytes=entry.own_bytes)
        log.info("purge: branch %s freed for good: %s", entry.name, reason)
        return entry.own_bytes or 0

    async def purge_due(self) -> builtins.list[str]:
        """Purge every entry whose undelete window has passed; their names."""
        due = due_for_purge(self.store.list(), now=self._now(), window=self.window)
        for entry in due:
            await self.purge(entry, reason="its undelete window passed")
        return [entry.name for entry in due]

    # ---- start-up recovery ----------------------------------------------------------------

    def recoverers(self) -> dict[type[Intent], Recoverer]:
        """The recoverers of deletes and undeletes a crash cut short: one rule for both."""
        return {DeleteIntent: self._recover_move, UndeleteIntent: self._recover_move}

    async def _recover_move(self, intent: DeleteIntent | UndeleteIntent) -> None:
        """The side of the rename the data is on decides, whichever way it was going: in the
        branch's place, it is a branch (its trash row is dropped); else it is deleted (the
        record and policy written for it are dropped; its row and kept data stay)."""
        if self._parts.storage.exists(intent.name):
            log.warning("reconcile: interrupted %s of %s: a branch", intent.KIND, intent.name)
            await self.store.remove(intent.token)
        else:
            log.warning("reconcile: interrupted %s of %s: deleted", intent.KIND, intent.name)
            await self._forget(intent.name)

    async def _forget(self, name: str) -> None:
        """Drop the record and policy of a branch that is (again) only in the trash."""
        await self._parts.state.delete(name)
        await self._parts.policies.forget(name)

    async def sweep(self) -> None:
        """Make the trash rows and the kept data agree: a row without data (purged, its row
        not yet dropped) is dropped, kept data without a row (a delete undone) is purged."""
        kept = set(await self._parts.storage.trashed())
        for entry in self.store.list():
            if (entry.name, entry.token) not in kept:
                log.warning("reconcile: dropping trash entry of %s: its data is gone", entry.name)
                await self.store.remove(entry.token)
        for name, token in sorted(kept - {(e.name, e.token) for e in self.store.list()}):
            log.warning("reconcile: purging kept data of %s that no trash entry owns", name)
            await self._parts.storage.purge(name, token)


__all__ = ["UNDELETE_WINDOW", "BranchTrash"]
