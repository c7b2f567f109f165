"""The ``btrfs`` storage driver: every data directory is a subvolume, a clone is a snapshot.

A snapshot is atomic (one instant of a directory Postgres is writing to) and O(1) in the size
of the database, which is why ``auto`` prefers btrfs. ``branches/`` stays a plain directory:
only the data directories themselves need to be subvolumes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import trio

from prism.core.errors import StorageError
from prism.storage._command import run_tool
from prism.storage._layout import (
    BranchLayout,
    make_parent_dir,
    remove_quietly,
    remove_tree,
    set_private_mode,
)
from prism.storage._probe import btrfs_tool_works, filesystem_type, is_btrfs_subvolume
from prism.storage._tree import refresh_branch_subdir

log = logging.getLogger(__name__)


def _conversion_hint(path: Path) -> str:
    """How to turn a plain data directory into a subvolume without losing a byte."""
    return (
        f"stop its Postgres server, then run: btrfs subvolume create {path}.new && "
        f"cp -a --reflink=always {path}/. {path}.new/ && mv {path} {path}.old && "
        f"mv {path}.new {path} && chmod 0700 {path}; remove {path}.old once it starts"
    )


class BtrfsStorage(BranchLayout):
    """Subvolumes and snapshots via the ``btrfs`` command; atomic."""

    name = "btrfs"
    atomic = True
    copy_on_write = True

    async def check(self) -> None:
        """Fail now if the root is not on btrfs or the tool is missing; warn about a plain main.

        A plain ``master`` does not stop Prism from serving main, so it is a warning here and an
        error only when someone tries to branch from it.
        """
        fstype = await filesystem_type(self.root)
        if fstype != "btrfs":
            raise StorageError(
                f"storage 'btrfs' needs a btrfs filesystem, but {self.root} is on "
                f"{fstype or 'an unknown filesystem'}",
                hint="move the storage root onto btrfs, or choose storage 'auto'",
            )
        if not await btrfs_tool_works():
            raise StorageError(
                "storage 'btrfs' needs the btrfs command, which is missing or broken",
                hint="install it (Debian/Ubuntu: apt-get install btrfs-progs)",
            )
        master = self.path("main")
        if master.is_dir() and not is_btrfs_subvolume(master):
            log.warning(
                "storage: %s is a plain directory, not a btrfs subvolume; branching from main "
                "will fail until it is converted: %s",
                master,
                _conversion_hint(master),
            )

    async def create(self, branch: str) -> Path:
        """Make an empty 0700 subvolume for ``initdb``."""
        target = self.require_absent(branch)
        await make_parent_dir(target)
        await run_tool(
            ["btrfs", "subvolume", "create", str(target)],
            action=f"create subvolume {target}",
            hint="check that the storage root is on btrfs and Prism may write there",
        )
        try:
            await set_private_mode(target)
        except BaseException:
            with trio.CancelScope(shield=True):
                await remove_quietly(target, self._delete)
            raise
        return target

    async def clone(self, parent: str, child: str) -> Path:
        """Snapshot ``parent`` (writable, atomic) as ``child``; nothing is left on failure."""
        source, target = self.require_clone_endpoints(parent, child)
        if not is_btrfs_subvolume(source):
            raise StorageError(
                f"cannot snapshot branch {parent!r}: {source} is a plain directory, and btrfs "
                "can only snapshot subvolumes",
                hint=_conversion_hint(source),
            )
        await make_parent_dir(target)
        started = time.monotonic()
        try:
            await run_tool(
                ["btrfs", "subvolume", "snapshot", str(source), str(target)],
                action=f"snapshot {source} as {target}",
                hint="check free space (btrfs filesystem usage) and that Prism runs as root",
            )
            await set_private_mode(target)
        except BaseException:
            with trio.CancelScope(shield=True):
                await remove_quietly(target, self._delete)
            raise
        log.info(
            "storage: cloned driver=btrfs parent=%s branch=%s duration_ms=%.1f",
            parent,
            child,
            (time.monotonic() - started) * 1000,
        )
        return target

    async def refresh_subdir(self, parent: str, child: str, relpath: str) -> None:
        """Re-copy ``parent/relpath`` into ``child`` (sharing extents where btrfs can)."""
        await refresh_branch_subdir(
            self,
            parent,
            child,
            relpath,
            reflink="auto",
            hint="check free space (btrfs filesystem usage) and permissions",
        )

    async def destroy(self, branch: str) -> None:
        """Delete ``branch``'s subvolume (or plain directory); a missing one is not an error."""
        await self._delete(self.path(branch))

    async def remove_path(self, path: Path) -> None:
        """Delete a retired subvolume (or plain directory)."""
        await self._delete(path)

    def usage_bytes(self, branch: str) -> int | None:
        """Unknown: a snapshot's exclusive size needs btrfs quotas, which Prism does not enable."""
        return None

    async def _delete(self, target: Path) -> None:
        if not is_btrfs_subvolume(target):
            await remove_tree(target)  # a plain directory left by hand, or nothing at all
            return
        await run_tool(
            ["btrfs", "subvolume", "delete", str(target)],
            action=f"delete subvolume {target}",
            hint=(
                "deleting subvolumes needs root, or the filesystem mounted with "
                "'-o user_subvol_rm_allowed'; also check nothing is nested inside it"
            ),
        )
