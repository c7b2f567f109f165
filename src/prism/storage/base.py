"""The storage driver contract: where branch data directories live and how they are cloned."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class Storage(Protocol):
    """Makes, clones and removes branch data directories under one root.

    Layout (the seed's, kept so existing pools work): the main branch lives in ``<root>/master``,
    every other branch in ``<root>/branches/<name>``. A branch's directory *is* its PGDATA.

    ``atomic`` says whether ``clone`` captures one instant of a directory that is being written
    to (btrfs and ZFS snapshots do; file-by-file reflink or copy does not). For non-atomic
    drivers the caller brackets the clone with ``pg_backup_start``/``pg_backup_stop`` and then
    calls ``refresh_subdir(..., "pg_wal")`` so the clone holds every WAL record it needs.

    ``copy_on_write`` says whether every write lands in new blocks (btrfs, ZFS): there, a
    zero-filled WAL segment reserves nothing, so servers skip zero-filling and recycling them
    (``wal_init_zero``, ``wal_recycle``); elsewhere the zero-fill is what makes a full disk
    fail a segment's creation (an error) rather than a WAL write (a PANIC).

    Every method that touches the disk is async and must not block the event loop (use
    ``trio.to_thread`` or ``trio.run_process``). Failures raise ``prism.core.errors.StorageError``
    with the command's stderr in the message; a failed ``clone`` leaves no partial target behind.
    """

    name: str
    atomic: bool
    copy_on_write: bool
    root: Path

    def path(self, branch: str) -> Path:
        """The data directory of ``branch`` (whether or not it exists)."""
        ...

    def exists(self, branch: str) -> bool:
        """Whether ``branch``'s data directory exists."""
        ...

    def list(self) -> list[str]:
        """Names of every branch that has a data directory, main included."""
        ...

    async def create(self, branch: str) -> Path:
        """Make an empty data directory (subvolume, dataset) for ``initdb``; return its path."""
        ...

    async def clone(self, parent: str, child: str) -> Path:
        """Make ``child`` a copy-on-write copy of ``parent``; return the child's path."""
        ...

    async def refresh_subdir(self, parent: str, child: str, relpath: str) -> None:
        """Replace ``child/relpath`` with a fresh copy of ``parent/relpath``."""
        ...

    async def destroy(self, branch: str) -> None:
        """Remove ``branch``'s data directory entirely; a missing one is not an error."""
        ...

    async def retire(self, branch: str, token: str | None = None) -> Path | None:
        """Take ``branch``'s data directory away in one atomic step (into the trash, whose path
        is returned for ``remove_path``; None if nothing was there or nothing is left to remove).
        Needs no free space."""
        ...

    async def restore(self, branch: str, token: str) -> bool:
        """Put back what ``retire(branch, token)`` took, if it is still in the trash."""
        ...

    async def rename(self, branch: str, new_name: str) -> bool:
        """Move ``branch``'s data directory into ``new_name``'s (empty) place in one step that
        needs no free space; whether it moved (``--source-mode dump``: a new generation of main
        taking main's place)."""
        ...

    async def trash(self, branch: str, token: str) -> bool:
        """Keep ``branch``'s data, whole, in the undelete trash under ``token`` in one step
        that needs no free space (a rename); whether there was data to keep. Unlike
        ``retire``, start-up's ``sweep`` leaves it alone: ``untrash`` or ``purge`` end it."""
        ...

    async def untrash(self, branch: str, token: str) -> bool:
        """Put what ``trash(branch, token)`` kept back in ``branch``'s place; whether it was
        there to put back (and the place free)."""
        ...

    async def purge(self, branch: str, token: str) -> None:
        """Free what ``trash(branch, token)`` kept; it is gone for good the moment this
        starts (a crash halfway leaves a leftover ``sweep`` removes, never a half entry)."""
        ...

    async def trashed(self) -> builtins.list[tuple[str, str]]:
        """(branch, token) of everything ``trash`` keeps."""
        ...

    async def remove_path(self, path: Path) -> None:
        """Remove a retired data directory that ``retire`` returned."""
        ...

    async def sweep(self) -> builtins.list[Path]:
        """At start-up only: remove the trash and every staging leftover; what was removed."""
        ...

    def usage_bytes(self, branch: str) -> int | None:
        """Bytes the branch uses on its own (not shared with its parent), if the driver can tell."""
        ...
