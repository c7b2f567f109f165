"""Starting one branch container and telling when its server is ready, or why it is not.

Readiness is the status line Postgres writes to ``postmaster.pid`` in the bind-mounted data
directory, polled every few milliseconds on the host: no fixed sleeps, no probe connections.
Where the engine shares this kernel the container's init process is watched in /proc, so an
early exit costs no engine call either. A start that fails in any way (an early exit, a
timeout, a cancellation) removes its container before the error propagates.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import trio
from docker.models.containers import Container

from prism.core.address import BackendAddress
from prism.core.errors import RuntimeStartFailed
from prism.core.values import DockerNetwork
from prism.runtime import _docker_sandbox as sandbox
from prism.runtime._docker_config import CONTAINER_PORT, Launch, container_args, container_name
from prism.runtime._docker_engine import (
    LABEL_NETWORK,
    LABEL_PORT,
    LABEL_SOCKET_DIR,
    DockerEngine,
)
from prism.runtime._postmaster import (
    LOOPBACK,
    PID_POLL_S,
    PortTaken,
    bind_failed,
    exit_failure,
    free_port,
    on_a_free_port,
    read_pidfile,
    start_ticks,
)

log = logging.getLogger(__name__)

# Asking the engine costs a thread and an HTTP round trip; an early exit may be noticed a
# little later than readiness would be.
_EXIT_POLL_S = 0.05


@dataclass
class ContainerServer:
    """One container Prism knows to be running."""

    branch: str
    container_id: str
    pgdata: Path
    address: BackendAddress
    # The container's init process on this host, to tell cheaply (no engine call) whether it
    # still runs; None when the engine runs elsewhere (Docker Desktop) and the pid means nothing.
    host_pid: int | None
    start_ticks: str | None

    def running(self) -> bool:
        """Whether the container still runs, as far as /proc tells (True where it cannot)."""
        return self.host_pid is None or start_ticks(self.host_pid) == self.start_ticks


class NameTaken(RuntimeStartFailed):
    """A container of the branch's name exists already (running, or left over)."""


