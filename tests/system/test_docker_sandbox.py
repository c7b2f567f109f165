"""The docker runtime's sandbox against an attacker: ``postgres@dev1``, superuser of a fresh
branch, tries to read main's and another branch's files and to connect to Prism's API, its front
door, main's server and another branch's server. Each attempt fails while the branch itself
keeps working (tables, COPY, programs, bundled extensions).

The test image has bash (``/dev/tcp``) and contrib (dblink), so both a shell and a libpq client
are tried; each port is first shown reachable from the host, so a refusal is the sandbox's.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from prism.runtime.base import Confinement
from tests.integration.harness import PrismHandle, psql
from tests.system.stacks import docker_client, place, prism_in_process, tcp_probe_sql

pytestmark = pytest.mark.system

ATTACKER = "postgres@dev1"


def _reachable_from_host(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _sql(prism: PrismHandle, sql: str, *, user: str = ATTACKER) -> tuple[bool, str]:
    """Run ``sql`` as ``user``: whether it succeeded, and its output or error."""
    result = await psql(prism.dsn(user), sql, check=False)
    return result.returncode == 0, (result.stdout + result.stderr).decode()


def _dblink_probe(port: int) -> str:
    return (
        f"SELECT dblink_connect('host=127.0.0.1 port={port} user=postgres "
        "password=x dbname=postgres connect_timeout=3')"
    )


async def _ports(prism: PrismHandle) -> dict[str, int]:
    """The ports an attacker in dev1 would like to reach, each with a running listener."""
    for branch in ("main", "dev2"):
        await psql(prism.dsn(f"postgres@{branch}"), "SELECT 1")
    runtime = prism.manager.runtime
    ports = {"api": prism.info.api[1], "front door": prism.port}
    for branch in ("main", "dev2"):
        address = runtime.address(branch)
        assert address is not None, f"{branch} is not running"
        ports[branch] = address.port
    for name, port in ports.items():
        assert _reachable_from_host(port), f"{name} port {port} is not even reachable from the host"
    return ports


def _mount_sources(container_name: str) -> set[str]:
    container = docker_client().containers.get(container_name)
    return {mount["Source"] for mount in container.attrs["Mounts"]}


async def test_a_branch_superuser_reaches_no_file_or_port_outside_its_branch() -> None:
    async with place("btrfs") as where, prism_in_process(where, "docker") as prism:
        ports = await _ports(prism)
        ok, out = await _sql(prism, "CREATE TABLE t (x int); CREATE EXTENSION dblink")
        assert ok, out
        # The sandbox must not rest on programs being unavailable: they run, they just reach
        # nothing outside the branch.
        ok, out = await _sql(prism, "COPY t FROM PROGRAM 'bash -c \"echo 7\"'")
        assert ok, out
        ok, out = await _sql(prism, "COPY (SELECT 1) TO PROGRAM 'bash -c \"exec 3</dev/null\"'")
        assert ok, out

        storage = prism.manager.storage
        for branch in ("main", "dev2"):
            path = Path(storage.path(branch)) / "PG_VERSION"
            ok, out = await _sql(prism, f"SELECT pg_read_file('{path}')")
            assert not ok and "No such file" in out, (branch, out)
        for name, port in ports.items():
            ok, out = await _sql(prism, tcp_probe_sql(port))
            assert ok and "Operation not permitted" in out and "connected" not in out, (name, out)
            ok, out = await _sql(prism, _dblink_probe(port))
            assert not ok and "Operation not permitted" in out, (name, out)

        # Its own data and its private socket directory, nothing of Prism's, main's or dev2's.
        address = prism.manager.runtime.address("dev1")
        assert address is not None and address.service_socket_dir is not None
        sources = await trio.to_thread.run_sync(_mount_sources, "prism-dev1")
        assert sources == {str(storage.path("dev1")), str(address.service_socket_dir)}

        ok, out = await _sql(prism, "CREATE EXTENSION hstore; INSERT INTO t VALUES (8)")
        assert ok, out
        ok, out = await _sql(prism, "SELECT sum(x) FROM t")
        assert ok and out.strip() == "15", out

        confinement = prism.manager.runtime.confinement()
        assert isinstance(confinement, Confinement)
        assert any("no outbound connection" in item for item in confinement.enforced)


async def test_branch_egress_opens_connections_and_says_the_sandbox_is_incomplete() -> None:
    async with (
        place("btrfs") as where,
        prism_in_process(where, "docker", branch_egress=("127.0.0.1:5432",)) as prism,
    ):
        await psql(prism.dsn("postgres@main"), "SELECT 1")
        main = prism.manager.runtime.address("main")
        assert main is not None
        ok, out = await _sql(prism, tcp_probe_sql(main.port))
        assert ok and out.split()[-1] == "connected" and "not permitted" not in out, out
        confinement = prism.manager.runtime.confinement()
        assert not confinement.complete
        assert any("--branch-egress" in item for item in confinement.missing)
