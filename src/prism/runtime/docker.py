"""The docker runtime: each branch's Postgres server is a container on the branch's clone.

One container per branch, ``prism-<branch>``, labelled so a restarted Prism finds it again. The
clone is bind-mounted as the data directory and the container runs as the directory's owner
(read with ``os.stat``), so any ``postgres:*`` image works whatever uid its ``postgres`` user
has. Prism starts ``postgres -D ...`` itself instead of the image's entrypoint: the entrypoint's
checks and ``chown``s are start-up time a branch does not need.

Every Docker Engine call blocks (HTTP over a socket), so each goes through ``trio.to_thread``.
Readiness is the status line Postgres writes to ``postmaster.pid`` in the bind-mounted data
directory, polled every few milliseconds on the host: no fixed sleeps, no probe connections.

Reaching a server:

* ``host``: the container shares the host's network namespace and Postgres listens on
  127.0.0.1 at a free port, like the process runtime. No bridge, veth pair or NAT to set up,
  which saves the largest single phase of a cold start (figure in docs/benchmarks.md).
* ``bridge-ip``: the container's address on the default bridge; the host routes to it on Linux.
* ``published-port``: a port published on 127.0.0.1, for Docker Desktop / WSL2 / rootless
  engines, whose container addresses the host cannot reach. Postgres then listens on that same
  port inside the container, so the Unix socket name matches the TCP port.
* ``auto``: ``host`` when the engine shares this Linux kernel (and is not rootless: a rootless
  engine's "host" network is its own namespace), ``published-port`` otherwise.

Where the engine shares this kernel, a private per-branch host directory is bind-mounted as the
server's Unix socket directory: Prism's trusted service connection.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import stat
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import docker
import docker.errors
import requests.exceptions
import trio
from docker.models.containers import Container
from docker.types import Mount

from prism import serverconf
from prism.address import BackendAddress
from prism.errors import ConfigError, PrismError, RuntimeStartFailed, RuntimeStopFailed
from prism.pgbin import embedded_bin_dir, read_data_major, server_version
from prism.runtime._postmaster import (
    LOOPBACK,
    PortTaken,
    free_port,
    last_lines,
    make_socket_dir,
    read_pidfile,
    remove_dir,
    socket_dir_for,
    start_ticks,
)

if TYPE_CHECKING:
    from prism.config import Settings

log = logging.getLogger(__name__)

NetworkMode = Literal["auto", "host", "bridge-ip", "published-port"]
_NETWORK_MODES: tuple[str, ...] = ("auto", "host", "bridge-ip", "published-port")

DEFAULT_IMAGE = "postgres:15-alpine"
#: Replaced in ``--image`` by the major version of the data a container runs on.
MAJOR_FIELD = "{major}"
CONTAINER_PREFIX = "prism-"
LABEL_MANAGED = "prism.managed"
LABEL_BRANCH = "prism.branch"
LABEL_PARENT = "prism.parent"
LABEL_PGDATA = "prism.pgdata"
LABEL_SOCKET_DIR = "prism.socket-dir"
LABEL_NETWORK = "prism.network"
LABEL_PORT = "prism.port"

#: Where the official images keep PGDATA (and declare a VOLUME): mounting the clone exactly
#: there keeps Docker from creating an anonymous volume for it.
_DEFAULT_PGDATA = "/var/lib/postgresql/data"
_SOCKET_TARGET = "/var/run/prism"
_INIT_TARGET = "/var/run/prism-init"
_CONTAINER_PORT = 5432
_PID_POLL_S = 0.005
# Asking the engine costs a thread and an HTTP round trip; an early exit may be noticed a
# little later than readiness would be.
_EXIT_POLL_S = 0.05
_LOG_TAIL = 20
_INITDB_TIMEOUT_S = 300.0
_PORT_ATTEMPTS = 5

T = TypeVar("T")


def _engine_hint(host: str | None) -> str:
    where = host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return (
        f"is dockerd running? Prism talks to it at {where}; start it (systemctl start docker, "
        "or dockerd &), or set DOCKER_HOST"
    )


class EngineUnreachable(RuntimeStartFailed):
    """The Docker engine did not answer; nothing about the branch itself is known to be wrong."""


@dataclass(frozen=True)
class _ImageInfo:
    """What Prism needs to know about one image."""

    image: str
    pgdata: str
    passwd: str
    # From the official images' PG_MAJOR; None when an image does not say.
    major: int | None


@dataclass(frozen=True)
class _Launch:
    """What one container start is made of, whatever port it gets."""

    branch: str
    pgdata: Path
    parent: str | None
    info: _ImageInfo
    mode: NetworkMode
    uid: int
    gid: int
    socket_dir: Path | None
    # The settings Prism overrides on this data (serverconf); the image's libraries are unknown,
    # so shared_preload_libraries is left alone.
    owned: dict[str, str]


@dataclass
class _Server:
    """One container Prism knows to be running."""

    branch: str
    container_id: str
    pgdata: Path
    address: BackendAddress
    # The container's init process on this host, to tell cheaply (no engine call) whether it
    # still runs; None when the engine runs elsewhere (Docker Desktop) and the pid means nothing.
    host_pid: int | None
    start_ticks: str | None


class DockerRuntime:
    """Runs each branch's server as a Docker container (the ``docker`` runtime)."""

    name = "docker"

    def __init__(
        self,
        *,
        run_dir: Path,
        image: str = DEFAULT_IMAGE,
        network_mode: str = "auto",
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        docker_host: str | None = None,
        shm_size: str = "256m",
        default_major: int | None = None,
    ) -> None:
        if network_mode not in _NETWORK_MODES:
            raise ConfigError(
                f"unknown docker network mode {network_mode!r}",
                hint=f"choose one of: {', '.join(_NETWORK_MODES)}",
            )
        self._run_dir = run_dir
        if MAJOR_FIELD in image and default_major is None:
            raise ConfigError(
                f"the image {image} names {MAJOR_FIELD} but no major version for new clusters "
                "is known"
            )
        self._image = image
        self._default_major = default_major
        self._network_mode = network_mode
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._docker_host = docker_host
        self._shm_size = shm_size
        self._client: docker.DockerClient | None = None
        self._local_engine = False
        self._mode: NetworkMode | None = None
        self._image_info: dict[str, _ImageInfo] = {}
        self._servers: dict[str, _Server] = {}

    # --- the Runtime contract ----------------------------------------------------------------

    async def check(self) -> None:
        """Fail now if the engine is unreachable or the image is missing, saying how to fix it."""
        await self._image_details(self._image_for(None))

    async def initdb(self, pgdata: Path, *, superuser: str, password: str) -> None:
        """Initialise ``pgdata`` with the image's own ``initdb``, as the data directory's owner.

        A root-owned directory (what a storage driver running as root makes) is first handed to
        the image's ``postgres`` user, read from the image's ``/etc/passwd``, since Postgres
        refuses to run as root. A uid the image does not know gets a passwd entry bind-mounted
        in, because ``initdb`` looks its own user up.
        """
        info = await self._image_details(self._image_for(None))
        uid, gid = await trio.to_thread.run_sync(_initdb_owner, pgdata, info.passwd)
        workdir = await trio.to_thread.run_sync(
            _initdb_workdir, self._run_dir, password, uid, gid, info.passwd
        )
        target = info.pgdata
        mounts = [
            Mount(target, str(pgdata), type="bind"),
            Mount(_INIT_TARGET, str(workdir), type="bind", read_only=True),
        ]
        if (workdir / "passwd").exists():
            mounts.append(
                Mount("/etc/passwd", str(workdir / "passwd"), type="bind", read_only=True)
            )
        command = [
            "-D",
            target,
            "-U",
            superuser,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={_INIT_TARGET}/pwfile",
            "-E",
            "UTF8",
            "--locale=C",
        ]
        started = trio.current_time()
        try:
            await self._run_initdb(info.image, pgdata, command, uid, gid, mounts)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(remove_dir, workdir)
        # The official images open TCP to every address in pg_hba the same way; without it the
        # server refuses the bridge gateway Prism connects from.
        await trio.to_thread.run_sync(_allow_host_connections, pgdata)
        log.info(
            "cluster initialised pgdata=%s superuser=%s image=%s uid=%d duration_ms=%d",
            pgdata,
            superuser,
            info.image,
            uid,
            (trio.current_time() - started) * 1000,
        )

    async def _run_initdb(
        self, image: str, pgdata: Path, command: list[str], uid: int, gid: int, mounts: list[Mount]
    ) -> None:
        """Run ``initdb`` in a one-off container and remove it, whatever happens."""
        container: Container = await self._engine(
            RuntimeStartFailed,
            self._containers().create,
            image,
            entrypoint=["initdb"],
            command=command,
            user=f"{uid}:{gid}",
            mounts=mounts,
            labels={LABEL_MANAGED: "true", LABEL_PGDATA: str(pgdata)},
            environment={"LC_ALL": "C"},
        )
        try:
            await self._engine(RuntimeStartFailed, container.start)
            result: Any = None
            with trio.move_on_after(_INITDB_TIMEOUT_S):
                result = await self._engine(
                    RuntimeStartFailed, container.wait, abandon_on_cancel=True
                )
            if result is None:
                raise RuntimeStartFailed(
                    f"initdb for {pgdata} did not finish within {_INITDB_TIMEOUT_S:g} s",
                    hint=await self._log_tail(container),
                )
            status = int(result.get("StatusCode", -1))
            if status != 0:
                raise RuntimeStartFailed(
                    f"initdb failed for {pgdata} in image {image} (exit status {status})",
                    hint=await self._log_tail(container),
                )
        finally:
            with trio.CancelScope(shield=True):
                await self._remove_quietly(container)

    async def start(
        self, branch: str, pgdata: Path, *, parent: str | None = None
    ) -> BackendAddress:
        """Run ``branch``'s container and return once its server reports ready.

        On any failure (early exit, timeout, cancellation) the container is removed before the
        error propagates; an early exit's hint carries the last lines of the container's log.
        """
        running = self.address(branch)
        if running is not None:
            return running
        started = trio.current_time()
        info = await self._server_image(branch, pgdata)
        mode = await self._network()
        uid, gid = await trio.to_thread.run_sync(_server_owner, pgdata)
        socket_dir = self._socket_dir(branch) if self._local_engine else None
        if socket_dir is not None:
            await trio.to_thread.run_sync(make_socket_dir, socket_dir, (uid, gid))
        configured = await trio.to_thread.run_sync(serverconf.configured_values, pgdata)
        owned = serverconf.overrides(configured, has_library=None)
        spec = _Launch(branch, pgdata, parent, info, mode, uid, gid, socket_dir, owned)
        launch = functools.partial(self._launch_on_a_free_port, spec)
        try:
            try:
                server = await launch()
            except _NameTaken:
                # Asked only now, not before every start: an engine round trip saved on the
                # hot path. A running container of ours is adopted; a stopped leftover (a
                # crash, a failed removal) is removed by adopt() and the launch tried again.
                adopted = await self.adopt(branch, pgdata)
                if adopted is not None:
                    return adopted
                server = await launch()
        except BaseException:
            if socket_dir is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(remove_dir, socket_dir)
            raise
        self._servers[branch] = server
        log.info(
            "container started branch=%s container=%s address=%s:%d network=%s uid=%d "
            "duration_ms=%d",
            branch,
            server.container_id[:12],
            server.address.host,
            server.address.port,
            mode,
            uid,
            (trio.current_time() - started) * 1000,
        )
        return server.address

    async def stop(self, branch: str) -> None:
        """SIGINT (fast shutdown), SIGKILL after the stop timeout, then remove the container.

        The container is looked up by name too, so a branch an earlier Prism left running is
        stopped even if it was never adopted. A branch with no container is a no-op.
        """
        server = self._servers.get(branch)
        started = trio.current_time()
        container = await self._find(branch, RuntimeStopFailed)
        if container is None:
            self._forget(branch)
            return
        await self._engine(
            RuntimeStopFailed,
            container.stop,
            timeout=max(1, round(self._stop_timeout)),
        )
        await self._engine(RuntimeStopFailed, container.reload)
        exit_code = container.attrs.get("State", {}).get("ExitCode")
        if exit_code not in (0, None):
            # 137 = SIGKILL after the timeout: the next start runs crash recovery.
            log.warning(
                "container did not shut down cleanly branch=%s exit_code=%s", branch, exit_code
            )
        await self._engine(RuntimeStopFailed, container.remove, v=True, force=True)
        socket_dir = container.labels.get(LABEL_SOCKET_DIR)
        if socket_dir:
            await trio.to_thread.run_sync(remove_dir, Path(socket_dir))
        self._forget(branch)
        log.info(
            "container stopped branch=%s container=%s known=%s duration_ms=%d",
            branch,
            container.id[:12] if container.id else "?",
            server is not None,
            (trio.current_time() - started) * 1000,
        )

    async def adopt(self, branch: str, pgdata: Path) -> BackendAddress | None:
        """Take over the running container of ``branch`` on ``pgdata``; None if there is none.

        A stopped leftover (a crash, a failed removal) is removed so that the next start finds
        the name free. A running container on another data directory belongs to someone else
        (another Prism on the same engine) and is refused with an error, never touched.
        """
        running = self.address(branch)
        if running is not None:
            return running
        container = await self._find(branch, RuntimeStartFailed)
        if container is None:
            return None
        if container.status != "running":
            log.info("removing stopped leftover container branch=%s", branch)
            await self._remove_quietly(container)
            return None
        labelled = container.labels.get(LABEL_PGDATA, "")
        if not await trio.to_thread.run_sync(_same_path, Path(labelled), pgdata):
            raise RuntimeStartFailed(
                f"container {container.name} runs branch {branch} on {labelled}, not on {pgdata}",
                hint="another Prism on this Docker engine uses the same branch name; stop it "
                f"or remove the container (docker rm -f {container.name})",
            )
        server = self._server_from(branch, pgdata, container)
        with trio.move_on_after(self._start_timeout) as scope:
            # Polling: Postgres signals readiness only by rewriting a file.
            while not _pidfile_ready(pgdata, None):  # noqa: ASYNC110
                await trio.sleep(_PID_POLL_S)
        if scope.cancelled_caught:
            raise RuntimeStartFailed(
                f"the running container of branch {branch} did not become ready within "
                f"{self._start_timeout:g} s",
                hint=await self._log_tail(container),
            )
        self._servers[branch] = server
        log.info(
            "container adopted branch=%s container=%s address=%s:%d",
            branch,
            server.container_id[:12],
            server.address.host,
            server.address.port,
        )
        return server.address

    async def reap_strays(self, root: Path) -> list[str]:
        """Stop every container on a data directory under ``root`` that no branch owns.

        Found by Prism's labels, so containers of other Prisms (other data directories) on the
        same engine are left alone. Called by reconcile after adoption: what is untracked here
        runs a rolled-back clone or a branch whose directory is gone.
        """
        client = await self._connect()
        containers: list[Container] = await self._engine(
            RuntimeStopFailed,
            client.containers.list,
            all=True,
            filters={"label": f"{LABEL_MANAGED}=true"},
        )
        prefix = str(root).rstrip("/") + "/"  # the storage root, already resolved
        stopped = []
        for container in containers:
            branch = container.labels.get(LABEL_BRANCH)
            pgdata = container.labels.get(LABEL_PGDATA, "")
            if not branch or branch in self._servers or not (pgdata + "/").startswith(prefix):
                continue
            await self.stop(branch)
            stopped.append(f"container {container.name} on {pgdata}")
        return stopped

    def address(self, branch: str) -> BackendAddress | None:
        """Where ``branch``'s server listens; None once its container is known to have exited.

        Answered without the engine (this is called on every connection): where the engine
        shares this kernel the container's init process is checked in /proc.
        """
        server = self._servers.get(branch)
        if server is None:
            return None
        if server.host_pid is None or start_ticks(server.host_pid) == server.start_ticks:
            return server.address
        del self._servers[branch]
        log.warning("container exited unexpectedly branch=%s", branch)
        return None

    async def aclose(self) -> None:
        """Close the engine connection; containers keep running for a later Prism to adopt."""
        self._servers.clear()
        client, self._client = self._client, None
        if client is not None:
            await trio.to_thread.run_sync(client.close)

    # --- starting one container --------------------------------------------------------------

    async def _launch_on_a_free_port(self, spec: _Launch) -> _Server:
        """``_launch`` with a fresh port, again if another process took the port first."""
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            # On the bridge each container has its own address; elsewhere ports are shared.
            port = _CONTAINER_PORT if spec.mode == "bridge-ip" else free_port()
            try:
                return await self._launch(spec, port)
            except PortTaken:
                log.debug("port taken branch=%s port=%d try=%d", spec.branch, port, attempt)
        raise RuntimeStartFailed(
            f"the container of branch {spec.branch} found no free port in {_PORT_ATTEMPTS} attempts"
        )

    async def _launch(self, spec: _Launch, port: int) -> _Server:
        """Create and start the container, wait for readiness; remove it on any failure.

        The low-level API creates the container in one call (the high-level ``create`` inspects
        it afterwards too); the one inspect after the start gives the address and host pid.
        """
        branch, pgdata, info, mode = spec.branch, spec.pgdata, spec.info, spec.mode
        name = f"{CONTAINER_PREFIX}{branch}"
        # With the host's network the server shares the host's loopback: listen there only.
        listen = LOOPBACK if mode == "host" else "*"
        command = ["-D", info.pgdata, *serverconf.as_flags(spec.owned)]
        command += ["-c", f"listen_addresses={listen}", "-c", f"port={port}"]
        mounts = [Mount(info.pgdata, str(pgdata), type="bind")]
        labels = {
            LABEL_MANAGED: "true",
            LABEL_BRANCH: branch,
            LABEL_PARENT: spec.parent or "",
            LABEL_PGDATA: str(pgdata),
            LABEL_NETWORK: mode,
            LABEL_PORT: str(port),
        }
        if spec.socket_dir is not None:
            mounts.append(Mount(_SOCKET_TARGET, str(spec.socket_dir), type="bind"))
            labels[LABEL_SOCKET_DIR] = str(spec.socket_dir)
            command += [
                "-c",
                f"unix_socket_directories={_SOCKET_TARGET}",
                "-c",
                "unix_socket_permissions=0700",
            ]
        else:
            command += ["-c", "unix_socket_directories="]
        published = mode == "published-port"
        api = self._api()
        host_config = api.create_host_config(
            mounts=mounts,
            port_bindings={port: (LOOPBACK, port)} if published else None,
            network_mode="host" if mode == "host" else None,
            shm_size=self._shm_size,
        )
        before = _pidfile_stamp(pgdata)
        t0 = trio.current_time()
        try:
            created: dict[str, Any] = await self._engine(
                RuntimeStartFailed,
                api.create_container,
                info.image,
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
                raise _NameTaken(
                    f"a container named {name} already exists",
                    hint=f"another Prism may be serving branch {branch}; or remove it: "
                    f"docker rm -f {name}",
                ) from exc
            raise RuntimeStartFailed(
                f"the container of branch {branch} could not be created: {exc.explanation or exc}"
            ) from exc
        container: Container = self._containers().prepare_model(
            {"Id": created["Id"], "Name": f"/{name}"}
        )
        try:
            try:
                t1 = trio.current_time()
                await self._engine(
                    RuntimeStartFailed, container.start, passes=(docker.errors.APIError,)
                )
            except docker.errors.APIError as exc:
                if "address already in use" in str(exc).lower() or "port is already" in str(exc):
                    raise PortTaken from exc
                raise RuntimeStartFailed(
                    f"the container of branch {branch} could not start: {exc.explanation or exc}",
                    hint=await self._log_tail(container),
                ) from exc
            t2 = trio.current_time()
            await self._engine(RuntimeStartFailed, container.reload)
            server = self._server_from(branch, pgdata, container)
            t3 = trio.current_time()
            with trio.move_on_after(self._start_timeout) as scope:
                await self._wait_ready(server, container, before)
            if scope.cancelled_caught:
                raise RuntimeStartFailed(
                    f"the server of branch {branch} was not ready within {self._start_timeout:g} s",
                    hint=await self._log_tail(container),
                )
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._remove_quietly(container)
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
        self, server: _Server, container: Container, before: tuple[int, int] | None
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
                    raise await self._exit_failure(server.branch, container)
                await trio.sleep(_PID_POLL_S)
            return
        # The watcher hands its verdict over instead of raising it, so the caller sees the
        # error itself rather than an ExceptionGroup around it.
        failure: list[Exception] = []
        async with trio.open_nursery() as nursery:

            async def watch_exit() -> None:
                try:
                    failure.append(await self._exit_failure(server.branch, container))
                except Exception as exc:  # the engine went away: re-raised below
                    failure.append(exc)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_exit)
            while not _pidfile_ready(server.pgdata, before):  # noqa: ASYNC110
                await trio.sleep(_PID_POLL_S)
            nursery.cancel_scope.cancel()
        if failure:
            raise failure[0]

    async def _exit_failure(self, branch: str, container: Container) -> Exception:
        """Wait until ``container`` exits, then describe why, with the last lines of its log."""
        while True:
            await self._engine(RuntimeStartFailed, container.reload, abandon_on_cancel=True)
            if container.status not in ("created", "running"):
                break
            await trio.sleep(_EXIT_POLL_S)
        code = container.attrs.get("State", {}).get("ExitCode")
        tail = await self._log_tail(container)
        log.warning(
            "container exited during start-up branch=%s exit_code=%s log=%r", branch, code, tail
        )
        if "could not bind" in tail or "Address already in use" in tail:
            return PortTaken()
        return RuntimeStartFailed(
            f"the server of branch {branch} exited during start-up (exit code {code})",
            hint=tail,
        )

    def _server_from(self, branch: str, pgdata: Path, container: Container) -> _Server:
        """The address and liveness handle of a started (or adopted) container."""
        labels = container.labels
        attrs = container.attrs
        mode = labels.get(LABEL_NETWORK, "bridge-ip")
        port = int(labels.get(LABEL_PORT, _CONTAINER_PORT))
        if mode in ("published-port", "host"):
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
        ticks = start_ticks(host_pid) if host_pid is not None and self._local_engine else None
        if ticks is None:
            host_pid = None
        return _Server(
            branch=branch,
            container_id=container.id or "",
            pgdata=pgdata,
            address=BackendAddress(
                host=host, port=port, service_socket_dir=Path(socket_dir) if socket_dir else None
            ),
            host_pid=host_pid,
            start_ticks=ticks,
        )

    # --- the engine ----------------------------------------------------------------------------

    async def _engine(
        self,
        error: type[PrismError],
        call: Callable[..., T],
        *args: Any,
        abandon_on_cancel: bool = False,
        passes: tuple[type[docker.errors.APIError], ...] = (),
        **kwargs: Any,
    ) -> T:
        """Run one blocking SDK call in a thread; whatever the engine raises becomes ``error``.

        This is the driver's boundary: nothing but a PrismError leaves it, so a refusal by the
        engine cannot escape as an SDK exception into a task that only expects Prism's errors.
        The API errors in ``passes`` (a missing image, a name conflict) are left to the caller,
        who knows what they mean for the branch.
        """
        try:
            return await trio.to_thread.run_sync(
                functools.partial(call, *args, **kwargs), abandon_on_cancel=abandon_on_cancel
            )
        except requests.exceptions.ConnectionError as exc:
            self._client = None  # reconnect (and re-check the engine) next time
            raise error(
                "cannot reach the Docker engine", hint=_engine_hint(self._docker_host)
            ) from exc
        except passes:
            raise
        except docker.errors.APIError as exc:
            raise error(f"the Docker engine refused: {exc.explanation or exc}") from exc
        except docker.errors.DockerException as exc:
            self._client = None
            raise error(
                f"cannot reach the Docker engine: {exc}", hint=_engine_hint(self._docker_host)
            ) from exc

    async def _connect(self) -> docker.DockerClient:
        """The engine client, made on first use so Prism can start before the engine does."""
        if self._client is not None:
            return self._client
        host = self._docker_host

        def connect() -> tuple[docker.DockerClient, dict[str, Any]]:
            # version="auto": the engine may be older than the SDK's default API version.
            if host:
                client = docker.DockerClient(base_url=host, version="auto")
            else:
                client = docker.from_env(version="auto")
            return client, client.info()

        try:
            client, engine = await trio.to_thread.run_sync(connect)
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
            raise EngineUnreachable(
                f"cannot reach the Docker engine: {exc}", hint=_engine_hint(host)
            ) from exc
        base_url = str(client.api.base_url)
        desktop = "docker desktop" in str(engine.get("OperatingSystem", "")).lower()
        rootless = any("rootless" in str(opt) for opt in engine.get("SecurityOptions") or [])
        local_socket = base_url.startswith(
            ("http+docker://localhost", "http+docker://localunixsocket")
        )
        self._local_engine = sys.platform.startswith("linux") and local_socket and not desktop
        routable = self._local_engine and not rootless
        if self._network_mode == "auto":
            self._mode = "host" if routable else "published-port"
        else:
            self._mode = cast(NetworkMode, self._network_mode)
        log.info(
            "docker engine version=%s os=%r network=%s (asked: %s) service_socket=%s",
            engine.get("ServerVersion"),
            engine.get("OperatingSystem"),
            self._mode,
            self._network_mode,
            self._local_engine,
        )
        self._client = client
        return client

    def _api(self) -> Any:
        assert self._client is not None, "connect before using the engine"
        return self._client.api

    def _containers(self) -> Any:
        assert self._client is not None, "connect before using the engine"
        return self._client.containers

    async def _network(self) -> NetworkMode:
        await self._connect()
        assert self._mode is not None
        return self._mode

    def _image_for(self, major: int | None) -> str:
        """The image for data of ``major`` (None: a new cluster): ``--image`` with its
        ``{major}`` filled in."""
        if MAJOR_FIELD not in self._image:
            return self._image
        return self._image.replace(MAJOR_FIELD, str(major or self._default_major))

    async def _server_image(self, branch: str, pgdata: Path) -> _ImageInfo:
        """The image whose server can read ``pgdata``, or a clear error before any container.

        A server of another major version exits at once on this data; refusing here keeps a
        client or the reaper from starting that doomed container again and again.
        """
        major = await trio.to_thread.run_sync(read_data_major, pgdata)
        info = await self._image_details(self._image_for(major))
        if major is not None and info.major is not None and info.major != major:
            raise RuntimeStartFailed(
                f"the data of branch {branch} is PostgreSQL {major}, and the image {info.image} "
                f"runs PostgreSQL {info.major}",
                hint=f"choose an image per major version with --image "
                f"(e.g. postgres:{MAJOR_FIELD}-alpine), or an image of PostgreSQL {major}",
            )
        return info

    async def _image_details(self, name: str) -> _ImageInfo:
        """PGDATA, /etc/passwd and major version of an image, read once; a missing image is an
        error that says how to get it (Prism never pulls: a pull can hang on an unreachable
        registry)."""
        if name in self._image_info:
            return self._image_info[name]
        client = await self._connect()
        try:
            image = await self._engine(
                RuntimeStartFailed,
                client.images.get,
                name,
                passes=(docker.errors.ImageNotFound,),
            )
        except docker.errors.ImageNotFound as exc:
            raise RuntimeStartFailed(
                f"the Docker image {name} is not present on the engine",
                hint=f"pull it (docker pull {name}) or build it, or choose another "
                "image with --image",
            ) from exc
        env = dict(item.split("=", 1) for item in (image.attrs.get("Config", {}).get("Env") or []))
        pgdata = env.get("PGDATA") or _DEFAULT_PGDATA
        # A created (never started) container is the only way to read a file from any image,
        # shell or not.
        probe: Container = await self._engine(
            RuntimeStartFailed,
            client.containers.create,
            name,
            entrypoint=["true"],
            labels={LABEL_MANAGED: "true"},
        )
        try:
            try:
                chunks, _ = await self._engine(
                    RuntimeStartFailed,
                    probe.get_archive,
                    "/etc/passwd",
                    passes=(docker.errors.NotFound,),
                )
                passwd = _untar_one(b"".join(chunks))
            except docker.errors.NotFound:
                passwd = ""
        finally:
            await self._remove_quietly(probe)
        major = env.get("PG_MAJOR", "").split(".")[0]
        info = _ImageInfo(name, pgdata, passwd, int(major) if major.isdigit() else None)
        self._image_info[name] = info
        return info

    async def _find(self, branch: str, error: type[PrismError]) -> Container | None:
        """The container of ``branch`` Prism made, running or not, by name and label."""
        client = await self._connect()
        containers: list[Container] = await self._engine(
            error,
            client.containers.list,
            all=True,
            filters={"name": f"^/{CONTAINER_PREFIX}{branch}$", "label": f"{LABEL_MANAGED}=true"},
        )
        return containers[0] if containers else None

    async def _log_tail(self, container: Container) -> str:
        """The last lines the container's server wrote, for an error hint."""
        try:
            raw: bytes = await self._engine(
                RuntimeStartFailed, container.logs, tail=_LOG_TAIL, stdout=True, stderr=True
            )
        except PrismError as exc:
            return f"(cannot read the container log: {exc.message})"
        return last_lines(raw.decode(errors="replace"))

    async def _remove_quietly(self, container: Container) -> None:
        """Force-remove a container on a failure path; the original error must win."""
        try:
            await self._engine(
                RuntimeStartFailed,
                container.remove,
                v=True,
                force=True,
                passes=(docker.errors.NotFound,),
            )
        except docker.errors.NotFound:
            pass
        except PrismError as exc:
            log.warning("cannot remove container %s: %s", container.name, exc.message)

    def _forget(self, branch: str) -> None:
        self._servers.pop(branch, None)

    def _socket_dir(self, branch: str) -> Path:
        """The branch's private socket directory, short enough for a Unix socket path."""
        return socket_dir_for(self._run_dir, branch, Path(tempfile.gettempdir()) / "prism-docker")


