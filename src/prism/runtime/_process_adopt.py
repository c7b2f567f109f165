"""Finding the local servers an earlier Prism left running, from their ``postmaster.pid``.

A restarted Prism takes over the server of each known branch (adoption) instead of restarting
it, and reconcile stops the ones no branch owns (strays). A pid file is only a claim: a crashed
server leaves a stale one, and its pid may since belong to an unrelated process; the process's
start time, name and working directory in /proc decide whether it is the server.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

from prism.core.address import BackendAddress
from prism.core.errors import RuntimeStartFailed
from prism.runtime._postmaster import LOOPBACK, PID_POLL_S, PidFile, read_pidfile, start_ticks
from prism.runtime._process_server import LocalServer

log = logging.getLogger(__name__)


async def running_server(
    branch: str, pgdata: Path, *, start_timeout: float, socket_dir: Path
) -> LocalServer | None:
    """The server running on ``pgdata`` once it is ready; None if there is none.

    ``socket_dir`` is the one the runtime would give ``branch``: the adopted server owns it
    (removes it when stopped) only if it uses that one. A stale ``postmaster.pid`` is left
    alone: Postgres recognises and replaces it itself.
    """
    pidfile = read_pidfile(pgdata)
    if pidfile is None:
        return None
    ticks = start_ticks(pidfile.pid)
    if ticks is None or not _is_postgres_on(pidfile.pid, pgdata):
        log.debug("stale postmaster.pid branch=%s pid=%d", branch, pidfile.pid)
        return None
    pidfile = await _wait_ready(branch, pgdata, pidfile.pid, ticks, start_timeout)
    if pidfile is None:
        return None
    host = _client_host(pidfile.listen_address)
    if host is None:
        raise RuntimeStartFailed(
            f"the running server of branch {branch} (pid {pidfile.pid}) has no TCP listener",
            hint="stop it; Prism will start it again with the settings it needs",
        )
    abstract = pidfile.socket_dir.startswith("@")
    service_dir = Path(pidfile.socket_dir.removeprefix("@")) if pidfile.socket_dir else None
    address = BackendAddress(
        host=host, port=pidfile.port, service_socket_dir=service_dir, abstract_socket=abstract
    )
    return LocalServer(
        branch=branch,
        pgdata=pgdata,
        pid=pidfile.pid,
        address=address,
        process=None,
        start_ticks=ticks,
        owns_socket_dir=service_dir == socket_dir,
    )


def stray(pid: int, pgdata: Path) -> LocalServer:
    """The postmaster ``pid`` on ``pgdata`` that no branch owns, as a server to stop."""
    return LocalServer(
        branch=f"(stray on {pgdata.name})",
        pgdata=pgdata,
        pid=pid,
        address=BackendAddress(host=LOOPBACK, port=0, service_socket_dir=None),
        process=None,
        start_ticks=start_ticks(pid),
        owns_socket_dir=False,
    )


async def _wait_ready(
    branch: str, pgdata: Path, pid: int, ticks: str, start_timeout: float
) -> PidFile | None:
    """Wait for an adopted server that is still recovering; None if it exits meanwhile."""
    with trio.move_on_after(start_timeout):
        while start_ticks(pid) == ticks:
            pidfile = read_pidfile(pgdata)
            if pidfile is not None and pidfile.pid == pid and pidfile.ready:
                return pidfile
            await trio.sleep(PID_POLL_S)
        return None
    raise RuntimeStartFailed(
        f"the running server of branch {branch} (pid {pid}) did not become ready within "
        f"{start_timeout:g} s"
    )


def _is_postgres_on(pid: int, pgdata: Path) -> bool:
    """Whether ``pid`` is a postgres server whose data directory is ``pgdata``.

    Guards adoption against a pid reused by an unrelated process. The postmaster chdirs into
    its data directory, so its cwd is the strongest evidence; the command line is the fallback
    when /proc does not let us read the cwd.
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not argv or os.path.basename(argv[0]) not in (b"postgres", b"postmaster"):
        return False
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == pgdata.resolve()
    except OSError:
        return os.fsencode(pgdata) in argv or os.fsencode(pgdata.resolve()) in argv


def _client_host(listen_address: str) -> str | None:
    """A host to reach a server listening on ``listen_address`` (a pid file's line 6)."""
    if not listen_address:
        return None
    if listen_address in ("*", "0.0.0.0"):
        return LOOPBACK
    if listen_address == "::":
        return "::1"
    return listen_address
