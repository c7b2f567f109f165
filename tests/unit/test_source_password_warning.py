"""The start-up warning about a source password on the command line, where ps shows it."""

from __future__ import annotations

import logging

import pytest

from prism.cli.main import warn_of_password_in_argv


@pytest.mark.parametrize(
    "flag",
    ["host=db user=r password=hunter2", "postgresql://r:hunter2@db/postgres"],
)
def test_a_password_in_the_flag_is_warned_of_without_being_echoed(
    flag: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        warn_of_password_in_argv(flag)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "hunter2" not in message
    for safer in ("$PRISM_SOURCE", "--source-password-file", "$PGPASSFILE"):
        assert safer in message


@pytest.mark.parametrize("flag", [None, "", "host=db user=r", "postgresql://r@db/postgres"])
def test_no_flag_or_no_password_in_it_is_not_warned_of(
    flag: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        warn_of_password_in_argv(flag)
    assert caplog.records == []
