"""Main as a hot standby of a source: made from its base backup, then following it."""

from __future__ import annotations

from typing import Any

import trio

from prism.core.followers import Followers
from prism.durable.recovery import Owner
from prism.mainsource.base import HealthReader, MainHost, MainOrigin
from prism.source.follow import Source
from prism.source.health import read_health, watch_source
from prism.storage.base import Storage


class StandbyMain:
    """``--source`` in stream mode: main is the source's copy, kept up by its own walreceiver
    (``MainStrategy``)."""

    # A base backup may take hours: the API shows its progress, clients are told how far it is.
    serve_early = True
    keeps_history = True
    # Main has the source's roles and passwords: Prism knows none of them.
    superuser_password: str | None = None

    def __init__(self, source: Source, storage: Storage, *, superuser: str) -> None:
        self.source = source
        self._storage = storage
        self._superuser = superuser
        self.origin = MainOrigin(
            make=source.make_main,
            how="base backup",
            progress=source.describe_progress,
            long=True,
        )

    def recovery_owners(self) -> list[Owner]:
        return [self.source.recovery_owner(self._storage)]

    def followers(self) -> Followers:
        return Followers()

    def health(self, host: MainHost) -> HealthReader | None:
        async def read() -> dict[str, Any]:
            health = await read_health(self.source, host, superuser=self._superuser)
            return health.view()

        return read

    async def keep(
        self, host: MainHost, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Watch main's replication (events, the retry backoff) once main runs."""
        task_status.started()
        await host.wait_opened()
        await watch_source(self.source, host, superuser=self._superuser)
