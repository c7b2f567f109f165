"""Disk use per branch: what a branch holds alone and what it shares with its parent.

The answer depends on the storage, and each driver says what it truly knows rather than a
guess dressed as a number:

- **btrfs**: ``btrfs filesystem du -s --raw`` walks the branch's extents: *Exclusive* is the
  branch's own, *Set shared* is shared (with its parent or siblings). No quotas needed.
- **ZFS**: ``used`` of the branch's dataset is what it holds alone (a clone's ``used`` is the
  space only it references); ``referenced`` minus that is shared with its origin.
- **copy**: a full copy shares nothing, so own is the whole size and shared is 0.
- **reflink**: the file system counts reflinked extents in full and does not say which are
  shared, so only the apparent total is known; own and shared are ``None``.

Walking a tree or running a command per branch is slow with hundreds of branches, so answers
are cached for ``max_age`` seconds; the page and ``/metrics`` read the cache.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import trio

from prism.core.errors import StorageError
from prism.core.events import Event
from prism.core.values import StorageKind
from prism.storage._command import run_tool
from prism.storage._tree import disk_usage
from prism.storage.base import Storage

log = logging.getLogger(__name__)

_CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class DiskUse:
    """One branch's bytes on disk; a ``None`` is "this storage cannot tell"."""

    own: int | None
    shared: int | None
    total: int | None
    basis: str
    """How the numbers were found (the storage and its method), for people reading them."""

    def as_dict(self) -> dict[str, Any]:
        return {"own": self.own, "shared": self.shared, "total": self.total, "basis": self.basis}


UNKNOWN = DiskUse(None, None, None, "unknown")


def parse_btrfs_du(output: str) -> DiskUse:
    """``btrfs filesystem du -s --raw PATH``: a header, then Total, Exclusive, Set shared."""
    lines = [line.split() for line in output.strip().splitlines()]
    if len(lines) < 2 or len(lines[-1]) < 3 or not all(v.isdigit() for v in lines[-1][:3]):
        raise StorageError(f"unexpected output of btrfs filesystem du: {output[:200]!r}")
    total, own, shared = (int(value) for value in lines[-1][:3])
    return DiskUse(own, shared, total, "btrfs filesystem du")


def parse_zfs_used_referenced(output: str) -> DiskUse:
    """``zfs get -Hp -o value used,referenced DATASET``: two numbers, one per line."""
    values = output.split()
    if len(values) != 2 or not all(v.isdigit() for v in values):
        raise StorageError(f"unexpected output of zfs get: {output[:200]!r}")
    used, referenced = int(values[0]), int(values[1])
    return DiskUse(used, max(0, referenced - used), max(used, referenced), "zfs used/referenced")


async def measure(storage: Storage, branch: str) -> DiskUse:
    """Ask the storage how much ``branch`` holds alone and shares; ``UNKNOWN`` if it is gone."""
    path = storage.path(branch)
    if not path.is_dir():
        return UNKNOWN
    if storage.name == StorageKind.BTRFS:
        output = await run_tool(
            ["btrfs", "filesystem", "du", "-s", "--raw", str(path)],
            action=f"measure disk use of branch {branch}",
            hint="btrfs-progs must be installed and the data readable by Prism",
        )
        return parse_btrfs_du(output)
    if storage.name == StorageKind.ZFS:
        dataset = storage.dataset_of(branch)  # type: ignore[attr-defined]
        output = await run_tool(
            ["zfs", "get", "-Hp", "-o", "value", "used,referenced", dataset],
            action=f"measure disk use of branch {branch}",
            hint="the zfs command must be available",
        )
        return parse_zfs_used_referenced(output)
    total = await trio.to_thread.run_sync(disk_usage, path)
    if storage.name == StorageKind.COPY:
        return DiskUse(total, 0, total, "copy: a full copy shares nothing")
    return DiskUse(None, None, total, f"{storage.name}: shared extents are not reported")


class DiskUseCache:
    """Recent answers of ``measure`` per branch, so a list of 200 branches stays quick."""

    def __init__(self, storage: Storage, max_age: float = _CACHE_SECONDS) -> None:
        self._storage = storage
        self._max_age = max_age
        self._known: dict[str, tuple[float, DiskUse]] = {}

    async def get(self, branch: str) -> DiskUse:
        cached = self._known.get(branch)
        if cached is not None and time.monotonic() - cached[0] < self._max_age:
            return cached[1]
        try:
            use = await measure(self._storage, branch)
        except StorageError as exc:
            log.warning("diskuse: branch %s: %s", branch, exc.message)
            use = UNKNOWN
        self._known[branch] = (time.monotonic(), use)
        return use

    def observe(self, event: Event) -> None:
        """An event-bus listener: a deleted or reset branch's answer is stale at once."""
        if event["type"] in ("deleted", "reset", "failed"):
            self._known.pop(event["branch"], None)

    def known(self, branches: list[str]) -> dict[str, DiskUse]:
        """The last answers for ``branches`` (no measuring: for ``/metrics``)."""
        return {name: self._known[name][1] for name in branches if name in self._known}
