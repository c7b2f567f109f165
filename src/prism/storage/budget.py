"""The disk budget: an operation that grows the disk goes ahead only if the reserve stays free.

Before a create, a reset, a snapshot or a base backup, the manager (or the snapshot timer, or
the source) asks ``DiskBudget.hold`` for the bytes the operation will write on each file
system (``prism.core.diskrules.clone_need`` estimates a clone's). The answer comes before anything
is written: a refusal is a ``DiskFull`` (SQLSTATE 53100 at the front door, HTTP 507 on the API)
that says what is free, what the reserve is and what uses the space, so a failed try costs
nothing — before, each one archived another WAL segment.

Check, then hold, with no ``await`` in between: a granted ``Hold`` counts its bytes against the
file system until the operation ends (``Hold.release``), so two creates racing for the last
gigabyte cannot both be let through. Before refusing, a ``SpaceReclaimer`` the caller passes
(the manager's: the trash, expired or idle branches) may free space; then the check is made
again.

The numbers come from ``statvfs`` (microseconds; the benchmark in ``tools/bench/budget.py``
measures the whole check) and, for a full copy, the parent's size, which walking a tree makes
slow: it is cached for ``SIZE_CACHE_SECONDS``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from prism.core.diskrules import (
    WAL_SEGMENT,
    DiskReserve,
    Level,
    Space,
    clone_need,
    level,
    shortfall,
)
from prism.core.errors import DiskFull
from prism.core.names import MAIN_BRANCH
from prism.core.units import format_size
from prism.core.values import StorageKind
from prism.storage._tree import disk_usage
from prism.storage.base import Storage

log = logging.getLogger(__name__)

#: How long a parent's measured size is trusted for a copy's estimate. The reserve absorbs
#: what the parent grows meanwhile.
SIZE_CACHE_SECONDS = 30.0


class SpaceReclaimer(Protocol):
    """Frees space on demand (trash, expired or idle branches) before the budget refuses."""

    async def reclaim(self, need_bytes: int) -> int:
        """Try to free ``need_bytes``; return the bytes actually freed (0: nothing to free)."""
        ...


@dataclass(frozen=True)
class SpaceUse:
    """What uses the space Prism writes, in bytes (``None``: the storage cannot tell)."""

    branches: int | None = None
    """What the branches hold of their own (main included)."""
    snapshots: int | None = None
    wal_archive: int = 0
    trash: int = 0

    def as_dict(self) -> dict[str, int | None]:
        return {
            "branches": self.branches,
            "snapshots": self.snapshots,
            "wal_archive": self.wal_archive,
            "trash": self.trash,
        }

    def describe(self) -> str:
        return ", ".join(
            f"{k.replace('_', ' ')} {format_size(v)}" for k, v in self.as_dict().items()
        )


@dataclass(frozen=True)
class FileSystem:
    """One file system Prism writes, found by the mount that holds a path."""

    key: str
    """Its identity: the mount's device (or ZFS pool), so subvolumes and datasets of one pool
    are one file system."""
    path: Path
    """A path on it, for ``statvfs``."""
    kind: str
    """The file system type (ext4, btrfs, zfs, ...)."""
    roles: tuple[str, ...]
    """What Prism keeps there: main, branches, data (state, archive, snapshots)."""


@dataclass
class Hold:
    """Bytes granted to one operation (per file system key) until it ends; releasing twice
    is harmless."""

    needs: dict[str, int]
    held: dict[str, int]
    """The budget's running totals, which this hold is part of until released."""
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            for key, size in self.needs.items():
                self.held[key] = max(0, self.held.get(key, 0) - size)


