"""A local server process the process runtime tracks: whether it still runs, and stopping it.

Started by this Prism (a ``trio.Process``, our child) or adopted from an earlier one (only a
pid, guarded against reuse by its start time in /proc), a server is stopped the same way: a
signal, then a harder one when it takes too long, until it is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from prism.core.address import BackendAddress
from prism.core.errors import RuntimeStopFailed
from prism.runtime._postmaster import start_ticks

log = logging.getLogger(__name__)

# After SIGQUIT (immediate shutdown) and SIGKILL a server has this long to vanish.
KILL_GRACE = 5.0

Steps = Sequence[tuple[signal.Signals, float]]
"""Signals to send in turn, each with how long the server has to exit before the next."""

QUICK_KILL: Steps = ((signal.SIGQUIT, KILL_GRACE), (signal.SIGKILL, KILL_GRACE))
"""Immediate shutdown, then SIGKILL: for a server whose start failed."""


@dataclass
class LocalServer:
    """One server Prism knows to be running."""

    branch: str
    pgdata: Path
    pid: int
    address: BackendAddress
    # Our child when we started it; None when adopted from an earlier Prism (then we poll the
    # pid, and ``start_ticks`` guards against the pid having been reused by another process).
    process: trio.Process | None
    start_ticks: str | None
    owns_socket_dir: bool


def stop_steps(stop_timeout: float) -> Steps:
    """Fast shutdown, then immediate, then SIGKILL, each with its patience."""
    return [
        (signal.SIGINT, stop_timeout),
        (signal.SIGQUIT, KILL_GRACE),
        (signal.SIGKILL, KILL_GRACE),
    ]


async def signal_until_gone(server: LocalServer, steps: Steps) -> None:
    """Send each signal in turn until the server is gone; always reap our own child."""
    for sig, patience in steps:
        if not alive(server):
            break
        if sig is not steps[0][0]:
            log.warning(
                "server slow to stop, escalating branch=%s pid=%d signal=%s",
                server.branch,
                server.pid,
                sig.name,
            )
        try:
            os.kill(server.pid, sig)
        except ProcessLookupError:
            break
        with trio.move_on_after(patience):
            await _wait_gone(server)
            break
    if server.process is not None:
        with trio.move_on_after(KILL_GRACE):
            await server.process.wait()
    if alive(server):
        raise RuntimeStopFailed(
            f"the server of branch {server.branch} (pid {server.pid}) did not exit after SIGKILL"
        )


def alive(server: LocalServer) -> bool:
    """Whether the server process still runs: cheap enough to ask on every ``address()``."""
    if server.process is not None:
        return server.process.returncode is None
    # An adopted server may be our child after all (same Prism process, new runtime);
    # reaping it here keeps a zombie from counting as alive.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(server.pid, os.WNOHANG)
    return start_ticks(server.pid) == server.start_ticks


async def _wait_gone(server: LocalServer) -> None:
    """Return once the server has exited (and, for our child, been reaped)."""
    if server.process is not None:
        await server.process.wait()
        return
    # A pidfd becomes readable when the process exits, child of ours or not.
    try:
        pidfd = os.pidfd_open(server.pid)
    except ProcessLookupError:
        return
    try:
        # Checked after opening: the pidfd then surely refers to the server, not a reused pid.
        if alive(server):
            await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    alive(server)  # reaps it if it was our child after all
