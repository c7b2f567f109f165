"""File-by-file cloning with ``cp -a``, shared by the copy and reflink drivers.

The two drivers differ only in whether ``cp`` may, must or must not share extents
(``--reflink=never|always``); staging, cleanup, modes and ``refresh_subdir`` are the same, so
they live here once.

``cp -a`` rather than a Python walk: it preserves modes, owners, timestamps, symlinks, hard
links, xattrs and ACLs, is a little faster than a per-file ``FICLONE`` loop in Python (figures
in docs/benchmarks.md), and does not hold the GIL.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shlex
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Literal

import trio

from prism.core.errors import StorageError
from prism.storage._command import run_tool_tolerating
from prism.storage._layout import (
    HIDDEN_PREFIX,
    BranchLayout,
    make_parent_dir,
    make_private_dir,
    remove_quietly,
    remove_tree,
    run_off_loop,
    set_private_mode,
)

log = logging.getLogger(__name__)

ReflinkMode = Literal["never", "auto", "always"]


def subdir_parts(relpath: str) -> PurePosixPath:
    """Check that ``relpath`` names something strictly inside a data directory.

    ``refresh_subdir`` deletes what it replaces, so a relpath like ``..`` or ``/`` must never get
    as far as the filesystem.
    """
    rel = PurePosixPath(relpath)
    if not rel.parts or rel.is_absolute() or ".." in rel.parts:
        raise StorageError(
            f"cannot refresh {relpath!r}: not a path inside a data directory",
            hint="pass a relative path such as 'pg_wal'",
        )
    return rel


async def copy_tree(source: Path, target: Path, *, reflink: ReflinkMode, hint: str) -> None:
    """Copy directory ``source`` to the not-yet-existing ``target`` with everything preserved.

    ``-T`` makes ``cp`` treat ``target`` as the destination itself, never as a directory to copy
    into, should it appear meanwhile.

    ``source`` may be a live server's data directory (copied between ``pg_backup_start`` and
    ``pg_backup_stop``): WAL segments are recycled, ``archive_status`` files renamed, temporary
    files and dropped relations removed while ``cp`` walks it. As for ``pg_basebackup``, a file
    or directory that vanished is no error: the backup's WAL replay does not need what was gone
    before the backup ended. What vanished is left out of the copy, an empty directory too.
    """
    vanished = await run_tool_tolerating(
        ["cp", "-a", f"--reflink={reflink}", "-T", "--", str(source), str(target)],
        action=f"copy {source} to {target}",
        hint=hint,
        tolerate=functools.partial(vanished_path, source=source),
    )
    if vanished:
        await run_off_loop(
            functools.partial(_leave_out, source, target, vanished),
            failed=f"cannot remove from {target} what vanished from {source}",
            hint=hint,
        )
        log.debug("storage: vanished while copied source=%s paths=%s", source, vanished)


#: ``cp``'s complaints (C locale) about a source path that is not there any more: ``cannot
#: stat``, ``cannot open … for reading``, ``cannot access`` (a directory), or a bare name (the
#: attributes of a directory gone by the time they are copied); and a file that another took
#: the place of between ``stat`` and ``open``, which ``cp`` skips.
_VANISHED = re.compile(r"cp: (?:[a-z ]+ )?('.+')(?: for reading)?: No such file or directory")
_REPLACED = re.compile(r"cp: skipping file ('.+'), as it was replaced while being copied")


def vanished_path(line: str, *, source: Path) -> PurePosixPath | None:
    """The path below ``source`` that a line of ``cp``'s stderr says vanished, or None.

    None for any other complaint, and for a path outside ``source``: the target is Prism's own
    staging directory, and a file missing there is a real failure.
    """
    match = _VANISHED.fullmatch(line) or _REPLACED.fullmatch(line)
    if match is None:
        return None
    try:
        words = shlex.split(match.group(1))  # cp quotes names as a shell would
    except ValueError:
        return None
    if len(words) != 1:
        return None
    path = PurePosixPath(words[0])
    if not path.is_relative_to(source) or path == PurePosixPath(source):
        return None
    return path.relative_to(source)


def _leave_out(source: Path, target: Path, vanished: list[PurePosixPath]) -> None:
    """Remove from ``target`` the copy of each vanished path's outermost vanished directory.

    ``cp`` makes a directory before reading it, so a directory that vanished under it is left
    empty or half-filled; Postgres would take that for the real thing (an empty replication
    slot directory stops the server from starting).
    """
    for relpath in vanished:
        for depth in range(1, len(relpath.parts) + 1):
            outermost = PurePosixPath(*relpath.parts[:depth])
            if not os.path.lexists(source / outermost):
                copied = target / outermost
                if copied.is_dir() and not copied.is_symlink():
                    shutil.rmtree(copied)
                else:
                    copied.unlink(missing_ok=True)
                break


async def rename_into_place(staging: Path, target: Path) -> None:
    """Make a fully built ``staging`` directory appear as ``target`` in one atomic step."""
    await run_off_loop(
        lambda: staging.rename(target),
        failed=f"cannot move {staging} to {target}",
        hint=f"check that {target} does not exist and that Prism may write there",
    )


async def refresh_tree(source: Path, target: Path, *, reflink: ReflinkMode, hint: str) -> None:
    """Replace ``target`` with a fresh copy of ``source``; on failure ``target`` is unchanged.

    The copy is built beside ``target`` first and swapped in by renames, so a failed copy (disk
    full, unreadable file) leaves the old contents rather than a half-filled directory.
    """
    if not await trio.to_thread.run_sync(source.is_dir):
        raise StorageError(
            f"cannot refresh {target}: {source} does not exist",
            hint="check that the parent branch's data directory is complete",
        )
    staging = target.with_name(f"{HIDDEN_PREFIX}{target.name}.refresh")
    retired = target.with_name(f"{HIDDEN_PREFIX}{target.name}.old")
    await remove_tree(staging)
    await remove_tree(retired)
    try:
        await copy_tree(source, staging, reflink=reflink, hint=hint)
    except BaseException:
        with trio.CancelScope(shield=True):
            await remove_quietly(staging)
        raise
    had_target = await trio.to_thread.run_sync(target.exists)
    if had_target:
        await rename_into_place(target, retired)
    try:
        await rename_into_place(staging, target)
    except BaseException:
        with trio.CancelScope(shield=True):
            if had_target:
                await rename_into_place(retired, target)
            await remove_quietly(staging)
        raise
    await remove_tree(retired)


async def refresh_branch_subdir(
    layout: BranchLayout,
    parent: str,
    child: str,
    relpath: str,
    *,
    reflink: ReflinkMode,
    hint: str,
) -> None:
    """Replace ``child/relpath`` with a fresh copy of ``parent/relpath`` (e.g. ``pg_wal``).

    Every driver's ``refresh_subdir``: even the atomic ones, which callers skip, do the real
    thing so a caller that does ask gets what the contract promises.
    """
    rel = subdir_parts(relpath)
    await refresh_tree(
        layout.path(parent) / rel, layout.path(child) / rel, reflink=reflink, hint=hint
    )


def disk_usage(path: Path) -> int:
    """Bytes allocated below ``path``, counting each hard-linked inode once (like ``du -s``)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, dirnames, filenames in os.walk(path):
        for name in (directory, *(os.path.join(directory, n) for n in dirnames + filenames)):
            try:
                info = os.lstat(name)
            except FileNotFoundError:
                continue  # removed while we walked; it no longer uses space
            key = (info.st_dev, info.st_ino)
            if key not in seen:
                seen.add(key)
                total += info.st_blocks * 512
    return total


