"""The process runtime: each branch's Postgres server is a local ``postgres`` process.

This is the embedded default: no Docker and no root needed. Servers run as the user chosen by
``prism.postgres.binaries`` (never root), in their own session so that a Ctrl-C in Prism's terminal
does not reach them and Prism alone decides the shutdown order. Readiness comes from the status line
Postgres itself writes to ``postmaster.pid``, so start-up costs no fixed sleeps and no probe
connections.

This module is the runtime itself: which servers Prism knows to be running, starting, stopping,
adopting and reaping them, and what the sandbox enforces. Spawning one server in its Landlock
sandbox is :mod:`prism.runtime._process_launch`; its directories and files (data, sockets, logs,
Prism's ``pg_hba.conf``) :mod:`prism.runtime._process_dirs`; finding servers an earlier Prism
left running :mod:`prism.runtime._process_adopt`; telling whether a server runs and stopping
it by signals :mod:`prism.runtime._process_server`.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

import trio

from prism.core.address import BackendAddress
from prism.core.crashpoints import crash_point
from prism.core.errors import BackendQueryError, RuntimeStartFailed
from prism.core.names import MAIN_BRANCH
from prism.postgres.binaries import PgInstall, PgInstalls
from prism.runtime import _process_adopt as adoption
from prism.runtime import landlock, sandbox
from prism.runtime._host_tools import HostTools
from prism.runtime._postmaster import (
    file_tail,
    last_lines,
    on_a_free_port,
    postmasters_under,
    remove_dir,
)
from prism.runtime._process_dirs import ServerDirs
from prism.runtime._process_launch import Launcher, Start, server_env
from prism.runtime._process_server import (
    KILL_GRACE,
    LocalServer,
    Steps,
    alive,
    signal_until_gone,
    stop_steps,
)
from prism.runtime.base import Confinement, ServerExtras

log = logging.getLogger(__name__)


class ProcessRuntime:
    """Runs each branch's server as a local ``postgres`` process (the ``process`` runtime)."""

    name = "process"

    def __init__(
        self,
        install: PgInstall | PgInstalls,
        *,
        run_dir: Path,
        log_dir: Path,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        settings: Mapping[str, str] | None = None,
        copy_on_write: bool = False,
        sandbox_policy: sandbox.SandboxPolicy | None = None,
    ) -> None:
        self._installs = install if isinstance(install, PgInstalls) else PgInstalls(install)
        # The binaries for new clusters; every install runs as the same user.
        self._install = self._installs.default
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._servers: dict[str, LocalServer] = {}
        # None: servers run unconfined (--branch-sandbox off).
        self._landlock = landlock.probe() if sandbox_policy is not None else None
        self._dirs = ServerDirs(
            self._install,
            run_dir=run_dir,
            log_dir=log_dir,
            copy_on_write=copy_on_write,
            sandbox_policy=sandbox_policy,
            support=self._landlock,
        )
        self._launcher = Launcher(
            self._install,
            self._dirs,
            start_timeout=start_timeout,
            settings=settings or {},
            sandbox_policy=sandbox_policy,
            support=self._landlock,
        )

    async def initdb(self, pgdata: Path, *, superuser: str, password: str) -> None:
        """Initialise ``pgdata`` as a new cluster: trust on the private socket, SCRAM over TCP."""
        await trio.to_thread.run_sync(self._dirs.own_pgdata, pgdata, True)
        pwfile = await trio.to_thread.run_sync(self._dirs.write_pwfile, password)
        crash_point("initdb:password-written")  # a kill now leaves it: the start-up sweep
        try:
            command = [
                str(self._install.bin("initdb")),
                "-D",
                str(pgdata),
                "-U",
                superuser,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C",
            ]
            result = await self._run(command)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise RuntimeStartFailed(
                f"initdb failed for {pgdata} (exit status {result.returncode})",
                hint=last_lines(output),
            )
        log.info("cluster initialised pgdata=%s superuser=%s", pgdata, superuser)

    async def start(
        self,
        branch: str,
        pgdata: Path,
        *,
        parent: str | None = None,
        extras: ServerExtras | None = None,
    ) -> BackendAddress:
        """Start ``branch``'s server and return once its status in ``postmaster.pid`` is ready.

        ``parent`` is unused: a local process has no labels to carry it. The directories of
        ``extras`` are seen at their own paths, and opened in the server's sandbox.
        """
        running = self.address(branch)
        if running is not None:
            return running
        started = trio.current_time()
        # A few bytes in the page cache, read on the event loop like postmaster.pid.
        install = self._installs.for_data(pgdata, what=f"the data of branch {branch}")
        install.require_unchanged()
        socket_dir = self._dirs.socket_dir(branch)
        owned, mounts = await trio.to_thread.run_sync(
            self._dirs.prepare_start, install, pgdata, socket_dir, extras or ServerExtras()
        )
        spec = Start(install, branch, pgdata, socket_dir, owned, mounts)
        launch = functools.partial(self._launcher.launch, spec)
        try:
            server = await on_a_free_port(launch, branch=branch, what="server")
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(remove_dir, socket_dir)
            raise
        self._servers[branch] = server
        log.info(
            "server started branch=%s port=%d pid=%d duration_ms=%d",
            branch,
            server.address.port,
            server.pid,
            (trio.current_time() - started) * 1000,
        )
        return server.address

    async def stop(self, branch: str) -> None:
        """Fast shutdown (SIGINT), escalating to SIGQUIT and SIGKILL when it takes too long."""
        await self._end(branch, stop_steps(self._stop_timeout), "stopped")

    async def kill(self, branch: str) -> None:
        """SIGKILL, now: for a shutdown whose deadline passed (maybe mid-``stop``)."""
        await self._end(branch, [(signal.SIGKILL, KILL_GRACE)], "killed")

    async def _end(self, branch: str, steps: Steps, how: str) -> None:
        """Signal ``branch``'s server through ``steps`` until gone, then forget it."""
        server = self._servers.get(branch)
        if server is None:
            return
        started = trio.current_time()
        await signal_until_gone(server, steps)
        del self._servers[branch]
        if server.owns_socket_dir and server.address.service_socket_dir is not None:
            await trio.to_thread.run_sync(remove_dir, server.address.service_socket_dir)
        log.info(
            "server %s branch=%s pid=%d duration_ms=%d",
            how,
            branch,
            server.pid,
            (trio.current_time() - started) * 1000,
        )

    async def adopt(self, branch: str, pgdata: Path) -> BackendAddress | None:
        """Track a server an earlier Prism left running on ``pgdata``; None if there is none."""
        running = self.address(branch)
        if running is not None:
            return running
        server = await adoption.running_server(
            branch,
            pgdata,
            start_timeout=self._start_timeout,
            socket_dir=self._dirs.socket_dir(branch),
        )
        if server is None:
            return None
        self._servers[branch] = server
        log.info("server adopted branch=%s port=%d pid=%d", branch, server.address.port, server.pid)
        return server.address

    async def reap_strays(self, root: Path) -> list[str]:
        """Stop every postmaster under ``root`` that no branch owns; describe each one.

        Called by reconcile after adoption, so whatever is still untracked here runs on a
        directory that is being thrown away (a rolled-back clone, a retired branch) or is
        already gone. Fast shutdown first, escalating like ``stop``.
        """
        tracked = {server.pid for server in self._servers.values()}
        strays = await trio.to_thread.run_sync(postmasters_under, root)
        stopped = []
        for pid, pgdata in strays.items():
            if pid in tracked:
                continue
            await signal_until_gone(adoption.stray(pid, pgdata), stop_steps(self._stop_timeout))
            stopped.append(f"pid {pid} on {pgdata}")
        return stopped

    def address(self, branch: str) -> BackendAddress | None:
        """Where ``branch``'s server listens; None once it is known to have exited."""
        server = self._servers.get(branch)
        if server is None:
            return None
        if alive(server):
            return server.address
        del self._servers[branch]
        status = server.process.returncode if server.process is not None else None
        log.warning(
            "server exited unexpectedly branch=%s pid=%d status=%s", branch, server.pid, status
        )
        return None

    async def server_log(self, branch: str) -> str:
        """The end of ``branch``'s server log (``<data-dir>/logs/<branch>.log``)."""
        return await trio.to_thread.run_sync(file_tail, self._dirs.log_dir / f"{branch}.log")

    async def dump_schema(self, branch: str, *, user: str, database: str) -> str:
        """The server's own ``pg_dump``, as the server user over the trusted service socket:
        the same binaries, so the same major version as the server."""
        server = self._servers.get(branch)
        host = None if server is None else server.address.service_host()
        if server is None or host is None:
            raise BackendQueryError(f"branch {branch} has no running server to dump")
        tools = await HostTools(self._installs, self._dirs.log_dir / f"{branch}.log").for_major(
            None, what="pg_dump"
        )
        args = ["--schema-only", "-h", host, "-p", str(server.address.port), "-U", user, database]
        result = await tools.run("pg_dump", args, env={"PGCONNECT_TIMEOUT": "30"})
        if result.returncode != 0:
            raise BackendQueryError(f"pg_dump failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode(errors="replace")

    async def source_tools(self, directory: Path, *, source_host: str | None) -> HostTools:
        """The host's programs, run as the server user; main's log is its server's. A local
        process reaches what Prism reaches, and finds ``directory`` at its own path."""
        return HostTools(self._installs, self._dirs.log_dir / f"{MAIN_BRANCH}.log")

    async def aclose(self) -> None:
        """Forget the servers; they keep running and a later runtime can adopt them."""
        self._servers.clear()

    def confinement(self) -> Confinement:
        """What the sandbox enforces on this kernel (``runtime.sandbox``)."""
        if self._landlock is None:
            return Confinement("off", (), ("every guard: --branch-sandbox off",))
        described = sandbox.describe(self._landlock)
        if self._landlock.scopes and not self._dirs.abstract:
            gap = (
                f"private service sockets: Prism's uid {os.geteuid()} has no user name for peer "
                "authentication, so a branch may reach another server's trusted Unix socket"
            )
            return Confinement(
                described.mechanism,
                tuple(item for item in described.enforced if "service sockets" not in item),
                (*described.missing, gap),
            )
        return described

    async def _run(self, command: list[str]) -> subprocess.CompletedProcess[bytes]:
        """Run a PostgreSQL tool to completion as the server user."""
        return await trio.run_process(
            command,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=server_env(),
            **self._install.spawn_options(),
        )