class DiskBudget:
    """Keeps ``reserve`` free on every file system Prism writes; grants or refuses bytes."""

    def __init__(
        self,
        *,
        storage: Storage,
        data_dir: Path,
        reserve: DiskReserve,
        archives: bool,
        statfs: Callable[[Path], tuple[int, int]] | None = None,
    ) -> None:
        self.storage = storage
        self.data_dir = data_dir
        self.reserve = reserve
        self.archives = archives
        """Whether a backup-mode clone archives a WAL segment (point in time is on)."""
        self._statfs = statfs or statvfs_space
        """Total and free bytes of the file system holding a path (a fake in the unit tests)."""
        self.ballast: dict[str, int] = {}
        """Bytes of Prism's ballast per file system key (``prism.storage.ballast`` keeps it)."""
        self.use = SpaceUse()
        """What uses the space, as last measured (the watcher refreshes it)."""
        self._held: dict[str, int] = {}
        self._sizes: dict[str, tuple[float, int, int]] = {}
        """Parents' measured sizes (whole, pg_wal), each with the monotonic time it was
        measured."""
        self._filesystems: dict[str, FileSystem] | None = None

    # ---- where -------------------------------------------------------------------------

    def filesystems(self) -> list[FileSystem]:
        """The file systems Prism writes, each once (found at first use: the storage makes
        its directories when it opens)."""
        if self._filesystems is None:
            main = self.storage.path(MAIN_BRANCH)
            roles = {
                "main": main,
                # A ZFS clone is a dataset of main's pool, wherever it is mounted.
                "branches": main if self.storage.name == StorageKind.ZFS else self.storage.root,
                "data": self.data_dir,
            }
            found: dict[str, FileSystem] = {}
            mounts = read_mounts()
            for role, path in roles.items():
                key, kind = mount_of(path, mounts)
                known = found.get(key)
                found[key] = FileSystem(
                    key,
                    known.path if known else existing(path),
                    kind,
                    (*known.roles, role) if known else (role,),
                )
            self._filesystems = found
        return list(self._filesystems.values())

    def filesystem(self, role: str) -> FileSystem:
        """The file system that holds ``role`` (main, branches, data)."""
        return next(fs for fs in self.filesystems() if role in fs.roles)

    def space(self, fs: FileSystem) -> Space:
        """``fs`` now: one ``statvfs``, cheap enough for the event loop."""
        total, free = self._statfs(fs.path)
        return Space(total, free, self.ballast.get(fs.key, 0))

    def free_bytes(self, role: str) -> int:
        """Free bytes now on the file system that holds ``role`` (main, branches, data)."""
        return self.space(self.filesystem(role)).free

    def reserve_of(self, fs: FileSystem, space: Space) -> int:
        return self.reserve.of(space.total)

    def level(self, fs: FileSystem) -> Level:
        space = self.space(fs)
        return level(space, self.reserve_of(fs, space))

    # ---- the check ---------------------------------------------------------------------

    async def hold_clone(
        self,
        parent: str,
        *,
        running: bool,
        what: str,
        reclaimer: SpaceReclaimer | None = None,
    ) -> Hold:
        """Grant what cloning ``parent`` (whose server runs, or not) costs, or ``DiskFull``."""
        copies = self.storage.name == StorageKind.COPY
        backup_mode = running and not self.storage.atomic
        size, wal = await self._parent_size(parent) if copies else (0, 0)
        needs = {
            "branches": clone_need(
                parent_bytes=size, copies_data=copies, wal_bytes=wal if backup_mode else 0
            )
        }
        if backup_mode:
            # The backup's WAL switch starts a new segment in the parent's pg_wal (zero-filled
            # on ext4 and XFS) and, when it keeps WAL, archives the one it ended.
            needs["main"] = WAL_SEGMENT
            if self.archives:
                needs["data"] = WAL_SEGMENT
        return await self.hold(needs, what=what, reclaimer=reclaimer)

    async def hold(
        self, needs: dict[str, int], *, what: str, reclaimer: SpaceReclaimer | None = None
    ) -> Hold:
        """Grant ``needs`` (bytes per role: main, branches, data), or raise ``DiskFull``.

        Checked and held with no ``await`` in between; if short, ``reclaimer`` (when given) is
        asked once for the missing bytes and the check is made again.
        """
        by_fs = self._by_filesystem(needs)
        missing = self._missing(by_fs)
        if missing and reclaimer is not None:
            freed = await reclaimer.reclaim(max(short for short, _ in missing.values()))
            log.info("disk budget: the reclaimer freed %s for %s", format_size(freed), what)
            missing = self._missing(by_fs)
        if missing:
            raise self._refusal(by_fs, missing, what)
        for key, size in by_fs.items():
            self._held[key] = self._held.get(key, 0) + size
        return Hold(by_fs, self._held)

    def refuse_start(self, branch: str) -> None:
        """Refuse to start ``branch``'s server on a file system too full for it to stop
        cleanly: it would PANIC at its next WAL segment."""
        fs = self.filesystem("main" if branch == MAIN_BRANCH else "branches")
        if self.level(fs) is Level.FULL:
            space = self.space(fs)
            raise DiskFull(
                f'cannot start branch "{branch}": its file system ({fs.path}, {fs.kind}) has '
                f"{format_size(space.free)} free, too little for a server to write WAL",
                detail=f"used by: {self.use.describe()}",
                hint=_FREE_HINT,
            )

    def view(self) -> dict[str, Any]:
        """Free, used and kept in reserve on each file system, and what uses the space
        (``/healthz``, ``prism status``, the page)."""
        shown = []
        for fs in self.filesystems():
            space = self.space(fs)
            reserve = self.reserve_of(fs, space)
            shown.append(
                {
                    "path": str(fs.path),
                    "kind": fs.kind,
                    "holds": list(fs.roles),
                    "total": space.total,
                    "free": space.free,
                    "used": space.total - space.free,
                    "reserve": reserve,
                    "ballast": space.ballast,
                    "level": level(space, reserve).value,
                }
            )
        shown_view: dict[str, Any] = {
            "reserve": str(self.reserve),
            "filesystems": shown,
            "use": self.use.as_dict(),
        }
        worst = [fs for fs in shown if fs["level"] != Level.OK]
        if worst:
            shown_view["advice"] = _advice(str(worst[0]["level"]), str(worst[0]["path"]))
        return shown_view

    # ---- internals ---------------------------------------------------------------------

    def _by_filesystem(self, needs: dict[str, int]) -> dict[str, int]:
        by_fs: dict[str, int] = {}
        for role, size in needs.items():
            key = self.filesystem(role).key
            by_fs[key] = by_fs.get(key, 0) + size
        return by_fs

    def _missing(self, by_fs: dict[str, int]) -> dict[str, tuple[int, Space]]:
        """Per file system short of room: the bytes missing and the space it was seen with."""
        missing = {}
        for key, need in by_fs.items():
            fs = self._fs(key)
            space = self.space(fs)
            short = shortfall(space, need, self.reserve_of(fs, space), self._held.get(key, 0))
            if short:
                missing[key] = (short, space)
        return missing

    def _refusal(
        self, by_fs: dict[str, int], missing: dict[str, tuple[int, Space]], what: str
    ) -> DiskFull:
        key = max(missing, key=lambda k: missing[k][0])
        fs, space = self._fs(key), missing[key][1]
        held = self._held.get(key, 0)
        others = f", {format_size(held)} is held by operations under way" if held else ""
        message = (
            f"not enough disk space to {what}: it needs about {format_size(by_fs[key])} on "
            f"{fs.path} ({fs.kind}), which has {format_size(space.available)} free{others}, and "
            f"{format_size(self.reserve_of(fs, space))} is kept free (--disk-reserve "
            f"{self.reserve})"
        )
        log.warning("disk budget: refused: %s", message)
        return DiskFull(message, detail=f"used by: {self.use.describe()}", hint=_FREE_HINT)

    def _fs(self, key: str) -> FileSystem:
        return next(fs for fs in self.filesystems() if fs.key == key)

    async def _parent_size(self, parent: str) -> tuple[int, int]:
        """``parent``'s bytes and its ``pg_wal``'s, measured at most every
        ``SIZE_CACHE_SECONDS`` (a walk of the tree, off the event loop)."""
        known = self._sizes.get(parent)
        if known is not None and time.monotonic() - known[0] < SIZE_CACHE_SECONDS:
            return known[1], known[2]
        path = self.storage.path(parent)
        size, wal = await trio.to_thread.run_sync(_tree_sizes, path)
        self._sizes[parent] = (time.monotonic(), size, wal)
        return size, wal


