"""``describe``: the line a user sees about a failure, never exception-group or Cancelled text."""

from __future__ import annotations

import pytest
import trio

from prism.core.errors import INTERRUPTED, ProvisionFailed, describe


async def _cancelled_group() -> BaseException:
    """A real ``BaseExceptionGroup([Cancelled])``, as a nursery cancelled from outside raises."""
    with trio.CancelScope() as scope:
        try:
            async with trio.open_nursery(strict_exception_groups=True) as nursery:
                nursery.start_soon(trio.sleep_forever)
                scope.cancel()
                await trio.sleep_forever()
        except BaseException as exc:  # the test wants the very exception
            return exc
    pytest.fail("the nursery was not cancelled")


async def test_a_cancelled_nursery_reads_as_interrupted() -> None:
    text = describe(await _cancelled_group())
    assert text == INTERRUPTED
    assert "Cancelled" not in text and "ExceptionGroup" not in text


def test_the_user_facing_message_inside_a_group_wins() -> None:
    group = BaseExceptionGroup("x", [KeyboardInterrupt(), ProvisionFailed("disk gone")])
    assert describe(group) == "disk gone"


def test_another_failure_reads_as_its_type_and_text() -> None:
    group = ExceptionGroup("Exceptions from Trio nursery", [OSError(28, "No space left")])
    assert describe(group) == "OSError: [Errno 28] No space left"
    assert describe(ValueError()) == "ValueError"
