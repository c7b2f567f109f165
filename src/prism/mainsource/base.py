"""The one interface of how main is made and kept, and what it may ask of the branches above.

Main has three origins (``prism.mainsource``): Prism's own initdb, a hot standby of a source
server, numbered generations of a dump of one. Each is one ``MainStrategy``; whatever differs
between them — how main is made, which intents start-up recovery must know, whether Prism
knows main's superuser password, whether clients are served while main is made, what runs in
the background, what ``/healthz`` and the API show of the source — is a question the strategy
answers, so nothing outside the factory asks which origin it is.

A strategy lives below the branch manager: it never imports it. What it needs of the manager
(main's address, a swap of main's data under main's lock, the branches it marks with their
generation) is the small ``MainHost`` protocol, which ``BranchManager`` satisfies by shape and
which is handed to the strategy's background task (``keep``) and its health reader.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from prism.core.address import BackendAddress
from prism.core.followers import Followers
from prism.durable.recovery import Owner
from prism.durable.state import Generation

HealthReader = Callable[[], Awaitable[dict[str, Any]]]
"""Reads the ``source`` object of ``GET /api/v1/branches/main`` (and ``/metrics``)."""


@dataclass(frozen=True)
class MainOrigin:
    """What the branch manager is given at construction to make main and, if it can, refresh
    it: the manager holds main's lock and record, the origin fills the data directory."""

    make: Callable[[Path], Awaitable[None]]
    """Fills main's empty data directory (initdb, a base backup, a first dump)."""
    how: str
    """What ``make`` does, for the log line that starts it."""
    progress: Callable[[], str]
    """How far the making of main is, for the clients refused meanwhile (a base backup's
    percent and time left)."""
    long: bool = False
    """Making main copies a source and may take hours: main is listed as ``backing_up``
    meanwhile, not ``provisioning``."""
    refresh: Callable[[], Awaitable[Generation]] | None = None
    """Makes a new generation of main (``--source-mode dump``); None in other modes."""


class BranchMark(Protocol):
    """A branch as a strategy sees it: its name, and the generation of main it holds."""

    @property
    def name(self) -> str: ...

    generation: Generation | None


class MainHost(Protocol):
    """What a strategy needs of the branch manager (which satisfies it by shape)."""

    def get(self, name: str) -> BranchMark | None: ...

    def list(self) -> Sequence[BranchMark]: ...

    def address(self, name: str) -> BackendAddress | None:
        """Where ``name``'s server is reachable now; None if it is not running."""
        ...

    def making_main(self) -> bool:
        """Whether main is still being made (its first initdb, base backup or dump)."""
        ...

    async def wait_opened(self) -> None:
        """Return once main is made and running."""
        ...

    async def replace_main(self, swap: Callable[[], Awaitable[None]], *, why: str) -> None:
        """Run ``swap`` with main stopped and locked, then start main again if it ran."""
        ...


class MainStrategy(Protocol):
    """How main is made and kept: one implementation per origin, chosen once by
    ``prism.mainsource.open_main_source``."""

    @property
    def origin(self) -> MainOrigin:
        """What the branch manager makes main with (and refreshes it with)."""
        ...

    @property
    def superuser_password(self) -> str | None:
        """The password of main's superuser as Prism set it, for connection strings; None
        when Prism does not know it (a standby has the source's roles)."""
        ...

    @property
    def serve_early(self) -> bool:
        """Serve the API and the front door while main is made (a base backup may take hours;
        clients are told how far it is), instead of keeping clients in the backlog."""
        ...

    @property
    def keeps_history(self) -> bool:
        """Whether main's WAL goes on across its life, so branches may be made as of a time;
        not when main is replaced by a new cluster (a dump generation)."""
        ...

    def recovery_owners(self) -> list[Owner]:
        """Its parts of start-up recovery (the intents it writes)."""
        ...

    def followers(self) -> Followers:
        """What it does when a branch's server or data changes."""
        ...

    def health(self, host: MainHost) -> HealthReader | None:
        """How main keeps up with its source, for the API; None when there is no source to
        follow."""
        ...

    async def keep(
        self, host: MainHost, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep main (watch the source, refresh on a timer, or nothing), in the server's
        nursery once the manager exists; ``started`` once ``host`` may be asked for refreshes
        and clones are followed."""
        ...
