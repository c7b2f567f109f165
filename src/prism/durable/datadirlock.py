"""One Prism per data directory: an exclusive lock held for the daemon's whole life.

Two daemons on one data dir would each reconcile, adopt and stop the other's servers, replay
the other's journal and clone from data the other is changing. So ``prism serve`` takes
``flock(LOCK_EX)`` on ``<data-dir>/prism.lock`` before anything else reads or writes the data
dir, and keeps it until its last branch server has stopped. The kernel drops the lock when the
process dies however it dies (kill -9 included), so a lock file left behind is never stale: the
next Prism simply locks it again. The descriptor is not inherited (Python's default), so branch
servers outliving a killed Prism do not keep the lock.

The holder writes its pid and, once bound, its addresses into the file, so a second Prism can
say who holds the data dir and where to reach it instead of only that it is taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from prism.core.errors import ConfigError, DataDirInUse

LOCK_FILE = "prism.lock"


class DataDirLock:
    """The held lock on one data dir; ``describe`` records where this Prism listens."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def describe(self, *, listen: tuple[str, int] | None, api: tuple[str, int] | None) -> None:
        """Write this Prism's pid and addresses over whatever the file held (blocking)."""
        holder = {"pid": os.getpid(), "listen": _host_port(listen), "api": _host_port(api)}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(holder).encode() + b"\n", 0)


@contextlib.contextmanager
def hold_data_dir(data_dir: Path) -> Iterator[DataDirLock]:
    """Hold ``data_dir``'s lock for the ``with`` block, or raise ``DataDirInUse`` at once."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"cannot open the lock file {path}: {exc.strerror}",
            hint="run Prism as the user that owns the data directory, or choose another "
            "with --data-dir",
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(data_dir, _read_holder(fd)) from None
        lock = DataDirLock(fd)
        lock.describe(listen=None, api=None)
        yield lock
    finally:
        os.close(fd)  # releases the lock; the file stays, harmless to the next Prism


def _host_port(address: tuple[str, int] | None) -> str | None:
    return None if address is None else f"{address[0]}:{address[1]}"


def _read_holder(fd: int) -> dict[str, object]:
    """What the holder wrote about itself; empty if it has not written yet (or not readably)."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _in_use(data_dir: Path, holder: dict[str, object]) -> DataDirInUse:
    pid = holder.get("pid")
    who = f"another Prism (pid {pid})" if pid else "another Prism"
    listen, api = holder.get("listen"), holder.get("api")
    where = (
        f", serving postgres clients on {listen} and the API on http://{api}"
        if listen and api
        else ", still starting"
    )
    return DataDirInUse(
        f"data directory {data_dir} is in use by {who}{where}",
        hint="a data directory serves one Prism at a time: use that one, stop it first, or "
        "start this one with its own --data-dir (and its own --listen and --api ports)",
    )
