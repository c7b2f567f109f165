"""The runtime driver contract: running one Postgres server per branch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from prism.address import BackendAddress


@dataclass(frozen=True)
class BindMount:
    """A host directory a containerised server sees at ``target``."""

    source: Path
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ServerExtras:
    """Settings and mounts one server is started with beyond Prism's own (the WAL archive a
    container writes, the archive a recovering container reads); the settings name paths as
    the server sees them."""

    settings: dict[str, str]
    mounts: tuple[BindMount, ...] = ()


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
        self, branch: str, pgdata: Path, *, parent: str | None = None
    ) -> BackendAddress:
        """Start ``branch``'s server on ``pgdata`` and return once it accepts connections.

        ``parent`` is for drivers that label what they run (Docker), so an operator can see the
        branch tree outside Prism.

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

    async def aclose(self) -> None:
        """Release the runtime's resources (does not stop servers; the caller does that)."""
        ...
