"""Limits the proxy applies before a connection reaches a branch: start-up slots, create policy.

The caps on branches and running servers are not here: they are reservations taken by
``BranchManager`` itself, so the proxy, the API and the CLI cannot race past them. Every refusal
is a PrismError with the SQLSTATE Postgres uses for the same kind of limit and a message naming
the limit, so an operator reading a client's error knows which knob to turn.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prism.core.errors import BranchNotFound, TooManyConnections
from prism.core.values import CreatePolicy
from prism.frontdoor.admission import FrontDoor


@dataclass
class Limits:
    """The proxy's own limits; 0 means no cap."""

    max_startup: int = 0
    create_on_connect: CreatePolicy = field(default=CreatePolicy(True))


class Gate:
    """Applies :class:`Limits` to the proxy's connections."""

    def __init__(self, manager: FrontDoor[Any], limits: Limits) -> None:
        self._manager = manager
        self._limits = limits
        self._in_startup = 0

    @property
    def in_startup(self) -> int:
        return self._in_startup

    @contextlib.contextmanager
    def startup_slot(self) -> Iterator[None]:
        """Count one connection in start-up for the block; refuse one over the cap."""
        cap = self._limits.max_startup
        if cap and self._in_startup >= cap:
            raise TooManyConnections(
                f"too many connections in start-up (limit {cap}, --max-startup-connections)",
                hint="try again in a moment",
            )
        self._in_startup += 1
        try:
            yield
        finally:
            self._in_startup -= 1

    def may_create(self, branch: str) -> None:
        """Refuse creating ``branch`` on connect when the policy says no.

        Only a check, so it may be early: the branch cap is the manager's reservation.
        """
        if self._manager.get(branch) is not None:
            return
        policy = self._limits.create_on_connect
        if not policy.allows(branch):
            raise BranchNotFound(
                f'branch "{branch}" does not exist, and this server does not create it on connect',
                hint="create it through the API first"
                if policy.pattern is None
                else f"names created on connect must match {policy.pattern.pattern!r}",
            )
