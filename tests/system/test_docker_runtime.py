"""The docker runtime against a real engine and the local test image (``tools/sysenv/docker.sh``).

One cluster is initialised per session through the runtime itself (so ``initdb`` in the image is
tested too) and copied for each test; every test uses its own branch name and removes its
containers, so tests run in any order and in parallel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import trio

from prism.core.address import BackendAddress
from prism.core.errors import RuntimeStartFailed
from prism.runtime.base import Runtime
from prism.runtime.docker import LABEL_PGDATA, DockerRuntime
from tests.sysenv import DOCKER_IMAGE, require_command
from tests.system.stacks import require_docker

PASSWORD = "secret-pw"
_BASE = Path("/var/lib/prism-test/docker")


def _engine() -> docker.DockerClient:
    require_command("psql")
    return require_docker()


def _image_postgres_ids(client: docker.DockerClient) -> tuple[int, int]:
    out = client.containers.run(
        DOCKER_IMAGE, entrypoint=["sh", "-c", "id -u postgres; id -g postgres"], remove=True
    )
    uid, gid = out.decode().split()
    return int(uid), int(gid)


def _fresh_dir() -> Path:
    _BASE.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="t-", dir=_BASE))


@pytest.fixture(scope="session")
def template() -> Iterator[Path]:
    """A stopped cluster made by ``DockerRuntime.initdb`` in a root-owned directory."""
    _engine()
    root = _fresh_dir()
    pgdata = root / "master"
    pgdata.mkdir(mode=0o700)

    async def make() -> None:
        runtime = DockerRuntime(run_dir=root / "run", image=DOCKER_IMAGE)
        try:
            await runtime.initdb(pgdata, superuser="postgres", password=PASSWORD)
        finally:
            await runtime.aclose()

    trio.run(make)
    try:
        yield pgdata
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Env:
    """One test's data directory, runtime and branch name, cleaned up afterwards."""

    def __init__(self, root: Path, template: Path) -> None:
        self.root = root
        self.pgdata = root / "branch"
        subprocess.run(["cp", "-a", "-T", str(template), str(self.pgdata)], check=True)
        self.branch = f"t{uuid.uuid4().hex[:10]}"

    def runtime(self, **options: object) -> DockerRuntime:
        return DockerRuntime(run_dir=self.root / "run", image=DOCKER_IMAGE, **options)  # type: ignore[arg-type]


