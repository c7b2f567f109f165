"""Where branch data directories live under a storage root, shared by every driver.

The layout is the seed's (see ``Storage``): main in ``<root>/master``, every other branch in
``<root>/branches/<name>``. Keeping it in one place means no driver can disagree about where a
branch is or which directories count as branches.
"""

from __future__ import annotations

import builtins
import logging
import os
import secrets
import shutil
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import trio

from prism.core.errors import InvalidBranchName, StorageError
from prism.core.names import MAIN_BRANCH

log = logging.getLogger(__name__)

MASTER_DIR = "master"
BRANCHES_DIR = "branches"

#: Postgres refuses to start on a data directory that group or others can read.
PGDATA_MODE = 0o700

#: Entries of ``branches/`` starting with this are a driver's work in progress (a clone being
#: staged), never branches; listing skips them.
HIDDEN_PREFIX = "."

#: Under ``branches/``: data directories on their way out. Moving a branch here is one rename,
#: which needs no free space, so a full disk can always be freed; whatever a crash leaves here
#: is Prism's own and start-up removes it.
TRASH_DIR = ".trash"

#: Under ``branches/``: deleted branches kept whole for ``--undelete-window``
#: (``<name>.<token>``). Unlike the trash, start-up keeps them: the trash table of the state
#: file says whose they are, and only ``purge`` frees one.
DELETED_DIR = ".deleted"


def check_component(name: str, what: str) -> None:
    """Refuse ``name`` unless it is one plain path component.

    The router validates branch names long before this; the check here is the last guard that
    keeps a bad name from reaching outside the storage root (``..``, ``a/b``) or colliding with
    a staging directory.
    """
    if (
        not name
        or name in (".", "..")
        or name.startswith(HIDDEN_PREFIX)
        or "/" in name
        or "\0" in name
    ):
        raise InvalidBranchName(
            f"{what} {name!r} cannot be used as a directory name",
            hint="use letters, digits, '-' and '_', not starting with '.'",
        )