def _tree_sizes(pgdata: Path) -> tuple[int, int]:
    """Bytes of a data directory and of its ``pg_wal`` (0, 0 if it is not there)."""
    if not pgdata.is_dir():
        return 0, 0
    wal = pgdata / "pg_wal"
    return disk_usage(pgdata), disk_usage(wal) if wal.is_dir() else 0


_FREE_HINT = (
    "free space: delete branches or snapshots you no longer need, prune the WAL archive "
    "(prism archive prune --before TIME), lower --retention; or lower --disk-reserve"
)


def _advice(now: str, path: str) -> str:
    """What an operator should do about a file system at level ``now``."""
    if now == Level.FULL:
        return (
            f"{path} is full: main was stopped so it would not PANIC, and starting servers is "
            f"refused; {_FREE_HINT}, then start main (prism branch start main)"
        )
    return f"{path} is under its reserve: creates, resets and snapshots are refused; {_FREE_HINT}"


def statvfs_space(path: Path) -> tuple[int, int]:
    """Total bytes of the file system holding ``path`` and those an unprivileged writer may
    still use (``f_bavail``: root's reserved blocks are not Prism's to spend)."""
    stats = os.statvfs(path)
    return stats.f_blocks * stats.f_frsize, stats.f_bavail * stats.f_frsize


def existing(path: Path) -> Path:
    """``path``, or its nearest parent that exists (a directory not made yet)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def read_mounts() -> list[tuple[Path, str, str]]:
    """Mount point, type and source of every mount, from ``/proc/self/mountinfo``."""
    mounts = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as table:
            for line in table:
                left, _, right = line.partition(" - ")
                point = left.split()[4].replace("\\040", " ")
                kind, source = [*right.split(), "", ""][:2]
                mounts.append((Path(point), kind, source))
    except OSError as exc:
        log.debug("disk budget: no mount table (%s); each path is its own file system", exc)
    return mounts


def mount_of(path: Path, mounts: Iterable[tuple[Path, str, str]]) -> tuple[str, str]:
    """The identity and type of the file system holding ``path``: the source of the longest
    mount point above it (a ZFS dataset's pool, since datasets share its space)."""
    real = existing(path).resolve()
    best: tuple[Path, str, str] | None = None
    for point, kind, source in mounts:
        if real.is_relative_to(point) and (best is None or len(point.parts) > len(best[0].parts)):
            best = (point, kind, source)
    if best is None:
        return f"dev:{os.stat(real).st_dev}", "unknown"
    point, kind, source = best
    if kind in ("zfs", "fuse.zfs"):  # zfs-fuse mounts datasets as FUSE file systems
        return f"zfs:{source.split('/')[0]}", kind
    return f"{kind}:{source}:{point}", kind
