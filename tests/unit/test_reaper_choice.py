"""Which branches the reaper stops, and how often it looks: pure decisions, no servers."""

from __future__ import annotations

from datetime import UTC, datetime

from prism.branches.manager import Branch, BranchStatus
from prism.branches.reaper import due_for_stop, tick_interval

NOW = 10_000.0


def _branch(
    name: str,
    *,
    idle_for: float,
    connections: int = 0,
    status: BranchStatus = BranchStatus.RUNNING,
) -> Branch:
    parent = None if name == "main" else "main"
    created = datetime(2026, 1, 1, tzinfo=UTC)
    return Branch(
        name, parent, created, status, last_active_ts=NOW - idle_for, connections=0 + connections
    )


def test_idle_running_branch_without_connections_is_due() -> None:
    branches = [_branch("quiet", idle_for=61), _branch("busy", idle_for=5)]
    assert due_for_stop(branches, now=NOW, idle_timeout=60, include_main=False) == ["quiet"]


def test_branch_with_an_open_connection_is_never_due_however_idle() -> None:
    branches = [_branch("held", idle_for=10**6, connections=1)]
    assert due_for_stop(branches, now=NOW, idle_timeout=60, include_main=True) == []


def test_main_is_due_only_when_it_scales_to_zero() -> None:
    branches = [_branch("main", idle_for=120)]
    assert due_for_stop(branches, now=NOW, idle_timeout=60, include_main=False) == []
    assert due_for_stop(branches, now=NOW, idle_timeout=60, include_main=True) == ["main"]


def test_branches_that_are_not_running_are_never_due() -> None:
    branches = [
        _branch(f"b-{status.value}", idle_for=120, status=status)
        for status in BranchStatus
        if status is not BranchStatus.RUNNING
    ]
    assert due_for_stop(branches, now=NOW, idle_timeout=60, include_main=True) == []


def test_reaper_looks_about_four_times_per_timeout_within_bounds() -> None:
    assert tick_interval(2) == 0.5
    assert tick_interval(0.1) == 0.1
    assert tick_interval(900) == 10.0
