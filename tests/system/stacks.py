"""A whole Prism on a real pool and a real runtime, for the production-path system tests.

A *stack* is one Prism (in this process, or as a ``prism serve`` process) with its storage on the
btrfs loop pool or a fresh ZFS dataset, and its branch servers run as local processes or Docker
containers. Everything a stack makes (containers, snapshots, datasets, directories) is removed
when it ends, so the tests run in any order, side by side with other system tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import trio

from prism.runtime.docker import LABEL_PGDATA
from prism.server import PrismServer
from prism.storage import open_storage
from prism.storage.base import Storage
from tests.integration.harness import PASSWORD, PrismHandle, make_settings
from tests.integration.harness import serve_args as harness_serve_args
from tests.sysenv import (
    BTRFS_MOUNT,
    DOCKER_IMAGE,
    ZFS_POOL,
    require_command,
    require_mount,
    require_root,
    unavailable,
)

ZFS_PARENT = f"{ZFS_POOL}/prism"
# ZFS storage roots: any directory will do (the datasets are mounted into it); this one is on
# the root filesystem, traversable by the uid branch servers run as.
_ZFS_ROOTS = Path("/var/lib/prism-test/zfs-roots")


def docker_client(docker_host: str | None = None) -> docker.DockerClient:
    """A client of ``docker_host``, or of the engine the environment names (DOCKER_HOST)."""
    if docker_host:
        return docker.DockerClient(base_url=docker_host, version="auto")
    return docker.from_env(version="auto")


def require_docker(docker_host: str | None = None) -> docker.DockerClient:
    """A client of a Docker engine that answers and has the test image, else skip/fail."""
    require_root()
    try:
        client = docker_client(docker_host)
        client.ping()
    except docker.errors.DockerException as exc:
        unavailable(f"no Docker engine answers ({exc}); run tools/sysenv/docker.sh as root")
    try:
        client.images.get(DOCKER_IMAGE)
    except docker.errors.ImageNotFound:
        unavailable(f"image {DOCKER_IMAGE} missing; run tools/sysenv/docker.sh as root")
    return client


def require_zfs() -> None:
    require_root()
    require_command("zfs")
    listed = subprocess.run(["zfs", "list", ZFS_PARENT], capture_output=True, check=False)
    if listed.returncode != 0:
        unavailable(f"ZFS dataset {ZFS_PARENT} missing; run tools/sysenv/zfs.sh as root")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Place:
    """Where one stack keeps its data: a data directory, and for ZFS its parent dataset."""

    storage: str
    data_dir: Path
    zfs_dataset: str = ""

    def storage_options(self) -> dict[str, str]:
        return {"dataset": self.zfs_dataset} if self.storage == "zfs" else {}


def _private_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="prism-sys-", dir=parent))
    # Branch servers run as another uid than root and must pass through to their data.
    path.chmod(0o711)
    return path


@asynccontextmanager
async def place(storage: str) -> AsyncIterator[Place]:
    """A fresh data directory on the btrfs pool, or a fresh ZFS dataset and root; cleaned up.

    Whatever Prism left behind is removed: branch containers on this data directory, every
    branch's clone (children before parents), the dataset, the directory.
    """
    if storage == "btrfs":
        require_mount(BTRFS_MOUNT, "btrfs")
        where = Place("btrfs", await trio.to_thread.run_sync(_private_dir, BTRFS_MOUNT))
    elif storage == "zfs":
        require_zfs()
        dataset = f"{ZFS_PARENT}/s{uuid.uuid4().hex[:10]}"
        await trio.run_process(["zfs", "create", "-o", "mountpoint=none", dataset])
        where = Place("zfs", await trio.to_thread.run_sync(_private_dir, _ZFS_ROOTS), dataset)
    else:
        raise ValueError(storage)
    try:
        yield where
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(remove_containers_on, where.data_dir)
            await destroy_branches(
                await open_storage(storage, where.data_dir, **where.storage_options())
            )
            if where.zfs_dataset:
                await trio.run_process(["zfs", "destroy", "-r", where.zfs_dataset], check=False)
            await trio.to_thread.run_sync(lambda: shutil.rmtree(where.data_dir, ignore_errors=True))


async def destroy_branches(store: Storage) -> None:
    """Destroy every branch's data a test's Prism left, the trash's first, then children
    before parents (the drivers refuse to delete a branch with clones, and a deleted ZFS
    branch kept for undelete is still a clone of its parent)."""
    for branch, token in await store.trashed():
        await store.purge(branch, token)
    for branch in sorted(store.list(), key=lambda name: name == "main"):
        await store.destroy(branch)


def remove_containers_on(data_dir: Path, docker_host: str | None = None) -> None:
    """Force-remove every Prism container whose data directory lies under ``data_dir``."""
    try:
        client = docker_client(docker_host)
        containers = client.containers.list(all=True, filters={"label": "prism.managed=true"})
    except docker.errors.DockerException:
        return  # no engine, so no containers of ours to leave behind
    for container in containers:
        if container.labels.get(LABEL_PGDATA, "").startswith(str(data_dir)):
            container.remove(force=True, v=True)


@asynccontextmanager
async def prism_in_process(
    where: Place, runtime: str, **overrides: Any
) -> AsyncIterator[PrismHandle]:
    """A Prism in this process on ``where`` with ``runtime`` (and other ``overrides`` of its
    settings); stopped (servers too) on exit."""
    if runtime == "docker":
        require_docker()
    settings = make_settings(
        where.data_dir,
        storage=where.storage,
        runtime=runtime,
        image=DOCKER_IMAGE,
        zfs_dataset=where.zfs_dataset,
        **overrides,
    )
    async with trio.open_nursery() as nursery:
        info = await nursery.start(PrismServer(settings).run)
        yield PrismHandle(info, settings)
        nursery.cancel_scope.cancel()


@dataclass
class ServeProcess:
    """A running ``prism serve`` and how to reach it."""

    process: trio.Process
    pg_port: int
    api_port: int
    log: Path

    def dsn(self, user: str = "postgres") -> str:
        return (
            f"host=127.0.0.1 port={self.pg_port} user={user} password={PASSWORD} "
            "dbname=postgres sslmode=disable"
        )

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def serve_args(where: Place, runtime: str, pg_port: int, api_port: int) -> list[str]:
    """The integration tier's ``prism serve`` command line, on ``where`` and ``runtime``."""
    args = harness_serve_args(where.data_dir, pg_port, api_port, storage=where.storage)
    args += ["--runtime", runtime, "--image", DOCKER_IMAGE]
    return [*args, "--zfs-dataset", where.zfs_dataset] if where.zfs_dataset else args


