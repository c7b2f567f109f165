"""The ``zfs`` storage driver: every data directory is a dataset, a clone is snapshot + clone.

Datasets mirror the storage layout under one parent dataset chosen by the operator
(``--zfs-dataset pool/prism``): main is ``<dataset>/master`` mounted at ``<root>/master``, a
branch is ``<dataset>/branches/<name>`` mounted at ``<root>/branches/<name>``.
``<dataset>/branches`` itself is never mounted: ``<root>/branches`` stays a plain directory, as
with btrfs, so a pool moved from another driver needs no extra mount.

A clone is ``zfs snapshot <parent>@prism-<child>-<utc time>`` then ``zfs clone`` of it: atomic
(one instant of a running parent) and O(1) in the database's size. Each snapshot belongs to
exactly one child, so deleting the child deletes its origin snapshot too and nothing piles up.

With ``--source-mode dump`` main is replaced by a new generation while branches are clones of
the old one's snapshots: ``retire(main, token)`` then sets the old dataset aside (the user
property ``prism:aside=<token>``, unmounted) instead of destroying it, ``rename`` mounts the new
generation's dataset (``<dataset>/branches/gen:<n>``) at main's path, and start-up's ``sweep``
destroys a set-aside dataset once no clone needs it. Main's dataset is then whichever is
mounted at main's path (found by ``check``), ``<dataset>/master`` until the first refresh.

Deleting a branch that other branches were cloned from is *refused* (``BranchConflict``),
never done by destroying the children with it and never by ``zfs promote``: promotion would
silently move the parent's history into a child and make the child's deletion the dangerous one
later, which is harder to explain to an operator than "delete the children first".
"""

from __future__ import annotations

import builtins
import logging
import time
from pathlib import Path

import trio

from prism.core.errors import BranchConflict, ConfigError, StorageError
from prism.core.names import MAIN_BRANCH
from prism.storage._command import probe_tool, run_tool
from prism.storage._layout import (
    BRANCHES_DIR,
    DELETED_DIR,
    MASTER_DIR,
    BranchLayout,
    make_parent_dir,
    remove_tree,
    set_private_mode,
)
from prism.storage._tree import refresh_branch_subdir

log = logging.getLogger(__name__)

#: Prefix of the snapshots this driver makes; only those are destroyed with a branch.
SNAPSHOT_PREFIX = "prism-"

#: zfs-fuse (and ZFS on a busy system) may report "dataset is busy" for a moment after an
#: unmount; a destroy is retried with growing pauses for about this long before it fails.
_BUSY_RETRY_S = 10.0

#: The user property that marks a dataset set aside by ``retire``, and with which token.
_ASIDE = "prism:aside"

_RUNS_HINT = "check that ZFS is running"
_INSTALL_HINT = "install ZFS (Debian/Ubuntu: apt-get install zfsutils-linux, or zfs-fuse)"


