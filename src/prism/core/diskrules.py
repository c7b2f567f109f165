"""The disk budget's pure rules: sizes, the reserve, retention by time and size, the fit decision.

Sans-IO (no file system, clock or task): ``prism.storage.budget`` measures the file systems and
acts, ``prism.storage.ballast`` watches them; what they decide with is here, unit-tested on numbers.

Why a budget at all: every create or reset of a running parent on the copy and reflink drivers
archives a 16 MiB WAL segment, and a full copy costs the parent's whole size. Without a check
before the work starts, a full disk was only found half-way through (a failed create that had
already archived its segment), and main's server PANICked when its next WAL segment found no
room. So each operation that grows the disk states its need first, and it goes ahead only if
the disk keeps ``--disk-reserve`` free afterwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from prism.core.errors import ConfigError
from prism.core.units import format_duration, format_size, parse_duration, parse_size

#: One WAL segment (Postgres's default ``wal_segment_size``): what a backup start or a
#: snapshot of a running branch adds to the archive.
WAL_SEGMENT = 16 * 2**20
#: What a copy-on-write clone (btrfs, ZFS, reflink) needs of its own before it is written to:
#: metadata, and the WAL its server writes as it starts (an end-of-recovery checkpoint).
COW_CLONE_BYTES = WAL_SEGMENT

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$", re.ASCII)


@dataclass(frozen=True)
class DiskReserve:
    """``--disk-reserve``: the free space Prism keeps on each file system it writes.

    A percentage of the file system, a size, or both (``10%,2GiB``: the smaller of the two,
    which is the default: a tenth of a small disk, never more than 2 GiB of a large one).
    """

    percent: float | None = 10.0
    size: int | None = 2 * 2**30

    @classmethod
    def parse(cls, text: str) -> DiskReserve:
        percent: float | None = None
        size: int | None = None
        parts = [part for part in text.split(",") if part.strip()]
        for part in parts:
            found = _PERCENT.match(part)
            if found is not None and percent is None and float(found.group(1)) < 100:
                percent = float(found.group(1))
            elif found is None and size is None:
                size = parse_size(part)
            else:
                parts = []
        if not parts:
            raise ConfigError(
                f"invalid disk reserve {text!r}",
                hint="write a percentage, a size or both, e.g. 10%, 2GiB or 10%,2GiB (the "
                "smaller of the two)",
            )
        return cls(percent, size)

    def of(self, total: int) -> int:
        """The bytes kept free on a file system of ``total`` bytes."""
        choices = []
        if self.percent is not None:
            choices.append(int(total * self.percent / 100))
        if self.size is not None:
            choices.append(self.size)
        return min(choices)

    def __str__(self) -> str:
        parts = []
        if self.percent is not None:
            parts.append(f"{self.percent:g}%")
        if self.size is not None:
            parts.append(_compact(self.size))
        return ",".join(parts)


@dataclass(frozen=True)
class Retention:
    """``--retention``: how long, and up to how many bytes, snapshots and archived WAL are
    kept (``7d,5GiB``); whichever bound is reached first prunes, oldest first."""

    seconds: float = 7 * 86400.0
    max_bytes: int | None = 5 * 2**30

    @classmethod
    def parse(cls, text: str) -> Retention:
        seconds: float | None = None
        max_bytes: int | None = None
        for part in (p for p in text.split(",") if p.strip()):
            try:
                if seconds is None:
                    seconds = parse_duration(part)
                    continue
            except ConfigError:
                pass
            if max_bytes is not None:
                raise ConfigError(
                    f"invalid retention {text!r}",
                    hint="write a time, a size or both, e.g. 7d, 5GiB or 7d,5GiB",
                )
            max_bytes = parse_size(part)
        if seconds is None and max_bytes is None:
            raise ConfigError(f"invalid retention {text!r}", hint="write e.g. 7d,5GiB")
        return cls(seconds if seconds is not None else cls.seconds, max_bytes)

    def __str__(self) -> str:
        size = "" if self.max_bytes is None else "," + _compact(self.max_bytes)
        return format_duration(self.seconds) + size


def _compact(size: int) -> str:
    """``size`` as a setting writes it (``2GiB``, ``1.5GiB``): what ``parse_size`` reads back."""
    return format_size(size).replace(" ", "").replace(".0", "")


@dataclass(frozen=True)
class Space:
    """One file system as Prism sees it: its size, what is free, and Prism's ballast on it."""

    total: int
    free: int
    """Bytes an unprivileged writer may still use (``f_bavail``)."""
    ballast: int = 0
    """Bytes of Prism's ballast file here: free for Prism's purposes, it is given back first."""

    @property
    def available(self) -> int:
        """Free space counting the ballast as free: what the reserve is measured against."""
        return self.free + self.ballast


