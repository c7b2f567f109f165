"""Admission's pure decisions (``prism.branches.capacity``), decided from a snapshot of the
branches."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from prism.branches.capacity import (
    Admit,
    Caps,
    Evict,
    Refuse,
    check_branch_cap,
    evictable,
    room_for,
)
from prism.branches.status import Branch, BranchStatus
from prism.core.errors import LimitExceeded, TooManyConnections

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def _branch(
    name: str,
    status: BranchStatus = BranchStatus.RUNNING,
    *,
    connections: int = 0,
    last_active: float = 0.0,
) -> Branch:
    parent = None if name == "main" else "main"
    return Branch(name, parent, _EPOCH, status, last_active_ts=last_active, connections=connections)


def _nobody(name: str) -> bool:
    return False


def test_no_running_cap_admits_whatever_runs() -> None:
    branches = [_branch("main"), _branch("a", connections=3), _branch("b")]
    room = room_for("c", branches, caps=Caps(), has_server=_nobody, busy=_nobody)
    assert room == Admit()


def test_room_below_the_cap_admits() -> None:
    branches = [_branch("main"), _branch("a", BranchStatus.STOPPED)]
    room = room_for("a", branches, caps=Caps(running=2), has_server=_nobody, busy=_nobody)
    assert room == Admit()


def test_the_branch_itself_does_not_count_against_its_own_room() -> None:
    branches = [_branch("main"), _branch("a", BranchStatus.STARTING)]
    room = room_for("a", branches, caps=Caps(running=2), has_server=_nobody, busy=_nobody)
    assert room == Admit()


def test_a_server_the_runtime_reports_counts_whatever_the_status_says() -> None:
    branches = [_branch("main"), _branch("a", BranchStatus.STOPPED, connections=1)]
    room = room_for(
        "b",
        branches,
        caps=Caps(running=2),
        has_server=lambda name: name == "a",
        busy=_nobody,
    )
    assert isinstance(room, Refuse)


@pytest.mark.parametrize(
    "status", [BranchStatus.PROVISIONING, BranchStatus.STARTING, BranchStatus.STOPPING]
)
def test_a_branch_on_its_way_to_or_from_a_server_holds_a_seat(status: BranchStatus) -> None:
    branches = [_branch("main", connections=1), _branch("a", status)]
    room = room_for("b", branches, caps=Caps(running=2), has_server=_nobody, busy=_nobody)
    assert isinstance(room, Refuse)


def test_at_the_cap_the_least_recently_used_idle_branch_is_evicted() -> None:
    older, newer = _branch("a", last_active=10.0), _branch("b", last_active=20.0)
    branches = [_branch("main", last_active=0.0), newer, older]
    room = room_for("c", branches, caps=Caps(running=3), has_server=_nobody, busy=_nobody)
    assert room == Evict(older)


def test_main_a_branch_with_a_session_and_a_locked_branch_are_never_victims() -> None:
    branches = [
        _branch("main", last_active=0.0),
        _branch("a", connections=1, last_active=1.0),
        _branch("b", last_active=2.0),
        _branch("c", last_active=3.0),
    ]
    room = room_for(
        "d", branches, caps=Caps(running=4), has_server=_nobody, busy=lambda n: n == "b"
    )
    assert room == Evict(branches[3])


def test_with_no_victim_the_client_is_refused_naming_the_cap() -> None:
    branches = [_branch("main"), _branch("a", connections=1)]
    room = room_for("b", branches, caps=Caps(running=2), has_server=_nobody, busy=_nobody)
    assert isinstance(room, Refuse)
    assert isinstance(room.error, TooManyConnections)
    assert "2 branch servers are running (--max-running)" in room.error.message


def test_evictable_only_running_idle_branches_other_than_main_and_the_one_asking() -> None:
    assert evictable(_branch("a"), for_branch="b")
    assert not evictable(_branch("a"), for_branch="a")
    assert not evictable(_branch("main"), for_branch="b")
    assert not evictable(_branch("a", connections=1), for_branch="b")
    assert not evictable(_branch("a", BranchStatus.STARTING), for_branch="b")


def test_the_branch_cap_refuses_at_the_limit_and_not_below() -> None:
    check_branch_cap("new", count=1, caps=Caps(branches=2))
    check_branch_cap("new", count=100, caps=Caps())
    with pytest.raises(LimitExceeded, match=r"its limit of 2 branches \(--max-branches\)"):
        check_branch_cap("new", count=2, caps=Caps(branches=2))
