"""What the front door needs of the branches: the :class:`FrontDoor` protocol.

The proxy admits a client to its branch, counts the bytes of its session and settles it when it
ends; it needs five things of :class:`prism.branches.manager.BranchManager` for that, not the
manager itself. Naming them here keeps the front door off the manager's other jobs (storage,
runtimes, the journal), lets it be driven by a fake, and says in one place what a change to the
manager must keep. ``BranchManager`` satisfies the protocol by its shape; it does not inherit from
it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from prism.core.address import BackendAddress


@runtime_checkable
class SessionBranch(Protocol):
    """The branch a session was admitted to, as far as the proxy's accounting goes."""

    bytes_proxied: int
    last_active_ts: float


@runtime_checkable
class Session(Protocol):
    """One admitted client session: where its server is, and the branch it counts on."""

    @property
    def branch(self) -> SessionBranch: ...

    @property
    def address(self) -> BackendAddress: ...


SessionT = TypeVar("SessionT", bound=Session)


@runtime_checkable
class FrontDoor(Protocol[SessionT]):
    """The branch operations a client connection needs, from admission to its close.

    Generic in the session type so the manager's own sessions go back to it unchanged: what
    :meth:`admit` returns is what :meth:`terminable` and :meth:`connection_closed` take.
    """

    def get(self, name: str) -> object | None:
        """The branch called ``name`` if it exists (the create-on-connect policy asks)."""
        ...

    def check_available(self, name: str) -> None:
        """Refuse a client of ``name`` while main is still being made (a PrismError)."""
        ...

    async def admit(self, name: str, client: str) -> SessionT:
        """Create, start or wake ``name`` and count one session of ``client`` on it."""
        ...

    def terminable(self, session: SessionT) -> AbstractContextManager[SessionT]:
        """Let an operation on the session's branch (reset, stop, delete) end the body early."""
        ...

    def connection_closed(self, session: SessionT) -> None:
        """Settle a session :meth:`admit` counted, once, whichever way it ended."""
        ...
