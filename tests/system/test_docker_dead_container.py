"""A branch container killed behind Prism's back (``docker kill``, the OOM killer): Prism says so
within a second, in the API and as an event, and the next client gets a working session."""

from __future__ import annotations

import httpx
import trio

from tests.integration.harness import psql
from tests.system.stacks import docker_client, place, prism_in_process


async def test_a_killed_branch_container_is_reported_within_a_second_and_restarted() -> None:
    async with place("btrfs") as where, prism_in_process(where, "docker") as prism:
        manager = prism.manager
        await psql(prism.dsn("postgres@mortal"), "CREATE TABLE t AS SELECT 9 AS v")
        container = await trio.to_thread.run_sync(docker_client().containers.get, "prism-mortal")
        async with manager.events.subscribe() as events:
            await trio.to_thread.run_sync(container.kill)
            with trio.fail_after(1.0):
                async for event in events:
                    if event["type"] == "stopped" and event["branch"] == "mortal":
                        assert event["reason"] == "exited", event
                        break
        async with httpx.AsyncClient(base_url=prism.info.api_url) as http:
            view = (await http.get("/api/v1/branches/mortal")).json()
        assert view["status"] == "stopped"
        out = await psql(prism.dsn("postgres@mortal"), "SELECT v FROM t")
        assert out.stdout.decode().strip() == "9"
        assert manager.require("mortal").status.value == "running"
