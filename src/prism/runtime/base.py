"""The runtime driver contract: running one Postgres server per branch."""

from __future__ import annotations

import enum
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol, runtime_checkable

from prism.core.address import BackendAddress


@dataclass(frozen=True)
class BindMount:
    """A host directory a containerised server sees at ``target``."""

    source: Path
    target: str
    read_only: bool = False


class Share(enum.Enum):
    """What a host directory given to a server beyond its data is for. Where the server sees
    it is the runtime's choice: a container at a fixed path, a local process at its own."""

    WAL_ARCHIVE = "wal-archive"
    """The branch's own WAL archive, which it writes (read-write)."""
    RESTORE_ARCHIVE = "restore-archive"
    """The parent's WAL archive, which a branch recovering to a time reads."""
    RESTORE_WAL = "restore-wal"
    """The parent's ``pg_wal``, for the segment it is still writing."""


@dataclass(frozen=True)
class SharedDir:
    """One host directory a server is given, by what it is for."""

    share: Share
    source: Path
    read_only: bool = False


SeenAt = Mapping[Share, PurePosixPath]
"""Where a server sees each directory it is given."""


def _no_settings(seen: SeenAt) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class ServerExtras:
    """Directories and settings one server is started with beyond Prism's own (the WAL archive
    it writes, the archive a recovering branch reads).

    The directories are host paths; ``settings`` makes the settings once the runtime has said
    where its server sees each one (``resolve``), so a command names the path the server sees.
    The settings win over those Prism overrides for every server.
    """

    dirs: tuple[SharedDir, ...] = ()
    settings: Callable[[SeenAt], dict[str, str]] = _no_settings

    def resolve(
        self, seen_at: Callable[[SharedDir], PurePosixPath]
    ) -> tuple[dict[str, str], tuple[BindMount, ...]]:
        """The settings and mounts of a server that sees each directory at ``seen_at(dir)``."""
        where = {shared.share: seen_at(shared) for shared in self.dirs}
        mounts = tuple(
            BindMount(shared.source, str(where[shared.share]), shared.read_only)
            for shared in self.dirs
        )
        return self.settings(where), mounts


def seen_at_host_path(shared: SharedDir) -> PurePosixPath:
    """A local server sees a directory where it is (opened in its sandbox)."""
    return PurePosixPath(shared.source)


class ServerExtrasSource(Protocol):
    """Whoever decides what a branch's server is started with beyond Prism's own settings
    (``prism.branches.pitr.PointInTime``); the branch manager asks it before each start."""

    def server_extras(self, branch: str, pgdata: Path, parent: str | None) -> ServerExtras:
        """The extras of ``branch``'s server on ``pgdata`` (blocking, cheap)."""
        ...