def shortfall(space: Space, need: int, reserve: int, held: int = 0) -> int:
    """Bytes missing for an operation that needs ``need`` while others hold ``held``, so that
    ``reserve`` stays free afterwards; 0 when it fits."""
    return max(0, need + held + reserve - space.available)


def clone_need(*, parent_bytes: int, copies_data: bool, wal_bytes: int = 0) -> int:
    """What a clone of a parent of ``parent_bytes`` writes where branches live.

    The copy driver copies every byte; in backup mode (``wal_bytes``: the running parent's
    ``pg_wal``) it then copies ``pg_wal`` again beside the first copy before swapping it in,
    so at its peak the clone holds two. Copy-on-write drivers share the bytes. (The segment a
    backup-mode clone's WAL switch archives is written where the archive lives: the caller
    adds it there.)
    """
    return parent_bytes + wal_bytes if copies_data else COW_CLONE_BYTES


class Level(StrEnum):
    """How full a file system is, for the watcher's events and actions."""

    OK = "ok"
    LOW = "low"
    """Under the reserve: every operation that grows the disk is refused."""
    CRITICAL = "critical"
    """Under the room main needs to stop cleanly: the ballast is released."""
    FULL = "full"
    """Under that room with no ballast left: main is stopped before it PANICs."""


#: What main needs to checkpoint and stop cleanly: a new WAL segment (zero-filled on
#: file systems that are not copy-on-write) and the checkpoint's own writes.
STOP_ROOM = 2 * WAL_SEGMENT


def level(space: Space, reserve: int) -> Level:
    """How full ``space`` is against ``reserve`` (and the room main needs to stop)."""
    # Never above what the ballast leaves of the reserve: a state the budget allows (the
    # reserve free, the ballast counted in it) is never critical.
    stop_room = min(STOP_ROOM, reserve - ballast_size(reserve))
    if space.free < stop_room:
        return Level.CRITICAL if space.ballast else Level.FULL
    if space.available < reserve:
        return Level.LOW
    return Level.OK


def ballast_size(reserve: int) -> int:
    """The ballast kept on main's file system: half the reserve, at most 256 MiB, so it never
    takes more than the reserve leaves free and stays quick to write back."""
    return min(reserve // 2, 256 * 2**20)


@dataclass(frozen=True)
class Kept:
    """One snapshot with what it holds alone and the archived WAL that only it leads to."""

    name: str
    bytes: int
    wal_bytes: int
    """Archived WAL from its redo point to the next kept snapshot's (or to now, the newest)."""


def over_size(kept: list[Kept], max_bytes: int | None) -> list[str]:
    """The snapshots to drop, oldest first, so snapshots and archive fit in ``max_bytes``.

    The newest snapshot always stays: without it no branch can be made as of a time at all,
    and the caller says so when even it does not fit. Dropping a snapshot drops the WAL before
    the next one's redo point too, so each step frees both.
    """
    if max_bytes is None:
        return []
    total = sum(k.bytes + k.wal_bytes for k in kept)
    dropped = []
    for snapshot in kept[:-1]:
        if total <= max_bytes:
            break
        dropped.append(snapshot.name)
        total -= snapshot.bytes + snapshot.wal_bytes
    return dropped


def snapshot_due_by_size(wal_since_newest: int, max_bytes: int | None) -> bool:
    """Whether the archive grew enough since the newest snapshot that a new one is due early:
    a quarter of the size bound, so pruning the older ones can keep the total within it."""
    return max_bytes is not None and wal_since_newest > max_bytes // 4
