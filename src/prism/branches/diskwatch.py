"""The disk watcher: how full each file system is, told as events and acted on for main.

A background task that looks (``statvfs``, microseconds) every ``interval`` and, on each file
system, publishes ``disk_low`` when its level (``prism.core.diskrules.level``) gets worse and
``disk_ok`` when it is back to normal. On main's file system it acts, in order:

1. **low** (under the reserve): the budget already refuses every create, reset, snapshot and
   base backup, so Prism's own growth has stopped; the snapshot timer is asked for a round, so
   the retention's size bound prunes now.
2. **critical** (under the room main needs to checkpoint and stop): the ballast
   (``prism.storage.ballast``) is given back, so main's next WAL segments have room.
3. **full** (that room gone too): main is stopped (a fast shutdown writes its checkpoint while
   it still can) instead of PANICking at its next WAL segment; starting it is refused
   (``DiskBudget.refuse_start``) until space is freed. The log and the event say what to do.

Once the disk has room for it again, the ballast is written back. Every ``usage_every``
seconds it also measures what uses the space (branches, snapshots, archive, trash) for the
API, the page and the budget's refusals.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from prism.branches.pitr import PointInTime
from prism.core.diskrules import Level
from prism.core.errors import describe
from prism.core.events import Event, EventBus
from prism.core.units import format_size
from prism.storage._layout import BRANCHES_DIR, TRASH_DIR
from prism.storage._tree import disk_usage
from prism.storage.ballast import Ballast
from prism.storage.base import Storage
from prism.storage.budget import DiskBudget, FileSystem, SpaceUse
from prism.storage.diskuse import DiskUseCache

log = logging.getLogger(__name__)

INTERVAL = 0.25
USAGE_EVERY = 30.0
#: Events after which what uses the space is measured again at once.
_CHANGES_USE = frozenset({"created", "deleted", "reset", "snapshot_taken", "failed"})


@dataclass(frozen=True)
class MainControl:
    """What the watcher may do to main and the growth sources (given by ``prism.server``)."""

    stop_main: Callable[[], Awaitable[None]]
    """Stop main's server cleanly (reason ``disk-full``)."""
    measure_use: Callable[[], Awaitable[SpaceUse]]
    """What uses the space now (walks: off the event loop)."""
    prune_now: Callable[[], None] = lambda: None
    """Ask the snapshot timer for a round now (its size bound prunes)."""


