"""``prism branch show``: one branch's policy, hooks, disk use and connection, a line each."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prism.cli.format import format_branches, format_change, format_details, format_event

_NOW = datetime(2026, 11, 25, 11, 5, 0, tzinfo=UTC).timestamp()


def _branch(**changes: Any) -> dict[str, Any]:
    branch = {
        "name": "feature-1",
        "parent": "main",
        "status": "running",
        "created_at": "2026-11-25T11:02:43Z",
        "last_active": "2026-11-25T11:04:56Z",
        "connections": 1,
        "address": "127.0.0.1:41237",
        "disk": {"own": 524288, "shared": 40710144, "total": 41234432, "basis": "btrfs"},
        "protected": False,
        "expires_at": "2026-11-28T11:02:43Z",
        "on_create": False,
        "on_create_command": False,
        "connection": {"uri": "postgresql://postgres%40feature-1@127.0.0.1:5432/postgres"},
        "keeps_wal": True,
    }
    return {**branch, **changes}


def test_show_says_every_fact_the_table_leaves_out() -> None:
    assert format_details(_branch(), now=_NOW).splitlines() == [
        "feature-1: running (parent main, server 127.0.0.1:41237)",
        "  created      2026-11-25T11:02:43Z",
        "  last active  4s ago",
        "  connections  1",
        "  protected    no",
        "  expires      2026-11-28T11:02:43Z",
        "  hooks        none",
        "  keeps WAL    yes (branches as of a time: --at)",
        "  disk         own 512.0 KiB, shared 38.8 MiB, total 39.3 MiB (btrfs)",
        "  connect      postgresql://postgres%40feature-1@127.0.0.1:5432/postgres",
    ]


def test_show_names_hooks_and_what_the_storage_cannot_tell() -> None:
    lines = format_details(
        _branch(
            protected=True,
            expires_at=None,
            on_create=True,
            on_create_command=True,
            disk={"own": None, "shared": None, "total": 2048, "basis": "reflink"},
            connection=None,
            keeps_wal=False,
        ),
        now=_NOW,
    ).splitlines()
    assert lines[4:] == [
        "  protected    yes",
        "  expires      never",
        "  hooks        on_create, on_create_command",
        "  keeps WAL    no",
        "  disk         2.0 KiB in all, own and shared unknown (reflink)",
        "  connect      -",
    ]
    unknown = format_details(_branch(disk=None), now=_NOW).splitlines()
    assert unknown[8] == "  disk         unknown"


_TROUBLE = {
    "reason": "its server is not accepting connections: the database system is in recovery "
    "mode (57P03)",
    "since": "2026-11-25T11:04:58Z",
    "log": [f"LOG:  line {n}" for n in range(19)] + ["PANIC:  could not write to file"],
}


def test_show_says_why_an_unwell_branch_does_not_serve_and_its_log() -> None:
    lines = format_details(_branch(status="recovering", trouble=_TROUBLE), now=_NOW).splitlines()
    assert lines[0] == "feature-1: recovering (parent main, server 127.0.0.1:41237)"
    at = lines.index(f"  trouble      {_TROUBLE['reason']} (since 2026-11-25T11:04:58Z)")
    assert lines[at + 1] == "  server log   last 20 lines:"
    assert lines[at + 2 :] == [f"  | {line}" for line in _TROUBLE["log"]]


def test_ls_lists_the_unwell_and_the_end_of_their_logs_below_the_table() -> None:
    listed = [
        _branch(name="main", parent=None, disk_bytes=1, status="unhealthy", trouble=_TROUBLE),
        _branch(disk_bytes=1, trouble=None),
    ]
    lines = format_branches(listed, now=_NOW).splitlines()
    assert lines[1].split()[:2] == ["main", "unhealthy"]
    assert lines[3:] == [
        "",
        f"main: unhealthy: {_TROUBLE['reason']}",
        *(f"  | {line}" for line in _TROUBLE["log"][-5:]),
    ]


def test_events_print_the_log_an_unwell_event_carries_under_its_line() -> None:
    event = {
        "type": "recovering",
        "branch": "main",
        "at": "2026-11-25T11:04:58.120Z",
        "seq": 7,
        "error": "in recovery",
        "log": ["LOG:  a", "PANIC:  b"],
    }
    assert format_event(event).splitlines() == [
        "11:04:58.120 recovering main error=in recovery",
        "  | LOG:  a",
        "  | PANIC:  b",
    ]


def test_ls_puts_main_first_and_says_protection_expiry_own_size_and_time() -> None:
    listed = [
        _branch(name="alpha", at="2026-11-25T10:00:00Z", disk_bytes=1, trouble=None),
        _branch(name="main", parent=None, protected=True, expires_at=None, disk_bytes=1),
    ]
    header, main, alpha = format_branches(listed, now=_NOW).splitlines()
    assert header.split() == [
        *("NAME", "STATUS", "PARENT", "CONNS", "LAST", "ACTIVE", "PROTECTED", "EXPIRES", "OWN"),
        *("AT", "ADDRESS"),
    ]
    assert main.split()[:1] + main.split()[6:8] == ["main", "yes", "-"]
    assert alpha.split()[6:11] == ["no", "in", "2d", "512.0", "KiB"]
    assert "2026-11-25T10:00:00Z" in alpha.split()


def test_show_says_which_time_a_point_in_time_branch_holds() -> None:
    lines = format_details(_branch(at="2026-11-25T10:00:00Z"), now=_NOW).splitlines()
    assert lines[2] == "  data as of   2026-11-25T10:00:00Z (made with --at)"


def test_events_print_yes_and_no_not_python_booleans() -> None:
    event = {"type": "policy", "branch": "b", "at": "2026-11-25T11:04:58.120Z", "protected": True}
    assert format_event(event) == "11:04:58.120 policy b protected=yes"


def test_each_policy_change_says_what_the_branch_is_now() -> None:
    assert format_change("protection", _branch(protected=True)) == (
        "feature-1: protected: delete and reset refused (prism branch unprotect feature-1)"
    )
    assert format_change("protection", _branch()).startswith("feature-1: not protected")
    assert format_change("expiry", _branch(), now=_NOW) == (
        "feature-1: expires at 2026-11-28T11:02:43Z (in 2d)"
    )
    assert format_change("expiry", _branch(expires_at=None)) == "feature-1: never expires"
    assert format_change("hooks", _branch(on_create=True)) == (
        "feature-1: new children run on_create before anyone connects"
    )
    assert "no on_create hooks" in format_change("hooks", _branch())
