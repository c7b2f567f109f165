"""The proxied client sessions of each branch, so an operation can end them with a reason.

An operation that takes a branch away from its clients (reset, stop, delete, expiry) ends their
sessions with a clear message instead of letting the server's shutdown cut them off
mid-sentence. A session is counted on the branch *instance* it was admitted to, so a session of
a deleted branch never touches a new branch of the same name.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

from prism.branches.status import Branch
from prism.core.address import BackendAddress
from prism.core.errors import ConnectionTerminated

log = logging.getLogger(__name__)

# How long an operation waits for the sessions it ended to unwind before it goes on regardless;
# their proxy tasks only have to send one ErrorResponse, so this is generous.
TERMINATE_WAIT = 5.0


@dataclass(eq=False)
class ClientSession:
    """One admitted client session, counted on the branch instance it was admitted to.

    Holding the ``Branch`` object rather than its name is the point: if the branch is deleted
    and made again under the same name, closing this session still settles the old one.
    """

    branch: Branch
    client: str
    address: BackendAddress
    opened_at: float = field(default_factory=trio.current_time)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ended: trio.Event = field(default_factory=trio.Event)
    terminated_by: ConnectionTerminated | None = None

    def terminate(self, error: ConnectionTerminated) -> None:
        self.terminated_by = error
        self.scope.cancel()


class SessionRegistry:
    """The open sessions of each branch, by branch name."""

    def __init__(self) -> None:
        self._sessions: defaultdict[str, set[ClientSession]] = defaultdict(set)

    def any_open(self, name: str) -> bool:
        return bool(self._sessions.get(name))

    @contextmanager
    def terminable(self, session: ClientSession) -> Iterator[ClientSession]:
        """Let an operation on the session's branch end the body (the proxy's splice) early.

        On the way out of an ended session this raises the ``ConnectionTerminated`` that says
        why, for the proxy to send to the client as a FATAL error.
        """
        name = session.branch.name
        self._sessions[name].add(session)
        try:
            with session.scope:
                yield session
        finally:
            self._sessions[name].discard(session)
            if not self._sessions[name]:
                del self._sessions[name]
            session.ended.set()
        if session.terminated_by is not None:
            raise session.terminated_by

    async def terminate(self, name: str, message: str, *, hint: str | None = None) -> None:
        """End every open session on ``name`` with ``message`` and wait for them to unwind."""
        sessions = list(self._sessions.get(name, ()))
        if not sessions:
            return
        log.info("terminating %d session(s) of branch %s: %s", len(sessions), name, message)
        for session in sessions:
            session.terminate(ConnectionTerminated(message, hint=hint))
        with trio.move_on_after(TERMINATE_WAIT):
            for session in sessions:
                await session.ended.wait()
