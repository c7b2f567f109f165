"""Access to the Docker engine for the docker runtime: one client, every call a PrismError.

Every Docker Engine call blocks (HTTP over a socket), so each goes through ``trio.to_thread``
in :meth:`DockerEngine.call`, which is also the driver's boundary: nothing but a PrismError
leaves it. The client is made on first use, so Prism can start before the engine does, and
dropped when the engine stops answering, so the next call reconnects. How containers reach
the host (the network mode) is decided here once, from what the engine says it is.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
import trio
from docker.models.containers import Container

from prism.core.errors import ConfigError, PrismError, RuntimeStartFailed
from prism.core.values import DockerNetwork
from prism.runtime._postmaster import last_lines

log = logging.getLogger(__name__)


# Prism's marks on what it creates in the engine, so a restarted Prism finds it again.
LABEL_MANAGED = "prism.managed"
LABEL_BRANCH = "prism.branch"
LABEL_PARENT = "prism.parent"
LABEL_PGDATA = "prism.pgdata"
LABEL_SOCKET_DIR = "prism.socket-dir"
LABEL_NETWORK = "prism.network"
LABEL_PORT = "prism.port"
LABEL_SANDBOX = "prism.sandbox"

_LOG_TAIL = 20

T = TypeVar("T")


def _engine_hint(host: str | None) -> str:
    where = host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return (
        f"is dockerd running? Prism talks to it at {where}; start it (systemctl start docker, "
        "or dockerd &), or set DOCKER_HOST"
    )


class EngineUnreachable(RuntimeStartFailed):
    """The Docker engine did not answer; nothing about the branch itself is known to be wrong."""


class DockerEngine:
    """The docker runtime's connection to one engine (``docker_host``, else the environment's)."""

    def __init__(
        self, *, docker_host: str | None = None, network_mode: str = DockerNetwork.AUTO
    ) -> None:
        try:
            self._network_mode = DockerNetwork(network_mode)
        except ValueError:
            raise ConfigError(
                f"unknown docker network mode {network_mode!r}",
                hint=f"choose one of: {', '.join(DockerNetwork)}",
            ) from None
        self._docker_host = docker_host
        self._client: docker.DockerClient | None = None
        self.local_engine = False
        """The engine shares this Linux kernel: its /proc pids and bind mounts mean something."""
        self._mode: DockerNetwork | None = None
        self.architecture = ""
        """The engine's machine (``x86_64``, ``aarch64``): a VM's under Docker Desktop."""
        self.seccomp = True
        """Whether the engine can apply a seccomp profile (assumed until it says otherwise)."""

    async def call(
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

    async def connect(self) -> docker.DockerClient:
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
        self.local_engine = sys.platform.startswith("linux") and local_socket and not desktop
        routable = self.local_engine and not rootless
        if self._network_mode is DockerNetwork.AUTO:
            self._mode = DockerNetwork.HOST if routable else DockerNetwork.PUBLISHED_PORT
        else:
            self._mode = self._network_mode
        log.info(
            "docker engine version=%s os=%r network=%s (asked: %s) service_socket=%s",
            engine.get("ServerVersion"),
            engine.get("OperatingSystem"),
            self._mode,
            self._network_mode,
            self.local_engine,
        )
        self.architecture = str(engine.get("Architecture") or "")
        security = [str(opt) for opt in engine.get("SecurityOptions") or []]
        self.seccomp = any(opt.startswith("name=seccomp") for opt in security)
        self._client = client
        return client

    async def prism_containers(
        self,
        error: type[PrismError],
        *,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> list[Container]:
        """Prism's containers (running or not) that carry every one of ``labels``.

        The one place containers are looked up: always by Prism's own mark, so nothing another
        program (or a hand-made container named like a branch) runs is ever taken for Prism's.
        ``name`` is an exact container name; failures are ``error``.
        """
        client = await self.connect()
        wanted = {LABEL_MANAGED: "true", **(labels or {})}
        filters: dict[str, Any] = {"label": [f"{key}={value}" for key, value in wanted.items()]}
        if name is not None:
            filters["name"] = f"^/{re.escape(name)}$"
        containers: list[Container] = await self.call(
            error, client.containers.list, all=True, filters=filters
        )
        return containers

    def api(self) -> Any:
        assert self._client is not None, "connect before using the engine"
        return self._client.api

    def containers(self) -> Any:
        assert self._client is not None, "connect before using the engine"
        return self._client.containers

    @property
    def mode(self) -> DockerNetwork | None:
        """The network mode once the engine has answered; None before (no engine call)."""
        return self._mode

    async def network(self) -> DockerNetwork:
        """How containers are reached: the asked mode, or what ``auto`` chose for this engine."""
        await self.connect()
        assert self._mode is not None
        return self._mode

    async def log_tail(self, container: Container) -> str:
        """The last lines the container's server wrote, for an error hint."""
        try:
            raw: bytes = await self.call(
                RuntimeStartFailed, container.logs, tail=_LOG_TAIL, stdout=True, stderr=True
            )
        except PrismError as exc:
            return f"(cannot read the container log: {exc.message})"
        return last_lines(raw.decode(errors="replace"))

    async def remove_quietly(self, container: Container) -> None:
        """Force-remove a container on a failure path; the original error must win."""
        try:
            await self.call(
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

    async def aclose(self) -> None:
        """Close the connection; the next call makes a new one."""
        client, self._client = self._client, None
        if client is not None:
            await trio.to_thread.run_sync(client.close)
