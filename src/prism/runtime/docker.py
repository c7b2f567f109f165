"""The docker runtime: each branch's Postgres server is a container on the branch's clone.

One container per branch, ``prism-<branch>``, labelled so a restarted Prism finds it again.
This module is the runtime itself: which containers Prism knows to be running, starting and
stopping them, adopting those an earlier Prism left, and reaping the strays reconcile finds.
What a container is made of (its owner, settings, mounts, labels, command) is in
:mod:`prism.runtime._docker_config`; creating one and waiting for its server to be ready in
:mod:`prism.runtime._docker_launch`; engine access (every blocking SDK call in a thread, errors
as PrismErrors, the network mode) in :mod:`prism.runtime._docker_engine`; and which image serves
which data, with its ``initdb``, in :mod:`prism.runtime._docker_image`.

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

Where the engine shares this kernel, a private per-branch host directory is the server's Unix
socket directory: Prism's trusted service connection. Prism's own ``pg_hba.conf`` lives there
too (``hba_file``), so a data directory's own rules (production's, after a base backup of a
source) cannot lock Prism out.

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
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from docker.models.containers import Container

from prism.core.address import BackendAddress
from prism.core.errors import (
    BackendQueryError,
    ConfigError,
    PrismError,
    RuntimeStartFailed,
    RuntimeStopFailed,
)
from prism.core.names import MAIN_BRANCH
from prism.core.values import DockerNetwork
from prism.postgres.binaries import embedded_bin_dir, server_version
from prism.runtime import _docker_sandbox as sandbox
from prism.runtime._docker_config import (
    CONTAINER_ARCHIVE,
    CONTAINER_PATHS,
    container_name,
    prepare_launch,
    seen_in_container,
)
from prism.runtime._docker_engine import (
    LABEL_BRANCH,
    LABEL_PGDATA,
    LABEL_SANDBOX,
    LABEL_SOCKET_DIR,
    DockerEngine,
)
from prism.runtime._docker_image import DEFAULT_IMAGE, MAJOR_FIELD, Images
from prism.runtime._docker_launch import ContainerServer, Launcher, NameTaken
from prism.runtime._docker_tools import ContainerSourceTools, require_reachable
from prism.runtime._postmaster import remove_dir, socket_dir_for
from prism.runtime.base import BindMount, Confinement, ServerExtras

if TYPE_CHECKING:
    from prism.core.settings import Settings

# Where other packages and the tests have always found them.
__all__ = [
    "CONTAINER_ARCHIVE",
    "CONTAINER_PATHS",
    "LABEL_PGDATA",
    "DockerRuntime",
    "container_name",
    "open_docker_runtime",
    "seen_in_container",
]

log = logging.getLogger(__name__)

# Enough of a server log for the walreceiver's last failure (it retries every 5 s).
_SERVER_LOG_LINES = 500


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
        self._stop_timeout = stop_timeout
        self._copy_on_write = copy_on_write  # the storage's: which WAL settings fit it
        self._engine = DockerEngine(docker_host=docker_host, network_mode=network_mode)
        self._images = Images(self._engine, image, default_major)
        self._launcher = Launcher(self._engine, shm_size=shm_size, start_timeout=start_timeout)
        self._servers: dict[str, ContainerServer] = {}
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
        socket_dir = self._socket_dir(branch) if self._engine.local_engine else None
        spec = await prepare_launch(
            branch,
            pgdata,
            parent=parent,
            info=info,
            mode=mode,
            socket_dir=socket_dir,
            extras=extras or ServerExtras(),
            main_mounts=self._main_mounts,
            copy_on_write=self._copy_on_write,
            outbound=self._outbound(branch),
        )
        launch = functools.partial(self._launcher.launch, spec)
        try:
            try:
                server = await launch()
            except NameTaken:
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
            spec.uid,
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
        server = self._launcher.server_from(branch, pgdata, container)
        await self._launcher.wait_adopted_ready(branch, pgdata, container)
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

    async def dump_schema(self, branch: str, *, user: str, database: str) -> str:
        """Not offered: a program container cannot reach a branch's private service socket,
        and giving it one would open a way into the branch from outside its own container."""
        await trio.lowlevel.checkpoint()
        raise BackendQueryError(
            "the pg_dump format of a schema diff needs the process runtime",
            sqlstate="0A000",
        )

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
        if server.running():
            return server.address
        del self._servers[branch]
        log.warning("container exited unexpectedly branch=%s", branch)
        return None

    async def aclose(self) -> None:
        """Close the engine connection; containers keep running for a later Prism to adopt."""
        self._servers.clear()
        await self._engine.aclose()

    # --- helpers -----------------------------------------------------------------------------

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


def _same_path(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()