class Tools(Protocol):
    """The client programs of one PostgreSQL major version."""

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
        """Run ``program`` to its end; its stdout and stderr are returned.

        ``shares`` are the directories it reads or writes (a container gets them mounted);
        ``cwd`` the directory a host process runs in, by which ``stop_leftovers`` finds it;
        ``on_stderr_line`` sees each line of stderr as it comes (``pg_basebackup --progress``
        ends its lines with a carriage return). Cancelled, the program is killed first.
        """
        ...

    async def pipe(
        self,
        first: Sequence[str],
        second: Sequence[str],
        *,
        env: Mapping[str, str],
        shares: Sequence[Path] = (),
        on_chunk: Callable[[int], None] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``first`` (a program and its arguments) with its stdout piped into ``second``.

        The return code is 0 only when both succeed; stderr then holds the last lines of
        each program that failed, prefixed with its name (one killed only because the other
        stopped reading is not shown). ``on_chunk`` sees the bytes crossing the pipe as they
        go, where the runner moves them itself. Cancelled, both are killed first.
        """
        ...


class SourceTools(Protocol):
    """What a runtime offers for following a source: client programs, owners, main's log.

    Paths need no translation: whatever runs a program gives it each directory it shares
    with Prism at the path it has on the host.
    """

    async def for_major(self, major: int | None, *, what: str) -> Tools:
        """The programs for ``major`` (None: the default ones, any will ask a version); a
        major they cannot serve is refused naming ``what`` and the setting to change."""
        ...

    def chown(self, path: Path) -> None:
        """Give ``path`` to the user main's server (and the programs) run as."""
        ...

    async def server_log(self) -> str:
        """The end of main's server log, where its walreceiver says why it cannot stream."""
        ...

    async def stop_leftovers(self, main: Path) -> None:
        """Stop programs an earlier Prism left running (a crash mid-backup into ``main``), and
        wait until they are gone: their half-made copy is about to be thrown away."""
        ...


@dataclass(frozen=True)
class Confinement:
    """What a runtime's sandbox enforces on every branch server, and what this host lacks.

    Shown once in the start-up log (a warning naming each missing guard), in ``/healthz``, in
    ``/metrics`` and on the page, so nobody believes a branch is a boundary where it is not.
    """

    mechanism: str
    enforced: tuple[str, ...]
    missing: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether every guard the runtime knows of is in force."""
        return not self.missing


@runtime_checkable
class Runtime(Protocol):
    """Starts, stops and finds the Postgres server of each branch.

    A server listens on TCP for client sessions (pg_hba: password auth) and, where the runtime
    can, on a private Unix socket for Prism's trusted service connection; both are described by
    the returned ``BackendAddress``. Servers never run as root. Blocking work goes through
    ``trio.to_thread`` / ``trio.run_process``.
    """

    name: str

    async def initdb(self, pgdata: Path, *, superuser: str, password: str) -> None:
        """Initialise an empty data directory as a new cluster (scram-sha-256 over TCP)."""
        ...

    async def start(
        self,
        branch: str,
        pgdata: Path,
        *,
        parent: str | None = None,
        extras: ServerExtras | None = None,
    ) -> BackendAddress:
        """Start ``branch``'s server on ``pgdata`` and return once it accepts connections.

        ``parent`` is for drivers that label what they run (Docker), so an operator can see the
        branch tree outside Prism. ``extras``: directories the server is given and settings it
        starts with beyond Prism's own; the runtime decides where the server sees each
        directory (``ServerExtras.resolve``) and lets it reach them.

        Raises ``RuntimeStartFailed`` (with the last lines of the server log as hint) if the
        server exits early or is not ready within the runtime's start timeout; nothing is left
        running in that case.
        """
        ...

    async def stop(self, branch: str) -> None:
        """Stop ``branch``'s server with a fast shutdown; a branch not running is a no-op."""
        ...

    async def kill(self, branch: str) -> None:
        """Stop ``branch``'s server at once (SIGKILL), for a shutdown out of time.

        It may be in the middle of a ``stop`` that was cancelled. The next start runs crash
        recovery; a branch not running is a no-op.
        """
        ...

    async def adopt(self, branch: str, pgdata: Path) -> BackendAddress | None:
        """Take over a server of ``branch`` left running by an earlier Prism; None if none."""
        ...

    async def reap_strays(self, root: Path) -> list[str]:
        """Stop every server on a directory under ``root`` that no branch owns; describe each.

        Start-up reconcile calls it after adopting what belongs to known branches: what is
        still running then serves a rolled-back clone or a directory already gone.
        """
        ...

    def confinement(self) -> Confinement:
        """What the sandbox of this runtime's servers enforces on this host (cheap, cached)."""
        ...

    def address(self, branch: str) -> BackendAddress | None:
        """Where ``branch``'s server is reachable, or None if Prism does not know it running."""
        ...

    async def server_log(self, branch: str) -> str:
        """The end of ``branch``'s server log, what it last said (why it does not serve);
        "" if there is none or it cannot be read: the log explains, it never fails a caller."""
        ...

    async def dump_schema(self, branch: str, *, user: str, database: str) -> str:
        """``pg_dump --schema-only`` of ``database`` on ``branch``'s running server, run where
        the server runs, as its user, over its private service socket (``BackendQueryError``
        when it fails or this runtime cannot run it)."""
        ...

    async def source_tools(self, directory: Path, *, source_host: str | None) -> SourceTools:
        """The client programs for following a source at ``source_host`` (the base backup,
        asking its version), run where this runtime runs its servers.

        ``directory`` is Prism's directory for the source (main's passfile): main's server may
        read it from now on, at its host path; branches never. A source this runtime's servers
        cannot reach is refused here (``ConfigError``).
        """
        ...

    async def aclose(self) -> None:
        """Release the runtime's resources (does not stop servers; the caller does that)."""
        ...
