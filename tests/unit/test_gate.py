"""The proxy's Gate alone: start-up slots and the create-on-connect policy, no sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio.testing

from prism.core.errors import BranchNotFound, TooManyConnections
from prism.core.values import CreatePolicy
from prism.frontdoor.limits import Gate, Limits
from tests.manager_kit import open_manager


async def test_startup_slots_refuse_one_over_the_cap_and_free_on_exit(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path) as (manager, _, _):
        gate = Gate(manager, Limits(max_startup=2))
        with gate.startup_slot(), gate.startup_slot():
            with pytest.raises(TooManyConnections) as refused, gate.startup_slot():
                pass
            assert refused.value.sqlstate == "53300"
            assert gate.in_startup == 2
        assert gate.in_startup == 0
        with gate.startup_slot():  # the slots came back
            assert gate.in_startup == 1


async def test_create_policy_off_and_pattern_refuse_unknown_names_only(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_manager(tmp_path) as (manager, _, _):
        await manager.create("existing")
        off = Gate(manager, Limits(create_on_connect=CreatePolicy.parse("off")))
        off.may_create("existing")
        with pytest.raises(BranchNotFound, match="does not create it on connect"):
            off.may_create("new")
        pattern = Gate(manager, Limits(create_on_connect=CreatePolicy.parse("pr-[0-9]+")))
        pattern.may_create("pr-7")
        with pytest.raises(BranchNotFound) as refused:
            pattern.may_create("random")
        assert refused.value.hint is not None and "must match" in refused.value.hint
