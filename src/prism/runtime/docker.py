"""The docker runtime: each branch's Postgres server is a container on the branch's clone.

One container per branch, ``prism-<branch>``, labelled so a restarted Prism finds it again. The
clone is bind-mounted as the data directory and the container runs as the directory's owner
(read with ``os.stat``), so any ``postgres:*`` image works whatever uid its ``postgres`` user
has. Prism starts ``postgres -D ...`` itself instead of the image's entrypoint: the entrypoint's
checks and ``chown``s are start-up time a branch does not need.

This module is the runtime itself (starting, adopting, stopping containers); engine access
(every blocking SDK call in a thread, errors as PrismErrors, the network mode) is in
:mod:`prism.runtime._docker_engine`, and which image serves which data, with its ``initdb``,
in :mod:`prism.runtime._docker_image`. Readiness is the status line Postgres writes to
``postmaster.pid`` in the bind-mounted data directory, polled every few milliseconds on the
host: no fixed sleeps, no probe connections.

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
server's Unix socket directory: Prism's trusted service connection. Prism's own ``pg_hba.conf``
lives there too (``hba_file``), so a data directory's own rules (production's, after a base
backup of a source) cannot lock Prism out.

Every server container runs in the sandbox of :mod:`prism.runtime._docker_sandbox` (a branch's
superuser is an attacker: it opens no connection, sees no other data, holds no capability); a
container an earlier Prism left in another sandbox is restarted rather than adopted.

Following a source, the programs that take main's base backup run in containers of the same
images (:mod:`prism.runtime._docker_tools`), and main's container gets Prism's source directory
(the passfile) mounted.
"""

from __future__ import annotations

import functools
import logging
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import docker.errors
import trio
from docker.models.containers import Container
from docker.types import Mount

from prism import serverconf
from prism.address import BackendAddress
from prism.config import DockerNetwork
from prism.errors import ConfigError, PrismError, RuntimeStartFailed, RuntimeStopFailed
from prism.names import MAIN_BRANCH
from prism.pgbin import embedded_bin_dir, server_version
from prism.runtime import _docker_sandbox as sandbox
from prism.runtime._docker_engine import (
    LABEL_BRANCH,
    LABEL_MANAGED,
    LABEL_NETWORK,
    LABEL_PARENT,
    LABEL_PGDATA,
    LABEL_PORT,
    LABEL_SANDBOX,
    LABEL_SOCKET_DIR,
    DockerEngine,
)
from prism.runtime._docker_image import DEFAULT_IMAGE, MAJOR_FIELD, ImageInfo, Images
from prism.runtime._docker_tools import ContainerSourceTools, require_reachable
from prism.runtime._postmaster import (
    LOOPBACK,
    PortTaken,
    exit_failure,
    free_port,
    hand_over,
    make_socket_dir,
    read_pidfile,
    remove_dir,
    socket_dir_for,
    start_ticks,
)
from prism.runtime.base import BindMount, Confinement, ServerExtras, Share, SharedDir

if TYPE_CHECKING:
    from prism.config import Settings

log = logging.getLogger(__name__)

CONTAINER_PREFIX = "prism-"
_SOCKET_TARGET = "/var/run/prism"
_CONTAINER_PORT = 5432
_PID_POLL_S = 0.005
# Asking the engine costs a thread and an HTTP round trip; an early exit may be noticed a
# little later than readiness would be.
_EXIT_POLL_S = 0.05
_PORT_ATTEMPTS = 5
# Enough of a server log for the walreceiver's last failure (it retries every 5 s).
_SERVER_LOG_LINES = 500

CONTAINER_ARCHIVE = PurePosixPath("/var/lib/prism/wal-archive")
"""Where a container sees its own branch's WAL archive (read-write)."""
CONTAINER_PATHS = {
    Share.WAL_ARCHIVE: CONTAINER_ARCHIVE,
    Share.RESTORE_ARCHIVE: PurePosixPath("/var/lib/prism/restore/archive"),
    Share.RESTORE_WAL: PurePosixPath("/var/lib/prism/restore/pg_wal"),
}
"""Where a container sees each directory it is given: the same fixed paths on every host,
whatever the host paths are."""


def seen_in_container(shared: SharedDir) -> PurePosixPath:
    """Where a branch's container sees a directory it is given (``ServerExtras.resolve``)."""
    return CONTAINER_PATHS[shared.share]


