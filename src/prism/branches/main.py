"""Main, the root of every branch: how it is made (initdb, a base backup, a first dump),
refusing its clients and the creation of new branches until it is, and swapping its data for
a new generation (``--source-mode dump``).

Its own module because making main is a one-off at a new Prism's start that the rest of the
manager never needs; the manager hands it the drivers once and asks ``make`` and
``check_available``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from prism.branches.parts import BranchParts
from prism.branches.status import (
    MAKING,
    Branch,
    BranchStatus,
    elapsed_ms,
)
from prism.core.crashpoints import crash_point
from prism.core.errors import StartingUp
from prism.core.names import MAIN_BRANCH
from prism.durable.intents import InitdbIntent
from prism.durable.state import utcnow
from prism.mainsource.base import MainOrigin

log = logging.getLogger(__name__)


class MainBranch:
    """Makes main crash-safely (an ``InitdbIntent`` first) and says whether it is ready."""

    def __init__(self, parts: BranchParts, *, origin: MainOrigin) -> None:
        self._parts = parts
        self._origin = origin

    def check_available(self, name: str) -> None:
        """Refuse a client of ``name`` or its creation while main is still being made.

        A new branch would be cut from main, so only branches that exist already (none, on a
        new Prism) are left alone.
        """
        main = self._parts.registry.get(MAIN_BRANCH)
        if main is None or main.status not in MAKING:
            return
        if name != MAIN_BRANCH and name in self._parts.registry:
            return
        raise StartingUp(
            f"branch main is not ready yet: {self._origin.progress()}",
            hint="connect again when it is done; GET /api/v1/branches/main shows the progress",
        )

    async def make(self) -> None:
        """Make main the way its origin does (initdb, a base backup of a source, a first
        dump); an intent recorded first lets reconcile discard a crashed attempt."""
        origin = self._origin
        log.info(
            "creating branch main: %s into %s", origin.how, self._parts.storage.path(MAIN_BRANCH)
        )
        started = trio.current_time()
        # Listed while it is made (clients of it are refused by check_available), never saved:
        # the intent below is what a crash leaves.
        making = BranchStatus.BACKING_UP if origin.long else BranchStatus.PROVISIONING
        branch = Branch(MAIN_BRANCH, None, utcnow(), making)
        self._parts.registry.add(branch)
        intent = InitdbIntent(MAIN_BRANCH)
        await self._parts.journal.record(intent)
        crash_point("initdb:recorded")
        try:
            path = await self._parts.storage.create(MAIN_BRANCH)
            crash_point("initdb:created")
            await origin.make(path)
            crash_point("initdb:initialised")
        except BaseException:
            self._parts.registry.remove(MAIN_BRANCH)
            with trio.CancelScope(shield=True):
                await self._parts.data.destroy_quietly(MAIN_BRANCH)
                await self._parts.journal.done(intent)
            raise
        branch.created_at = utcnow()
        self._parts.registry.transition(branch, BranchStatus.STOPPED)
        await self._parts.state.put(branch.record())
        crash_point("initdb:registered")
        await self._parts.journal.done(intent)
        self._parts.events.publish("created", MAIN_BRANCH, duration_ms=elapsed_ms(started))

    async def replace(self, swap: Callable[[], Awaitable[None]], *, why: str) -> None:
        """Run ``swap``, which puts other data in main's directory, with main stopped and locked.

        No clone of main and no session of main spans the swap; sessions are ended with
        ``why``. Main comes back running if it was, on the new data or (``swap`` failed and put
        the old data back) the old.
        """
        async with self._parts.locks[MAIN_BRANCH]:
            branch = self._parts.registry.require(MAIN_BRANCH)
            was_running = self._parts.runtime.address(MAIN_BRANCH) is not None
            await self._parts.sessions.terminate(MAIN_BRANCH, why, hint="connect again")
            await self._parts.servers.stop(branch, reason="refresh")
            try:
                await swap()
                self._parts.data.discarded(MAIN_BRANCH)
            finally:
                if was_running:
                    await self._parts.servers.start(branch, reason="refresh")


__all__ = ["MainBranch"]