class BranchLayout:
    """Path arithmetic and listing for one storage root; drivers inherit it.

    Only pure path logic and cheap ``stat`` calls live here, so it is safe on the event loop.
    """

    name: str
    atomic: bool
    copy_on_write: bool

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def branches_dir(self) -> Path:
        """The plain directory that holds every branch except main."""
        return self.root / BRANCHES_DIR

    def path(self, branch: str) -> Path:
        """The data directory of ``branch`` (whether or not it exists)."""
        if branch == MAIN_BRANCH:
            return self.root / MASTER_DIR
        check_component(branch, "branch name")
        return self.branches_dir / branch

    def exists(self, branch: str) -> bool:
        """Whether ``branch``'s data directory exists."""
        return self.path(branch).is_dir()

    def list(self) -> list[str]:
        """Names of every branch that has a data directory: main first, the rest sorted."""
        names = [MAIN_BRANCH] if (self.root / MASTER_DIR).is_dir() else []
        try:
            entries = sorted(os.scandir(self.branches_dir), key=lambda entry: entry.name)
        except FileNotFoundError:
            return names
        names.extend(
            entry.name
            for entry in entries
            if not entry.name.startswith(HIDDEN_PREFIX) and entry.is_dir(follow_symlinks=False)
        )
        return names

    @property
    def trash_dir(self) -> Path:
        """Where retired data directories wait to be removed."""
        return self.branches_dir / TRASH_DIR

    def trash_path(self, branch: str, token: str) -> Path:
        """Where ``retire(branch, token)`` puts the data directory."""
        return self.trash_dir / f"{self.path(branch).name}.{token}"

    async def retire(self, branch: str, token: str | None = None) -> Path | None:
        """Move ``branch``'s data directory into the trash; the trash path, None if absent.

        The rename is the instant the branch stops existing on disk: before it the directory is
        whole, after it the directory is no branch's. That is what makes delete and reset
        crash-safe, and it works on a full disk because a rename allocates nothing. ``token``
        names the trash entry, so a caller that recorded it can ``restore`` it after a crash.
        """
        source = self.path(branch)
        target = self.trash_path(branch, token or secrets.token_hex(4))
        moved = await _move_if_present(source, target, failed=f"cannot move {source} to the trash")
        return target if moved else None

    async def restore(self, branch: str, token: str) -> bool:
        """Undo ``retire(branch, token)``: whether the directory was in the trash to put back."""
        source, target = self.trash_path(branch, token), self.path(branch)
        return await _move_if_present(source, target, failed=f"cannot move {source} back")

    def deleted_path(self, branch: str, token: str) -> Path:
        """Where ``trash(branch, token)`` keeps the data directory."""
        check_component(token, "trash token")
        return self.branches_dir / DELETED_DIR / f"{self.path(branch).name}.{token}"

    async def trash(self, branch: str, token: str) -> bool:
        """Rename ``branch``'s data directory into ``.deleted/`` (O(1), no free space)."""
        source, target = self.path(branch), self.deleted_path(branch, token)
        return await _move_if_present(source, target, failed=f"cannot move {source} aside")

    async def untrash(self, branch: str, token: str) -> bool:
        """Rename a kept directory back into ``branch``'s place, if it is there and free."""
        source, target = self.deleted_path(branch, token), self.path(branch)
        return await _move_if_present(source, target, failed=f"cannot move {source} back")

    async def purge(self, branch: str, token: str) -> None:
        """Move the kept directory into the trash (the instant it is gone), then free it."""
        source = self.deleted_path(branch, token)
        retired = self.trash_path(branch, token)
        if await _move_if_present(source, retired, failed=f"cannot move {source} to the trash"):
            await self.remove_path(retired)

    async def trashed(self) -> builtins.list[tuple[str, str]]:
        """(branch, token) of every directory under ``.deleted/``."""

        def _names() -> builtins.list[str]:
            try:
                return sorted(entry.name for entry in os.scandir(self.branches_dir / DELETED_DIR))
            except FileNotFoundError:
                return []

        kept = (name.rpartition(".") for name in await trio.to_thread.run_sync(_names))
        return [(name, token) for name, dot, token in kept if dot and name and token]

    async def rename(self, branch: str, new_name: str) -> bool:
        """Give ``branch``'s data directory ``new_name``'s place in one durable rename; whether
        it moved (not when ``branch`` is absent or ``new_name`` taken). Needs no free space."""
        source, target = self.path(branch), self.path(new_name)
        return await _move_if_present(source, target, failed=f"cannot move {source} to {target}")

    async def remove_path(self, path: Path) -> None:
        """Remove one retired or staged data directory; drivers with subvolumes override it."""
        await remove_tree(path)

    async def sweep(self) -> builtins.list[Path]:
        """Remove the trash and every staging leftover under ``branches/``; what was removed.
        Deleted branches kept for undelete (``.deleted/``) stay.

        Only for start-up, before any operation runs: a staging directory of a live clone looks
        exactly like a crashed one.
        """

        def _leftovers() -> builtins.list[Path]:
            found: builtins.list[Path] = []
            if self.trash_dir.is_dir():
                found.extend(sorted(self.trash_dir.iterdir()))
            if self.branches_dir.is_dir():
                found.extend(
                    entry
                    for entry in sorted(self.branches_dir.iterdir())
                    if entry.name.startswith(HIDDEN_PREFIX)
                    and entry.name not in (TRASH_DIR, DELETED_DIR)
                )
            return found

        leftovers = await trio.to_thread.run_sync(_leftovers)
        for path in leftovers:
            await self.remove_path(path)
        # Made now, not at the first delete: on a full disk even a mkdir fails, a rename not
        # (on a full XFS, deleting a branch failed at ``.deleted``'s mkdir).
        for kept in (self.trash_dir, self.branches_dir / DELETED_DIR):
            await run_off_loop(
                partial(kept.mkdir, mode=PGDATA_MODE, parents=True, exist_ok=True),
                failed=f"cannot create {kept}",
                hint=_WRITE_HINT,
            )
        return leftovers

    def staging_path(self, branch: str, purpose: str) -> Path:
        """A hidden sibling of ``branch``'s directory for building it before it appears.

        It is a sibling so the final ``rename`` stays on one filesystem (atomic), and its name is
        fixed per branch so a retry after a crash finds and removes the leftover.
        """
        target = self.path(branch)
        return target.with_name(f"{HIDDEN_PREFIX}{target.name}.{purpose}")

    def require_clone_endpoints(self, parent: str, child: str) -> tuple[Path, Path]:
        """The parent's and child's paths, after checking the parent is there and the child not.

        Checked up front so a clone fails with a message naming the branch instead of a tool's
        "No such file" or, worse, copying *into* an existing child.
        """
        source, target = self.path(parent), self.path(child)
        if not source.is_dir():
            raise StorageError(
                f"cannot clone branch {parent!r}: its data directory {source} does not exist",
                hint=f"create {parent!r} first, or check the storage root {self.root}",
            )
        if target.exists() or target.is_symlink():
            raise StorageError(
                f"cannot clone into branch {child!r}: {target} already exists",
                hint=f"delete branch {child!r} first, or pick another name",
            )
        return source, target

    def require_absent(self, branch: str) -> Path:
        """``branch``'s path, after checking nothing is there yet (for ``create``)."""
        target = self.path(branch)
        if target.exists() or target.is_symlink():
            raise StorageError(
                f"cannot create branch {branch!r}: {target} already exists",
                hint=f"delete branch {branch!r} first, or reuse its data directory",
            )
        return target


