"""A branch container killed behind Prism's back (``docker kill``, the OOM killer): Prism says so
within a second, in the API and as an event, and the next client gets a working session."""

from __future__ import annotations

import trio

from tests.integration.harness import assert_listed_stopped_then_woken, exit_reported, psql
from tests.system.stacks import docker_client, place, prism_in_process


async def test_a_killed_branch_container_is_reported_within_a_second_and_restarted() -> None:
    async with place("btrfs") as where, prism_in_process(where, "docker") as prism:
        await psql(prism.dsn("postgres@mortal"), "CREATE TABLE t AS SELECT 9 AS v")
        container = await trio.to_thread.run_sync(docker_client().containers.get, "prism-mortal")
        with trio.fail_after(1.0):
            await exit_reported(prism.manager, "mortal", container.kill)
        await assert_listed_stopped_then_woken(prism, "mortal")
