"""Sparkline data: sessions and bytes per minute over the last hour, from events and counters."""

from __future__ import annotations

from prism.branches.activity import MINUTES, ActivityLog


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000 * 60.0

    def __call__(self) -> float:
        return self.now


def test_sessions_and_bytes_land_in_their_minute() -> None:
    clock, counters = _Clock(), {"b": 0}
    log = ActivityLog(counters.get, clock)
    log.observe({"type": "connected", "branch": "b"})
    counters["b"] = 500
    log.observe({"type": "disconnected", "branch": "b"})
    clock.now += 60
    log.observe({"type": "connected", "branch": "b"})
    log.observe({"type": "connected", "branch": "b"})
    counters["b"] = 1700
    line = log.sparkline("b")
    assert len(line["sessions"]) == len(line["bytes"]) == MINUTES
    assert line["sessions"][-2:] == [1, 2]
    assert line["bytes"][-2:] == [500, 1200]


def test_old_minutes_fall_out_and_a_reset_counter_is_not_negative() -> None:
    clock, counters = _Clock(), {"b": 900}
    log = ActivityLog(counters.get, clock)
    log.observe({"type": "connected", "branch": "b"})
    clock.now += 60 * (MINUTES + 5)
    counters["b"] = 100  # reset sets the counter back to 0, then 100 moved
    line = log.sparkline("b")
    assert sum(line["sessions"]) == 0
    assert line["bytes"][-1] == 100 and min(line["bytes"]) == 0


def test_deleted_branch_is_forgotten() -> None:
    counters = {"b": 0}
    log = ActivityLog(counters.get, _Clock())
    log.observe({"type": "connected", "branch": "b"})
    log.observe({"type": "deleted", "branch": "b"})
    assert sum(log.sparkline("b")["sessions"]) == 0
