"""Prometheus metrics: what an operator graphs and alerts on, in the text exposition format.

Durations and counts of things that happen (provisions, wake-ups, reaper stops) are learnt from
the event bus as a synchronous listener, so the code that does the work needs no metrics calls.
Gauges of how things are now (branches by status, open sessions, bytes proxied) are read from
the manager at scrape time, so they can never drift from the truth.

Written by hand rather than with prometheus_client: a few dozen lines, no global registry, and
nothing that assumes threads.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from prism.branches.manager import BranchManager, BranchStatus
from prism.core.events import Event
from prism.frontdoor.dataplane import PUMP, DataPlane
from prism.runtime.base import Confinement

# Seconds, spanning what a provision or a wake-up takes: a copy-on-write clone plus a server
# start at the low end (docs/benchmarks.md, "Cold start"), a plain copy of a big main or a cold
# Docker start at the high end.
DURATION_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """A cumulative Prometheus histogram of one quantity."""

    def __init__(self, buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        bounds = [*(_number(b) for b in self.buckets), "+Inf"]
        for bound, count in zip(bounds, self._counts, strict=True):
            running += count
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        out += [f"{name}_sum {_number(self.sum)}", f"{name}_count {self.count}"]
        return out


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *samples]


class Metrics:
    """Collects Prism's metrics for one manager; ``render`` is the body of ``GET /metrics``."""

    def __init__(
        self,
        manager: BranchManager,
        data_plane: DataPlane = PUMP,
        confinement: Confinement | None = None,
    ) -> None:
        self._manager = manager
        self._data_plane = data_plane
        self._confinement = confinement
        self.provision = Histogram()
        self.wake = Histogram()
        self.reaper_stops = 0
        self.evictions: Counter[str] = Counter()
        """Branches freed under disk pressure, by tier (``prism.branches.eviction``)."""
        manager.events.add_listener(self.observe)

    def observe(self, event: Event) -> None:
        """Learn from one event (called by the bus for every event)."""
        kind, seconds = event["type"], event.get("duration_ms", 0) / 1000
        if kind == "created" and event.get("parent") is not None:
            self.provision.observe(seconds)
        elif kind == "running" and event.get("reason") == "wake":
            self.wake.observe(seconds)
        elif kind == "stopped" and event.get("reason") == "idle":
            self.reaper_stops += 1
        elif kind == "evicted":
            self.evictions[str(event.get("tier"))] += 1

    def render(self, *, source: dict[str, Any] | None = None) -> str:
        """The metrics text; ``source`` is main's source health when main follows one."""
        branches = self._manager.list()
        by_status = Counter(branch.status for branch in branches)
        plane = self._data_plane
        plane_labels = f'plane="{plane.name}",reason="{_label(plane.reason)}"'
        lines = [
            *_family(
                "prism_data_plane_info",
                "gauge",
                "The data plane relaying sessions after log-in (1), and why it was chosen.",
                [f"prism_data_plane_info{{{plane_labels}}} 1"],
            ),
            *_family(
                "prism_sessions_relayed_total",
                "counter",
                "Client sessions handed to each data plane after log-in (TLS ones go to the pump).",
                (
                    f'prism_sessions_relayed_total{{plane="{name}"}} {plane.sessions[name]}'
                    for name in ("sockmap", "pump")
                ),
            ),
            *_family(
                "prism_branches",
                "gauge",
                "Branches by lifecycle status.",
                (f'prism_branches{{status="{s.value}"}} {by_status[s]}' for s in BranchStatus),
            ),
            *_family(
                "prism_open_connections",
                "gauge",
                "Open proxied client sessions by branch.",
                (
                    f'prism_open_connections{{branch="{_label(b.name)}"}} {b.connections}'
                    for b in branches
                ),
            ),
            *_family(
                "prism_bytes_proxied_total",
                "counter",
                "Bytes moved between clients and a branch, both ways, since Prism started.",
                (
                    f'prism_bytes_proxied_total{{branch="{_label(b.name)}"}} {b.bytes_proxied}'
                    for b in branches
                ),
            ),
            *_family(
                "prism_provision_duration_seconds",
                "histogram",
                "Time to create a branch: clone plus first server start.",
                self.provision.lines("prism_provision_duration_seconds"),
            ),
            *_family(
                "prism_wake_duration_seconds",
                "histogram",
                "Time to start a stopped branch's server for a connecting client.",
                self.wake.lines("prism_wake_duration_seconds"),
            ),
            *_family(
                "prism_reaper_stops_total",
                "counter",
                "Branches stopped by the reaper for being idle.",
                [f"prism_reaper_stops_total {self.reaper_stops}"],
            ),
            *_family(
                "prism_trash_branches",
                "gauge",
                "Deleted branches kept in the trash for undelete (--undelete-window).",
                [f"prism_trash_branches {len(self._manager.trash.list())}"],
            ),
            *_family(
                "prism_evictions_total",
                "counter",
                "Branches freed under disk pressure, by tier: trash, expired, idle.",
                (
                    f'prism_evictions_total{{tier="{tier}"}} {self.evictions[tier]}'
                    for tier in ("trash", "expired", "idle")
                ),
            ),
            *self._disk_lines(),
            *_family(
                "prism_event_subscribers",
                "gauge",
                "Current event stream subscribers.",
                [f"prism_event_subscribers {self._manager.events.subscriber_count}"],
            ),
        ]
        if source is not None:
            lines += _source_families(source)
        if self._confinement is not None:
            lines += _family(
                "prism_sandbox_missing_guards",
                "gauge",
                "Guards of the branch servers' sandbox this host cannot enforce (0: all).",
                [f"prism_sandbox_missing_guards {len(self._confinement.missing)}"],
            )
        return "\n".join(lines) + "\n"

    def _disk_lines(self) -> list[str]:
        """Disk use per branch and in total, as last measured (the page and API measure)."""
        known = self._manager.disk.known([b.name for b in self._manager.list()])
        samples = [
            f'prism_branch_disk_bytes{{branch="{_label(name)}",kind="{kind}"}} {value}'
            for name, use in sorted(known.items())
            for kind, value in (("own", use.own), ("shared", use.shared), ("total", use.total))
            if value is not None
        ]
        totals = [
            f'prism_disk_bytes{{kind="{kind}"}} {sum(v for v in values if v is not None)}'
            for kind, values in (
                ("own", [use.own for use in known.values()]),
                ("total", [use.total for use in known.values()]),
            )
        ]
        return [
            *_family(
                "prism_branch_disk_bytes",
                "gauge",
                "Bytes a branch holds alone (own), shares with others (shared), in all (total).",
                samples,
            ),
            *_family("prism_disk_bytes", "gauge", "Sums of prism_branch_disk_bytes.", totals),
            *self._budget_lines(),
        ]

    def _budget_lines(self) -> list[str]:
        """Each file system's free, total and reserve and how full it is; what uses the space."""
        budget = self._manager.budget
        if budget is None:
            return []
        view = budget.view()
        filesystems = view["filesystems"]

        def per_fs(key: str) -> list[str]:
            return [
                f'prism_disk_{key}_bytes{{path="{_label(fs["path"])}"}} {fs[key]}'
                for fs in filesystems
            ]

        levels = [
            f'prism_disk_level{{path="{_label(fs["path"])}",level="{level}"}} '
            f"{int(fs['level'] == level)}"
            for fs in filesystems
            for level in ("ok", "low", "critical", "full")
        ]
        uses = [
            f'prism_disk_use_bytes{{kind="{kind}"}} {value}'
            for kind, value in view["use"].items()
            if value is not None
        ]
        return [
            *_family("prism_disk_free_bytes", "gauge", "Free bytes.", per_fs("free")),
            *_family("prism_disk_total_bytes", "gauge", "Size in bytes.", per_fs("total")),
            *_family(
                "prism_disk_reserve_bytes",
                "gauge",
                "Bytes kept free (--disk-reserve): operations that would cut into them fail.",
                per_fs("reserve"),
            ),
            *_family(
                "prism_disk_level",
                "gauge",
                "1 for each file system's level: ok, low (under the reserve), critical (ballast "
                "released), full (main stopped).",
                levels,
            ),
            *_family(
                "prism_disk_use_bytes",
                "gauge",
                "What uses the space: branches' own bytes, snapshots, WAL archive, trash.",
                uses,
            ),
        ]


def _source_families(source: dict[str, Any]) -> list[str]:
    """Main's replication from its source (``prism.source.health``); NaN where unknown."""

    def value(key: str) -> str:
        number = source.get(key)
        return "NaN" if number is None else _number(number)

    return [
        *_family(
            "prism_source_streaming",
            "gauge",
            "1 while main streams from its source, 0 while backing up or disconnected.",
            [f"prism_source_streaming {int(source['state'] == 'streaming')}"],
        ),
        *_family(
            "prism_source_replay_lag_bytes",
            "gauge",
            "WAL bytes the source has written that main has not replayed yet.",
            [f"prism_source_replay_lag_bytes {value('replay_lag_bytes')}"],
        ),
        *_family(
            "prism_source_replay_lag_seconds",
            "gauge",
            "Age of the last transaction main replayed while WAL is left to replay (0: none).",
            [f"prism_source_replay_lag_seconds {value('replay_lag_seconds')}"],
        ),
    ]
