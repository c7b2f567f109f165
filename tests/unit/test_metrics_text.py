"""The Prometheus text Prism renders: histogram arithmetic and what events count."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from prism.api.metrics import Histogram, Metrics
from prism.branches.manager import Branch, BranchStatus
from prism.core.diskrules import DiskReserve
from prism.core.events import EventBus
from prism.storage.budget import DiskBudget
from prism.storage.diskuse import DiskUse
from tests.fakes import FakeStorage


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    histogram = Histogram(buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 0.7, 3.0):
        histogram.observe(value)
    assert histogram.lines("x") == [
        'x_bucket{le="0.1"} 1',
        'x_bucket{le="1"} 3',
        'x_bucket{le="+Inf"} 4',
        "x_sum 4.25",
        "x_count 4",
    ]


def test_value_on_a_bucket_bound_counts_in_that_bucket() -> None:
    histogram = Histogram(buckets=(1.0,))
    histogram.observe(1.0)
    assert histogram.lines("x")[0] == 'x_bucket{le="1"} 1'


class _Manager:
    """Just what ``Metrics`` reads: the event bus and the current branches."""

    def __init__(self, branches: list[Branch]) -> None:
        self.events = EventBus()
        self._branches = branches
        self.disk = self
        self.trash = SimpleNamespace(list=lambda: ["kept"])
        # A file system of 1 GiB with 50 MiB free, under a 100 MiB reserve.
        self.budget = DiskBudget(
            storage=FakeStorage(),
            data_dir=Path("fake-data"),
            reserve=DiskReserve.parse("100MiB"),
            archives=False,
            statfs=lambda path: (2**30, 50 * 2**20),
        )

    def known(self, names: list[str]) -> dict[str, DiskUse]:
        """The disk cache's last answers: one exact, one from a storage that cannot tell."""
        answers = {
            "main": DiskUse(900, 100, 1000, "btrfs filesystem du"),
            'odd"name': DiskUse(None, None, 500, "reflink"),
        }
        return {name: answers[name] for name in names}

    def list(self) -> list[Branch]:
        return self._branches


def _branch(name: str, status: BranchStatus, connections: int, proxied: int) -> Branch:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    branch = Branch(name, None if name == "main" else "main", created, status)
    branch.connections, branch.bytes_proxied = connections, proxied
    return branch


def test_metrics_count_what_the_events_say_and_read_gauges_from_branches() -> None:
    manager = _Manager(
        [
            _branch("main", BranchStatus.RUNNING, 2, 4096),
            _branch('odd"name', BranchStatus.STOPPED, 0, 10),
        ]
    )
    metrics = Metrics(manager)  # type: ignore[arg-type]
    publish = manager.events.publish
    publish("created", "main", duration_ms=900.0)  # initdb of main: not a branch provision
    publish("created", "a", parent="main", duration_ms=300.0)
    publish("running", "a", reason="create", duration_ms=100.0)
    publish("running", "a", reason="wake", duration_ms=200.0)
    publish("stopped", "a", reason="stop", duration_ms=5.0)  # an operator, not the reaper
    publish("stopped", "a", reason="idle", duration_ms=5.0)
    publish("evicted", "b", tier="idle", reason="disk pressure")

    lines = metrics.render().splitlines()
    for family, kind in [
        ("prism_branches", "gauge"),
        ("prism_open_connections", "gauge"),
        ("prism_bytes_proxied_total", "counter"),
        ("prism_provision_duration_seconds", "histogram"),
        ("prism_wake_duration_seconds", "histogram"),
        ("prism_reaper_stops_total", "counter"),
        ("prism_event_subscribers", "gauge"),
        ("prism_trash_branches", "gauge"),
        ("prism_evictions_total", "counter"),
    ]:
        assert f"# TYPE {family} {kind}" in lines
        assert any(line.startswith(f"# HELP {family} ") for line in lines)
    assert 'prism_branches{status="running"} 1' in lines
    assert 'prism_branches{status="stopped"} 1' in lines
    assert 'prism_branches{status="provisioning"} 0' in lines
    assert 'prism_open_connections{branch="main"} 2' in lines
    assert 'prism_bytes_proxied_total{branch="odd\\"name"} 10' in lines
    assert "prism_provision_duration_seconds_count 1" in lines
    assert "prism_provision_duration_seconds_sum 0.3" in lines
    assert "prism_wake_duration_seconds_count 1" in lines
    assert 'prism_wake_duration_seconds_bucket{le="0.25"} 1' in lines
    assert "prism_reaper_stops_total 1" in lines
    assert "prism_event_subscribers 0" in lines
    assert "prism_trash_branches 1" in lines
    assert 'prism_evictions_total{tier="idle"} 1' in lines
    assert 'prism_evictions_total{tier="trash"} 0' in lines


def test_disk_use_is_reported_per_branch_and_summed_where_known() -> None:
    manager = _Manager(
        [
            _branch("main", BranchStatus.RUNNING, 0, 0),
            _branch('odd"name', BranchStatus.STOPPED, 0, 0),
        ]
    )
    lines = Metrics(manager).render().splitlines()  # type: ignore[arg-type]
    assert "# TYPE prism_branch_disk_bytes gauge" in lines
    assert 'prism_branch_disk_bytes{branch="main",kind="own"} 900' in lines
    assert 'prism_branch_disk_bytes{branch="main",kind="shared"} 100' in lines
    assert 'prism_branch_disk_bytes{branch="odd\\"name",kind="total"} 500' in lines
    assert not any('odd\\"name",kind="own"' in line for line in lines)  # unknown: no sample
    assert 'prism_disk_bytes{kind="own"} 900' in lines
    assert 'prism_disk_bytes{kind="total"} 1500' in lines


def test_each_file_system_reports_free_reserve_and_level() -> None:
    lines = Metrics(_Manager([])).render().splitlines()  # type: ignore[arg-type]
    (free,) = [line for line in lines if line.startswith("prism_disk_free_bytes{")]
    assert free.endswith(f" {50 * 2**20}")
    (reserve,) = [line for line in lines if line.startswith("prism_disk_reserve_bytes{")]
    assert reserve.endswith(f" {100 * 2**20}")
    levels = {line for line in lines if line.startswith("prism_disk_level{")}
    assert any('level="low"} 1' in line for line in levels)
    assert any('level="ok"} 0' in line for line in levels)
