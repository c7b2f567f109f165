"""Who follows a branch's server and data: callbacks handed to the manager at construction.

``prism.server`` builds one ``Followers`` from the parts that need to hear (the role store,
point in time, dump generations); nothing is added to the manager after it is built.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prism.core.address import BackendAddress


@dataclass(frozen=True)
class Followers:
    """What other parts of Prism do when a branch's server or data changes, given at
    construction. None of them may raise."""

    after_start: tuple[Callable[[str, BackendAddress], Awaitable[None]], ...] = ()
    """Called with a server's address once it is running: the role store snapshots the
    verifiers (so even a branch that dies unseen has a snapshot); point in time may take a
    first snapshot."""
    before_stop: tuple[Callable[[str, BackendAddress], Awaitable[None]], ...] = ()
    """Called with a running server's address just before it is stopped: the role store
    snapshots the verifiers, so a stopped branch can check logins."""
    after_discard: tuple[Callable[[str], None], ...] = ()
    """Called with a branch's name when its data is thrown away (delete, reset, a failed
    create), so nothing cached about the old data outlives it."""
    after_clone: tuple[Callable[[str, str], Awaitable[None]], ...] = ()
    """Called with parent and child once a clone stands, the parent's lock still held (so
    main cannot be replaced in between): records which generation of main it holds."""

    def __add__(self, other: Followers) -> Followers:
        return Followers(
            self.after_start + other.after_start,
            self.before_stop + other.before_stop,
            self.after_discard + other.after_discard,
            self.after_clone + other.after_clone,
        )
