"""Limits that keep one reachable port from exhausting the host: connections, branches, servers.

Every refusal is a PrismError with the SQLSTATE Postgres uses for the same kind of limit and a
message naming the limit, so an operator reading a client's error knows which knob to turn.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import trio

from prism.branches import BranchManager, BranchStatus
from prism.errors import BranchNotFound, ConfigError, PrismError
from prism.names import MAIN_BRANCH

log = logging.getLogger(__name__)

TOO_MANY_CONNECTIONS = "53300"
CONFIGURATION_LIMIT_EXCEEDED = "53400"


def parse_create_policy(text: str) -> re.Pattern[str] | bool:
    """``--create-on-connect``: ``on``, ``off``, or a regular expression names must match."""
    if text in ("on", "off"):
        return text == "on"
    try:
        return re.compile(text)
    except re.error as exc:
        raise ConfigError(f"invalid --create-on-connect pattern {text!r}: {exc}") from None


@dataclass
class Limits:
    """The configured caps; 0 means no cap."""

    max_startup: int = 0
    max_branches: int = 0
    max_running: int = 0
    create_on_connect: re.Pattern[str] | bool = True


class Gate:
    """Applies :class:`Limits` to the proxy's connections."""

    def __init__(self, manager: BranchManager, limits: Limits) -> None:
        self._manager = manager
        self._limits = limits
        self._in_startup = 0
        self._creating: set[str] = set()
        self._starting: set[str] = set()
        self._room = trio.Lock()

    @property
    def in_startup(self) -> int:
        return self._in_startup

    @contextlib.contextmanager
    def startup_slot(self) -> Iterator[None]:
        """Count one connection in start-up for the block; refuse one over the cap."""
        cap = self._limits.max_startup
        if cap and self._in_startup >= cap:
            raise PrismError(
                f"too many connections in start-up (limit {cap}, --max-startup-connections)",
                hint="try again in a moment",
                sqlstate=TOO_MANY_CONNECTIONS,
            )
        self._in_startup += 1
        try:
            yield
        finally:
            self._in_startup -= 1

    def may_create(self, branch: str) -> None:
        """Refuse creating ``branch`` on connect when the policy or the branch cap says no."""
        if self._manager.get(branch) is not None:
            return
        policy = self._limits.create_on_connect
        if policy is False or (not isinstance(policy, bool) and not policy.fullmatch(branch)):
            raise BranchNotFound(
                f'branch "{branch}" does not exist, and this server does not create it on connect',
                hint="create it through the API first"
                if policy is False
                else f"names created on connect must match {policy.pattern!r}",
            )
        cap = self._limits.max_branches
        if cap and len(self._manager.list()) + len(self._creating - {branch}) >= cap:
            raise PrismError(
                f'cannot create branch "{branch}": the server has reached its limit of {cap} '
                "branches (--max-branches)",
                hint="delete branches you no longer need",
                sqlstate=CONFIGURATION_LIMIT_EXCEEDED,
            )

    @contextlib.asynccontextmanager
    async def running_slot(self, branch: str) -> AsyncIterator[None]:
        """Hold a place among the running servers while ``branch`` is created or woken.

        At the cap, the least recently used branch without connections is stopped to make
        room (never main: new branches are cloned from it); if every running branch is in
        use, the client is told so.
        """
        if self._manager.runtime.address(branch) is not None:
            yield
            return
        new = self._manager.get(branch) is None
        async with self._room:
            self._make_room(branch)
            await self._stop_for_room(branch)
            if new:
                self._creating.add(branch)
            self._starting.add(branch)
        try:
            yield
        finally:
            self._creating.discard(branch)
            self._starting.discard(branch)

    def _running(self) -> set[str]:
        runtime = self._manager.runtime
        alive = {b.name for b in self._manager.list() if runtime.address(b.name) is not None}
        return alive | self._starting

    def _make_room(self, branch: str) -> None:
        cap = self._limits.max_running
        if not cap or len(self._running() - {branch}) < cap:
            return
        if self._victim(branch) is None:
            raise PrismError(
                f'cannot start branch "{branch}": {cap} branch servers are running '
                "(--max-running) and all of them have clients",
                hint="close sessions on other branches, or try again later",
                sqlstate=TOO_MANY_CONNECTIONS,
            )

    def _victim(self, branch: str) -> str | None:
        idle = [
            b
            for b in self._manager.list()
            if b.name not in (branch, MAIN_BRANCH)
            and b.name not in self._starting
            and b.connections == 0
            and b.status is BranchStatus.RUNNING
        ]
        if not idle:
            return None
        return min(idle, key=lambda b: b.last_active_ts).name

    async def _stop_for_room(self, branch: str) -> None:
        cap = self._limits.max_running
        while cap and len(self._running() - {branch}) >= cap:
            victim = self._victim(branch)
            if victim is None:
                self._make_room(branch)
                return
            log.info("limits: stopping idle branch %s to make room for %s", victim, branch)
            await self._manager.stop(victim, reason="max-running")