async def _move_if_present(source: Path, target: Path, *, failed: str) -> bool:
    """Durably rename ``source`` to ``target`` unless ``source`` is absent or ``target`` taken;
    whether it moved. Off the event loop; an ``OSError`` becomes a StorageError."""

    def _move() -> bool:
        if not (source.exists() or source.is_symlink()) or target.exists():
            return False
        target.parent.mkdir(mode=PGDATA_MODE, parents=True, exist_ok=True)
        _durable_rename(source, target)
        return True

    try:
        return await trio.to_thread.run_sync(_move)
    except OSError as exc:
        raise StorageError(f"{failed}: {exc.strerror or exc}", hint=_WRITE_HINT) from exc


def _durable_rename(source: Path, target: Path) -> None:
    """``rename`` and make it survive a power cut (both directories synced; blocking)."""
    source.rename(target)
    fsync_dir(source.parent)
    if target.parent != source.parent:
        fsync_dir(target.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in directory ``path`` durable (blocking; call off the loop)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def run_off_loop(step: Callable[[], object], *, failed: str, hint: str) -> None:
    """Run a blocking filesystem ``step`` in a thread; an ``OSError`` becomes a StorageError
    whose message is ``failed`` plus the system's reason."""
    try:
        await trio.to_thread.run_sync(step)
    except OSError as exc:
        raise StorageError(f"{failed}: {exc.strerror or exc}", hint=hint) from exc


_WRITE_HINT = "check that Prism may write to the storage root"


async def make_private_dir(path: Path) -> None:
    """Create ``path`` (parents too) as an empty directory with mode 0700, exactly.

    ``chmod`` after ``mkdir`` because ``mkdir``'s mode is filtered by the umask.
    """

    def _make() -> None:
        path.mkdir(mode=PGDATA_MODE, parents=True)
        path.chmod(PGDATA_MODE)

    await run_off_loop(_make, failed=f"cannot create data directory {path}", hint=_WRITE_HINT)


async def make_parent_dir(path: Path) -> None:
    """Make sure the plain directory that will contain ``path`` exists (``branches/``)."""
    await run_off_loop(
        lambda: path.parent.mkdir(parents=True, exist_ok=True),
        failed=f"cannot create directory {path.parent}",
        hint=_WRITE_HINT,
    )


async def set_private_mode(path: Path) -> None:
    """Force a data directory to mode 0700 without touching its owner."""
    await run_off_loop(
        lambda: path.chmod(PGDATA_MODE),
        failed=f"cannot set mode 0700 on {path}",
        hint="Postgres refuses data directories others can read; check Prism's permissions",
    )


async def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything below it; a missing path is not an error."""

    def _remove() -> None:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)

    await run_off_loop(
        _remove,
        failed=f"cannot remove {path}",
        hint="check permissions and that no process still uses the directory",
    )


async def remove_quietly(
    path: Path, remove: Callable[[Path], Awaitable[None]] = remove_tree
) -> None:
    """Best-effort ``remove(path)`` on a failure path, where the original error must win.

    A cleanup failure is logged rather than raised: replacing the real cause (the failed clone)
    with "could not remove" would hide what the operator needs to fix.
    """
    try:
        await remove(path)
    except StorageError as exc:
        log.warning("storage: cleanup failed path=%s error=%s", path, exc.message)
