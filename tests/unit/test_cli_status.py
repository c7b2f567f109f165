"""``prism status`` and ``branch show main`` with a source: where things live and run, and how
main keeps up with its source."""

from __future__ import annotations

from typing import Any

from prism.cli.format import format_details
from prism.cli.status import format_status
from tests.unit.test_cli_show import _NOW, _branch

_STATUS: dict[str, Any] = {
    "version": "0.22",
    "ready": True,
    "listen": "0.0.0.0:5432",
    "api": "http://127.0.0.1:8080",
    "data_dir": "/var/lib/prism",
    "storage": {"name": "btrfs", "root": "/var/lib/prism/data"},
    "runtime": "process",
    "data_plane": "splice",
    "data_plane_reason": None,
    "sandbox": {"mechanism": "landlock", "missing": ["network namespaces"]},
    "main": {"status": "running"},
    "source": {"made_by": "base backup", "health": {"state": "streaming", "replay_lag_seconds": 2}},
    "branches": {"running": 2},
    "disk": None,
}


def test_status_says_where_data_lives_and_how_servers_run() -> None:
    assert format_status(_STATUS, "http://ignored").splitlines() == [
        "prism 0.22 (ready)",
        "  clients  0.0.0.0:5432",
        "  api      http://127.0.0.1:8080",
        "  data     /var/lib/prism",
        "  storage  btrfs at /var/lib/prism/data",
        "  runtime  process",
        "  plane    splice",
        "  sandbox  landlock; not enforced: network namespaces",
        "  main     running",
        "  source   base backup: streaming, 2 s behind",
        "  branches 2 (2 running)",
    ]


def test_show_main_says_how_it_follows_its_source_and_that_it_takes_no_writes() -> None:
    main = _branch(name="main", parent=None, source={"state": "streaming", "error": None})
    lines = format_details(main, now=_NOW).splitlines()
    assert lines[-2:] == [
        "  source       streaming",
        "  writes       none: main is a read-only standby of the source; write in a branch",
    ]