class _NameTaken(RuntimeStartFailed):
    """A container of the branch's name exists already (running, or left over)."""


async def open_docker_runtime(settings: Settings, data_dir: Path) -> DockerRuntime:
    """The docker runtime for a Prism whose data lives in ``data_dir``, checked before use."""
    default_major = None
    if MAJOR_FIELD in settings.image:
        # New clusters get the major version the process runtime would give them.
        default_major = int((await server_version(embedded_bin_dir())).split(".")[0])
    runtime = DockerRuntime(
        run_dir=data_dir / "run",
        image=settings.image,
        default_major=default_major,
        network_mode=settings.docker_network,
        start_timeout=settings.start_timeout,
        stop_timeout=settings.stop_timeout,
    )
    await runtime.check()
    return runtime


# --- blocking helpers (run in threads) ---------------------------------------------------------


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


def _same_path(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _server_owner(pgdata: Path) -> tuple[int, int]:
    """The uid:gid the server runs as: the data directory's owner, never root."""
    try:
        info = pgdata.stat()
    except OSError as exc:
        raise RuntimeStartFailed(
            f"the data directory {pgdata} cannot be read: {exc.strerror or exc}"
        ) from exc
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeStartFailed(f"the data directory {pgdata} does not exist")
    if info.st_uid == 0:
        raise RuntimeStartFailed(
            f"the data directory {pgdata} is owned by root, and Postgres refuses to run as root",
            hint=f"chown -R it to the uid the image's postgres user has (e.g. chown -R 999:999 "
            f"{pgdata} for the Debian postgres images, 70:70 for alpine)",
        )
    return info.st_uid, info.st_gid


def _initdb_owner(pgdata: Path, passwd: str) -> tuple[int, int]:
    """Who runs ``initdb``: the directory's owner, or the image's postgres user if that is root."""
    pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = pgdata.stat()
    if info.st_uid != 0:
        return info.st_uid, info.st_gid
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == "postgres":
            uid, gid = int(fields[2]), int(fields[3])
            os.chown(pgdata, uid, gid)
            return uid, gid
    raise RuntimeStartFailed(
        f"cannot tell which user should own {pgdata}: it is root's, and the image has no "
        "'postgres' user",
        hint=f"chown {pgdata} to the uid the image runs Postgres as",
    )


def _initdb_workdir(run_dir: Path, password: str, uid: int, gid: int, passwd: str) -> Path:
    """A private directory with the password file (and a passwd entry if the image lacks uid)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".initdb-", dir=run_dir))
    try:
        pwfile = workdir / "pwfile"
        pwfile.write_text(password + "\n", encoding="utf-8")
        pwfile.chmod(0o600)
        os.chown(pwfile, uid, gid)
        known = {line.split(":")[2] for line in passwd.splitlines() if line.count(":") >= 3}
        if str(uid) not in known:
            entry = f"prism:x:{uid}:{gid}:Prism branch server:/tmp:/sbin/nologin\n"
            body = passwd if not passwd or passwd.endswith("\n") else passwd + "\n"
            (workdir / "passwd").write_text(body + entry, encoding="utf-8")
            (workdir / "passwd").chmod(0o644)
        os.chown(workdir, uid, gid)
        workdir.chmod(0o700)
    except BaseException:
        remove_dir(workdir)
        raise
    return workdir


def _allow_host_connections(pgdata: Path) -> None:
    hba = pgdata / "pg_hba.conf"
    with open(hba, "a", encoding="utf-8") as file:
        file.write("\n# Added by Prism: clients reach the container over its network.\n")
        file.write("host all all all scram-sha-256\n")


def _untar_one(data: bytes) -> str:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive:
            extracted = archive.extractfile(member)
            if extracted is not None:
                return extracted.read().decode("utf-8", errors="replace")
    return ""


def _container_ip(attrs: dict[str, Any]) -> str:
    settings = attrs.get("NetworkSettings", {})
    if settings.get("IPAddress"):
        return str(settings["IPAddress"])
    for network in (settings.get("Networks") or {}).values():
        if network.get("IPAddress"):
            return str(network["IPAddress"])
    return ""
