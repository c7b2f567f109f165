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

from prism.core.values import HostPort
from prism.runtime.base import Confinement
from tests.integration.harness import PrismHandle, psql
from tests.system.stacks import docker_client, place, prism_in_process, tcp_probe_sql

pytestmark = pytest.mark.system

ATTACKER = "postgres@dev1"


def _reachable_from_host(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == 0


async def _sql(prism: PrismHandle, sql: str, *, user: str = ATTACKER) -> tuple[bool, str]:
    """Run ``sql`` as ``user``: whether it succeeded, and its output or error."""
    result = await psql(prism.dsn(user), sql, check=False)
    return result.returncode == 0, (result.stdout + result.stderr).decode()


def _dblink_probe(host: str, port: int) -> str:
    return (
        f"SELECT dblink_connect('host={host} port={port} user=postgres "
        "password=x dbname=postgres connect_timeout=3')"
    )


def _seen_from_a_container(branch: str, network: str) -> tuple[str, int]:
    """Where another container's server listens, as a container would try it: the host's
    loopback when containers share the host's network, else its address on the bridge."""
    container = docker_client().containers.get(f"prism-{branch}")
    port = int(container.labels["prism.port"])
    if network == "host":
        return "127.0.0.1", port
    return container.attrs["NetworkSettings"]["IPAddress"], port


async def _targets(prism: PrismHandle, network: str) -> dict[str, tuple[str, int]]:
    """What an attacker in dev1 would like to reach, as ``(host, port)`` seen from inside a
    container; each is first shown to listen, from the host, so a refusal is the sandbox's."""
    for branch in ("main", "dev2"):
        await psql(prism.dsn(f"postgres@{branch}"), "SELECT 1")
    # On a bridge the host is the gateway (Prism listens on the loopback, so that way is shut
    # even without the sandbox; it is tried all the same).
    host = "127.0.0.1"
    if network != "host":
        main = await trio.to_thread.run_sync(docker_client().containers.get, "prism-main")
        host = main.attrs["NetworkSettings"]["Gateway"]
    targets = {"api": (host, prism.info.api[1]), "front door": (host, prism.port)}
    for branch in ("main", "dev2"):
        address = prism.manager.runtime.address(branch)
        assert address is not None, f"{branch} is not running"
        assert _reachable_from_host(address.host, address.port), f"{branch} does not listen"
        targets[branch] = await trio.to_thread.run_sync(_seen_from_a_container, branch, network)
    for name in ("api", "front door"):
        assert _reachable_from_host("127.0.0.1", targets[name][1]), f"{name} does not listen"
    return targets


def _mount_sources(container_name: str) -> set[str]:
    container = docker_client().containers.get(container_name)
    return {mount["Source"] for mount in container.attrs["Mounts"]}


@pytest.mark.parametrize("network", ["host", "published-port", "bridge-ip"])
async def test_a_branch_superuser_reaches_no_file_or_port_outside_its_branch(network: str) -> None:
    async with (
        place("btrfs") as where,
        prism_in_process(where, "docker", docker_network=network) as prism,
    ):
        targets = await _targets(prism, network)
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
        for name, (host, port) in targets.items():
            ok, out = await _sql(prism, tcp_probe_sql(port, host))
            assert ok and "Operation not permitted" in out and "connected" not in out, (name, out)
            ok, out = await _sql(prism, _dblink_probe(host, port))
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
        # Only the host's network namespace, shared, is left open (listening, /proc/net).
        assert confinement.complete == (network != "host"), confinement.missing


async def test_branch_egress_opens_connections_and_says_the_sandbox_is_incomplete() -> None:
    async with (
        place("btrfs") as where,
        prism_in_process(where, "docker", branch_egress=(HostPort("127.0.0.1", 5432),)) as prism,
    ):
        await psql(prism.dsn("postgres@main"), "SELECT 1")
        main = prism.manager.runtime.address("main")
        assert main is not None
        ok, out = await _sql(prism, tcp_probe_sql(main.port))
        assert ok and out.split()[-1] == "connected" and "not permitted" not in out, out
        confinement = prism.manager.runtime.confinement()
        assert not confinement.complete
        assert any("--branch-egress" in item for item in confinement.missing)