@asynccontextmanager
async def prism_serve(
    args: list[str],
    *,
    pg_port: int,
    api_port: int,
    log: Path,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[ServeProcess]:
    """Run ``prism serve`` (``args``) until its API answers; SIGINT it (then SIGKILL) at the end.

    A test may end the process itself first (a crash is simulated with SIGKILL).
    """
    out = await trio.to_thread.run_sync(open, log, "ab")
    try:
        process = await trio.lowlevel.open_process(
            args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    finally:
        out.close()  # the child has its own copy
    served = ServeProcess(process, pg_port, api_port, log)
    try:
        await wait_until_serving(served)
        yield served
    finally:
        with trio.CancelScope(shield=True):
            await stop_serve(process)


async def wait_until_serving(served: ServeProcess) -> None:
    """Return once Prism is ready (``/healthz`` 200: with ``--source`` the API answers during
    the base backup already); fail with the log if the process exits first."""
    async with httpx.AsyncClient() as http:
        with trio.fail_after(120):
            while True:
                if served.process.returncode is not None:
                    raise AssertionError(f"prism serve exited early:\n{served.log_text()}")
                try:
                    if (await http.get(f"{served.api}/healthz")).is_success:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)


async def stop_serve(process: trio.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
        with trio.move_on_after(60):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A private temporary directory for logs and the like, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def populate_with_image(master: Path) -> None:
    """Run the image once on the empty master, as the seed says: it initialises, then stops."""
    name = f"prism-init-{uuid.uuid4().hex[:8]}"
    _docker_cli(
        "run", "-d", "--name", name, "-e", "POSTGRES_PASSWORD=password",
        "-v", f"{master}:/var/lib/postgresql/data", DOCKER_IMAGE,
    )  # fmt: skip
    try:
        # The entrypoint initialises the cluster, then runs the server: wait for the server.
        for _ in range(600):
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
            if "database system is ready to accept connections" in logs.stderr + logs.stdout:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the image did not initialise {master}:\n{logs.stderr}")
        _docker_cli("stop", name)  # SIGINT: a clean shutdown
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def tcp_probe_sql(port: int, host: str = "127.0.0.1") -> str:
    """SQL whose result is what bash, run by the server (``COPY FROM PROGRAM``), says when it
    opens a TCP connection to ``host:port``: its error, or ``connected``. A branch superuser's
    way out of its container, where the image has bash (the test image does)."""
    shell = f"(exec 3<>/dev/tcp/{host}/{port}) 2>&1 && echo connected; true"
    return (
        "CREATE TEMP TABLE probe (line text); "
        f"COPY probe FROM PROGRAM $$bash -c '{shell}'$$; "
        "SELECT string_agg(line, ' ') FROM probe"
    )


def _docker_cli(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout
