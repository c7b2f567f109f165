"""Truthful health with the docker runtime: a paused branch container (the cgroup freezer,
what a wedged server looks like) is ``unhealthy`` with its container log, clients are refused
at once with 57P03, and it is ``running`` again once unpaused; a healthy one never flaps."""

from __future__ import annotations

import httpx
import trio

from tests.integration.harness import psql, refused_sqlstate, wait_for_status
from tests.system.stacks import docker_client, place, prism_in_process


async def test_a_paused_branch_container_is_unhealthy_until_it_is_unpaused() -> None:
    async with (
        place("btrfs") as where,
        prism_in_process(where, "docker", health_interval=0.25) as prism,
        httpx.AsyncClient(base_url=prism.info.api_url) as http,
    ):
        await psql(prism.dsn("postgres@wedged"), "SELECT 1")
        await trio.sleep(2)  # probes of healthy servers: nothing changes
        assert prism.manager.require("wedged").status.value == "running"
        container = await trio.to_thread.run_sync(docker_client().containers.get, "prism-wedged")
        await trio.to_thread.run_sync(container.pause)
        try:
            view = await wait_for_status(http, "wedged", "unhealthy", within=15)
            assert "does not answer" in view["trouble"]["reason"]
            assert any("ready to accept connections" in line for line in view["trouble"]["log"])
            assert await refused_sqlstate(prism, "wedged") == "57P03"
        finally:
            await trio.to_thread.run_sync(container.unpause)
        await wait_for_status(http, "wedged", "running", within=15)
        await psql(prism.dsn("postgres@wedged"), "SELECT 1")
