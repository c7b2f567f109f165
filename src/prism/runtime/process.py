"""The process runtime: each branch's Postgres server is a local ``postgres`` process.

This is the embedded default: no Docker and no root needed. Servers run as the user chosen by
``prism.pgbin`` (never root), in their own session so that a Ctrl-C in Prism's terminal does not
reach them and Prism alone decides the shutdown order. Readiness comes from the status line
Postgres itself writes to ``postmaster.pid``, so start-up costs no fixed sleeps and no probe
connections.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pwd
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio

from prism import secretfiles, serverconf
from prism.address import BackendAddress
from prism.crashpoints import crash_point
from prism.errors import ConfigError, RuntimeStartFailed, RuntimeStopFailed
from prism.names import MAIN_BRANCH
from prism.pgbin import PgInstall, PgInstalls
from prism.runtime import landlock, sandbox
from prism.runtime._host_tools import HostTools
from prism.runtime._postmaster import (
    LOOPBACK,
    PidFile,
    PortTaken,
    exit_failure,
    file_tail,
    free_port,
    hand_over,
    last_lines,
    make_socket_dir,
    postmasters_under,
    read_pidfile,
    remove_dir,
    socket_dir_for,
    start_ticks,
)
from prism.runtime.base import BindMount, Confinement, ServerExtras, seen_at_host_path

log = logging.getLogger(__name__)

_POLL_INTERVAL = 0.005
_PORT_ATTEMPTS = 5
_LOG_TAIL_BYTES = 64 * 1024
# After SIGQUIT (immediate shutdown) and SIGKILL a server has this long to vanish.
_KILL_GRACE = 5.0
_BIND_FAILURES = ("could not bind", "Address already in use")
# Settings Prism must own: the returned BackendAddress is built from them.
_MANAGED_SETTINGS = frozenset(
    {
        "listen_addresses",
        "port",
        "unix_socket_directories",
        "unix_socket_permissions",
        "hba_file",
        "ident_file",
        "config_file",
    }
)


@dataclass
class _Server:
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
        extra = dict(settings or {})
        clash = sorted(_MANAGED_SETTINGS.intersection(extra))
        if clash:
            raise ConfigError(
                f"server settings {', '.join(clash)} are managed by the process runtime",
                hint="remove them from the extra server settings",
            )
        self._installs = install if isinstance(install, PgInstalls) else PgInstalls(install)
        # The binaries for new clusters; every install runs as the same user.
        self._install = self._installs.default
        self._run_dir = run_dir
        self._log_dir = log_dir
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._settings = extra
        self._copy_on_write = copy_on_write  # the storage's: which WAL settings fit it
        self._servers: dict[str, _Server] = {}
        # None: servers run unconfined (--branch-sandbox off).
        self._sandbox_policy = sandbox_policy
        self._landlock = landlock.probe() if sandbox_policy is not None else None
        # Service sockets in the abstract namespace only where the sandbox keeps servers from
        # them (Landlock scopes); elsewhere a private 0700 directory with trust, as before.
        # ``peer`` authentication names Prism's OS user; a uid without a name (an arbitrary
        # container uid) cannot be admitted by name, so its sockets stay in a private directory.
        self._prism_user = _user_name(os.geteuid())
        self._abstract = (
            self._landlock is not None and self._landlock.scopes and self._prism_user is not None
        )

    async def initdb(self, pgdata: Path, *, superuser: str, password: str) -> None:
        """Initialise ``pgdata`` as a new cluster: trust on the private socket, SCRAM over TCP."""
        await trio.to_thread.run_sync(self._own_pgdata, pgdata, True)
        pwfile = await trio.to_thread.run_sync(self._write_pwfile, password)
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
        socket_dir = self._socket_dir(branch)
        owned, mounts = await trio.to_thread.run_sync(
            self._prepare_start, install, pgdata, socket_dir, extras or ServerExtras()
        )
        try:
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                port = free_port()
                try:
                    server = await self._launch(
                        install, owned, mounts, branch, pgdata, port, socket_dir
                    )
                except PortTaken:
                    log.debug(
                        "port taken before bind branch=%s port=%d try=%d", branch, port, attempt
                    )
                    continue
                self._servers[branch] = server
                log.info(
                    "server started branch=%s port=%d pid=%d duration_ms=%d",
                    branch,
                    port,
                    server.pid,
                    (trio.current_time() - started) * 1000,
                )
                return server.address
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(remove_dir, socket_dir)
            raise
        await trio.to_thread.run_sync(remove_dir, socket_dir)
        raise RuntimeStartFailed(
            f"the server of branch {branch} found no free port in {_PORT_ATTEMPTS} attempts"
        )

    async def stop(self, branch: str) -> None:
        """Fast shutdown (SIGINT), escalating to SIGQUIT and SIGKILL when it takes too long."""
        await self._end(branch, self._stop_steps(), "stopped")

    async def kill(self, branch: str) -> None:
        """SIGKILL, now: for a shutdown whose deadline passed (maybe mid-``stop``)."""
        await self._end(branch, [(signal.SIGKILL, _KILL_GRACE)], "killed")

    async def _end(
        self, branch: str, steps: Sequence[tuple[signal.Signals, float]], how: str
    ) -> None:
        """Signal ``branch``'s server through ``steps`` until gone, then forget it."""
        server = self._servers.get(branch)
        if server is None:
            return
        started = trio.current_time()
        await self._signal_until_gone(server, steps)
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
        """Track a server an earlier Prism left running on ``pgdata``; None if there is none.

        A stale ``postmaster.pid`` is left alone: Postgres recognises and replaces it itself.
        """
        running = self.address(branch)
        if running is not None:
            return running
        pidfile = read_pidfile(pgdata)
        if pidfile is None:
            return None
        ticks = start_ticks(pidfile.pid)
        if ticks is None or not _is_postgres_on(pidfile.pid, pgdata):
            log.debug("stale postmaster.pid branch=%s pid=%d", branch, pidfile.pid)
            return None
        pidfile = await self._wait_adopted_ready(branch, pgdata, pidfile.pid, ticks)
        if pidfile is None:
            return None
        host = _client_host(pidfile.listen_address)
        if host is None:
            raise RuntimeStartFailed(
                f"the running server of branch {branch} (pid {pidfile.pid}) has no TCP listener",
                hint="stop it; Prism will start it again with the settings it needs",
            )
        abstract = pidfile.socket_dir.startswith("@")
        socket_dir = Path(pidfile.socket_dir.removeprefix("@")) if pidfile.socket_dir else None
        address = BackendAddress(
            host=host, port=pidfile.port, service_socket_dir=socket_dir, abstract_socket=abstract
        )
        self._servers[branch] = _Server(
            branch=branch,
            pgdata=pgdata,
            pid=pidfile.pid,
            address=address,
            process=None,
            start_ticks=ticks,
            owns_socket_dir=socket_dir == self._socket_dir(branch),
        )
        log.info("server adopted branch=%s port=%d pid=%d", branch, pidfile.port, pidfile.pid)
        return address

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
            server = _Server(
                branch=f"(stray on {pgdata.name})",
                pgdata=pgdata,
                pid=pid,
                address=BackendAddress(host=LOOPBACK, port=0, service_socket_dir=None),
                process=None,
                start_ticks=start_ticks(pid),
                owns_socket_dir=False,
            )
            await self._signal_until_gone(server, self._stop_steps())
            stopped.append(f"pid {pid} on {pgdata}")
        return stopped

    def address(self, branch: str) -> BackendAddress | None:
        """Where ``branch``'s server listens; None once it is known to have exited."""
        server = self._servers.get(branch)
        if server is None:
            return None
        if _alive(server):
            return server.address
        del self._servers[branch]
        status = server.process.returncode if server.process is not None else None
        log.warning(
            "server exited unexpectedly branch=%s pid=%d status=%s", branch, server.pid, status
        )
        return None

    async def server_log(self, branch: str) -> str:
        """The end of ``branch``'s server log (``<data-dir>/logs/<branch>.log``)."""
        return await trio.to_thread.run_sync(file_tail, self._log_dir / f"{branch}.log")

    async def source_tools(self, directory: Path, *, source_host: str | None) -> HostTools:
        """The host's programs, run as the server user; main's log is its server's. A local
        process reaches what Prism reaches, and finds ``directory`` at its own path."""
        return HostTools(self._installs, self._log_dir / f"{MAIN_BRANCH}.log")

    async def aclose(self) -> None:
        """Forget the servers; they keep running and a later runtime can adopt them."""
        self._servers.clear()

    async def _launch(
        self,
        install: PgInstall,
        owned: dict[str, str],
        mounts: tuple[BindMount, ...],
        branch: str,
        pgdata: Path,
        port: int,
        socket_dir: Path,
    ) -> _Server:
        """Spawn one server on ``port`` and wait until it is ready; kill it on any failure.

        ``owned`` are the settings Prism overrides (``serverconf``); the operator's extra
        settings come after them and win, the runtime's own come last.
        """
        log_path = self._log_dir / f"{branch}.log"
        command = [str(install.bin("postgres")), "-D", str(pgdata)]
        command += serverconf.as_flags(owned)
        command += serverconf.as_flags(self._settings)
        command += [
            "-c",
            f"listen_addresses={LOOPBACK}",
            "-c",
            f"port={port}",
            "-c",
            f"unix_socket_directories={_guc_list_item(self._socket_name(socket_dir))}",
            "-c",
            "unix_socket_permissions=0700",
        ]
        ruleset = None
        if self._sandbox_policy is not None:
            command += serverconf.as_flags(sandbox.SANDBOX_SETTINGS)
            ruleset = await trio.to_thread.run_sync(
                self._ruleset, install, owned, mounts, branch, pgdata, port, socket_dir
            )
        server_log = await trio.to_thread.run_sync(_open_log, log_path)
        with server_log, contextlib.ExitStack() as release:
            if ruleset is not None:
                release.callback(ruleset.close)
            log_offset = server_log.tell()
            try:
                start = functools.partial(
                    subprocess.Popen,
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=server_log,
                    stderr=server_log,
                    start_new_session=True,
                    env=_server_env(),
                    **self._install.spawn_options(),
                )
                if ruleset is None:
                    popen = await trio.to_thread.run_sync(start)
                else:
                    popen = await trio.to_thread.run_sync(landlock.run_confined, ruleset, start)
                # trio's own open_process does the same with the Popen it makes in a thread;
                # ours comes from a confined thread, so it is wrapped the same way.
                process = trio.Process._create(popen, None, None, None)
            except (OSError, subprocess.SubprocessError) as exc:
                raise RuntimeStartFailed(f"cannot run {command[0]}: {exc}") from exc
        server = _Server(
            branch=branch,
            pgdata=pgdata,
            pid=process.pid,
            address=BackendAddress(
                host=LOOPBACK,
                port=port,
                service_socket_dir=socket_dir,
                abstract_socket=self._abstract,
            ),
            process=process,
            start_ticks=None,
            owns_socket_dir=True,
        )
        quick_kill = [(signal.SIGQUIT, _KILL_GRACE), (signal.SIGKILL, _KILL_GRACE)]
        try:
            with trio.move_on_after(self._start_timeout):
                if await _wait_ready(process, pgdata):
                    return server
                tail = _log_tail(log_path, log_offset)
                if any(marker in tail for marker in _BIND_FAILURES):
                    raise PortTaken
                how = f"status {process.returncode}"
                raise await trio.to_thread.run_sync(exit_failure, branch, how, tail, pgdata)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._signal_until_gone(server, quick_kill)
            raise
        with trio.CancelScope(shield=True):
            await self._signal_until_gone(server, quick_kill)
        raise RuntimeStartFailed(
            f"the server of branch {branch} was not ready within {self._start_timeout:g} s",
            hint=_log_tail(log_path, log_offset),
        )

    async def _wait_adopted_ready(
        self, branch: str, pgdata: Path, pid: int, ticks: str
    ) -> PidFile | None:
        """Wait for an adopted server that is still recovering; None if it exits meanwhile."""
        with trio.move_on_after(self._start_timeout):
            while start_ticks(pid) == ticks:
                pidfile = read_pidfile(pgdata)
                if pidfile is not None and pidfile.pid == pid and pidfile.ready:
                    return pidfile
                await trio.sleep(_POLL_INTERVAL)
            return None
        raise RuntimeStartFailed(
            f"the running server of branch {branch} (pid {pid}) did not become ready within "
            f"{self._start_timeout:g} s"
        )

    async def _signal_until_gone(
        self, server: _Server, steps: Sequence[tuple[signal.Signals, float]]
    ) -> None:
        """Send each signal in turn until the server is gone; always reap our own child."""
        for sig, patience in steps:
            if not _alive(server):
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
            with trio.move_on_after(_KILL_GRACE):
                await server.process.wait()
        if _alive(server):
            raise RuntimeStopFailed(
                f"the server of branch {server.branch} (pid {server.pid}) "
                "did not exit after SIGKILL"
            )

    def _stop_steps(self) -> list[tuple[signal.Signals, float]]:
        """Fast shutdown, then immediate, then SIGKILL, each with its patience."""
        return [
            (signal.SIGINT, self._stop_timeout),
            (signal.SIGQUIT, _KILL_GRACE),
            (signal.SIGKILL, _KILL_GRACE),
        ]

    async def _run(self, command: list[str]) -> subprocess.CompletedProcess[bytes]:
        """Run a PostgreSQL tool to completion as the server user."""
        return await trio.run_process(
            command,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=_server_env(),
            **self._install.spawn_options(),
        )

    def _socket_dir(self, branch: str) -> Path:
        """The private socket directory of ``branch``, short enough for a Unix socket path."""
        return socket_dir_for(self._run_dir, branch, Path("/tmp") / f"prism-{os.geteuid()}")

    def _prepare_start(
        self, install: PgInstall, pgdata: Path, socket_dir: Path, extras: ServerExtras
    ) -> tuple[dict[str, str], tuple[BindMount, ...]]:
        """Blocking set-up before a start: data dir ownership, socket dir, log dir, Prism's own
        hba file; returns the settings Prism overrides for this data (``serverconf``) with
        those of ``extras``, and the extra directories its sandbox opens."""
        if not pgdata.is_dir():
            raise RuntimeStartFailed(f"the data directory {pgdata} does not exist")
        self._own_pgdata(pgdata, False)
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self._reachable_run_dir()
        owner = self._install
        server_ids = (owner.run_as_uid, owner.run_as_gid) if owner.switches_user else None
        make_socket_dir(socket_dir, server_ids)
        hand_over(extras.dirs, server_ids)
        hba, ident = serverconf.write_prism_files(
            self._run_dir, server_ids, ident_map=self._ident_map(install)
        )
        configured = serverconf.configured_values(pgdata)
        has_library = serverconf.library_checker(install.bin_dir.parent / "lib")
        if has_library is not None:
            for name in serverconf.missing_libraries(configured, has_library):
                log.warning(
                    "shared_preload_libraries: %s is not in PostgreSQL %s's libraries; "
                    "starting without it pgdata=%s",
                    name,
                    install.version,
                    pgdata,
                )
        owned = serverconf.overrides(
            configured, has_library=has_library, copy_on_write=self._copy_on_write
        )
        extra_settings, mounts = extras.resolve(seen_at_host_path)
        owned.update(extra_settings)
        # The private socket directory lives exactly as long as the server: a fine home.
        conf = socket_dir / "postgresql.conf"
        serverconf.write_private(conf, serverconf.server_conf(pgdata, owned), server_ids)
        settings = {
            "config_file": str(conf),
            **owned,
            "hba_file": str(hba),
            "ident_file": str(ident),
        }
        return settings, mounts

    def _socket_name(self, socket_dir: Path) -> str:
        """``unix_socket_directories``: the directory, or its name in the abstract namespace."""
        return f"@{socket_dir}" if self._abstract else str(socket_dir)

    def _ident_map(self, install: PgInstall) -> str | None:
        """Who may use an abstract service socket: Prism's OS user and the server user (whose
        tools restore a dump into it); None where the socket is a private directory."""
        if not self._abstract:
            return None
        assert self._sandbox_policy is not None
        assert self._prism_user is not None
        users = [self._prism_user, install.run_as_name]
        return serverconf.peer_ident_map(users, self._sandbox_policy.service_role)

    def confinement(self) -> Confinement:
        """What the sandbox enforces on this kernel (``runtime.sandbox``)."""
        if self._landlock is None:
            return Confinement("off", (), ("every guard: --branch-sandbox off",))
        described = sandbox.describe(self._landlock)
        if self._landlock.scopes and not self._abstract:
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

    def _ruleset(
        self,
        install: PgInstall,
        settings: dict[str, str],
        mounts: tuple[BindMount, ...],
        branch: str,
        pgdata: Path,
        port: int,
        socket_dir: Path,
    ) -> landlock.Ruleset | None:
        """Build the Landlock ruleset of one server (blocking: opens each allowed path)."""
        assert self._sandbox_policy is not None and self._landlock is not None
        if not self._landlock.filesystem:
            return None
        access = sandbox.server_access(
            self._sandbox_policy,
            branch=branch,
            bin_dir=install.bin_dir,
            pgdata=pgdata,
            socket_dir=socket_dir,
            config_files=(Path(settings["hba_file"]), Path(settings["ident_file"])),
            port=port,
            settings=settings,
            mounts=mounts,
        )
        try:
            return landlock.Ruleset.build(
                self._landlock,
                access.paths,
                bind_ports=access.bind_ports,
                connect_ports=access.connect_ports,
            )
        except OSError as exc:
            raise RuntimeStartFailed(
                f"cannot build the sandbox of branch {branch}'s server: {exc}",
                hint="--branch-sandbox off runs servers unconfined (not recommended)",
            ) from exc

    def _own_pgdata(self, pgdata: Path, create: bool) -> None:
        """Make ``pgdata`` the server user's, mode 0700, as Postgres insists.

        A clone made by root (copy, reflink, snapshot) may carry root-owned files; when the top
        directory is not the server user's, the whole tree is handed over.
        """
        if create:
            pgdata.mkdir(parents=True, exist_ok=True)
        if self._install.switches_user and pgdata.stat().st_uid != self._install.run_as_uid:
            for dirpath, dirnames, filenames in os.walk(pgdata):
                for name in (*dirnames, *filenames):
                    os.lchown(
                        os.path.join(dirpath, name),
                        self._install.run_as_uid,
                        self._install.run_as_gid,
                    )
            self._install.chown(pgdata)
        pgdata.chmod(0o700)

    def _write_pwfile(self, password: str) -> Path:
        """A 0600 password file the server user can read, for ``initdb --pwfile``.

        It is made in the private run dir, not the shared temporary directory, so a Prism
        killed during initdb leaves it where the next start sweeps it (``secretfiles``).
        """
        self._reachable_run_dir()
        path = secretfiles.write_password_file(self._run_dir, password)
        try:
            self._install.chown(path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    def _reachable_run_dir(self) -> None:
        """Make the run dir; searchable (not listable) by the server user when that is
        another, who opens its socket directory and initdb's password file in it."""
        self._run_dir.mkdir(parents=True, exist_ok=True)
        if self._install.switches_user:
            self._run_dir.chmod(self._run_dir.stat().st_mode | 0o111)


async def _wait_ready(process: trio.Process, pgdata: Path) -> bool:
    """Poll ``postmaster.pid`` until this process reports ready (True) or exits (False).

    The pid check matters: a crashed server leaves a pid file that may still say "ready".
    The file is a few dozen bytes in the page cache, so it is read on the event loop.
    """
    # Polling is the only way: nothing signals a change of postmaster.pid.
    while process.returncode is None:
        pidfile = read_pidfile(pgdata)
        if pidfile is not None and pidfile.pid == process.pid and pidfile.ready:
            return True
        await trio.sleep(_POLL_INTERVAL)
    return False


async def _wait_gone(server: _Server) -> None:
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
        if _alive(server):
            await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    _alive(server)  # reaps it if it was our child after all


def _alive(server: _Server) -> bool:
    """Whether the server process still runs: cheap enough to ask on every ``address()``."""
    if server.process is not None:
        return server.process.returncode is None
    # An adopted server may be our child after all (same Prism process, new runtime);
    # reaping it here keeps a zombie from counting as alive.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(server.pid, os.WNOHANG)
    return start_ticks(server.pid) == server.start_ticks


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


def _guc_list_item(value: str) -> str:
    """Quote one element of a list-valued setting when it contains a separator."""
    if any(char in value for char in ', "'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _server_env() -> dict[str, str]:
    """The environment of server processes: minimal, so Prism's secrets do not leak into it.

    ``LC_ALL=C`` keeps server messages in English, which start-up failure detection relies on.
    """
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    return env


def _open_log(log_path: Path) -> BinaryIO:
    """Open a server's log for appending; the server inherits the descriptor."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return open(log_path, "ab")


def _log_tail(log_path: Path, offset: int) -> str:
    """The last lines the server wrote to its log since ``offset``."""
    try:
        with open(log_path, "rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(offset, size - _LOG_TAIL_BYTES))
            text = log.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read {log_path}: {exc})"
    return last_lines(text)


def _user_name(uid: int) -> str | None:
    """The name of ``uid`` in the user database, None where it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
