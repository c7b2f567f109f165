"""Scale-to-zero: stop branch servers nobody has used for a while, so idle branches cost no RAM.

A branch is idle when it is running, has no open client session and has moved no bytes for
``idle_timeout``. Its data stays on disk; the next client wakes it (``ensure_running``) and
simply waits, as it would on creation. ``main`` is left alone unless ``main_scales_to_zero``.

The choice of whom to stop is pure (``due_for_stop``); the task only acts on it, and the
manager checks again under the branch's lock, because a client may arrive in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import trio

from prism.branches.manager import Branch, BranchManager, is_idle
from prism.core.errors import PrismError
from prism.core.names import MAIN_BRANCH

log = logging.getLogger(__name__)

# Look often enough that a branch stops within ~a quarter of its timeout after going idle
# (tests use 1-2 s timeouts), but never busy-loop nor sleep for minutes with a long timeout.
_MIN_TICK = 0.1
_MAX_TICK = 10.0


def tick_interval(idle_timeout: float) -> float:
    """How long the reaper sleeps between looks for a given ``idle_timeout``."""
    return min(_MAX_TICK, max(_MIN_TICK, idle_timeout / 4))


def due_for_stop(
    branches: Iterable[Branch], *, now: float, idle_timeout: float, include_main: bool
) -> list[str]:
    """Names of the branches the reaper should stop now."""
    return [
        branch.name
        for branch in branches
        if (include_main or branch.name != MAIN_BRANCH)
        and is_idle(branch, now=now, idle_for=idle_timeout)
    ]


async def run_reaper(manager: BranchManager, *, idle_timeout: float, include_main: bool) -> None:
    """Stop idle branches until cancelled. A failed stop is logged; the reaper carries on."""
    interval = tick_interval(idle_timeout)
    log.info(
        "reaper: stopping branches idle for %gs (main %s)",
        idle_timeout,
        "included" if include_main else "excluded",
    )
    while True:
        await trio.sleep(interval)
        now = time.time()
        for name in due_for_stop(
            manager.list(), now=now, idle_timeout=idle_timeout, include_main=include_main
        ):
            try:
                if await manager.stop_if_idle(name, idle_for=idle_timeout, now=time.time()):
                    log.info("reaper: stopped idle branch %s", name)
            except PrismError as exc:
                log.error("reaper: could not stop idle branch %s: %s", name, exc.message)
            except Exception:
                # Anything else (an engine or sqlite error) is one branch's problem too: it must
                # not escape into the server's nursery and take every branch down with it.
                log.exception("reaper: unexpected error stopping idle branch %s", name)


# Expiry is in hours or days; a look every few seconds is plenty and costs nothing.
EXPIRY_TICK = 2.0


async def run_expiry(manager: BranchManager, *, tick: float = EXPIRY_TICK) -> None:
    """Delete expired branches and purge deleted ones whose undelete window passed, until
    cancelled (``BranchTrash.expire_if_due`` and ``purge_due`` decide).

    A pass of its own beside the idle reaper: expiry applies even with ``idle_timeout`` 0.
    """
    grace = manager.defaults.expiry_grace
    while True:
        await trio.sleep(tick)
        try:
            for name in await manager.trash.purge_due():
                log.info("reaper: purged deleted branch %s: its undelete window passed", name)
        except PrismError as exc:
            log.error("reaper: could not purge the trash: %s", exc.message)
        for branch in manager.list():
            try:
                if await manager.trash.expire_if_due(branch.name, grace=grace):
                    log.info("reaper: deleted expired branch %s", branch.name)
            except PrismError as exc:
                log.error(
                    "reaper: could not delete expired branch %s: %s", branch.name, exc.message
                )
            except Exception:
                # As in the idle pass: one branch's failure must never take Prism down.
                log.exception("reaper: unexpected error deleting expired branch %s", branch.name)