class DiskWatch:
    """Watches the budget's file systems; keeps the ballast on main's."""

    def __init__(
        self,
        budget: DiskBudget,
        events: EventBus,
        control: MainControl,
        ballast: Ballast | None,
    ) -> None:
        self.budget = budget
        self.events = events
        self.control = control
        self.ballast = ballast
        self.levels: dict[str, Level] = {}
        self._measured = False
        """What uses the space was measured since the last event that changes it."""
        events.add_listener(self._observe)
        self.main_stopped = False
        """Main was stopped for want of space, and the disk is still full."""

    async def run(self, *, interval: float = INTERVAL, usage_every: float = USAGE_EVERY) -> None:
        """Look every ``interval`` seconds, for ever; a failure is logged and retried."""
        next_usage = 0.0
        while True:
            try:
                if trio.current_time() >= next_usage or not self._measured:
                    self._measured = True
                    self.budget.use = await self.control.measure_use()
                    next_usage = trio.current_time() + usage_every
                await self.check()
            except FileNotFoundError as exc:
                # A directory went while it was measured (a delete, a refresh's swap): what
                # uses the space changed, so measure again at the next look.
                log.debug("disk watch: %s went while measured; measuring again", exc.filename)
                self._measured = False
            except Exception as exc:  # a background task: log and look again
                log.error("disk watch: %s", describe(exc))
            await trio.sleep(interval)

    def _observe(self, event: Event) -> None:
        """An event-bus listener: what uses the space changed, measure it again soon."""
        if event["type"] in _CHANGES_USE:
            self._measured = False

    async def check(self) -> None:
        """One look at every file system, and what it calls for."""
        main = self.budget.filesystem("main")
        if self.ballast is not None:
            self.budget.ballast[main.key] = self.ballast.present()
        for fs in self.budget.filesystems():
            now = self.budget.level(fs)
            if fs.key == main.key:
                now = await self._act_on_main(fs, now)
            before = self.levels.get(fs.key, Level.OK)
            self.levels[fs.key] = now
            if now is not before:
                self._tell(fs, before, now)

    async def _act_on_main(self, fs: FileSystem, now: Level) -> Level:
        if now is Level.CRITICAL and self.ballast is not None:
            freed = await trio.to_thread.run_sync(self.ballast.release)
            self.budget.ballast[fs.key] = 0
            log.error(
                "disk: %s is almost full: released the ballast (%s) so main can write WAL; "
                "creates, resets and snapshots are refused until space is freed",
                fs.path,
                format_size(freed),
            )
            now = self.budget.level(fs)
        if now is Level.FULL and not self.main_stopped:
            self.main_stopped = True
            log.error(
                "disk: %s is full: stopping main before it cannot write WAL (a PANIC); free "
                "space (delete branches or snapshots, prism archive prune), then start main",
                fs.path,
            )
            await self.control.stop_main()
        if now is not Level.FULL:
            # Starting main is refused only while full: once it may run again, filling the
            # disk once more must stop it once more (before, only a disk back above its
            # reserve re-armed this, and main started at "low" was left to PANIC).
            self.main_stopped = False
        if now is Level.LOW:
            self.control.prune_now()
        if now is Level.OK:
            await self._refill(fs)
        return now

    async def _refill(self, fs: FileSystem) -> None:
        """Write the ballast back once the disk has room for it above the reserve."""
        if self.ballast is None or self.budget.ballast.get(fs.key):
            return
        space = self.budget.space(fs)
        if space.free >= self.ballast.size + self.budget.reserve_of(fs, space):
            self.budget.ballast[fs.key] = await trio.to_thread.run_sync(self.ballast.fill)

    def _tell(self, fs: FileSystem, before: Level, now: Level) -> None:
        space = self.budget.space(fs)
        fields: dict[str, object] = {
            "path": str(fs.path),
            "level": now.value,
            "was": before.value,
            "free": space.free,
            "reserve": self.budget.reserve_of(fs, space),
            "holds": list(fs.roles),
        }
        if now is Level.OK:
            log.info(
                "disk: %s is back above its reserve (%s free)", fs.path, format_size(space.free)
            )
            self.events.publish("disk_ok", None, **fields)
            return
        if now is Level.FULL:
            fields["error"] = (
                "the file system is full: main was stopped before it could not write WAL; free "
                "space, then start main"
            )
        log.warning(
            "disk: %s is %s: %s free, %s kept in reserve",
            fs.path,
            now.value,
            format_size(space.free),
            format_size(self.budget.reserve_of(fs, space)),
        )
        self.events.publish("disk_low", None, **fields)


async def measure_use(
    branches: list[str],
    disk: DiskUseCache,
    storage: Storage,
    point_in_time: PointInTime | None,
) -> SpaceUse:
    """What uses the space: the branches' own bytes (``None`` when the storage cannot tell,
    as with reflink), the snapshots, the WAL archives and the trash."""
    own = [(await disk.get(name)).own for name in branches]
    snapshots, archive = 0, 0
    if point_in_time is not None:
        snapshots, archive = await trio.to_thread.run_sync(point_in_time.space_used)
    trash = storage.root / BRANCHES_DIR / TRASH_DIR
    trashed = await trio.to_thread.run_sync(lambda: disk_usage(trash) if trash.is_dir() else 0)
    return SpaceUse(
        branches=None if None in own else sum(o for o in own if o is not None),
        snapshots=snapshots if point_in_time is not None else None,
        wal_archive=archive,
        trash=trashed,
    )