@pytest.fixture
def env(template: Path) -> Iterator[Env]:
    client = _engine()
    root = _fresh_dir()
    try:
        yield Env(root, template)
    finally:
        for container in client.containers.list(all=True, filters={"label": "prism.managed"}):
            if container.labels.get(LABEL_PGDATA, "").startswith(str(root)):
                container.remove(force=True, v=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def runtime(env: Env) -> AsyncIterator[DockerRuntime]:
    runtime = env.runtime()
    try:
        yield runtime
    finally:
        await runtime.stop(env.branch)
        await runtime.aclose()


async def _psql(address: BackendAddress, sql: str, password: str = PASSWORD) -> str:
    dsn = (
        f"host={address.host} port={address.port} user=postgres dbname=postgres "
        f"password={password} sslmode=disable connect_timeout=5"
    )
    result = await trio.run_process(
        ["psql", dsn, "-Atc", sql], capture_stdout=True, capture_stderr=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(result.stderr.decode())
    return result.stdout.decode().strip()


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as file:
        file.write(text)


def _containers_on(root: Path) -> list[str]:
    client = docker.from_env(version="auto")
    return [
        str(c.name)
        for c in client.containers.list(all=True, filters={"label": "prism.managed=true"})
        if c.labels.get(LABEL_PGDATA, "").startswith(str(root))
    ]


async def test_docker_runtime_is_a_runtime(runtime: DockerRuntime) -> None:
    assert isinstance(runtime, Runtime)
    assert runtime.name == "docker"


async def test_initdb_hands_a_root_owned_dir_to_the_images_postgres_user(template: Path) -> None:
    info = os.stat(template)
    assert (info.st_uid, info.st_gid) == _image_postgres_ids(_engine())
    assert _read(template / "PG_VERSION").strip() == "15"
    assert "host all all all scram-sha-256" in _read(template / "pg_hba.conf")


async def test_start_serves_password_sessions_over_tcp_and_trusts_the_service_socket(
    env: Env, runtime: DockerRuntime
) -> None:
    started = time.monotonic()
    address = await runtime.start(env.branch, env.pgdata, parent="main")
    ready_ms = (time.monotonic() - started) * 1000
    print(f"docker start -> ready: {ready_ms:.0f} ms")

    assert await _psql(address, "select current_user") == "postgres"
    with pytest.raises(AssertionError, match="password authentication failed"):
        await _psql(address, "select 1", password="wrong")
    assert address.service_socket_dir is not None
    socket_path = address.service_socket_path()
    assert socket_path is not None and socket_path.is_socket()
    assert address.service_socket_dir.stat().st_mode & 0o777 == 0o700
    via_socket = await trio.run_process(
        [
            "psql",
            "-h",
            str(address.service_socket_dir),
            "-p",
            str(address.port),
            "-U",
            "postgres",
            "-Atc",
            "select 1",
        ],
        capture_stdout=True,
        env={**os.environ, "PGPASSWORD": ""},
    )
    assert via_socket.stdout.decode().strip() == "1"

    container = docker.from_env(version="auto").containers.get(f"prism-{env.branch}")
    assert container.labels["prism.branch"] == env.branch
    assert container.labels["prism.parent"] == "main"
    assert container.labels["prism.managed"] == "true"
    assert runtime.address(env.branch) == address

    await runtime.stop(env.branch)
    assert runtime.address(env.branch) is None
    assert _containers_on(env.root) == []
    assert not (env.pgdata / "postmaster.pid").exists()  # a clean, fast shutdown
    await runtime.stop(env.branch)  # not running: a no-op


async def test_the_server_runs_as_the_data_directory_owner(
    env: Env, runtime: DockerRuntime
) -> None:
    await trio.run_process(["chown", "-R", "4321:4322", str(env.pgdata)])
    address = await runtime.start(env.branch, env.pgdata)
    assert await _psql(address, "select 1") == "1"
    container = docker.from_env(version="auto").containers.get(f"prism-{env.branch}")
    assert container.attrs["Config"]["User"] == "4321:4322"
    host_pid = container.attrs["State"]["Pid"]
    status = _read(Path(f"/proc/{host_pid}/status"))
    assert "\nUid:\t4321\t" in status


async def test_a_stale_ready_pid_file_is_not_taken_for_readiness(
    env: Env, runtime: DockerRuntime
) -> None:
    """A clone of a running server carries its ``postmaster.pid``, status "ready", pid 1."""
    stale = "1\n/var/lib/postgresql/data\n1700000000\n5432\n/var/run/prism\n*\n  1 2\nready   \n"
    (env.pgdata / "postmaster.pid").write_text(stale)
    address = await runtime.start(env.branch, env.pgdata)
    assert await _psql(address, "select 1") == "1"


async def _left_running(env: Env, value: int) -> BackendAddress:
    """Start the branch with a row ``value`` in table ``kept``, then close that runtime."""
    first = env.runtime()
    address = await first.start(env.branch, env.pgdata)
    await _psql(address, f"create table kept (x int); insert into kept values ({value})")
    await first.aclose()
    return address


async def test_adopt_finds_the_running_container_after_a_restart(env: Env) -> None:
    address = await _left_running(env, 7)
    second = env.runtime()
    try:
        assert second.address(env.branch) is None
        adopted = await second.adopt(env.branch, env.pgdata)
        assert adopted == address
        assert await _psql(adopted, "select x from kept") == "7"
        assert await second.adopt(f"{env.branch}-none", env.pgdata) is None
    finally:
        await second.stop(env.branch)
        await second.aclose()
    assert _containers_on(env.root) == []


async def test_a_container_of_another_sandbox_is_restarted_not_adopted(env: Env) -> None:
    """A container started under other sandbox settings (an older Prism, other egress) is not
    trusted as it is: adopt stops it, and the next start runs the current sandbox."""
    await _left_running(env, 5)
    opened = env.runtime(branch_egress=("db.example:5432",))
    try:
        assert await opened.adopt(env.branch, env.pgdata) is None
        assert _containers_on(env.root) == []
        address = await opened.start(env.branch, env.pgdata)
        assert await _psql(address, "select x from kept") == "5"
        container = docker.from_env(version="auto").containers.get(f"prism-{env.branch}")
        assert container.labels["prism.sandbox"].endswith("+outbound")
        assert container.attrs["HostConfig"]["CapDrop"] == ["ALL"]
        assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
    finally:
        await opened.stop(env.branch)
        await opened.aclose()


async def test_stop_then_start_keeps_the_data(env: Env, runtime: DockerRuntime) -> None:
    address = await runtime.start(env.branch, env.pgdata)
    await _psql(address, "create table kept (x int); insert into kept values (1)")
    await runtime.stop(env.branch)
    address = await runtime.start(env.branch, env.pgdata)
    assert await _psql(address, "select x from kept") == "1"


async def test_an_early_exit_shows_the_log_and_leaves_no_container(
    env: Env, runtime: DockerRuntime
) -> None:
    _append(env.pgdata / "postgresql.conf", "\nshared_buffers = 'lots'\n")
    with pytest.raises(RuntimeStartFailed, match="exited during start-up") as caught:
        await runtime.start(env.branch, env.pgdata)
    assert caught.value.hint is not None and "shared_buffers" in caught.value.hint
    assert _containers_on(env.root) == []
    assert runtime.address(env.branch) is None


async def test_published_port_mode_reaches_the_server_on_localhost(env: Env) -> None:
    runtime = env.runtime(network_mode="published-port")
    try:
        address = await runtime.start(env.branch, env.pgdata)
        assert address.host == "127.0.0.1" and address.port != 5432
        assert await _psql(address, "select 2") == "2"
    finally:
        await runtime.stop(env.branch)
        await runtime.aclose()


async def test_bridge_ip_mode_reaches_the_server_at_the_containers_address(env: Env) -> None:
    runtime = env.runtime(network_mode="bridge-ip")
    try:
        address = await runtime.start(env.branch, env.pgdata)
        container = docker.from_env(version="auto").containers.get(f"prism-{env.branch}")
        assert address.host == container.attrs["NetworkSettings"]["IPAddress"]
        assert address.port == 5432
        assert await _psql(address, "select 3") == "3"
    finally:
        await runtime.stop(env.branch)
        await runtime.aclose()


async def test_a_missing_image_says_how_to_get_it(env: Env) -> None:
    runtime = DockerRuntime(run_dir=env.root / "run", image="prism-test/no-such-image:0")
    with pytest.raises(RuntimeStartFailed, match="not present") as caught:
        await runtime.start(env.branch, env.pgdata)
    assert caught.value.hint is not None
    assert "docker pull prism-test/no-such-image:0" in caught.value.hint
    assert _containers_on(env.root) == []


async def test_an_engine_refusal_is_a_prism_error_not_an_sdk_exception(env: Env) -> None:
    # The engine answers 400 (invalid reference format): an APIError, not ImageNotFound.
    runtime = DockerRuntime(run_dir=env.root / "run", image="prism-test/Bad Image!")
    with pytest.raises(RuntimeStartFailed, match="the Docker engine refused"):
        await runtime.start(env.branch, env.pgdata)
    assert _containers_on(env.root) == []


async def test_an_unreachable_engine_asks_whether_dockerd_runs(env: Env) -> None:
    runtime = DockerRuntime(
        run_dir=env.root / "run", docker_host=f"unix://{env.root}/no-docker.sock"
    )
    with pytest.raises(RuntimeStartFailed, match="cannot reach the Docker engine") as caught:
        await runtime.start(env.branch, env.pgdata)
    assert caught.value.hint is not None and "is dockerd running?" in caught.value.hint


async def test_auto_network_on_a_local_engine_is_host_on_loopback(
    env: Env, runtime: DockerRuntime
) -> None:
    address = await runtime.start(env.branch, env.pgdata)
    assert (address.host, address.port != 5432) == ("127.0.0.1", True)
    container = docker.from_env(version="auto").containers.get(f"prism-{env.branch}")
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"
    assert container.labels["prism.network"] == "host"
    # Only the loopback: branch servers are reached through Prism, not from the network.
    listen = await _psql(address, "show listen_addresses")
    assert listen == "127.0.0.1"


async def test_start_adopts_a_running_container_and_replaces_a_stopped_one(env: Env) -> None:
    address = await _left_running(env, 3)
    second = env.runtime()
    try:
        assert await second.start(env.branch, env.pgdata) == address  # adopted, not restarted
        assert await _psql(address, "select x from kept") == "3"
        container = docker.from_env(version="auto").containers.get(f"prism-{env.branch}")
        await trio.to_thread.run_sync(lambda: container.stop(timeout=10))
        assert second.address(env.branch) is None  # noticed without the engine

        started = await second.start(env.branch, env.pgdata)  # the stopped leftover is replaced
        assert await _psql(started, "select x from kept") == "3"
        assert _containers_on(env.root) == [f"prism-{env.branch}"]
    finally:
        await second.stop(env.branch)
        await second.aclose()


async def test_kill_ends_a_frozen_container_at_once_and_removes_it(
    env: Env, runtime: DockerRuntime
) -> None:
    """A shutdown out of time kills: even a server that cannot answer SIGINT (paused) is gone
    in seconds, not after the stop timeout, and its socket directory with it."""
    address = await runtime.start(env.branch, env.pgdata)
    docker.from_env(version="auto").containers.get(f"prism-{env.branch}").pause()
    with trio.fail_after(15):
        await runtime.kill(env.branch)
    assert runtime.address(env.branch) is None
    assert _containers_on(env.root) == []
    assert address.service_socket_dir is None or not address.service_socket_dir.exists()


async def test_reap_strays_stops_only_the_unowned_containers_under_its_root(env: Env) -> None:
    """Prism's containers are found by its labels: one left by an earlier Prism on this root is
    reaped, a container merely named like a branch is not Prism's and is left alone."""
    await _left_running(env, 3)
    client = docker.from_env(version="auto")
    impostor = client.containers.run(
        DOCKER_IMAGE,
        name=f"prism-{env.branch}-x",
        entrypoint=["sleep", "60"],
        labels={LABEL_PGDATA: str(env.root / "other")},
        detach=True,
    )
    fresh = env.runtime()
    try:
        reaped = await fresh.reap_strays(env.root)
        assert reaped == [f"container prism-{env.branch} on {env.pgdata}"]
        assert _containers_on(env.root) == []
        impostor.reload()
        assert impostor.status == "running"
    finally:
        impostor.remove(force=True)
        await fresh.aclose()
