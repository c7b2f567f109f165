"""One way for a test to wait for something Prism does in its own time: poll it, with a bound.

Where Prism offers an event (the event bus, a subscription), a test waits on that instead; this
is for what can only be looked at from outside (``/proc``, a server's rows, a metrics page). A
fixed sleep before an assert either waits too long or, on a loaded machine, not long enough.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

_T = TypeVar("_T")


async def wait_until(
    condition: Callable[[], _T | Awaitable[_T]],
    *,
    what: str,
    within: float = 10.0,
    every: float = 0.05,
) -> _T:
    """The first truthy result of ``condition`` (a function or coroutine function), polled
    every ``every`` seconds; an AssertionError naming ``what`` if none came ``within`` seconds.
    """
    with trio.move_on_after(within):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            await trio.sleep(every)
    raise AssertionError(f"still waiting after {within:g} s for {what}")
