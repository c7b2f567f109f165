"""In-memory stand-ins for the storage and runtime drivers, for testing BranchManager alone.

They satisfy the ``Storage`` and ``Runtime`` Protocols, keep what they hold in dicts, and let a
test decide how long a step takes (``delay``, in Trio time, so a ``MockClock`` runs it at once)
and which step fails (``fail``), so locks, rollback, admission and eviction are tested without
a Postgres or a filesystem.
"""

from __future__ import annotations

import builtins
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import trio

from prism.core.address import BackendAddress
from prism.core.errors import StorageError
from prism.core.names import MAIN_BRANCH
from prism.durable.state import StateStore
from prism.runtime.base import Confinement, ServerExtras, Tools, seen_at_host_path


def _raise_if_failing(fail: dict[str, BaseException], step: str, branch: str) -> None:
    error = fail.get(f"{step}:{branch}") or fail.get(step)
    if error is not None:
        raise error


class FakeStorage:
    """Branch "data directories" that are names in a set."""

    name = "fake"
    atomic = True
    copy_on_write = True

    def __init__(self, root: Path = Path("fake-root"), *, delay: float = 0.0) -> None:
        self.root = root
        self.delay = delay
        self.branches: set[str] = set()
        self.retired: dict[Path, str] = {}
        """Retired "directories" → the branch they held, until removed or swept."""
        self.fail: dict[str, BaseException] = {}
        """Step (``clone``, ``destroy`` ...) or step of one branch (``clone:feat``) → the
        exception it raises."""
        self.deleted: dict[tuple[str, str], int] = {}
        """What ``trash`` keeps: (branch, token) → its own bytes."""
        self.sizes: dict[str, int] = {}
        """Own bytes of a branch (0 unless set): what freeing it gives back to ``free``."""
        self.free = 0
        """Fake free space: grows by a branch's size when its data is freed for good."""

    async def _step(self, step: str, branch: str) -> None:
        await trio.sleep(self.delay)
        _raise_if_failing(self.fail, step, branch)

    def path(self, branch: str) -> Path:
        return self.root / ("master" if branch == MAIN_BRANCH else f"branches/{branch}")

    def exists(self, branch: str) -> bool:
        return branch in self.branches

    def list(self) -> list[str]:
        return sorted(self.branches)

    async def create(self, branch: str) -> Path:
        await self._step("create", branch)
        self.branches.add(branch)
        return self.path(branch)

    async def clone(self, parent: str, child: str) -> Path:
        await self._step("clone", child)
        if parent not in self.branches:
            raise StorageError(f"no parent {parent}")
        self.branches.add(child)
        return self.path(child)

    async def refresh_subdir(self, parent: str, child: str, relpath: str) -> None:
        await self._step("refresh_subdir", child)

    async def destroy(self, branch: str) -> None:
        await self._step("destroy", branch)
        if branch in self.branches:
            self.free += self.sizes.pop(branch, 0)
        self.branches.discard(branch)

    async def trash(self, branch: str, token: str) -> bool:
        await self._step("trash", branch)
        if branch not in self.branches:
            return False
        self.branches.discard(branch)
        self.deleted[branch, token] = self.sizes.pop(branch, 0)
        return True

    async def untrash(self, branch: str, token: str) -> bool:
        await self._step("untrash", branch)
        if (branch, token) not in self.deleted or branch in self.branches:
            return False
        self.sizes[branch] = self.deleted.pop((branch, token))
        self.branches.add(branch)
        return True

    async def purge(self, branch: str, token: str) -> None:
        await self._step("purge", branch)
        self.free += self.deleted.pop((branch, token), 0)

    async def trashed(self) -> builtins.list[tuple[str, str]]:
        return sorted(self.deleted)

    async def retire(self, branch: str, token: str | None = None) -> Path | None:
        await self._step("retire", branch)
        if branch not in self.branches:
            return None
        self.branches.discard(branch)
        self.free += self.sizes.pop(branch, 0)
        trashed = self.root / ".trash" / (token or branch)
        self.retired[trashed] = branch
        return trashed

    async def restore(self, branch: str, token: str) -> bool:
        trashed = self.root / ".trash" / token
        if self.retired.pop(trashed, None) != branch:
            return False
        self.branches.add(branch)
        return True

    async def rename(self, branch: str, new_name: str) -> bool:
        await self._step("rename", branch)
        if branch not in self.branches or new_name in self.branches:
            return False
        self.branches.discard(branch)
        self.branches.add(new_name)
        return True

    async def remove_path(self, path: Path) -> None:
        await self._step("remove_path", path.name)
        self.retired.pop(path, None)

    async def sweep(self) -> builtins.list[Path]:
        leftovers = sorted(self.retired)
        self.retired.clear()
        return leftovers

    def usage_bytes(self, branch: str) -> int | None:
        return self.sizes.get(branch, 0) if branch in self.branches else None


