"""The ``reflink`` storage driver: a branch shares its parent's extents file by file.

On XFS (``reflink=1``), btrfs, bcachefs and other filesystems with ``FICLONE`` a clone costs
metadata only, so a clone takes about as long whatever the data size (see docs/benchmarks.md)
and uses no extra space until written to. It is not atomic: files are cloned one after another.
"""

from __future__ import annotations

from prism.core.errors import StorageError
from prism.storage._probe import probe_reflink
from prism.storage._tree import TreeCopyStorage


class ReflinkStorage(TreeCopyStorage):
    """Clones with ``cp -a --reflink=always``; never falls back to copying data.

    A silent fallback would turn an instant branch into a full copy that fills the disk, so a
    filesystem that cannot share extents is an error, at open time (``check``) and per clone.
    """

    name = "reflink"
    reflink = "always"

    def failure_hint(self) -> str:
        return (
            f"the filesystem under {self.root} must support reflinks: use XFS made with "
            "'mkfs.xfs -m reflink=1', btrfs, or choose storage 'copy' for full copies"
        )

    async def check(self) -> None:
        """Fail now, with the reason, if the storage root cannot share extents."""
        reason = await probe_reflink(self.root)
        if reason is not None:
            raise StorageError(
                f"storage 'reflink' cannot clone files under {self.root}: {reason}",
                hint=self.failure_hint(),
            )
