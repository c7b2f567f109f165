"""Reset: throw away a branch's changes by re-cloning it from its parent's current state.

The old data goes to the storage's trash under a token recorded first (a ``ResetIntent``), so a
crash at any step leaves either a whole branch or a way back to one; the intent's phase says
whether a clone found under the name is whole (``prism.branches.recovery`` finishes or undoes it at
start-up). A failure puts the old data back. Its own module because the manager's other
operations do not need its steps.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time

import trio

from prism.branches.creation import CreationPolicy
from prism.branches.parts import BranchParts
from prism.branches.policy import refuse_if_protected
from prism.branches.status import Branch, BranchStatus, elapsed_ms
from prism.core.crashpoints import crash_point
from prism.core.errors import BranchNotFound, BranchProtected, PrismError
from prism.durable.intents import ResetIntent, ResetPhase

log = logging.getLogger(__name__)


class BranchReset:
    """Re-clones branches from their parents, under each branch's lock, crash-safely."""

    def __init__(self, parts: BranchParts, *, creation: CreationPolicy) -> None:
        self._parts = parts
        self._creation = creation

    async def reset(self, name: str) -> Branch:
        """Throw away ``name``'s changes: re-clone it from its parent's current state.

        Open sessions are ended first, with a message that says why. The branch comes back
        running if it was running. If the new clone (or the parent's ``on_create`` hook in it)
        fails, the branch's old data is put back and the error says so.
        """
        async with self._parts.locks[name]:
            branch = self._parts.registry.require(name)
            # No parent first: unprotecting main would not make it resettable, so saying
            # "unprotect it first" would send the user round in a circle.
            if branch.parent is None:
                raise BranchProtected(
                    f'branch "{name}" has no parent to reset from',
                    hint="reset a branch made from main, not main itself",
                )
            refuse_if_protected(name, self._parts.policies.get(name), "reset")
            parent = branch.parent
            if parent not in self._parts.registry:
                raise BranchNotFound(f'parent branch "{parent}" of "{name}" no longer exists')
            self._creation.refuse_unrunnable_hook(parent)
            # Before anything is stopped or moved: the old data is freed only at the end.
            release = await self._parts.hold_clone(parent, f'reset branch "{name}"')
            started = trio.current_time()
            was_running = self._parts.runtime.address(name) is not None
            # The old data goes to the trash under a name recorded first, so a crash at any
            # step leaves either a whole branch or a way back to one.
            intent = ResetIntent(name, parent, secrets.token_hex(4))
            token = intent.token
            await self._parts.journal.record(intent)
            crash_point("reset:recorded")
            try:
                await self._parts.sessions.terminate(
                    name,
                    f'branch "{name}" is being reset: its changes were thrown away',
                    hint="connect again to use the fresh copy of its parent",
                )
                await self._parts.servers.stop(branch, reason="reset")
            except BaseException:
                release()
                with trio.CancelScope(shield=True):
                    await self._parts.journal.done(intent)
                raise
            crash_point("reset:stopped")
            self._parts.registry.transition(
                branch, BranchStatus.RESETTING, "resetting", parent=parent
            )
            moved = False
            try:
                # Shielded: once the old data is going, a client hanging up must not leave
                # the branch half-made; only a failure can stop it now.
                with trio.CancelScope(shield=True):
                    retired = await self._parts.storage.retire(name, token)
                    moved = True
                    self._parts.data.discarded(name)
                    crash_point("reset:retired")
                    if self._parts.policies.get(parent).has_hook:
                        # From here a clone may stand without its hook run: reconcile must
                        # know to throw it away rather than keep it.
                        phase = ResetPhase.HOOKED_CLONE
                    else:
                        # A clone cut short by a crash must not pass for a finished one.
                        phase = ResetPhase.CLONING
                    await self._parts.journal.record(dataclasses.replace(intent, phase=phase))
                    await self._parts.data.clone_from(parent, name)
                    if phase is ResetPhase.CLONING:
                        # Finished: a crash from here on keeps the new clone.
                        await self._parts.journal.record(intent)
                    crash_point("reset:cloned")
                    await self._parts.data.run_hook_unseen(branch)
                    crash_point("reset:hooked")
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    await self._undo(branch, intent, moved=moved)
                self._parts.registry.failed(name, exc, started)
                raise
            finally:
                release()
            # Silent: the reset event below, once it may be running again, tells of it.
            self._parts.registry.transition(branch, BranchStatus.STOPPED)
            branch.bytes_proxied = 0
            branch.last_active_ts = time.time()
            branch.at = None  # it holds its parent's present now, not the time it was made at
            await self._parts.servers.save(branch)
            await self._parts.journal.done(intent)
            if retired is not None:
                await self._parts.data.remove_retired(retired)
            if was_running:
                await self._parts.servers.start(branch, reason="reset")
            self._parts.events.publish(
                "reset", name, parent=parent, duration_ms=elapsed_ms(started)
            )
            log.info(
                "reset: branch %s re-cloned from %s in %.1f ms", name, parent, elapsed_ms(started)
            )
            return branch

    async def _undo(self, branch: Branch, intent: ResetIntent, *, moved: bool) -> None:
        """A reset failed: put the old data back if it went to the trash, else drop the branch.

        ``moved`` says whether the old data left for the trash; if not, it is still in place.
        Only a driver that cannot keep a retired directory (ZFS destroys it at once) ends up
        without the old data; then the branch is removed, as its changes were already gone.
        """
        name = branch.name
        try:
            if moved:
                await self._parts.runtime.stop(name)
                await self._parts.data.destroy_quietly(name)
                restored = await self._parts.storage.restore(name, intent.token)
            else:
                restored = self._parts.storage.exists(name)
            if restored:
                # Silent: the caller's failed event says what happened.
                self._parts.registry.transition(branch, BranchStatus.STOPPED, address=None)
                await self._parts.servers.save(branch)
                log.warning("reset: branch %s failed to re-clone; its old data was put back", name)
            else:
                await self._parts.data.roll_back(name)
        except PrismError as exc:
            log.error("reset: could not undo the reset of branch %s: %s", name, exc.message)
        await self._parts.journal.done(intent)


__all__ = ["BranchReset"]