class Launcher:
    """Creates and starts branch containers on one engine, each until its server is ready."""

    def __init__(self, engine: DockerEngine, *, shm_size: str, start_timeout: float) -> None:
        self._engine = engine
        self._shm_size = shm_size
        self._start_timeout = start_timeout

    async def launch(self, spec: Launch) -> ContainerServer:
        """Start ``spec``'s container on a free port, again if another process took it first.

        Raises ``NameTaken`` if a container of the branch's name exists already.
        """
        # On the bridge each container has its own address; elsewhere ports are shared.
        bridge = spec.mode is DockerNetwork.BRIDGE_IP
        return await on_a_free_port(
            functools.partial(self._launch, spec),
            branch=spec.branch,
            what="container",
            pick_port=(lambda: CONTAINER_PORT) if bridge else free_port,
        )

    async def wait_adopted_ready(self, branch: str, pgdata: Path, container: Container) -> None:
        """Wait until the running container of an earlier Prism is ready (still recovering)."""
        with trio.move_on_after(self._start_timeout) as scope:
            # Polling: Postgres signals readiness only by rewriting a file.
            while not _pidfile_ready(pgdata, None):  # noqa: ASYNC110
                await trio.sleep(PID_POLL_S)
        if scope.cancelled_caught:
            raise RuntimeStartFailed(
                f"the running container of branch {branch} did not become ready within "
                f"{self._start_timeout:g} s",
                hint=await self._engine.log_tail(container),
            )

    def server_from(self, branch: str, pgdata: Path, container: Container) -> ContainerServer:
        """The address and liveness handle of a started (or adopted) container."""
        labels = container.labels
        attrs = container.attrs
        mode = labels.get(LABEL_NETWORK, DockerNetwork.BRIDGE_IP)
        port = int(labels.get(LABEL_PORT, CONTAINER_PORT))
        if mode in (DockerNetwork.PUBLISHED_PORT, DockerNetwork.HOST):
            host = LOOPBACK
        else:
            host = _container_ip(attrs)
            if not host:
                raise RuntimeStartFailed(
                    f"the container of branch {branch} has no IP address on a bridge network",
                    hint="use --docker-network published-port",
                )
        socket_dir = labels.get(LABEL_SOCKET_DIR)
        host_pid: int | None = int(attrs.get("State", {}).get("Pid") or 0) or None
        ticks = (
            start_ticks(host_pid) if host_pid is not None and self._engine.local_engine else None
        )
        if ticks is None:
            host_pid = None
        return ContainerServer(
            branch=branch,
            container_id=container.id or "",
            pgdata=pgdata,
            address=BackendAddress(
                host=host, port=port, service_socket_dir=Path(socket_dir) if socket_dir else None
            ),
            host_pid=host_pid,
            start_ticks=ticks,
        )

    async def _launch(self, spec: Launch, port: int) -> ContainerServer:
        """Create and start the container, wait for readiness; remove it on any failure.

        The low-level API creates the container in one call (the high-level ``create`` inspects
        it afterwards too); the one inspect after the start gives the address and host pid.
        """
        branch, pgdata, mode = spec.branch, spec.pgdata, spec.mode
        name = container_name(branch)
        command, mounts, labels = container_args(spec, port)
        published = mode is DockerNetwork.PUBLISHED_PORT
        api = self._engine.api()
        host_config = api.create_host_config(
            mounts=mounts,
            port_bindings={port: (LOOPBACK, port)} if published else None,
            network_mode="host" if mode is DockerNetwork.HOST else None,
            shm_size=self._shm_size,
            **sandbox.host_config(
                outbound=spec.outbound,
                architecture=self._engine.architecture,
                seccomp=self._engine.seccomp,
            ),
        )
        before = _pidfile_stamp(pgdata)
        t0 = trio.current_time()
        try:
            created: dict[str, Any] = await self._engine.call(
                RuntimeStartFailed,
                api.create_container,
                spec.info.image,
                name=name,
                entrypoint=["postgres"],
                command=command,
                user=f"{spec.uid}:{spec.gid}",
                labels=labels,
                ports=[port] if published else None,
                stop_signal="SIGINT",
                environment={"LC_ALL": "C"},
                host_config=host_config,
                passes=(docker.errors.APIError,),
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise NameTaken(
                    f"a container named {name} already exists",
                    hint=f"another Prism may be serving branch {branch}; or remove it: "
                    f"docker rm -f {name}",
                ) from exc
            raise RuntimeStartFailed(
                f"the container of branch {branch} could not be created: {exc.explanation or exc}"
            ) from exc
        container: Container = self._engine.containers().prepare_model(
            {"Id": created["Id"], "Name": f"/{name}"}
        )
        try:
            try:
                t1 = trio.current_time()
                await self._engine.call(
                    RuntimeStartFailed, container.start, passes=(docker.errors.APIError,)
                )
            except docker.errors.APIError as exc:
                if "address already in use" in str(exc).lower() or "port is already" in str(exc):
                    raise PortTaken from exc
                raise RuntimeStartFailed(
                    f"the container of branch {branch} could not start: {exc.explanation or exc}",
                    hint=await self._engine.log_tail(container),
                ) from exc
            t2 = trio.current_time()
            await self._engine.call(RuntimeStartFailed, container.reload)
            server = self.server_from(branch, pgdata, container)
            t3 = trio.current_time()
            with trio.move_on_after(self._start_timeout) as scope:
                await self._wait_ready(server, container, before)
            if scope.cancelled_caught:
                raise RuntimeStartFailed(
                    f"the server of branch {branch} was not ready within {self._start_timeout:g} s",
                    hint=await self._engine.log_tail(container),
                )
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._engine.remove_quietly(container)
            raise
        # The split shows where start-up time goes (the benchmark reads it from the log).
        log.debug(
            "container phases branch=%s create_ms=%d start_ms=%d inspect_ms=%d ready_ms=%d",
            branch,
            (t1 - t0) * 1000,
            (t2 - t1) * 1000,
            (t3 - t2) * 1000,
            (trio.current_time() - t3) * 1000,
        )
        return server

    async def _wait_ready(
        self, server: ContainerServer, container: Container, before: tuple[int, int] | None
    ) -> None:
        """Return when this start's ``postmaster.pid`` says ready; raise if the container exits.

        ``before`` is the pid file's identity before the start: a clone or a crash leaves one
        that may still say "ready", and it must not count.

        Where the container's init process is visible in /proc, its exit is noticed there in
        the same cheap poll; only then is the engine asked why. Otherwise a watcher asks the
        engine every ``_EXIT_POLL_S``.
        """
        if server.host_pid is not None:
            # Polling: Postgres signals readiness only by rewriting a file.
            while not _pidfile_ready(server.pgdata, before):
                if start_ticks(server.host_pid) != server.start_ticks:
                    raise await self._exit_failure(server, container)
                await trio.sleep(PID_POLL_S)
            return
        # The watcher hands its verdict over instead of raising it, so the caller sees the
        # error itself rather than an ExceptionGroup around it.
        failure: list[Exception] = []
        async with trio.open_nursery() as nursery:

            async def watch_exit() -> None:
                try:
                    failure.append(await self._exit_failure(server, container))
                except Exception as exc:  # the engine went away: re-raised below
                    failure.append(exc)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_exit)
            while not _pidfile_ready(server.pgdata, before):  # noqa: ASYNC110
                await trio.sleep(PID_POLL_S)
            nursery.cancel_scope.cancel()
        if failure:
            raise failure[0]

    async def _exit_failure(self, server: ContainerServer, container: Container) -> Exception:
        """Wait until ``container`` exits, then describe why, with the last lines of its log."""
        while True:
            await self._engine.call(RuntimeStartFailed, container.reload, abandon_on_cancel=True)
            if container.status not in ("created", "running"):
                break
            await trio.sleep(_EXIT_POLL_S)
        code = container.attrs.get("State", {}).get("ExitCode")
        tail = await self._engine.log_tail(container)
        log.warning(
            "container exited during start-up branch=%s exit_code=%s log=%r",
            server.branch,
            code,
            tail,
        )
        if bind_failed(tail):
            return PortTaken()
        how = f"exit code {code}"
        return await trio.to_thread.run_sync(exit_failure, server.branch, how, tail, server.pgdata)


def _pidfile_stamp(pgdata: Path) -> tuple[int, int] | None:
    """Identity of the current ``postmaster.pid`` (inode, mtime), None if there is none."""
    try:
        info = (pgdata / "postmaster.pid").stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


def _pidfile_ready(pgdata: Path, before: tuple[int, int] | None) -> bool:
    """Whether a pid file written since ``before`` says the server accepts connections.

    In a container the postmaster is pid 1, as it was in the container that left a stale file,
    so the pid cannot tell old from new; the file's identity can, because Postgres rewrites it.
    """
    if before is not None and _pidfile_stamp(pgdata) == before:
        return False
    pidfile = read_pidfile(pgdata)
    return pidfile is not None and pidfile.ready


def _container_ip(attrs: dict[str, Any]) -> str:
    settings = attrs.get("NetworkSettings", {})
    if settings.get("IPAddress"):
        return str(settings["IPAddress"])
    for network in (settings.get("Networks") or {}).values():
        if network.get("IPAddress"):
            return str(network["IPAddress"])
    return ""
