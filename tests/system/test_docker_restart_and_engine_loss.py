"""``prism serve --runtime docker`` outliving its own crash and the Docker engine's absence.

* Prism killed (SIGKILL: no shutdown, so its containers keep running) and started again finds
  its containers by their labels, adopts them without restarting them and routes to them.
* The engine stopped for real while Prism runs. What a branch container does then depends on
  the engine's ``live-restore`` setting, so both are tested on a private engine
  (``tests/system/private_engine.py``):

  - with live-restore, running containers, main's included, keep running: Prism keeps serving
    them (it tells a live container from a dead one in /proc, without the engine), and only a
    client that needs a new container gets a FATAL error saying the engine is unreachable;
  - without it, the engine stops every container as it goes down (a fast shutdown, so no data
    is lost): every client that needs a server gets that FATAL error, Prism itself stays up.

  Either way, once the engine is back the next connection starts what it needs again.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest
import trio

from prism.runtime.docker import LABEL_PGDATA
from tests.integration.harness import psql
from tests.system.private_engine import DOCKER_HOST, PrivateEngine
from tests.system.stacks import (
    Place,
    ServeProcess,
    free_port,
    place,
    prism_serve,
    remove_containers_on,
    require_docker,
    scratch_dir,
    serve_args,
)


@pytest.fixture
def logs() -> Iterator[Path]:
    with scratch_dir("prism-serve-logs-") as path:
        yield path


@pytest.fixture
async def btrfs_place() -> AsyncIterator[Place]:
    async with place("btrfs") as where:
        yield where


def _serve(
    where: Place, logs: Path, name: str, env: dict[str, str] | None = None
) -> AbstractAsyncContextManager[ServeProcess]:
    pg_port, api_port = free_port(), free_port()
    return prism_serve(
        serve_args(where, "docker", pg_port, api_port),
        pg_port=pg_port,
        api_port=api_port,
        log=logs / f"{name}.log",
        env=env,
    )


async def _value(prism: ServeProcess, user: str) -> str:
    return (await psql(prism.dsn(user), "SELECT sum(v) FROM t")).stdout.decode().strip()


async def _branches(prism: ServeProcess) -> dict[str, object]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{prism.api}/branches")
    response.raise_for_status()
    body: dict[str, object] = response.json()
    return body


def _containers(data_dir: Path, docker_host: str | None = None) -> dict[str, tuple[str, str]]:
    """name -> (id, start time) of the running Prism containers on ``data_dir``."""
    client = require_docker(docker_host)
    found = {}
    for container in client.containers.list(filters={"label": "prism.managed=true"}):
        if container.labels.get(LABEL_PGDATA, "").startswith(str(data_dir)):
            found[str(container.name)] = (str(container.id), container.attrs["State"]["StartedAt"])
    return found


async def test_a_restarted_prism_adopts_its_running_containers(
    btrfs_place: Place, logs: Path
) -> None:
    require_docker()
    async with _serve(btrfs_place, logs, "first") as first:
        await psql(first.dsn(), "CREATE TABLE t AS SELECT 1 AS v")
        await psql(first.dsn("postgres@kept"), "INSERT INTO t VALUES (2)")
        before = _containers(btrfs_place.data_dir)
        assert set(before) == {"prism-main", "prism-kept"}
        first.process.send_signal(signal.SIGKILL)  # a crash: nothing is stopped
        await first.process.wait()
    assert _containers(btrfs_place.data_dir) == before

    async with _serve(btrfs_place, logs, "second") as second:
        assert await _value(second, "postgres@kept") == "3"
        assert await _value(second, "postgres") == "1"
        assert set(await _branches(second)) == {"main", "kept"}
        # Adopted, not restarted: the same containers, started at the same time.
        assert _containers(btrfs_place.data_dir) == before
        assert "adopted running server of branch kept" in second.log_text()
    # Ctrl-C stops every branch server, adopted ones included.
    assert _containers(btrfs_place.data_dir) == {}


async def test_a_crash_mid_create_leaves_no_container_behind(
    btrfs_place: Place, logs: Path
) -> None:
    """Killed once the new branch's container runs but before the branch is recorded: the
    restart rolls the branch back and stops its container, found by Prism's labels."""
    require_docker()
    async with _serve(btrfs_place, logs, "first") as first:
        await psql(first.dsn(), "CREATE TABLE t AS SELECT 1 AS v")
    crash = {"PRISM_TEST_CRASH_AT": "create:server-up"}
    async with _serve(btrfs_place, logs, "crashing", env=crash) as crashing:
        async with httpx.AsyncClient(timeout=120) as http:
            with contextlib.suppress(httpx.TransportError):
                await http.post(f"{crashing.api}/api/v1/branches", json={"name": "doomed"})
        assert await crashing.process.wait() == -signal.SIGKILL
    assert "prism-doomed" in _containers(btrfs_place.data_dir)
    async with _serve(btrfs_place, logs, "second") as second:
        assert set(await _branches(second)) == {"main"}
        assert set(_containers(btrfs_place.data_dir)) == {"prism-main"}
        assert await _value(second, "postgres") == "1"
    assert _containers(btrfs_place.data_dir) == {}


@pytest.fixture(params=[True, False], ids=["live-restore", "no-live-restore"])
def engine(request: pytest.FixtureRequest) -> Iterator[PrivateEngine]:
    require_docker()
    engine = PrivateEngine(live_restore=request.param)
    engine.start()
    engine.ensure_image()
    try:
        yield engine
    finally:
        engine.start()  # whatever the test left, so its containers can be removed
        engine.stop()


async def _fails_fatally_for_the_engine(prism: ServeProcess, user: str) -> None:
    result = await psql(prism.dsn(user), "SELECT 1", check=False)
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert "FATAL" in stderr and "cannot reach the Docker engine" in stderr, stderr
    assert "is dockerd running?" in stderr, stderr


async def test_engine_stopped_mid_run_fails_new_servers_clearly_and_recovers(
    btrfs_place: Place, logs: Path, engine: PrivateEngine
) -> None:
    data_dir = btrfs_place.data_dir
    try:
        env = {"DOCKER_HOST": DOCKER_HOST}
        async with _serve(btrfs_place, logs, "engine", env) as prism:
            await psql(prism.dsn(), "CREATE TABLE t AS SELECT 1 AS v")
            await psql(prism.dsn("postgres@before"), "INSERT INTO t VALUES (2)")

            await trio.to_thread.run_sync(engine.stop)
            await _fails_fatally_for_the_engine(prism, "postgres@during")
            if engine.live_restore:
                # The running containers were left alone, and Prism still routes to them.
                assert await _value(prism, "postgres") == "1"
                assert await _value(prism, "postgres@before") == "3"
            else:
                # The engine stopped them on its way down: nothing to route to, nothing to
                # start them with.
                await _fails_fatally_for_the_engine(prism, "postgres")
                await _fails_fatally_for_the_engine(prism, "postgres@before")
            # Prism itself is up; the failed branch was rolled back, not left half-made.
            assert set(await _branches(prism)) == {"main", "before"}

            await trio.to_thread.run_sync(engine.start)
            with trio.fail_after(120):
                assert await _value(prism, "postgres@during") == "1"
                assert await _value(prism, "postgres@before") == "3"
                assert await _value(prism, "postgres") == "1"
            assert set(await _branches(prism)) == {"main", "before", "during"}
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(engine.start)
            await trio.to_thread.run_sync(remove_containers_on, data_dir, DOCKER_HOST)