class ZfsStorage(BranchLayout):
    """Datasets, snapshots and clones via the ``zfs`` command; atomic."""

    name = "zfs"
    atomic = True
    copy_on_write = True

    def __init__(self, root: Path, dataset: str) -> None:
        super().__init__(root)
        dataset = dataset.strip().strip("/")
        if not dataset:
            raise ConfigError(
                "storage 'zfs' needs the parent dataset for the branches",
                hint="pass --zfs-dataset POOL/NAME (create it with: zfs create POOL/NAME)",
            )
        self.dataset = dataset
        self._main: str | None = None
        """The dataset mounted as main when it is not ``<dataset>/master`` (a generation)."""

    def dataset_of(self, branch: str) -> str:
        """The dataset that holds ``branch``'s data directory (whether or not it exists)."""
        self.path(branch)  # validates the name before it reaches a zfs command line
        if branch == MAIN_BRANCH:
            return self._main or f"{self.dataset}/{MASTER_DIR}"
        return f"{self.dataset}/{BRANCHES_DIR}/{branch}"

    async def check(self) -> None:
        """Fail now if ZFS or the parent dataset is missing, or main is mounted elsewhere."""
        if await probe_tool(["zfs", "list", "-H", "-o", "name", self.dataset]) is None:
            if await probe_tool(["zfs", "list", "-H", "-o", "name"]) is None:
                raise StorageError(
                    "storage 'zfs' needs the zfs command and a running ZFS, which do not answer",
                    hint=f"{_INSTALL_HINT}; with zfs-fuse, start the zfs-fuse daemon",
                )
            raise StorageError(
                f"storage 'zfs' needs the dataset {self.dataset!r}, which does not exist",
                hint=f"create it: zfs create -o mountpoint=none {self.dataset}",
            )
        listed = await self._zfs(
            ["list", "-H", "-r", "-t", "filesystem", "-o", "name,mountpoint", self.dataset],
            action=f"list the datasets under {self.dataset}",
            hint="check that ZFS is running",
        )
        for line in listed.splitlines():
            name, _, mountpoint = line.partition("\t")
            if Path(mountpoint) == self.path(MAIN_BRANCH):
                self._main = name  # a generation of main (--source-mode dump), or master
        master = self.dataset_of(MAIN_BRANCH)
        if master in {dataset for dataset, _ in await self._marks()}:
            # Set aside by a refresh a crash cut short: start-up reconcile finishes or undoes it.
            log.warning("storage: main's dataset %s is set aside by an unfinished refresh", master)
        elif await self._dataset_exists(master):
            await self._require_mountpoint(master, self.path(MAIN_BRANCH))
        elif self.path(MAIN_BRANCH).is_dir():
            log.warning(
                "storage: %s is a plain directory, not the dataset %s; branching from main will "
                "fail until it is moved into that dataset (zfs create -o mountpoint=%s %s, then "
                "copy the data in)",
                self.path(MAIN_BRANCH),
                master,
                self.path(MAIN_BRANCH),
                master,
            )

    async def create(self, branch: str) -> Path:
        """Make an empty 0700 dataset mounted at ``branch``'s path, for ``initdb``."""
        target = self.require_absent(branch)
        dataset = self.dataset_of(branch)
        if branch != MAIN_BRANCH:
            await self._ensure_branches_dataset()
            await make_parent_dir(target)
        await self._zfs(
            ["create", "-o", f"mountpoint={target}", dataset],
            action=f"create dataset {dataset}",
            hint=f"check free space (zpool list) and that {target} does not exist",
        )
        try:
            await self._require_mountpoint(dataset, target)
            await set_private_mode(target)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._destroy_quietly(dataset)
            raise
        return target

    async def clone(self, parent: str, child: str) -> Path:
        """Snapshot ``parent`` and clone the snapshot as ``child``; nothing is left on failure."""
        source, target = self.require_clone_endpoints(parent, child)
        parent_dataset, child_dataset = self.dataset_of(parent), self.dataset_of(child)
        if not await self._dataset_exists(parent_dataset):
            raise StorageError(
                f"cannot clone branch {parent!r}: {source} is not the ZFS dataset {parent_dataset}",
                hint=(
                    f"move the data into a dataset: zfs create -o mountpoint={source}.new "
                    f"{parent_dataset}, copy, then swap the directories"
                ),
            )
        # A dataset mounted somewhere else would be cloned instead of the directory Prism
        # serves, so the child would silently hold other data.
        await self._require_mountpoint(parent_dataset, source)
        await self._ensure_branches_dataset()
        await make_parent_dir(target)
        snapshot = f"{parent_dataset}@{SNAPSHOT_PREFIX}{child}-{_utc_stamp()}"
        started = time.monotonic()
        await self._zfs(
            ["snapshot", snapshot],
            action=f"snapshot {parent_dataset}",
            hint="check free space (zpool list) and that Prism runs as root",
        )
        try:
            await self._zfs(
                ["clone", "-o", f"mountpoint={target}", snapshot, child_dataset],
                action=f"clone {snapshot} as {child_dataset}",
                hint=f"check free space (zpool list) and that {target} is free",
            )
            await self._require_mountpoint(child_dataset, target)
            await set_private_mode(target)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._destroy_quietly(child_dataset)
                await self._destroy_quietly(snapshot)
            raise
        log.info(
            "storage: cloned driver=zfs parent=%s branch=%s snapshot=%s duration_ms=%.1f",
            parent,
            child,
            snapshot,
            (time.monotonic() - started) * 1000,
        )
        return target

    async def refresh_subdir(self, parent: str, child: str, relpath: str) -> None:
        """Re-copy ``parent/relpath`` into ``child``."""
        await refresh_branch_subdir(
            self,
            parent,
            child,
            relpath,
            reflink="auto",
            hint="check free space (zpool list) and permissions",
        )

    async def destroy(self, branch: str) -> None:
        """Destroy ``branch``'s dataset and its origin snapshot; refuse if it has clones.

        A missing branch is not an error. A plain directory where the dataset should be (left
        by hand or by another driver) is removed like the other drivers would.
        """
        dataset = self.dataset_of(branch)
        target = self.path(branch)
        if not await self._dataset_exists(dataset):
            await remove_tree(target)
            return
        if branch != MAIN_BRANCH and await self._mountpoint(dataset) != target:
            # Moved on (a generation now main, or set aside): only its old mountpoint is left.
            await _remove_empty_mountpoint(target)
            return
        children = await self._clones_of(dataset)
        if children:
            names = ", ".join(sorted(self._branch_name(child) for child in children))
            raise BranchConflict(
                f"cannot delete branch {branch!r}: branches were cloned from it ({names})",
                hint="delete those branches first; Prism never deletes a branch's children with it",
            )
        origin = await self._origin(dataset)
        started = time.monotonic()
        # -r takes the dataset's own snapshots along; none of them has clones (checked above).
        await self._destroy(dataset, recursive=True)
        if origin is not None and origin.partition("@")[2].startswith(SNAPSHOT_PREFIX):
            await self._destroy(origin, recursive=False)
        await _remove_empty_mountpoint(target)
        log.info(
            "storage: destroyed driver=zfs branch=%s dataset=%s origin=%s duration_ms=%.1f",
            branch,
            dataset,
            origin,
            (time.monotonic() - started) * 1000,
        )

    async def retire(self, branch: str, token: str | None = None) -> Path | None:
        """Destroy the dataset at once: a mounted dataset cannot be renamed into the trash, and
        ``zfs destroy`` is already all-or-nothing (and frees space on a full pool).

        Main with a ``token`` (replaced by a new generation) is set aside instead: marked with
        the token and unmounted, for ``restore`` until the new generation is in its place, and
        destroyed then or, while branches are clones of its snapshots, once none is. Renaming
        it is no option: ``zfs rename`` of an origin remounts its clones, which fails under
        their running servers.
        """
        main = self.dataset_of(MAIN_BRANCH)
        if branch == MAIN_BRANCH and token is not None and await self._dataset_exists(main):
            await self._zfs(
                ["set", f"{_ASIDE}={token}", main], action=f"mark {main}", hint="check ZFS runs"
            )
            await self._zfs(
                ["set", "mountpoint=none", main],
                action=f"unmount {main}",
                hint="check that no process uses files under main's directory",
            )
            await _remove_empty_mountpoint(self.path(MAIN_BRANCH))
            return None
        await self.destroy(branch)
        return None

    async def restore(self, branch: str, token: str) -> bool:
        """Mount main's dataset that ``retire(main, token)`` set aside in main's place again."""
        if branch != MAIN_BRANCH:
            return False
        for dataset, mark in await self._marks():
            if mark == token:
                moved = await self._mount_as_main(dataset)
                await self._zfs(
                    ["inherit", _ASIDE, dataset], action=f"unmark {dataset}", hint="check ZFS runs"
                )
                return moved
        return False

    async def rename(self, branch: str, new_name: str) -> bool:
        """Mount ``branch``'s dataset as main (a new generation of it, ``--source-mode dump``);
        whether it moved. Only main's place can be taken: no other move is needed."""
        if new_name != MAIN_BRANCH:
            raise StorageError(
                f"the zfs driver only moves a dataset into main's place, not {new_name!r}"
            )
        dataset = self.dataset_of(branch)
        if not await self._dataset_exists(dataset) or not await self._mount_as_main(dataset):
            return False
        await _remove_empty_mountpoint(self.path(branch))
        await self._destroy_unneeded_asides()
        return True

    def _deleted_dataset(self, branch: str, token: str) -> str:
        """Where ``trash(branch, token)`` keeps ``branch``'s dataset (never mounted)."""
        self.deleted_path(branch, token)  # validates both before they reach a zfs command line
        return f"{self.dataset}/{DELETED_DIR.lstrip('.')}/{branch}.{token}"

    async def trash(self, branch: str, token: str) -> bool:
        """Unmount ``branch``'s dataset and rename it under ``<dataset>/deleted`` (O(1); its
        snapshots and clones follow the rename)."""
        dataset, kept = self.dataset_of(branch), self._deleted_dataset(branch, token)
        if not await self._dataset_exists(dataset):
            return False
        await self._ensure_container(kept.rpartition("/")[0])
        await self._zfs(
            ["set", "mountpoint=none", dataset],
            action=f"unmount {dataset}",
            hint="check that no process uses files under the branch's directory",
        )
        # Right after the unmount zfs-fuse may still call the dataset busy, as for a destroy.
        await self._zfs_patiently(
            ["rename", dataset, kept], action=f"keep {dataset}", hint=_RUNS_HINT
        )
        await _remove_empty_mountpoint(self.path(branch))
        return True

    async def untrash(self, branch: str, token: str) -> bool:
        """Rename a kept dataset back and mount it at ``branch``'s path."""
        dataset, kept = self.dataset_of(branch), self._deleted_dataset(branch, token)
        if not await self._dataset_exists(kept) or await self._dataset_exists(dataset):
            return False
        await self._zfs(["rename", kept, dataset], action=f"put back {kept}", hint=_RUNS_HINT)
        await self._zfs(
            ["set", f"mountpoint={self.path(branch)}", dataset],
            action=f"mount {dataset}",
            hint=f"check that {self.path(branch)} is empty",
        )
        return True

    async def purge(self, branch: str, token: str) -> None:
        """Destroy a kept dataset and its origin snapshot (``zfs destroy`` is all or nothing)."""
        kept = self._deleted_dataset(branch, token)
        if not await self._dataset_exists(kept):
            return
        origin = await self._origin(kept)
        await self._destroy(kept, recursive=True)
        if origin is not None and origin.partition("@")[2].startswith(SNAPSHOT_PREFIX):
            await self._destroy(origin, recursive=False)

    async def trashed(self) -> builtins.list[tuple[str, str]]:
        """(branch, token) of every dataset under ``<dataset>/deleted``."""
        container = f"{self.dataset}/{DELETED_DIR.lstrip('.')}"
        if not await self._dataset_exists(container):
            return []
        output = await self._zfs(
            ["list", "-H", "-o", "name", "-t", "filesystem", "-d", "1", container],
            action=f"list the datasets under {container}",
            hint=_RUNS_HINT,
        )
        kept = (line.rpartition("/")[2].rpartition(".") for line in output.splitlines())
        return [(name, token) for name, dot, token in kept if dot and name and token]

    async def _mount_as_main(self, dataset: str) -> bool:
        """Mount ``dataset`` at main's path unless main is there; it serves as main from now."""
        if (self.path(MAIN_BRANCH) / "PG_VERSION").exists():
            return False
        hint = f"check that {self.path(MAIN_BRANCH)} is empty"
        try:
            await self._zfs(
                ["set", f"mountpoint={self.path(MAIN_BRANCH)}", dataset],
                action=f"mount {dataset} as main",
                hint=hint,
            )
        except StorageError as exc:
            # Right after main's old dataset left, zfs-fuse may still call the mountpoint
            # busy: the property is set all the same, and the mount is tried again below.
            if "busy" not in exc.message:
                raise
        mounted = await self._zfs(
            ["get", "-H", "-o", "value", "mounted", dataset],
            action=f"read whether {dataset} is mounted",
            hint="check that ZFS is running",
        )
        if mounted != "yes":
            await self._zfs_patiently(["mount", dataset], action=f"mount {dataset}", hint=hint)
        self._main = dataset
        return True

    async def sweep(self) -> builtins.list[Path]:
        """Also destroy main's datasets set aside by refreshes that no branch is a clone of."""
        return [*await super().sweep(), *await self._destroy_unneeded_asides()]

    async def _destroy_unneeded_asides(self) -> builtins.list[Path]:
        """Destroy the set-aside datasets of old mains that no branch is a clone of."""
        removed = []
        for dataset, _ in await self._marks():
            if dataset != self.dataset_of(MAIN_BRANCH) and not await self._clones_of(dataset):
                await self._destroy(dataset, recursive=True)
                removed.append(Path(dataset))
        return removed

    async def _marks(self) -> builtins.list[tuple[str, str]]:
        """(dataset, token) of every dataset ``retire`` set aside."""
        output = await self._zfs(
            ["get", "-H", "-r", "-s", "local", "-o", "name,value", _ASIDE, self.dataset],
            action=f"list the datasets set aside under {self.dataset}",
            hint="check that ZFS is running",
        )
        pairs = (line.partition("\t") for line in output.splitlines())
        return [(name, value) for name, _, value in pairs if "@" not in name]

    def usage_bytes(self, branch: str) -> int | None:
        """Unknown here: ZFS knows it (``zfs get used``), but only through a command, and this
        method is synchronous, so it cannot ask without blocking the event loop."""
        return None

    async def _zfs(self, args: list[str], *, action: str, hint: str) -> str:
        return await run_tool(["zfs", *args], action=action, hint=hint)

    async def _dataset_exists(self, dataset: str) -> bool:
        return await probe_tool(["zfs", "list", "-H", "-o", "name", dataset]) is not None

    async def _ensure_branches_dataset(self) -> None:
        """Create ``<dataset>/branches`` (never mounted) as the namespace for branch clones."""
        await self._ensure_container(f"{self.dataset}/{BRANCHES_DIR}")

    async def _ensure_container(self, container: str) -> None:
        """Create ``container`` (never mounted) under the parent dataset if it is missing."""
        if await self._dataset_exists(container):
            return
        try:
            await self._zfs(
                ["create", "-o", "mountpoint=none", container],
                action=f"create dataset {container}",
                hint=f"check that the dataset {self.dataset} exists and the pool has space",
            )
        except StorageError:
            # Two first clones at once both try to create it; the loser finds it there.
            if not await self._dataset_exists(container):
                raise

    async def _require_mountpoint(self, dataset: str, expected: Path) -> None:
        """Check with ``zfs get`` that ``dataset`` is mounted exactly at ``expected``."""
        output = await self._zfs(
            ["get", "-H", "-o", "value", "mountpoint,mounted", dataset],
            action=f"read the mountpoint of {dataset}",
            hint="check that the dataset exists",
        )
        values = output.splitlines()
        mountpoint = values[0] if values else ""
        mounted = values[1] if len(values) > 1 else ""
        if Path(mountpoint) != expected:
            raise StorageError(
                f"dataset {dataset} is mounted at {mountpoint}, but Prism expects it at {expected}",
                hint=f"zfs set mountpoint={expected} {dataset}",
            )
        if mounted != "yes":
            raise StorageError(
                f"dataset {dataset} is not mounted at {expected}",
                hint=f"zfs mount {dataset}",
            )

    async def _mountpoint(self, dataset: str) -> Path:
        output = await self._zfs(
            ["get", "-H", "-o", "value", "mountpoint", dataset],
            action=f"read the mountpoint of {dataset}",
            hint="check that the dataset exists",
        )
        return Path(output)

    async def _clones_of(self, dataset: str) -> list[str]:
        """Datasets anywhere under the parent dataset whose origin is a snapshot of ``dataset``.

        Read from every dataset's ``origin`` rather than the snapshots' ``clones`` property,
        which older ZFS (zfs-fuse) does not have.
        """
        output = await self._zfs(
            ["list", "-H", "-o", "name,origin", "-t", "filesystem", "-r", self.dataset],
            action=f"list the datasets under {self.dataset}",
            hint="check that ZFS is running",
        )
        clones = []
        for line in output.splitlines():
            name, _, origin = line.partition("\t")
            if origin.startswith(f"{dataset}@"):
                clones.append(name)
        return clones

    async def _origin(self, dataset: str) -> str | None:
        output = await self._zfs(
            ["get", "-H", "-o", "value", "origin", dataset],
            action=f"read the origin of {dataset}",
            hint="check that the dataset exists",
        )
        return None if output in ("", "-") else output

    def _branch_name(self, dataset: str) -> str:
        """The branch a dataset under the parent holds (its last component, or main)."""
        if dataset == self.dataset_of(MAIN_BRANCH):
            return MAIN_BRANCH
        return dataset.rpartition("/")[2]

    async def _destroy(self, name: str, *, recursive: bool) -> None:
        """``zfs destroy`` a dataset or snapshot, unmounting first and riding out "busy"."""
        if "@" not in name:
            # Unmount separately: the error of a failed unmount names the real culprit (a
            # process with files open there), where destroy would only say "busy".
            await probe_tool(["zfs", "unmount", name])
        await self._zfs_patiently(
            ["destroy", *(["-r"] if recursive else []), name],
            action=f"destroy {name}",
            hint="check that no process (a Postgres server, a shell) uses its files",
        )

    async def _zfs_patiently(self, args: list[str], *, action: str, hint: str) -> None:
        """Run ``zfs args``, riding out "busy" for a while (see ``_BUSY_RETRY_S``)."""
        pause = 0.01
        deadline = trio.current_time() + _BUSY_RETRY_S
        while True:
            try:
                await self._zfs(args, action=action, hint=hint)
                return
            except StorageError as exc:
                if "busy" not in exc.message or trio.current_time() >= deadline:
                    raise
            log.debug("storage: %s: busy, retrying in %.2fs", action, pause)
            await trio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def _destroy_quietly(self, name: str) -> None:
        """Best-effort rollback; a failure is logged so the original error stays the one seen."""
        if await probe_tool(["zfs", "list", "-H", "-o", "name", "-t", "all", name]) is None:
            return
        try:
            await self._destroy(name, recursive=True)
        except StorageError as exc:
            log.warning("storage: rollback failed name=%s error=%s", name, exc.message)


def _utc_stamp() -> str:
    """A sortable UTC time with nanoseconds, so two clones never pick the same snapshot name."""
    now = time.time_ns()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 1_000_000_000)) + (
        f".{now % 1_000_000_000:09d}Z"
    )


async def _remove_empty_mountpoint(path: Path) -> None:
    """Remove the directory an unmounted dataset leaves, so ``list()`` stops showing the branch.

    Only an empty directory is removed: anything inside it was not on the dataset and is not
    Prism's to delete.
    """
    try:
        await trio.to_thread.run_sync(path.rmdir)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError(
            f"cannot remove the mountpoint {path} after destroying its dataset: "
            f"{exc.strerror or exc}",
            hint="something outside the dataset was stored there; move it away and delete again",
        ) from exc
