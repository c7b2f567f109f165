"""What the filesystem under a storage root can do, and which driver ``auto`` picks from that.

The probes do the I/O; ``choose_driver`` is a pure function of their answers, so the choice is
unit-tested without mounting anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

from prism.storage._command import probe_tool

#: ``_IOW(0x94, 9, int)`` from linux/fs.h: make the destination file share the source's extents.
FICLONE = 0x40049409

#: Inode number of every btrfs subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID); a plain
#: directory on btrfs never has it, which makes "is this a subvolume?" one ``stat``.
BTRFS_SUBVOLUME_INODE = 256


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest existing ancestor: the filesystem a new directory would land on."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


async def filesystem_type(path: Path) -> str | None:
    """The filesystem type name at ``path`` ("btrfs", "xfs", "ext4", "tmpfs"), if known.

    ``df`` names the type as the mount table does; ``stat -f``, the fallback, maps the statfs
    magic number, which ext2, ext3 and ext4 share (it says "ext2/ext3" for ext4). Python's
    ``os.statvfs`` exposes neither.
    """
    where = str(nearest_existing(path))
    listed = await probe_tool(["df", "--output=fstype", where])
    if listed and len(listed.split()) == 2:  # the header "Type", then the type
        return listed.split()[1]
    return await probe_tool(["stat", "-f", "-c", "%T", where])


async def btrfs_tool_works() -> bool:
    """Whether the ``btrfs`` command is installed and runs."""
    return await probe_tool(["btrfs", "--version"]) is not None


def _try_ficlone(directory: Path) -> str | None:
    """Clone one small temp file into another inside ``directory``; None if it worked."""
    with contextlib.ExitStack() as cleanup:
        fds = []
        for _ in range(2):
            fd, name = tempfile.mkstemp(prefix=".prism-reflink-probe-", dir=directory)
            cleanup.callback(_discard, fd, name)
            fds.append(fd)
        source_fd, target_fd = fds
        try:
            os.write(source_fd, b"prism reflink probe\n" * 205)  # a few KiB: at least a block
            os.fsync(source_fd)
            fcntl.ioctl(target_fd, FICLONE, source_fd)
        except OSError as exc:
            return f"FICLONE failed: {exc.strerror or exc}"
    return None


def _discard(fd: int, name: str) -> None:
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


async def probe_reflink(directory: Path) -> str | None:
    """None if files in ``directory`` can be reflinked, else why not.

    Asks the kernel directly instead of guessing from the filesystem's name: XFS made without
    ``reflink=1`` is still "xfs", and overlay or NFS may or may not pass FICLONE through.
    """
    try:
        await trio.to_thread.run_sync(lambda: directory.mkdir(parents=True, exist_ok=True))
        return await trio.to_thread.run_sync(_try_ficlone, directory)
    except OSError as exc:
        return f"cannot create probe files in {directory}: {exc.strerror or exc}"


def is_btrfs_subvolume(path: Path) -> bool:
    """Whether ``path`` (on btrfs) is the root of a subvolume rather than a plain directory."""
    try:
        return os.lstat(path).st_ino == BTRFS_SUBVOLUME_INODE
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class Choice:
    """The driver ``auto`` settled on and the reason, as one log line's worth of text."""

    kind: str
    reason: str


def choose_driver(
    root: Path, fstype: str | None, *, btrfs_tool: bool, reflink_failure: str | None
) -> Choice:
    """Pick btrfs snapshots where possible, then reflink, then plain copies.

    btrfs first because its snapshot is atomic and O(1) even for a huge data dir; reflink next
    because it is still cheap; copy always works. ``reflink_failure`` is the probe's answer
    (None means FICLONE worked).
    """
    fs = fstype or "unknown filesystem"
    if fstype == "btrfs" and btrfs_tool:
        return Choice("btrfs", f"btrfs at {root}, snapshots available")
    missing_tool = " (btrfs, but the btrfs command is missing)" if fstype == "btrfs" else ""
    if reflink_failure is None:
        return Choice("reflink", f"{fs} at {root} supports FICLONE{missing_tool}")
    return Choice("copy", f"{fs} at {root} cannot reflink: {reflink_failure}{missing_tool}")


async def probe_and_choose(root: Path) -> Choice:
    """Run the probes ``choose_driver`` needs, skipping those whose answer cannot matter."""
    fstype = await filesystem_type(root)
    btrfs_tool = fstype == "btrfs" and await btrfs_tool_works()
    if btrfs_tool:
        return choose_driver(root, fstype, btrfs_tool=True, reflink_failure=None)
    reflink_failure = await probe_reflink(root)
    return choose_driver(root, fstype, btrfs_tool=False, reflink_failure=reflink_failure)
