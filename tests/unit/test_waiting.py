"""The tests' one polling helper: it returns the first truthy answer and fails with a bound."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.waiting import wait_until


async def test_wait_until_returns_the_first_truthy_answer_of_a_sync_or_async_condition(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answers = iter([0, None, "", "ready"])
    assert await wait_until(lambda: next(answers), what="ready") == "ready"

    async def later() -> int:
        await trio.sleep(1)
        return 7

    assert await wait_until(later, what="seven") == 7


async def test_wait_until_fails_naming_what_it_waited_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started = trio.current_time()
    with pytest.raises(AssertionError, match="still waiting after 3 s for the moon"):
        await wait_until(lambda: False, what="the moon", within=3)
    assert trio.current_time() - started == pytest.approx(3)
