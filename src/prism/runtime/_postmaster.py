"""What every runtime knows about a Postgres server on this host, whoever started it.

The process and docker runtimes both read ``postmaster.pid`` for readiness, tell a live process
from a reused pid by its start time in /proc, give each server a private socket directory, pick
free ports (trying another when a server lost its port) and quote the last lines of a log in
errors. This is their one home, so a fix to any
of it (say, which pid-file status means ready) reaches both runtimes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import stat
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from prism.core.errors import RuntimeStartFailed
from prism.runtime.base import SharedDir

log = logging.getLogger(__name__)

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
# Postgres writes "ready" once it accepts connections (a hot standby too). "standby" is not
# ready: it means "up, won't accept connections" (pidfile.h), written when recovery begins.
READY_STATUS = "ready"
PID_POLL_S = 0.005
"""How often a starting server's ``postmaster.pid`` is read: nothing signals a change of it."""
_PORT_ATTEMPTS = 5
# What a server's log says when another process took its port between picking and binding.
_BIND_FAILURES = ("could not bind", "Address already in use")
# sun_path holds 108 bytes including the terminating NUL.
_SOCKET_PATH_MAX = 107
_LOG_TAIL_LINES = 10
#: How much of the end of a server log is read for what it last said.
LOG_TAIL_BYTES = 64 * 1024
_DISK_FULL = "No space left on device"
_WAL_SEGMENT_BYTES = 16 * 2**20


class PortTaken(Exception):
    """The chosen port was taken between picking it and the server binding it."""


@dataclass(frozen=True)
class PidFile:
    """The lines of ``postmaster.pid`` that Prism uses."""

    pid: int
    datadir: str
    port: int
    socket_dir: str
    listen_address: str
    status: str

    @property
    def ready(self) -> bool:
        """Whether the server that wrote this file accepts connections."""
        return self.status == READY_STATUS


def read_pidfile(pgdata: Path) -> PidFile | None:
    """Parse ``postmaster.pid``; None when it is absent or still being written."""
    try:
        lines = (pgdata / "postmaster.pid").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = lines.split("\n")
    if len(fields) < 8:
        return None
    try:
        return PidFile(
            pid=int(fields[0]),
            datadir=fields[1],
            port=int(fields[3]),
            socket_dir=fields[4].strip(),
            listen_address=fields[5].strip(),
            status=fields[7].strip(),
        )
    except ValueError:
        return None


def start_ticks(pid: int) -> str | None:
    """The start time of a live (non-zombie) process from /proc, None if it is gone.

    A pid plus its start time names one process for good: a reused pid has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            line = file.read()
    except OSError:
        return None
    # The command name in parentheses may itself contain spaces or parentheses.
    fields = line[line.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def postmasters_under(root: Path) -> dict[int, Path]:
    """Every live postmaster whose working directory (its data directory) lies under ``root``.

    A postmaster is a ``postgres`` process whose parent is not one of those processes (its
    backends and helpers are its children, and each leads a session of its own, so sessions do
    not tell them apart). Blocking.
    """
    servers = processes_under(root, ("postgres", "postmaster"))
    return {pid: cwd for pid, (ppid, cwd) in servers.items() if ppid not in servers}


def processes_under(root: Path, names: tuple[str, ...]) -> dict[int, tuple[int, Path]]:
    """Every live process named one of ``names`` working under ``root``: pid → (parent, cwd).

    The working directory survives the directory's removal (``/proc`` appends " (deleted)"),
    so a process left on a directory since removed is found too. Blocking.
    """
    prefix = str(root.resolve()).rstrip("/") + "/"
    found: dict[int, tuple[int, Path]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
                line = file.read()
            cwd = os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)")
        except OSError:
            continue
        name = line[line.find("(") + 1 : line.rfind(")")]
        fields = line[line.rfind(")") + 2 :].split()
        if name not in names or len(fields) < 2 or fields[0] in ("Z", "X"):
            continue
        if (cwd + "/").startswith(prefix):
            found[pid] = (int(fields[1]), Path(cwd))
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the server may still lose a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def bind_failed(log_tail: str) -> bool:
    """Whether a server that exited during start-up lost its port (then another is tried)."""
    return any(marker in log_tail for marker in _BIND_FAILURES)


async def on_a_free_port(
    launch: Callable[[int], Awaitable[T]],
    *,
    branch: str,
    what: str,
    pick_port: Callable[[], int] = free_port,
) -> T:
    """``launch(port)`` on a port from ``pick_port``, again while it raises ``PortTaken``.

    A free port can be taken by another process before the server binds it; a few attempts
    make that race harmless. ``what`` (server, container) names the loser in the error.
    """
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = pick_port()
        try:
            return await launch(port)
        except PortTaken:
            log.debug("port taken before bind branch=%s port=%d try=%d", branch, port, attempt)
    raise RuntimeStartFailed(
        f"the {what} of branch {branch} found no free port in {_PORT_ATTEMPTS} attempts"
    )


def last_lines(text: str) -> str:
    """The last few non-empty lines of ``text``, for an error hint."""
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-_LOG_TAIL_LINES:])


def file_tail(path: Path) -> str:
    """The end of a server's log file, "" if there is none (blocking)."""
    try:
        with path.open("rb") as log_file:
            log_file.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            return log_file.read().decode(errors="replace")
    except OSError:
        return ""