class FakeRuntime:
    """Branch "servers" that are addresses in a dict; nothing listens on them."""

    name = "fake"

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay
        self.running: dict[str, BackendAddress] = {}
        self.peak = 0
        """The most servers running at once."""
        self.strays: list[str] = []
        """Servers an earlier Prism left running that belong to no branch: reconcile reaps
        them."""
        self.killed: list[str] = []
        """Branches whose server was killed (a shutdown out of time), in order."""
        self.fail: dict[str, BaseException] = {}
        """Step (``start``, ``stop`` ...) or step of one branch (``stop:feat``) → the
        exception it raises."""
        self.started_with: dict[str, dict[str, str]] = {}
        """Branch → the extra settings of its last start, as a local server sees its
        directories (at their host paths)."""
        self.shared: dict[str, tuple[Path, ...]] = {}
        """Branch → the host directories its last start was given."""
        self.source_tools_asked: list[tuple[Path, str | None]] = []
        self.logs: dict[str, str] = {}
        """Branch → what its server "logged"."""
        self._port = 40000

    async def _step(self, step: str, branch: str) -> None:
        await trio.sleep(self.delay)
        _raise_if_failing(self.fail, step, branch)

    async def initdb(self, pgdata: Path, *, superuser: str, password: str) -> None:
        await self._step("initdb", pgdata.name)

    async def start(
        self,
        branch: str,
        pgdata: Path,
        *,
        parent: str | None = None,
        extras: ServerExtras | None = None,
    ) -> BackendAddress:
        await self._step("start", branch)
        settings, mounts = (extras or ServerExtras()).resolve(seen_at_host_path)
        self.started_with[branch] = settings
        self.shared[branch] = tuple(mount.source for mount in mounts)
        self._port += 1
        self.running[branch] = BackendAddress("127.0.0.1", self._port)
        self.peak = max(self.peak, len(self.running))
        return self.running[branch]

    async def stop(self, branch: str) -> None:
        await self._step("stop", branch)
        self.running.pop(branch, None)

    async def kill(self, branch: str) -> None:
        await self._step("kill", branch)
        self.running.pop(branch, None)
        self.killed.append(branch)

    async def adopt(self, branch: str, pgdata: Path) -> BackendAddress | None:
        return None

    async def reap_strays(self, root: Path) -> list[str]:
        await self._step("reap_strays", root.name)
        reaped, self.strays = self.strays, []
        return reaped

    def confinement(self) -> Confinement:
        """Nothing runs, so nothing escapes."""
        return Confinement("fake", ("no server runs",))

    def address(self, branch: str) -> BackendAddress | None:
        return self.running.get(branch)

    async def server_log(self, branch: str) -> str:
        await trio.lowlevel.checkpoint()
        return self.logs.get(branch, "")

    async def dump_schema(self, branch: str, *, user: str, database: str) -> str:
        await trio.lowlevel.checkpoint()
        return f"-- schema of {database} on {branch}\n"

    async def source_tools(self, directory: Path, *, source_host: str | None) -> FakeSourceTools:
        await self._step("source_tools", source_host or "")
        self.source_tools_asked.append((directory, source_host))
        return FakeSourceTools()

    async def aclose(self) -> None:
        return None


class FakeSourceTools:
    """Source tools whose programs all succeed silently; records what it was asked."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, ...]] = []
        self.chowned: list[Path] = []
        self.log = ""

    async def for_major(self, major: int | None, *, what: str) -> Tools:
        return _FakePrograms(self.runs)

    def chown(self, path: Path) -> None:
        self.chowned.append(path)

    async def server_log(self) -> str:
        return self.log

    async def stop_leftovers(self, main: Path) -> None:
        await trio.lowlevel.checkpoint()


class _FakePrograms:
    def __init__(self, runs: list[tuple[str, ...]]) -> None:
        self._runs = runs

    async def run(
        self,
        program: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        shares: Sequence[Path] = (),
        cwd: Path | None = None,
        on_stderr_line: Callable[[str], None] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        await trio.lowlevel.checkpoint()
        self._runs.append((program, *args))
        return subprocess.CompletedProcess([program, *args], 0, b"", b"")

    async def pipe(
        self,
        first: Sequence[str],
        second: Sequence[str],
        *,
        env: Mapping[str, str],
        shares: Sequence[Path] = (),
        on_chunk: Callable[[int], None] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        await trio.lowlevel.checkpoint()
        self._runs.append((*first, "|", *second))
        return subprocess.CompletedProcess([*first, "|", *second], 0, b"", b"")


class InlineStateStore(StateStore):
    """The real sqlite registry, queried on the event loop instead of in a worker thread.

    Under ``MockClock(autojump_threshold=0)`` a task waiting on a thread counts as blocked, so
    the clock jumps ahead while sqlite works and the interleaving of a test changes from run to
    run; inline, a test's timing is the same every run. (A few milliseconds of blocking are
    fine in a test; Prism itself keeps sqlite off the loop.)
    """

    async def _run(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        await trio.lowlevel.checkpoint()
        return self._db.execute(sql, params).fetchall()