@dataclass(frozen=True)
class _Launch:
    """What one container start is made of, whatever port it gets."""

    branch: str
    pgdata: Path
    parent: str | None
    info: ImageInfo
    mode: DockerNetwork
    uid: int
    gid: int
    socket_dir: Path | None
    # The settings Prism overrides on this data (serverconf); the image's libraries are unknown,
    # so shared_preload_libraries is left alone.
    owned: dict[str, str]
    # Whether the sandbox lets it connect out (main following a source, --branch-egress).
    outbound: bool
    # Host directories beyond the data and socket ones (a WAL archive: prism.pitr; main's
    # passfile for its walreceiver, when it follows a source).
    mounts: tuple[BindMount, ...] = ()


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
        network_mode: str = DockerNetwork.AUTO,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        docker_host: str | None = None,
        shm_size: str = "256m",
        default_major: int | None = None,
        copy_on_write: bool = False,
        branch_egress: tuple[str, ...] = (),
    ) -> None:
        self._run_dir = run_dir
        self._branch_egress = branch_egress
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._shm_size = shm_size
        self._copy_on_write = copy_on_write  # the storage's: which WAL settings fit it
        self._engine = DockerEngine(docker_host=docker_host, network_mode=network_mode)
        self._images = Images(self._engine, image, default_major)
        self._servers: dict[str, _Server] = {}
        self._main_mounts: tuple[BindMount, ...] = ()

    # --- the Runtime contract ----------------------------------------------------------------

    async def check(self) -> None:
        """Fail now if the engine is unreachable or the image is missing, saying how to fix it."""
        await self._images.details(self._images.for_major(None))

    async def initdb(self, pgdata: Path, *, superuser: str, password: str) -> None:
        """Initialise ``pgdata`` with the image's own ``initdb``, as the data directory's owner."""
        await self._images.initdb(
            pgdata, run_dir=self._run_dir, superuser=superuser, password=password
        )

    async def start(
        self,
        branch: str,
        pgdata: Path,
        *,
        parent: str | None = None,
        extras: ServerExtras | None = None,
    ) -> BackendAddress:
        """Run ``branch``'s container and return once its server reports ready.

        The directories of ``extras`` are bind-mounted at fixed paths (``CONTAINER_PATHS``).

        On any failure (early exit, timeout, cancellation) the container is removed before the
        error propagates; an early exit's hint carries the last lines of the container's log.
        """
        running = self.address(branch)
        if running is not None:
            return running
        started = trio.current_time()
        info = await self._images.for_data(branch, pgdata)
        mode = await self._engine.network()
        uid, gid = await trio.to_thread.run_sync(_server_owner, pgdata)
        extras = extras or ServerExtras()
        await trio.to_thread.run_sync(hand_over, extras.dirs, (uid, gid))
        socket_dir = self._socket_dir(branch) if self._engine.local_engine else None
        if socket_dir is not None:
            await trio.to_thread.run_sync(make_socket_dir, socket_dir, (uid, gid))
        configured = await trio.to_thread.run_sync(serverconf.configured_values, pgdata)
        owned = serverconf.overrides(
            configured, has_library=None, copy_on_write=self._copy_on_write
        )
        if socket_dir is not None:
            owned.update(await trio.to_thread.run_sync(_prism_files, socket_dir, (uid, gid)))
        extra_settings, mounts = extras.resolve(seen_in_container)
        owned.update(extra_settings)
        mounts += self._main_mounts if branch == MAIN_BRANCH else ()
        spec = _Launch(
            branch,
            pgdata,
            parent,
            info,
            mode,
            uid,
            gid,
            socket_dir,
            owned,
            self._outbound(branch),
            mounts,
        )
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
        await self._end(branch, graceful=True)

    async def kill(self, branch: str) -> None:
        """Remove the container by force (SIGKILL), for a shutdown whose deadline passed."""
        await self._end(branch, graceful=False)

    async def _end(self, branch: str, *, graceful: bool) -> None:
        """Stop (``graceful``) or kill ``branch``'s container, then remove it and forget it."""
        server = self._servers.get(branch)
        started = trio.current_time()
        container = await self._find(branch, RuntimeStopFailed)
        if container is None:
            self._forget(branch)
            return
        if graceful:
            # Abandoned on cancel: a shutdown out of time must not wait for the engine's own
            # stop timeout before it can kill the container.
            await self._engine.call(
                RuntimeStopFailed,
                container.stop,
                timeout=max(1, round(self._stop_timeout)),
                abandon_on_cancel=True,
            )
            await self._engine.call(RuntimeStopFailed, container.reload)
            exit_code = container.attrs.get("State", {}).get("ExitCode")
            if exit_code not in (0, None):
                # 137 = SIGKILL after the timeout: the next start runs crash recovery.
                log.warning(
                    "container did not shut down cleanly branch=%s exit_code=%s", branch, exit_code
                )
        await self._engine.call(RuntimeStopFailed, container.remove, v=True, force=True)
        socket_dir = container.labels.get(LABEL_SOCKET_DIR)
        if socket_dir:
            await trio.to_thread.run_sync(remove_dir, Path(socket_dir))
        self._forget(branch)
        log.info(
            "container %s branch=%s container=%s known=%s duration_ms=%d",
            "stopped" if graceful else "killed",
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
            await self._engine.remove_quietly(container)
            return None
        labelled = container.labels.get(LABEL_PGDATA, "")
        if not await trio.to_thread.run_sync(_same_path, Path(labelled), pgdata):
            raise RuntimeStartFailed(
                f"container {container.name} runs branch {branch} on {labelled}, not on {pgdata}",
                hint="another Prism on this Docker engine uses the same branch name; stop it "
                f"or remove the container (docker rm -f {container.name})",
            )
        if container.labels.get(LABEL_SANDBOX) != sandbox.label(outbound=self._outbound(branch)):
            # Started by a Prism with another sandbox (an older one, or other egress settings):
            # restarted rather than trusted as it is.
            log.warning("restarting container into the current sandbox branch=%s", branch)
            await self.stop(branch)
            return None
        server = self._server_from(branch, pgdata, container)
        with trio.move_on_after(self._start_timeout) as scope:
            # Polling: Postgres signals readiness only by rewriting a file.
            while not _pidfile_ready(pgdata, None):  # noqa: ASYNC110
                await trio.sleep(_PID_POLL_S)
        if scope.cancelled_caught:
            raise RuntimeStartFailed(
                f"the running container of branch {branch} did not become ready within "
                f"{self._start_timeout:g} s",
                hint=await self._engine.log_tail(container),
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
        containers = await self._engine.prism_containers(RuntimeStopFailed)
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

    async def source_tools(
        self, directory: Path, *, source_host: str | None
    ) -> ContainerSourceTools:
        """The programs for following a source, run in containers of this runtime's images.

        ``directory`` (Prism's, with the passfile) is mounted into main's container from now on,
        at its host path, so the ``passfile=`` of main's ``primary_conninfo`` names it there too.
        Branches never get it: nothing in a branch can reach the source. A source at
        ``source_host`` that the containers cannot reach is refused here.
        """
        mode = await self._engine.network()
        if not self._engine.local_engine:
            raise ConfigError(
                "--source with the docker runtime needs a Docker engine on this Linux host",
                hint="the base backup and main's passfile are shared with the containers by "
                "bind mounts of Prism's directories; use --runtime process with this engine",
            )
        require_reachable(source_host, mode)
        tools = ContainerSourceTools(
            self._engine,
            self._images,
            directory=directory,
            mode=mode,
            server_log=functools.partial(self.server_log, MAIN_BRANCH),
        )
        await tools.open()
        self._main_mounts = (BindMount(directory, str(directory), read_only=True),)
        return tools

    async def server_log(self, branch: str) -> str:
        """The end of the log of ``branch``'s container (its server's stderr); "" if there is
        none, or the engine cannot tell: the log only explains, it must not fail a caller."""
        try:
            container = await self._find(branch, RuntimeStartFailed)
            if container is None:
                return ""
            raw: bytes = await self._engine.call(
                RuntimeStartFailed, container.logs, tail=_SERVER_LOG_LINES, stdout=True, stderr=True
            )
        except PrismError as exc:
            log.debug("cannot read the log of branch %s: %s", branch, exc.message)
            return ""
        return raw.decode(errors="replace")

    def confinement(self) -> Confinement:
        """What the sandbox of the branch containers enforces (:mod:`._docker_sandbox`)."""
        return sandbox.confinement(
            self._engine.mode,
            egress=self._branch_egress,
            main_outbound=bool(self._main_mounts),
            seccomp=self._engine.seccomp,
        )

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
        await self._engine.aclose()

    # --- starting one container --------------------------------------------------------------

    async def _launch_on_a_free_port(self, spec: _Launch) -> _Server:
        """``_launch`` with a fresh port, again if another process took the port first."""
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            # On the bridge each container has its own address; elsewhere ports are shared.
            port = _CONTAINER_PORT if spec.mode is DockerNetwork.BRIDGE_IP else free_port()
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
        name = container_name(branch)
        # With the host's network the server shares the host's loopback: listen there only.
        listen = LOOPBACK if mode is DockerNetwork.HOST else "*"
        command = ["-D", info.pgdata, *serverconf.as_flags(spec.owned)]
        command += ["-c", f"listen_addresses={listen}", "-c", f"port={port}"]
        mounts = [Mount(info.pgdata, str(pgdata), type="bind")]
        mounts += [
            Mount(m.target, str(m.source), type="bind", read_only=m.read_only) for m in spec.mounts
        ]
        labels = {
            LABEL_MANAGED: "true",
            LABEL_BRANCH: branch,
            LABEL_PARENT: spec.parent or "",
            LABEL_PGDATA: str(pgdata),
            LABEL_NETWORK: mode,
            LABEL_PORT: str(port),
            LABEL_SANDBOX: sandbox.label(outbound=spec.outbound),
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
            server = self._server_from(branch, pgdata, container)
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
                    raise await self._exit_failure(server, container)
                await trio.sleep(_PID_POLL_S)
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
                await trio.sleep(_PID_POLL_S)
            nursery.cancel_scope.cancel()
        if failure:
            raise failure[0]

    async def _exit_failure(self, server: _Server, container: Container) -> Exception:
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
        if "could not bind" in tail or "Address already in use" in tail:
            return PortTaken()
        how = f"exit code {code}"
        return await trio.to_thread.run_sync(exit_failure, server.branch, how, tail, server.pgdata)

    def _server_from(self, branch: str, pgdata: Path, container: Container) -> _Server:
        """The address and liveness handle of a started (or adopted) container."""
        labels = container.labels
        attrs = container.attrs
        mode = labels.get(LABEL_NETWORK, DockerNetwork.BRIDGE_IP)
        port = int(labels.get(LABEL_PORT, _CONTAINER_PORT))
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

    async def _find(self, branch: str, error: type[PrismError]) -> Container | None:
        """The container of ``branch`` Prism made, running or not, by name and label."""
        containers = await self._engine.prism_containers(error, name=container_name(branch))
        return containers[0] if containers else None

    def _outbound(self, branch: str) -> bool:
        """Whether ``branch``'s container may connect out: main once it follows a source (its
        walreceiver), every branch if the operator opened ``--branch-egress``."""
        return bool(self._branch_egress) or (branch == MAIN_BRANCH and bool(self._main_mounts))

    def _forget(self, branch: str) -> None:
        self._servers.pop(branch, None)

    def _socket_dir(self, branch: str) -> Path:
        """The branch's private socket directory, short enough for a Unix socket path."""
        return socket_dir_for(self._run_dir, branch, Path(tempfile.gettempdir()) / "prism-docker")


def container_name(branch: str) -> str:
    """The container of ``branch``: a generation of main being made (``gen:2``) has a ``:``,
    which a container name may not; ``.`` takes its place, a character no branch name has."""
    return f"{CONTAINER_PREFIX}{branch.replace(':', '.')}"


class _NameTaken(RuntimeStartFailed):
    """A container of the branch's name exists already (running, or left over)."""


async def open_docker_runtime(
    settings: Settings, data_dir: Path, *, copy_on_write: bool = False
) -> DockerRuntime:
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
        copy_on_write=copy_on_write,
        branch_egress=tuple(str(address) for address in settings.branch_egress),
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


def _prism_files(socket_dir: Path, owner: tuple[int, int]) -> dict[str, str]:
    """Prism's ``pg_hba.conf`` and ident map in the server's socket directory, as settings.

    As with the process runtime, the data's own ``pg_hba.conf`` (production's, after a base
    backup: no local trust) must not lock Prism's service connection out.
    """
    hba, ident = serverconf.write_prism_files(socket_dir, owner)
    return {
        "hba_file": f"{_SOCKET_TARGET}/{hba.name}",
        "ident_file": f"{_SOCKET_TARGET}/{ident.name}",
    }


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


def _container_ip(attrs: dict[str, Any]) -> str:
    settings = attrs.get("NetworkSettings", {})
    if settings.get("IPAddress"):
        return str(settings["IPAddress"])
    for network in (settings.get("Networks") or {}).values():
        if network.get("IPAddress"):
            return str(network["IPAddress"])
    return ""