def exit_failure(branch: str, how: str, tail: str, pgdata: Path) -> RuntimeStartFailed:
    """Why ``branch``'s server on ``pgdata`` exited during start-up (``how``: its status), from
    its log's ``tail`` (blocking: asks the file system for its free space).

    A full disk is said in words: the log's own line is easy to miss in a hint, and a disk too
    full for the log leaves no line at all, so the free space is asked too.
    """
    if _DISK_FULL in tail or _nearly_full(pgdata):
        return RuntimeStartFailed(
            f"the server of branch {branch} could not start: the disk is full ({_DISK_FULL})",
            hint="free space on the data directory's file system (deleting a branch works on "
            "a full disk), then connect again; the server's log: " + tail,
        )
    return RuntimeStartFailed(
        f"the server of branch {branch} exited during start-up ({how})", hint=tail
    )


def _nearly_full(path: Path) -> bool:
    """Whether the file system of ``path`` has less room than one WAL segment."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _WAL_SEGMENT_BYTES


def socket_dir_for(run_dir: Path, branch: str, short_dir: Path) -> Path:
    """``run_dir/branch``, or ``short_dir/<hash>`` when that is too long for a socket path."""
    preferred = run_dir / branch
    if len(os.fsencode(preferred / ".s.PGSQL.65535")) <= _SOCKET_PATH_MAX:
        return preferred
    digest = hashlib.sha256(os.fsencode(preferred)).hexdigest()[:16]
    return short_dir.parent / f"{short_dir.name}-{digest}"


def make_socket_dir(path: Path, owner: tuple[int, int] | None) -> None:
    """Create the private (0700) socket directory for ``owner``, refusing a planted one.

    ``owner`` is the server's uid:gid, or None when the server runs as Prism's own user.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        info = path.lstat()
        ours = {os.geteuid()} | ({owner[0]} if owner else set())
        if not stat.S_ISDIR(info.st_mode) or info.st_uid not in ours:
            raise RuntimeStartFailed(
                f"the socket directory {path} exists and is not Prism's",
                hint="remove it; Prism creates it with mode 0700",
            ) from None
    if owner is not None:
        os.chown(path, *owner)
    path.chmod(0o700)


def hand_over(dirs: Iterable[SharedDir], owner: tuple[int, int] | None) -> None:
    """Give each directory a server writes (its WAL archive) to the user it runs as (blocking):
    whoever made the directory cannot know who that is. ``owner`` None: Prism's own user."""
    if owner is None or os.geteuid() != 0:
        return
    for shared in dirs:
        if shared.read_only:
            continue
        info = shared.source.stat()
        if (info.st_uid, info.st_gid) != owner:
            os.chown(shared.source, *owner)


def remove_dir(path: Path) -> None:
    """Remove a private directory and whatever a killed server left in it."""
    shutil.rmtree(path, ignore_errors=True)
