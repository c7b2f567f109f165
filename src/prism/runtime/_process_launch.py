"""Launching one local ``postgres`` server, in its sandbox, and waiting until it is ready.

The server is spawned from a fresh thread that Landlock confines first (``landlock.run_confined``)
and the ``Popen`` it makes is wrapped as a ``trio.Process``, as trio's own ``open_process``
does. It runs in its own session, so that a Ctrl-C in Prism's terminal does not reach it and
Prism alone decides the shutdown order, with a minimal environment that carries none of Prism's
secrets. Readiness comes from the status line Postgres itself writes to ``postmaster.pid``: no
fixed sleeps, no probe connections. A start that fails in any way kills its server.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio

from prism.core.address import BackendAddress
from prism.core.errors import ConfigError, RuntimeStartFailed
from prism.postgres import serverconf
from prism.postgres.binaries import PgInstall
from prism.runtime import landlock, sandbox
from prism.runtime._postmaster import (
    LOG_TAIL_BYTES,
    LOOPBACK,
    PID_POLL_S,
    PortTaken,
    bind_failed,
    exit_failure,
    last_lines,
    read_pidfile,
)
from prism.runtime._process_dirs import ServerDirs
from prism.runtime._process_server import QUICK_KILL, LocalServer, signal_until_gone
from prism.runtime.base import BindMount

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


@dataclass(frozen=True)
class Start:
    """What one server start is made of, whatever port it gets."""

    install: PgInstall
    branch: str
    pgdata: Path
    socket_dir: Path
    # The settings Prism overrides (serverconf), with its own config, hba and ident files.
    owned: dict[str, str]
    # Directories beyond the data and socket ones, opened in the sandbox (a WAL archive).
    mounts: tuple[BindMount, ...]


class Launcher:
    """Spawns the servers of one process runtime, each confined by its own Landlock ruleset."""

    def __init__(
        self,
        install: PgInstall,
        dirs: ServerDirs,
        *,
        start_timeout: float,
        settings: Mapping[str, str],
        sandbox_policy: sandbox.SandboxPolicy | None,
        support: landlock.Support | None,
    ) -> None:
        extra = dict(settings)
        clash = sorted(_MANAGED_SETTINGS.intersection(extra))
        if clash:
            raise ConfigError(
                f"server settings {', '.join(clash)} are managed by the process runtime",
                hint="remove them from the extra server settings",
            )
        self._install = install  # whose user every server runs as
        self._dirs = dirs
        self._start_timeout = start_timeout
        self._settings = extra
        # None: servers run unconfined (--branch-sandbox off).
        self._sandbox_policy = sandbox_policy
        self._landlock = support

    async def launch(self, spec: Start, port: int) -> LocalServer:
        """Spawn ``spec``'s server on ``port`` and wait until it is ready; kill it on any failure.

        ``spec.owned`` are the settings Prism overrides (``serverconf``); the operator's extra
        settings come after them and win, the runtime's own come last.
        """
        branch, pgdata, socket_dir = spec.branch, spec.pgdata, spec.socket_dir
        log_path = self._dirs.log_dir / f"{branch}.log"
        command = [str(spec.install.bin("postgres")), "-D", str(pgdata)]
        command += serverconf.as_flags(spec.owned)
        command += serverconf.as_flags(self._settings)
        command += [
            "-c",
            f"listen_addresses={LOOPBACK}",
            "-c",
            f"port={port}",
            "-c",
            f"unix_socket_directories={_guc_list_item(self._dirs.socket_name(socket_dir))}",
            "-c",
            "unix_socket_permissions=0700",
        ]
        ruleset = None
        if self._sandbox_policy is not None:
            command += serverconf.as_flags(sandbox.SANDBOX_SETTINGS)
            ruleset = await trio.to_thread.run_sync(self._ruleset, spec, port)
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
                    env=server_env(),
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
        server = LocalServer(
            branch=branch,
            pgdata=pgdata,
            pid=process.pid,
            address=BackendAddress(
                host=LOOPBACK,
                port=port,
                service_socket_dir=socket_dir,
                abstract_socket=self._dirs.abstract,
            ),
            process=process,
            start_ticks=None,
            owns_socket_dir=True,
        )
        try:
            with trio.move_on_after(self._start_timeout):
                if await _wait_ready(process, pgdata):
                    return server
                tail = _log_tail(log_path, log_offset)
                if bind_failed(tail):
                    raise PortTaken
                how = f"status {process.returncode}"
                raise await trio.to_thread.run_sync(exit_failure, branch, how, tail, pgdata)
        except BaseException:
            with trio.CancelScope(shield=True):
                await signal_until_gone(server, QUICK_KILL)
            raise
        with trio.CancelScope(shield=True):
            await signal_until_gone(server, QUICK_KILL)
        raise RuntimeStartFailed(
            f"the server of branch {branch} was not ready within {self._start_timeout:g} s",
            hint=_log_tail(log_path, log_offset),
        )

    def _ruleset(self, spec: Start, port: int) -> landlock.Ruleset | None:
        """Build the Landlock ruleset of one server (blocking: opens each allowed path)."""
        assert self._sandbox_policy is not None and self._landlock is not None
        if not self._landlock.filesystem:
            return None
        access = sandbox.server_access(
            self._sandbox_policy,
            branch=spec.branch,
            bin_dir=spec.install.bin_dir,
            pgdata=spec.pgdata,
            socket_dir=spec.socket_dir,
            config_files=(Path(spec.owned["hba_file"]), Path(spec.owned["ident_file"])),
            port=port,
            settings=spec.owned,
            mounts=spec.mounts,
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
                f"cannot build the sandbox of branch {spec.branch}'s server: {exc}",
                hint="--branch-sandbox off runs servers unconfined (not recommended)",
            ) from exc


def server_env() -> dict[str, str]:
    """The environment of server processes: minimal, so Prism's secrets do not leak into it.

    ``LC_ALL=C`` keeps server messages in English, which start-up failure detection relies on.
    """
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    return env


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
        await trio.sleep(PID_POLL_S)
    return False


def _guc_list_item(value: str) -> str:
    """Quote one element of a list-valued setting when it contains a separator."""
    if any(char in value for char in ', "'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _open_log(log_path: Path) -> BinaryIO:
    """Open a server's log for appending; the server inherits the descriptor."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return open(log_path, "ab")


def _log_tail(log_path: Path, offset: int) -> str:
    """The last lines the server wrote to its log since ``offset``."""
    try:
        with open(log_path, "rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(offset, size - LOG_TAIL_BYTES))
            text = log.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read {log_path}: {exc})"
    return last_lines(text)
