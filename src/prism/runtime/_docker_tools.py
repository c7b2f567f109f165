"""PostgreSQL client programs run in short-lived containers: the docker runtime's source tools.

With ``--runtime docker`` the host may have no PostgreSQL at all, and the programs that talk to
the source (``pg_basebackup``, ``psql``) must be of the source's major version anyway: the
runtime's images have them. Each run is one container of the image for that major, as the
user main's server will run as, on the network main's server gets (so whatever main's
walreceiver can reach, the backup could reach), with the directories it shares with Prism
bind-mounted at their host paths. Only a passfile's path is in the container's environment,
never a password.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio
from docker.models.containers import Container
from docker.types import Mount

from prism.core.errors import ConfigError, RuntimeStartFailed
from prism.core.values import DockerNetwork
from prism.postgres.binaries import version_in
from prism.runtime._docker_engine import LABEL_MANAGED, DockerEngine
from prism.runtime._docker_image import ImageInfo, Images, image_user, wrong_major
from prism.runtime._programs import LineSplitter, pipe_script
from prism.runtime.base import Tools

log = logging.getLogger(__name__)

#: Marks a program's container with the source directory it serves, so that a later Prism
#: finds one a crash left running.
LABEL_SOURCE_DIR = "prism.source-dir"
_LOOPBACK_HOSTS = ("localhost", "127.", "::1")


def require_reachable(host: str | None, mode: DockerNetwork) -> None:
    """Refuse a source a container on the ``mode`` network cannot reach (sans-IO).

    On the host's network a container reaches what Prism reaches. On a bridge, 127.0.0.1 is
    the container itself, and a Unix socket (a host starting with ``/``) is not mounted.
    """
    name = host or "a Unix socket"
    if not host or host.startswith("/"):
        raise ConfigError(
            f"the source at {name} is a Unix socket, which the docker runtime's containers "
            "cannot reach",
            hint="give --source a TCP host (host=... port=...) the containers reach",
        )
    if mode is not DockerNetwork.HOST and host.startswith(_LOOPBACK_HOSTS):
        raise ConfigError(
            f"the source at {host} is on this host's loopback, which containers on the "
            f"{mode} network cannot reach",
            hint="use --docker-network host (the default on Linux), or give --source an "
            "address the containers reach (such as the docker bridge's gateway) and allow "
            "it in the source's pg_hba.conf",
        )


class ContainerSourceTools:
    """The source tools of the docker runtime (a :class:`prism.runtime.base.SourceTools`)."""

    def __init__(
        self,
        engine: DockerEngine,
        images: Images,
        *,
        directory: Path,
        mode: DockerNetwork,
        server_log: Callable[[], Awaitable[str]],
    ) -> None:
        self._engine = engine
        self._images = images
        self._directory = directory
        self._mode = mode
        self._server_log = server_log
        self._owner: tuple[int, int] | None = None

    async def open(self) -> None:
        """Read who runs main's server: Prism's own user, or the image's ``postgres`` as root."""
        if os.geteuid() != 0:
            self._owner = (os.geteuid(), os.getegid())
            return
        info = await self._images.details(self._images.for_major(None))
        self._owner = image_user(info.passwd)
        if self._owner is None:
            raise ConfigError(
                f"the image {info.image} has no 'postgres' user for main's server to run as",
                hint="choose a PostgreSQL image with --image",
            )

    async def for_major(self, major: int | None, *, what: str) -> Tools:
        if major is None:
            info = await self._images.details(self._images.for_major(None))
        else:
            info = await self._images.of_major(major, what=what)
            if info.major is None:
                await self._require_major(info, major, what)
        return _ContainerPrograms(self, info)

    async def _require_major(self, info: ImageInfo, major: int, what: str) -> None:
        """Ask an image that does not say its ``PG_MAJOR`` (one container), so a source of
        another major gets the same error as with an image that does, not pg_basebackup's."""
        shown = await self.run_in(
            info, "pg_basebackup", ["--version"], env={}, shares=(), on_stderr_line=None
        )
        version = version_in(shown.stdout.decode(errors="replace"))
        if version is not None and int(version.split(".")[0]) != major:
            raise wrong_major(what, major, info.image, int(version.split(".")[0]))

    def chown(self, path: Path) -> None:
        if os.geteuid() == 0 and self._owner is not None:
            os.chown(path, *self._owner)

    async def server_log(self) -> str:
        return await self._server_log()

    async def stop_leftovers(self, main: Path) -> None:
        """Remove program containers of this source that a crashed Prism left behind (found
        by their label, wherever they write)."""
        containers = await self._engine.prism_containers(
            RuntimeStartFailed, labels={LABEL_SOURCE_DIR: str(self._directory)}
        )
        for container in containers:
            log.warning("source: removing the leftover container %s", container.name)
            await self._engine.remove_quietly(container)

    async def run_in(
        self,
        info: ImageInfo,
        program: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        shares: Sequence[Path],
        on_stderr_line: Callable[[str], None] | None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``program`` of image ``info`` in a container, removed whatever happens."""
        assert self._owner is not None, "open() first"
        uid, gid = self._owner
        client = await self._engine.connect()
        container: Container = await self._engine.call(
            RuntimeStartFailed,
            client.containers.create,
            info.image,
            entrypoint=[program],
            command=list(args),
            user=f"{uid}:{gid}",
            # The image's PATH finds its programs; the host's would not.
            environment={name: value for name, value in env.items() if name != "PATH"},
            mounts=[Mount(str(path), str(path), type="bind") for path in dict.fromkeys(shares)],
            network_mode="host" if self._mode is DockerNetwork.HOST else None,
            labels={LABEL_MANAGED: "true", LABEL_SOURCE_DIR: str(self._directory)},
        )
        stderr: list[bytes] = []
        lines = LineSplitter()

        def feed(chunk: bytes) -> None:
            stderr.append(chunk)
            for line in lines.feed(chunk):
                if on_stderr_line is not None:
                    on_stderr_line(line)

        def follow_stderr() -> None:
            for chunk in container.logs(stream=True, follow=True, stdout=False, stderr=True):
                trio.from_thread.run_sync(feed, chunk)

        try:
            await self._engine.call(RuntimeStartFailed, container.start)
            # The stream ends when the container exits (or is removed on cancellation).
            await self._engine.call(RuntimeStartFailed, follow_stderr, abandon_on_cancel=True)
            result: Any = await self._engine.call(
                RuntimeStartFailed, container.wait, abandon_on_cancel=True
            )
            stdout: bytes = await self._engine.call(
                RuntimeStartFailed, container.logs, stdout=True, stderr=False
            )
        finally:
            with trio.CancelScope(shield=True):
                await self._engine.remove_quietly(container)
        status = int(result.get("StatusCode", -1))
        return subprocess.CompletedProcess([program, *args], status, stdout, b"".join(stderr))


class _ContainerPrograms:
    """The programs of one image (a :class:`prism.runtime.base.Tools`)."""

    def __init__(self, tools: ContainerSourceTools, info: ImageInfo) -> None:
        self._tools = tools
        self._info = info

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
        del cwd  # a container is found by its label, not by where it runs
        return await self._tools.run_in(
            self._info, program, args, env=env, shares=shares, on_stderr_line=on_stderr_line
        )

    async def pipe(
        self,
        first: Sequence[str],
        second: Sequence[str],
        *,
        env: Mapping[str, str],
        shares: Sequence[Path] = (),
        on_chunk: Callable[[int], None] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Both programs in one container, piped by its shell: a container's stdin cannot be
        fed through the engine's API without a hijacked connection, and the bytes need not
        leave the container. So ``on_chunk`` is never called: no byte count is known."""
        script = pipe_script(first, second)
        result = await self._tools.run_in(
            self._info, "sh", ["-c", script], env=env, shares=shares, on_stderr_line=None
        )
        lines = result.stderr.decode(errors="replace").splitlines()
        return subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout, "\n".join(lines[-10:]).encode()
        )
