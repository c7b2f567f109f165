"""The storage drivers that can run on this machine, and scratch data dirs on each.

btrfs and XFS (reflink) are the loop-mounted test filesystems of ``tools/sysenv/filesystems.sh``;
ZFS is the ``prismtest`` pool of ``tools/sysenv/zfs.sh``; ``copy`` runs on the root disk. A
driver whose filesystem is missing is skipped with the reason, so the bench runs anywhere.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import trio

from prism.core.settings import Settings
from prism.core.values import HostPort
from prism.server import PrismServer, ServerInfo
from prism.storage import open_storage
from prism.storage.base import Storage
from tools.bench.common import HOST, PASSWORD, SCRATCH, scratch_dir

ZFS_PARENT = "prismtest/prism"


@dataclass(frozen=True)
class Target:
    """One storage driver on one filesystem."""

    label: str
    kind: str
    base: Path
    zfs_parent: str | None = None


def _mounted(path: str, fstype: str) -> bool:
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == path and line.split()[2] == fstype for line in mounts if line)


def available(wanted: tuple[str, ...]) -> tuple[list[Target], dict[str, str]]:
    """The targets among ``wanted`` that can run here, and why the others cannot."""
    found: list[Target] = []
    skipped: dict[str, str] = {}
    candidates = {
        "btrfs": (_mounted("/mnt/prism-test/btrfs", "btrfs"), "no btrfs at /mnt/prism-test/btrfs"),
        "reflink": (_mounted("/mnt/prism-test/xfs", "xfs"), "no XFS at /mnt/prism-test/xfs"),
        "zfs": (_zfs_ready(), f"no ZFS dataset {ZFS_PARENT} (tools/sysenv/zfs.sh)"),
        "copy": (True, ""),
    }
    bases = {
        "btrfs": Path("/mnt/prism-test/btrfs/bench"),
        "reflink": Path("/mnt/prism-test/xfs/bench"),
        "zfs": SCRATCH,
        "copy": SCRATCH,
    }
    labels = {"reflink": "reflink (XFS)", "copy": "copy (root disk)"}
    for kind in wanted:
        ok, reason = candidates[kind]
        if ok:
            parent = ZFS_PARENT if kind == "zfs" else None
            found.append(Target(labels.get(kind, kind), kind, bases[kind], parent))
        else:
            skipped[kind] = reason
    return found, skipped


def docker_ready(image: str) -> tuple[bool, str]:
    """Whether the docker runtime can run here: an engine answering and the image present."""
    if not _mounted("/mnt/prism-test/btrfs", "btrfs"):
        return False, "no btrfs at /mnt/prism-test/btrfs"
    if shutil.which("docker") is None:
        return False, "no docker command"
    probe = subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False)
    if probe.returncode != 0:
        return False, f"no image {image} (tools/sysenv/)"
    return True, ""


def _zfs_ready() -> bool:
    if shutil.which("zfs") is None:
        return False
    probe = subprocess.run(["zfs", "list", ZFS_PARENT], capture_output=True, check=False)
    return probe.returncode == 0


@contextlib.asynccontextmanager
async def data_dir(target: Target) -> AsyncIterator[tuple[Path, Settings]]:
    """A fresh Prism data dir on ``target`` and its settings; everything is removed afterwards."""
    root = scratch_dir(f"{target.kind}-", target.base)
    dataset = ""
    if target.zfs_parent is not None:
        dataset = f"{target.zfs_parent}/bench{uuid.uuid4().hex[:8]}"
        await trio.run_process(["zfs", "create", "-o", "mountpoint=none", dataset])
    settings = Settings(
        data_dir=root,
        listen=HostPort(HOST, 0),
        api=HostPort(HOST, 0),
        storage=target.kind,
        password=PASSWORD,
        zfs_dataset=dataset,
        log_level="warning",
        idle_timeout=0,
        # No snapshot of main being taken while a section measures (sections that want
        # point in time turn it on).
        snapshot_every=0.0,
    )
    try:
        yield root, settings
    finally:
        with trio.CancelScope(shield=True):
            storage = await open_storage_for(settings)
            for branch in storage.list():
                with contextlib.suppress(Exception):
                    await storage.destroy(branch)
            if dataset:
                await trio.run_process(["zfs", "destroy", "-r", dataset], check=False)
            await trio.to_thread.run_sync(shutil.rmtree, root, True)


async def open_storage_for(settings: Settings) -> Storage:
    options = {"dataset": settings.zfs_dataset} if settings.storage == "zfs" else {}
    return await open_storage(settings.storage, settings.data_dir, **options)


@contextlib.asynccontextmanager
async def prism_in_process(settings: Settings) -> AsyncIterator[ServerInfo]:
    """Run a Prism server in this trio run until the block ends (then it stops its servers)."""
    async with trio.open_nursery() as nursery:
        info: ServerInfo = await nursery.start(PrismServer(settings).run)
        try:
            yield info
        finally:
            nursery.cancel_scope.cancel()
