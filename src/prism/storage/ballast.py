"""The ballast: a file of Prism's on main's file system, given back when main needs the room.

Main's server PANICs when a WAL write finds no space (``could not write to file
"pg_wal/xlogtemp…"``), and the budget cannot stop main's own writes. So Prism keeps space
that only it can give back: this file, written while the disk has room. When free space falls
under what main needs to checkpoint and stop cleanly, the watcher (``prism.branches.diskwatch``)
removes it at once, and if main eats that room too, stops main before it PANICs.

The bytes are really allocated (``posix_fallocate``, or written where a file system cannot
preallocate, like ZFS), and never zeros on a compressing file system: a ballast that compresses
to nothing holds nothing back. The file is written under a hidden name and renamed, so a
half-written ballast left by a crash is never counted.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

BALLAST_NAME = "ballast"
_CHUNK = 2**20


class Ballast:
    """The ballast file at ``path``, of ``size`` bytes when present."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    def present(self) -> int:
        """Bytes the ballast holds now (0: released, or never written)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def fill(self) -> int:
        """Write the ballast (blocking); its size, or 0 if the disk refused (left absent)."""
        partial = self.path.with_name(f".{self.path.name}.tmp")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _allocate(fd, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
            partial.replace(self.path)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            log.warning("ballast: could not write %s: %s", self.path, exc.strerror)
            return 0
        log.info("ballast: %d bytes kept at %s for main's WAL", self.size, self.path)
        return self.size

    def release(self) -> int:
        """Give the ballast's space back (blocking); the bytes freed."""
        held = self.present()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.path.with_name(f".{self.path.name}.tmp").unlink(missing_ok=True)
        return held


def _allocate(fd: int, size: int) -> None:
    """Allocate ``size`` bytes to ``fd``: preallocated where the file system can, else written
    with bytes that do not compress."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    chunk = os.urandom(_CHUNK)
    written = 0
    while written < size:
        written += os.write(fd, chunk[: min(_CHUNK, size - written)])
