"""The connect benchmark's per-phase stopwatch: one INFO line per connection, only when asked."""

from __future__ import annotations

import logging

import pytest

from prism.frontdoor import phases


def test_a_stopwatch_sums_the_laps_of_each_phase_into_one_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(phases, "_ON", True)
    watch = phases.stopwatch()
    for phase in ("hello", "lookup", "hello"):
        watch.lap(phase)
    with caplog.at_level(logging.INFO, logger=phases.__name__):
        watch.report("127.0.0.1:5")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("connect phases: peer=127.0.0.1:5 hello=")
    assert [f.split("=")[0] for f in line.split()[3:-1]] == ["hello", "lookup"]


def test_without_the_switch_nothing_is_timed_or_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(phases, "_ON", False)
    watch = phases.stopwatch()
    watch.lap("hello")
    with caplog.at_level(logging.DEBUG):
        watch.report("127.0.0.1:5")
    assert caplog.records == []
