"""A whole running Prism on each production pairing: {docker, process} x {btrfs, zfs}.

Each pairing gets the same story: a branch made by connecting to it, isolated from main, kept
across stop/start, and gone (server and clone) after delete.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest
import trio

from prism.storage._probe import is_btrfs_subvolume
from tests.integration.harness import PrismHandle, psql
from tests.system.stacks import Place, place, prism_in_process

PAIRINGS = [("docker", "btrfs"), ("docker", "zfs"), ("process", "btrfs"), ("process", "zfs")]


@dataclass
class Stack:
    prism: PrismHandle
    where: Place
    runtime: str

    async def value(self, user: str, sql: str = "SELECT sum(v) FROM t") -> str:
        return (await psql(self.prism.dsn(user), sql)).stdout.decode().strip()

    def container(self, branch: str) -> object | None:
        """The branch's container (docker runtime), None if there is none."""
        try:
            return docker.from_env(version="auto").containers.get(f"prism-{branch}")
        except docker.errors.NotFound:
            return None

    def is_clone_of_main(self, branch: str) -> bool:
        path = self.prism.manager.storage.path(branch)
        if self.where.storage == "btrfs":
            return is_btrfs_subvolume(path)
        storage = self.prism.manager.storage
        origin = _zfs_get("origin", storage.dataset_of(branch))
        return origin.startswith(f"{storage.dataset_of('main')}@")

    def clone_exists(self, branch: str) -> bool:
        path: Path = self.prism.manager.storage.path(branch)
        if self.where.storage == "zfs":
            dataset = self.prism.manager.storage.dataset_of(branch)
            listed = subprocess.run(["zfs", "list", dataset], capture_output=True, check=False)
            if listed.returncode == 0:
                return True
        return path.exists()


def _zfs_get(prop: str, dataset: str) -> str:
    command = ["zfs", "get", "-H", "-o", "value", prop, dataset]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(params=PAIRINGS, ids=[f"{r}-{s}" for r, s in PAIRINGS])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    runtime, storage = request.param
    async with place(storage) as where, prism_in_process(where, runtime) as prism:
        yield Stack(prism, where, runtime)


async def test_branch_on_connect_isolation_stop_start_and_delete(stack: Stack) -> None:
    manager = stack.prism.manager
    assert (manager.storage.name, manager.runtime.name) == (stack.where.storage, stack.runtime)
    await psql(stack.prism.dsn(), "CREATE TABLE t AS SELECT 1 AS v")

    # Branch on connect: the first connection as user@branch creates it from main.
    await psql(stack.prism.dsn("postgres@feature-x"), "INSERT INTO t VALUES (2)")
    assert stack.is_clone_of_main("feature-x")
    if stack.runtime == "docker":
        container = stack.container("feature-x")
        assert container is not None
        labels = container.labels  # type: ignore[attr-defined]
        assert (labels["prism.branch"], labels["prism.parent"]) == ("feature-x", "main")

    # Isolation, both ways.
    await psql(stack.prism.dsn(), "INSERT INTO t VALUES (10)")
    assert await stack.value("postgres") == "11"
    assert await stack.value("postgres@feature-x") == "3"

    # Stop, then a connection wakes it with its data.
    await manager.stop("feature-x")
    assert manager.runtime.address("feature-x") is None
    if stack.runtime == "docker":
        assert stack.container("feature-x") is None
    with trio.fail_after(60):
        assert await stack.value("postgres@feature-x") == "3"

    # Delete removes the server and the clone; main is untouched.
    await manager.delete("feature-x")
    assert manager.runtime.address("feature-x") is None
    assert not stack.clone_exists("feature-x")
    if stack.runtime == "docker":
        assert stack.container("feature-x") is None
    assert await stack.value("postgres") == "11"