class TreeCopyStorage(BranchLayout):
    """A driver whose clone copies every file: never atomic, so callers bracket it with a backup.

    Subclasses set ``name`` and the ``cp --reflink`` mode, and may say better what to do when
    ``cp`` fails.
    """

    atomic = False
    copy_on_write = False  # reflink shares extents, but a new WAL segment is plain XFS blocks
    reflink: ReflinkMode = "never"

    def failure_hint(self) -> str:
        """What an operator can do when ``cp`` fails; drivers say what their mode needs."""
        return "check free space and permissions under the storage root"

    async def create(self, branch: str) -> Path:
        """Make an empty 0700 data directory for ``initdb``."""
        target = self.require_absent(branch)
        await make_private_dir(target)
        return target

    async def clone(self, parent: str, child: str) -> Path:
        """Copy ``parent`` into a hidden staging directory, then rename it into place.

        Readers of the storage root therefore never see a half-copied branch, and on any failure
        (including cancellation) the staging directory is removed before the error propagates.
        """
        source, target = self.require_clone_endpoints(parent, child)
        await make_parent_dir(target)
        staging = self.staging_path(child, "partial")
        await remove_tree(staging)  # a leftover from a crashed clone of the same name
        started = time.monotonic()
        try:
            await copy_tree(source, staging, reflink=self.reflink, hint=self.failure_hint())
            await set_private_mode(staging)
            await rename_into_place(staging, target)
        except BaseException:
            with trio.CancelScope(shield=True):
                await remove_quietly(staging)
            raise
        log.info(
            "storage: cloned driver=%s parent=%s branch=%s duration_ms=%.1f",
            self.name,
            parent,
            child,
            (time.monotonic() - started) * 1000,
        )
        return target

    async def refresh_subdir(self, parent: str, child: str, relpath: str) -> None:
        """Replace ``child/relpath`` with a fresh copy of ``parent/relpath`` (e.g. ``pg_wal``)."""
        await refresh_branch_subdir(
            self, parent, child, relpath, reflink=self.reflink, hint=self.failure_hint()
        )

    async def destroy(self, branch: str) -> None:
        """Remove ``branch``'s data directory; a missing one is not an error."""
        await remove_tree(self.path(branch))

    def usage_bytes(self, branch: str) -> int | None:
        """Unknown by default: shared extents make a file's own share invisible to ``stat``."""
        return None
