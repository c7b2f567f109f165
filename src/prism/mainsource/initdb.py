"""Main as Prism's own cluster: an initdb, with the superuser and password Prism was given."""

from __future__ import annotations

import functools

import trio

from prism.core.followers import Followers
from prism.durable.recovery import Owner
from prism.mainsource.base import HealthReader, MainHost, MainOrigin
from prism.runtime.base import Runtime


class InitdbMain:
    """No source: main is made by initdb once and never replaced (``MainStrategy``)."""

    serve_early = False  # an initdb takes seconds: clients wait in the backlog
    keeps_history = True

    def __init__(self, runtime: Runtime, *, superuser: str, password: str) -> None:
        self.superuser_password: str | None = password
        self.origin = MainOrigin(
            make=functools.partial(runtime.initdb, superuser=superuser, password=password),
            how="initdb",
            progress=lambda: "Prism is creating it (initdb)",
        )

    def recovery_owners(self) -> list[Owner]:
        return []  # the initdb's intent is the manager's

    def followers(self) -> Followers:
        return Followers()

    def health(self, host: MainHost) -> HealthReader | None:
        return None

    async def keep(
        self, host: MainHost, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()  # nothing to keep: main is what its clients make of it
