"""A branch's WAL archive: every segment its server writes (or, as a standby, receives).

A snapshot of a branch alone only gives its state at the instant it was taken; the WAL written
after it is what lets a branch be made as of any later moment (``prism.branches.pitr``). The server
of a branch that keeps WAL (main by default) copies each finished segment here with
``archive_command`` (``archive_mode = on`` on a primary, ``always`` on a standby of a source,
which archives what it receives); a branch being recovered reads them back with
``restore_command``.

The archive is a plain directory of segment files under Prism's data dir
(``wal-archive/<branch>``). A deleted branch's archive is first renamed to a hidden name (the
commit point), then removed (``retire`` / ``remove_retired``). A segment is copied
to a hidden name and renamed, so a file under its own name is always whole; copying one again
(after a crash, or the same segment from a standby that restarted) overwrites it with the same
bytes. Pruning only removes segments older than the oldest kept snapshot's redo point, which no
recovery can need.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
from pathlib import Path, PurePath

log = logging.getLogger(__name__)

#: A WAL segment file name: timeline, then the 16 hex digits of its position.
_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{16})(\.partial|\.[0-9A-F]{8}\.backup)?$")


class WalArchive:
    """One directory of archived WAL segments and the commands that fill and read it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def prepare(self, owner_of: Path) -> None:
        """Create the directory (0700), owned like ``owner_of`` (main's data directory), so a
        server running as another user than Prism's may write to it (blocking, cheap)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        owner = owner_of.stat()
        mine = self.directory.stat()
        if os.geteuid() == 0 and (mine.st_uid, mine.st_gid) != (owner.st_uid, owner.st_gid):
            os.chown(self.directory, owner.st_uid, owner.st_gid)

    def server_settings(self, *, standby: bool, seen_at: PurePath | None = None) -> dict[str, str]:
        """The settings a server archives here with: ``always`` on a standby, which otherwise
        archives nothing, ``on`` on a primary. ``seen_at``: where the server sees this
        directory, when not at its own path (a container's bind mount)."""
        target = shlex.quote(str(seen_at or self.directory))
        command = f"cp %p {target}/.%f.tmp && mv -f {target}/.%f.tmp {target}/%f"
        return {"archive_mode": "always" if standby else "on", "archive_command": command}

    def restore_command(self, live_wal: PurePath, *, seen_at: PurePath | None = None) -> str:
        """``restore_command`` of a branch recovered from this archive.

        The archive first; then the parent's own ``pg_wal`` for the segment it is still
        writing, which is not archived yet (recovery stops at the first record that is not
        whole); then the archive again, for a segment archived and recycled between the two
        looks. Both paths are as the recovering server sees them (``seen_at``: the archive's).
        """
        archived = f"{shlex.quote(str(seen_at or self.directory))}/%f"
        live = f"{shlex.quote(str(live_wal))}/%f"
        # Only the last attempt's complaint reaches the server log: a missing file is normal
        # (recovery asks for timeline history files that never existed).
        quiet = "2>/dev/null"
        return f"cp {archived} %p {quiet} || cp {live} %p {quiet} || cp {archived} %p"

    def segments(self) -> list[str]:
        """Names of the archived segments (and their ``.partial``/``.backup`` files), sorted."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if _SEGMENT.match(name))

    def size_bytes(self) -> int:
        """Bytes the archive holds."""
        total = 0
        for name in self.segments():
            try:
                total += (self.directory / name).stat().st_size
            except FileNotFoundError:
                continue
        return total

    def bytes_between(self, first: str, end: str | None = None) -> int:
        """Bytes of the segments from ``first`` up to (not including) ``end``, by position
        (``None``: to the newest): the WAL a snapshot at ``first`` leads on with."""
        start, stop = _position(first), None if end is None else _position(end)
        total = 0
        for name in self.segments():
            position = _position(name)
            if position is None or start is None or position < start:
                continue
            if stop is not None and position >= stop:
                continue
            with contextlib.suppress(FileNotFoundError):
                total += (self.directory / name).stat().st_size
        return total

    def prune(self, oldest_needed: str) -> int:
        """Remove segments before ``oldest_needed`` (a segment name); return how many.

        Positions are compared, not whole names: a later timeline's segment name sorts after
        an earlier one's whatever its position. Timeline history files are always kept.
        """
        keep_from = _position(oldest_needed)
        if keep_from is None:
            return 0
        removed = 0
        for name in self.segments():
            position = _position(name)
            if position is not None and position < keep_from:
                (self.directory / name).unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("wal archive: removed %d segment(s) before %s", removed, oldest_needed)
        return removed


def _position(name: str) -> str | None:
    match = _SEGMENT.match(name)
    return None if match is None else match.group(2)


_RETIRED = ".retired-"


def retire(root: Path, branch: str, token: str) -> None:
    """Take ``branch``'s archive out of use at once (a rename; cheap enough for the event
    loop); ``remove_retired`` frees it later, and a crash in between leaves only that."""
    with contextlib.suppress(FileNotFoundError):
        (root / branch).rename(root / f"{_RETIRED}{branch}-{token}")


def archived_branches(root: Path) -> list[str]:
    """The branches with an archive under ``root`` (blocking, cheap)."""
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except FileNotFoundError:
        return []


def remove_retired(root: Path) -> None:
    """Remove every retired archive under ``root`` (blocking)."""
    try:
        retired = [p for p in root.iterdir() if p.name.startswith(_RETIRED)]
    except FileNotFoundError:
        return
    for path in retired:
        shutil.rmtree(path, ignore_errors=True)
        log.info("wal archive: removed %s (its branch was deleted or reset)", path.name)
