"""The ``copy`` storage driver: a branch is a full, independent copy of its parent's files.

It works on any filesystem, which makes it the fallback, but a clone costs time and space in
proportion to the database. Prism says so once, with the way out.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prism.storage._tree import TreeCopyStorage, disk_usage

log = logging.getLogger(__name__)


class CopyStorage(TreeCopyStorage):
    """Clones by copying every byte (``cp -a --reflink=never``); not atomic.

    ``--reflink=never`` because coreutils' ``cp`` would otherwise share extents where it can:
    this driver promises real copies, so its clone time and ``usage_bytes`` mean what they say.
    Whoever wants shared extents gets them from the ``reflink`` driver, which ``auto`` picks.
    """

    name = "copy"
    reflink = "never"

    def failure_hint(self) -> str:
        return "check free space under the storage root and that Prism can read the parent"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        log.warning(
            "storage: the copy driver copies every file, so a branch takes time and disk space "
            "in proportion to the database root=%s; for instant branches put the storage root "
            "on btrfs, ZFS or a reflink filesystem (XFS with reflink=1)",
            self.root,
        )

    def usage_bytes(self, branch: str) -> int | None:
        """The branch's full on-disk size: a copy shares nothing with its parent."""
        path = self.path(branch)
        return disk_usage(path) if path.is_dir() else None
