"""Turn the results into docs/benchmarks.md and its plots.

Results are kept as JSON beside the plots, so a rerun of one section (``--only``) rewrites the
whole page with the latest figures of every section.
"""

from __future__ import annotations

import json
from typing import Any

from tools.bench.common import REPO, median, percentile
from tools.bench.proxy import REFERENCE
from tools.bench.standby import PHASES, PRISM_PHASE

DOC = REPO / "docs" / "benchmarks.md"
ASSETS = REPO / "docs" / "benchmarks"
RESULTS = ASSETS / "results.json"
#: Hand-written closing notes (what the figures mean, what is missed and why), kept as prose
#: beside the generated figures and appended to the page.
NOTES = ASSETS / "notes.md"
COMMAND = ".venv/bin/python -m tools.bench"

Results = dict[str, Any]


def load_results() -> Results:
    if RESULTS.exists():
        loaded: Results = json.loads(RESULTS.read_text())
        return loaded
    return {}


def save_results(results: Results) -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True, default=str) + "\n")


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.0f}"


def _parts(splits: list[dict[str, float]], part: str) -> list[float]:
    if part == "rest":
        return [s["total"] - s["clone"] - s["start"] for s in splits]
    return [s[part] for s in splits]


def _coldstart(results: Results) -> list[str]:
    section = results.get("coldstart")
    if not section:
        return []
    lines = [
        "## Cold start: connect to a missing branch → first query result",
        "",
        f"Command: `{COMMAND} --only coldstart` (process runtime; {results['args']['branches']} "
        "fresh branches per driver after 2 uncounted warm-up ones, each deleted after its turn; "
        "main running, as in use).",
        "The split comes from Prism's branch events: *clone* is provisioning → starting (for "
        "reflink and copy it includes the online-backup bracket, because main is running), "
        "*start* is the branch server's start-up, *rest* is connect + authentication through "
        "the proxy + `SELECT 1`. The *floor* is the same machine and data without Prism: the "
        "driver clones a stopped main, a bare `postgres` starts on it (readiness polled every "
        "millisecond), and one direct connection runs `SELECT 1`.",
        "",
        "| driver | DB size | p50 ms | p95 ms | clone p50 | start p50 | rest p50 "
        "| floor p50 | floor clone | floor start | wake-up p50 / p95 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for d in section["drivers"]:
        cold, floor = d["cold"], d["floor"]
        wake = d["wake"]
        lines.append(
            f"| {d['label']} | {d['size_mb']:.0f} MB | **{_ms(_parts(cold, 'total'), 50)}** | "
            f"{_ms(_parts(cold, 'total'), 95)} | {_ms(_parts(cold, 'clone'), 50)} | "
            f"{_ms(_parts(cold, 'start'), 50)} | {_ms(_parts(cold, 'rest'), 50)} | "
            f"{_ms(_parts(floor, 'total'), 50)} | {_ms(_parts(floor, 'clone'), 50)} | "
            f"{_ms(_parts(floor, 'start'), 50)} | {_ms(wake, 50)} / {_ms(wake, 95)} |"
        )
    for kind, reason in section.get("skipped", {}).items():
        lines.append(f"\n*{kind} skipped: {reason}.*")
    lines += ["", "![cold start split](benchmarks/coldstart.png)", ""]
    _plot_coldstart(section["drivers"])
    return lines


def _o1(results: Results) -> list[str]:
    section = results.get("o1")
    if not section:
        return []
    args = results["args"]
    lines = [
        "## Branching is O(1)",
        "",
        f"Command: `{COMMAND} --only o1` (main loaded with `pgbench -i -s 1` and "
        f"`-s {args['big_scale']}`, then `CHECKPOINT`; {args['o1_branches']} branches per size, "
        "cold start as above: connect to a missing branch → first query result, medians; the "
        "clone step alone is the O(1) part, the rest is the server's start-up, which includes "
        "crash recovery of the WAL since the last checkpoint). Beside it, on the same data "
        "(copy driver's main, root disk), "
        "what a user would do without Prism: `CREATE DATABASE copied TEMPLATE postgres` and "
        "`pg_dump -Fc | pg_restore` into a new database.",
        "",
        f"| method | scale 1 | scale {args['big_scale']} | size at scale {args['big_scale']} |",
        "| --- | ---: | ---: | ---: |",
    ]
    by_label: dict[str, dict[int, dict[str, Any]]] = {}
    for run in section["runs"]:
        by_label.setdefault(run["label"], {})[run["scale"]] = run
    rows: dict[str, dict[int, float]] = {}
    for label, runs in by_label.items():
        rows[f"Prism branch, {label}"] = {
            s: median(_parts(r["cold"], "total")) for s, r in runs.items()
        }
        rows[f"(its clone step), {label}"] = {
            s: median(_parts(r["cold"], "clone")) for s, r in runs.items()
        }
        for s, r in runs.items():
            for method, seconds in r.get("alternatives", {}).items():
                rows.setdefault(method, {})[s] = seconds
    sizes = {
        label: runs.get(args["big_scale"], {}).get("size_mb") for label, runs in by_label.items()
    }
    big = args["big_scale"]
    for method, values in rows.items():
        size = next((f"{v:.0f} MB" for k, v in sizes.items() if k in method and v), "")
        name = method.replace("|", "\\|")  # a pipe would split the table cell
        lines.append(f"| {name} | {_fmt_s(values.get(1))} | {_fmt_s(values.get(big))} | {size} |")
    lines += ["", "![O(1)](benchmarks/o1.png)", ""]
    _plot_o1(rows, big)
    return lines


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


class _Proxy:
    """The proxy section's runs, read as medians and as per-round paired comparisons.

    Each round runs direct, Prism and PgBouncer back to back, so a ratio (or a latency
    difference) taken within a round cancels most of the shared machine's drift; the
    median over rounds of those paired figures is what the report and the targets use.
    """

    def __init__(self, section: dict[str, Any]) -> None:
        self.runs: dict[str, list[dict[str, float]]] = section["runs"]
        self.costs: dict[str, list[dict[str, float]]] = section.get("costs", {})

    def cost(self, workload: str, count: int, target: str, field: str) -> float:
        """Median over rounds of one per-transaction CPU figure (see tools/bench/cpu.py)."""
        return median([c[field] for c in self.costs.get(f"{workload}|{count}|{target}", [])])

    def _series(self, workload: str, count: int, target: str, field: str) -> list[float]:
        return [r[field] for r in self.runs.get(f"{workload}|{count}|{target}", [])]

    def median(self, workload: str, count: int, target: str, field: str) -> float:
        return median(self._series(workload, count, target, field))

    def ratio(self, workload: str, count: int, target: str) -> float:
        pairs = zip(
            self._series(workload, count, target, "tps"),
            self._series(workload, count, REFERENCE.get(target, "direct"), "tps"),
            strict=True,
        )
        return median([mine / direct for mine, direct in pairs])

    def added_us(self, workload: str, count: int, target: str) -> float:
        pairs = zip(
            self._series(workload, count, target, "p50_us"),
            self._series(workload, count, REFERENCE.get(target, "direct"), "p50_us"),
            strict=True,
        )
        return median([mine - direct for mine, direct in pairs])


_PROXY_COLUMNS = (("prism-sockmap", "Prism sockmap"), ("prism-pump", "Prism pump"))
_PROXY_COLUMNS += (("pgbouncer", "PgBouncer"),)


def _proxy(results: Results) -> list[str]:
    section = results.get("proxy")
    if not section:
        return []
    clients = section["clients"]
    planes = section.get("data_planes", {})

    cells = _Proxy(section)
    names = [name for _, name in _PROXY_COLUMNS]
    lines = [
        "## Proxy overhead: direct vs Prism (each data plane) vs PgBouncer (session mode)",
        "",
        f"Command: `{COMMAND} --only proxy`: pgbench (scale 10) for {section['seconds']:g} s per "
        f"run, {section['rounds']} interleaved rounds (each round runs every target back to "
        "back in a shuffled order). Direct, Prism sockmap and PgBouncer reach the same server "
        "(Prism's main). A data plane is chosen per Prism process, so Prism pump is a second "
        "Prism (`--data-plane pump`) with its own main, loaded and configured the same; its "
        "ratio and added latency are to that main's own direct figures, measured in the same "
        "rounds. TPS columns are medians over rounds; ratios are the median of per-round ratios "
        "to direct, and added latency the median of per-round differences of the "
        "per-transaction p50 (pgbench `-l`) from direct's.",
        "",
        *(f"- {name}: data plane {planes.get(target, '?')}" for target, name in _PROXY_COLUMNS[:2]),
        "",
        "| workload | clients | direct tps | "
        + " | ".join(f"{name} tps" for name in names)
        + " | "
        + " | ".join(f"{name} / direct" for name in names)
        + " | "
        + " | ".join(f"{name} added p50 µs" for name in names)
        + " |",
        "| --- | ---: |" + " ---: |" * (1 + 3 * len(names)),
    ]
    ratios: dict[str, list[float]] = {name: [] for name in names}
    labels = []
    for workload in ("select-only (-S)", "TPC-B-like"):
        for count in clients:
            row = [workload, str(count), f"{cells.median(workload, count, 'direct', 'tps'):.0f}"]
            row += [f"{cells.median(workload, count, t, 'tps'):.0f}" for t, _ in _PROXY_COLUMNS]
            for target, name in _PROXY_COLUMNS:
                ratio = cells.ratio(workload, count, target)
                ratios[name].append(ratio)
                row.append(f"**{ratio:.2f}**" if target == "prism-sockmap" else f"{ratio:.2f}")
            row += [f"{cells.added_us(workload, count, t):.0f}" for t, _ in _PROXY_COLUMNS]
            lines.append("| " + " | ".join(row) + " |")
            labels.append(f"{'-S' if workload.startswith('select') else 'TPC-B'} c={count}")
    lines += ["", "pgbench commands (direct's; the other targets differ only in the port; "]
    lines[-1] += "`-l` added for latencies):"
    lines += ["", "```"]
    lines += [*(c for c in sorted(set(section["commands"])) if c.startswith("direct: ")), "```"]
    lines += [""]
    lines += ["![TPS ratios](benchmarks/proxy.png)", ""]
    lines += _proxy_costs(cells, clients)
    _plot_ratios(labels, ratios)
    return lines


_COST_COLUMNS = (
    ("direct", "direct", ("kworker_us", "switches")),
    ("prism-sockmap", "Prism sockmap", ("relay_us", "kworker_us", "kworker_wait_us", "switches")),
    ("pgbouncer", "PgBouncer", ("relay_us", "relay_wait_us", "kworker_us", "switches")),
    ("prism-pump", "Prism pump", ("relay_us", "relay_wait_us", "switches")),
)
_COST_NAMES = {
    "relay_us": "relay CPU µs",
    "relay_wait_us": "relay wait µs",
    "kworker_us": "kworker CPU µs",
    "kworker_wait_us": "kworker wait µs",
    "switches": "switches",
}


def _proxy_costs(cells: _Proxy, clients: list[int]) -> list[str]:
    """Per transaction: the relay's CPU, the kernel workers' CPU and the context switches."""
    if not cells.costs:
        return []
    header = [f"{name} {_COST_NAMES[f]}" for _, name, fields in _COST_COLUMNS for f in fields]
    lines = [
        "Where a transaction's CPU goes (tools/bench/cpu.py, read from /proc over the middle "
        "third of every run above, so the clients' log-ins are not counted; medians over "
        "rounds, per transaction). *Relay CPU* is the Prism or PgBouncer process (all "
        "threads); *kworker CPU* is every kernel worker thread on the machine, where the "
        "sockmap's redirected segments are sent from; *wait* is the time those threads were "
        "runnable but waiting for a CPU; *switches* are the machine's context "
        "switches. The machine-wide columns include other processes' work on this shared "
        "machine: read them against direct's.",
        "",
        "| workload | clients | " + " | ".join(header) + " |",
        "| --- | ---: |" + " ---: |" * len(header),
    ]
    for workload in ("select-only (-S)", "TPC-B-like"):
        for count in clients:
            row = [workload, str(count)]
            for target, _, fields in _COST_COLUMNS:
                row += [f"{cells.cost(workload, count, target, f):.1f}" for f in fields]
            lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def _idle(results: Results) -> list[str]:
    section = results.get("idle")
    if not section:
        return []
    per = (section["rss_after_kb"] - section["rss_before_kb"]) / section["connections"]
    before, during = section["latency_before_us"], section["latency_during_us"]
    nan = [float("nan")] * 2
    direct_before = section.get("direct_before_us", nan)
    direct_during = section.get("direct_during_us", nan)
    return [
        "## Connection scale: idle sessions through one Prism",
        "",
        f"Command: `{COMMAND} --only idle`: {section['connections']} authenticated, idle "
        "sessions through Prism (main runs with `max_connections` to match); Prism's RSS from "
        "`/proc/<pid>/status` before and after; 500 `SELECT 1` round trips on one more session "
        "before and during, through Prism and straight to main's server.",
        "",
        "| connections | Prism RSS before | after | per connection | SELECT 1 p50 / p95 via "
        "Prism before | during | direct before | direct during |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {section['connections']} | {section['rss_before_kb'] / 1024:.1f} MB | "
        f"{section['rss_after_kb'] / 1024:.1f} MB | **{per:.1f} KB** | "
        f"{before[0]:.0f} / {before[1]:.0f} µs | {during[0]:.0f} / {during[1]:.0f} µs | "
        f"{direct_before[0]:.0f} / {direct_before[1]:.0f} µs | "
        f"{direct_during[0]:.0f} / {direct_during[1]:.0f} µs |",
        "",
    ]


def _docker(results: Results) -> list[str]:
    section = results.get("docker")
    if not section:
        return []
    if "skipped" in section:
        title = "## Cold start with the docker runtime"
        return [title, "", f"*Skipped: {section['skipped']}.*", ""]
    summary = section["summary"]
    config = section["config"]
    lines = [
        "## Cold start with the docker runtime (btrfs)",
        "",
        f"Command: `{COMMAND} --only docker` (the same as `.venv/bin/python -m "
        f"tools.bench.docker_cold_start --runs {config['runs']}`): {config['runs']} fresh "
        f"branches (after {config['warmup']} warm-up runs) on `{config['mount']}`, image "
        f"`{config['image']}`; each branch is then stopped and woken once (*wake*), then "
        "deleted. The split comes from Prism's own log records: the btrfs snapshot (*clone*) "
        "and the docker runtime's container phases (create, start, inspect, ready).",
        "",
        "| | " + " | ".join(key[:-3] for key in summary) + " |",
        "| --- |" + " ---: |" * len(summary),
    ]
    for stat in ("p50", "p90", "min", "max"):
        cells = " | ".join(f"{summary[key][stat]:.0f}" for key in summary)
        lines.append(f"| {stat} ms | {cells} |")
    floor = section.get("floor")
    if floor:
        lines += [
            "",
            f"The floor, {len(floor)} runs (`tools/bench/docker_floor.py`, part of the same "
            "command): a btrfs snapshot of a stopped main, then a bare container of the same "
            "image, mount, user and network through Docker's low-level API (create, start), "
            "`postmaster.pid` polled every millisecond for *ready*, and `SELECT 1` directly.",
            "",
            "| floor | total | clone | create | start | ready |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for q in (50, 95):
            cells = " | ".join(
                _ms([run[part] for run in floor], q)
                for part in ("total", "clone", "create", "start", "ready")
            )
            lines.append(f"| p{q} ms | {cells} |")
    return [*lines, ""]


def _wakeup(results: Results) -> list[str]:
    rows = []
    for d in (results.get("coldstart") or {}).get("drivers", []):
        rows.append(f"| process, {d['label']} | {_ms(d['wake'], 50)} | {_ms(d['wake'], 95)} |")
    docker = (results.get("docker") or {}).get("summary", {}).get("wake_ms")
    if docker:
        rows.append(f"| docker, btrfs | {docker['p50']:.0f} | {docker['p90']:.0f} (p90) |")
    if not rows:
        return []
    wakes = results["args"]["wakes"]
    return [
        "## Wake-up: stopped branch → first query result",
        "",
        f"Command: `{COMMAND} --only coldstart` ({wakes} wake-ups per driver: stop the branch "
        "with `BranchManager.stop`, then connect and `SELECT 1`) and `--only docker` (one wake "
        "per branch).",
        "",
        "| runtime, storage | p50 ms | p95 ms |",
        "| --- | ---: | ---: |",
        *rows,
        "",
    ]


def _events(results: Results) -> list[str]:
    section = results.get("events")
    if not section:
        return []
    latencies = section["latencies_us"]
    every = [v for values in latencies.values() for v in values]
    lines = [
        "## Event delivery: lifecycle transition → WebSocket subscriber",
        "",
        f"Command: `{COMMAND} --only events`: {section['cycles']} stop/start cycles of one "
        "branch (copy driver) while a WebSocket client listens on `/api/v1/events`; latency is "
        "the time from `EventBus.publish` (stamped by a synchronous bus listener) to the "
        "client's receipt of the same `seq`, both in one process.",
        "",
        "| event | count | p50 µs | p95 µs |",
        "| --- | ---: | ---: | ---: |",
    ]
    for kind, values in [*latencies.items(), ("all", every)]:
        lines.append(
            f"| {kind} | {len(values)} | {percentile(values, 50):.0f} | "
            f"{percentile(values, 95):.0f} |"
        )
    return [*lines, ""]


def _source(results: Results) -> list[str]:
    section = results.get("source")
    if not section:
        return []
    size_mb = section["bytes"] / 2**20
    return [
        "## Base backup of a source: Prism's `--source` vs plain `pg_basebackup` (issue 9)",
        "",
        f"Command: `{COMMAND} --only source`: a bare server with a pgbench database of scale "
        f"{section['scale']} ({size_mb:.0f} MB backed up) on 127.0.0.1, backed up "
        f"{section['rounds']} times each way, alternating: `pg_basebackup -X stream "
        "--checkpoint=fast` as an operator runs it, and Prism's `Source.make_main` (the same "
        "command with `--progress` parsed into events, then main configured as a standby).",
        "",
        "| | median s | MB/s |",
        "| --- | ---: | ---: |",
        f"| plain pg_basebackup | {percentile(section['plain_s'], 50):.2f} | "
        f"{section['plain_mb_s']:.0f} |",
        f"| Prism --source | {percentile(section['prism_s'], 50):.2f} | "
        f"{section['prism_mb_s']:.0f} |",
        "",
        f"Prism / plain: {section['ratio']:.2f}x. Cold start from a standby main, replay lag "
        "under pgbench and point-in-time branches have sections below.",
        "",
        *_measured_on(section),
    ]


def _pitr(results: Results) -> list[str]:
    section = results.get("pitr")
    if not section:
        return []
    floor = percentile(section["floor_s"], 50)
    rows = []
    for run in section["runs"]:
        pitr_s = percentile(run["pitr_s"], 50)
        replay_s = pitr_s - floor
        rate = f"{run['wal_mb'] / replay_s:.0f}" if replay_s > 0 else "-"
        rows.append(f"| {run['wal_mb']:.0f} | {pitr_s:.2f} | {replay_s:.2f} | {rate} |")
    return [
        "## Point-in-time branches: time to a branch by WAL to replay (issue 9)",
        "",
        f"Command: `{COMMAND} --only pitr`: a fresh main ({section['driver']} driver) and its "
        "first snapshot, taken before any data; then main writes wide rows until the WAL "
        "since the snapshot reaches each size, and a branch is created `at` that moment "
        "(clone of the snapshot, replay of the archived WAL, promote). The floor is a branch "
        f"at the snapshot's own time (clone and start, nearly no WAL): {floor:.2f} s. Each "
        f"branch is made {len(section['floor_s'])} times; medians.",
        "",
        "| WAL replayed MB | branch at a time s (median) | minus the floor s | WAL MB/s |",
        "| ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "The time grows with the WAL to replay, not with the data: the snapshot was taken "
        "before the data was written, so every branch clones the same small snapshot. Each "
        "round's time is in `results.json`; on a shared 2-CPU machine rounds differ by up to "
        "2x, so the small sizes say little beyond a few seconds.",
        "",
        *_measured_on(section),
    ]


def _standby(results: Results) -> list[str]:
    section = results.get("standby")
    if not section:
        return []
    rows = [
        f"| {label} | {percentile(section[key], 50):.3f} | {percentile(section[key], 95):.3f} |"
        for label, key in (("primary main", "primary_s"), ("standby main", "standby_s"))
    ]
    ratio = section["ratio"]
    return [
        "## Cold start of a branch from a standby main (issue 9)",
        "",
        f"Command: `{COMMAND} --only standby`: two Prisms on the {section['driver']} driver, "
        f"each main a pgbench database of scale {section['scale']}; one main is Prism's own, "
        "the other a hot standby of a bare source server (`--source`). "
        f"{len(section['primary_s'])} branches of each, created in alternating rounds (each "
        "deleted again); snapshots off in both. A branch of a standby main recovers what its "
        "clone holds (crash recovery, as a primary main's branch) before it admits clients.",
        "",
        "| main | create p50 s | create p95 s |",
        "| --- | ---: | ---: |",
        *rows,
        "",
        f"Standby / primary (medians): {ratio:.2f}x; goal within 1.2x: {_verdict(ratio <= 1.2)}.",
        "",
        *_phases(section.get("phases")),
        *_replay(section.get("replay")),
        *_measured_on(section),
    ]


def _phases(phases: dict[str, dict[str, list[float]]] | None) -> list[str]:
    """Where a create's time goes, from each branch server's log (``standby.start_phases``)."""
    if not phases or not phases.get("primary"):
        return []
    rows = [
        f"| {name} | {percentile(phases['primary'].get(name, [0.0]), 50) * 1000:.0f} | "
        f"{percentile(phases['standby'].get(name, [0.0]), 50) * 1000:.0f} |"
        for name in (*(name for name, _ in PHASES), PRISM_PHASE)
    ]
    return [
        "**Where the time goes** (medians, ms; the server's phases from its log, the rest of "
        "each create is Prism's):",
        "",
        "| phase | primary main | standby main |",
        "| --- | ---: | ---: |",
        *rows,
        "",
    ]


def _replay(replay: dict[str, Any] | None) -> list[str]:
    if not replay or not replay["samples"]:
        return []
    kib = [value / 1024 for value in replay["lag_bytes"]]
    ms = [value * 1000 for value in replay["lag_s"]]
    return [
        f"**Replay lag** while pgbench (TPC-B-like, 4 clients, {replay['seconds']:g} s) writes "
        "to the source, as the source sees its standby (`pg_stat_replication`), sampled every "
        f"100 ms ({replay['samples']} samples):",
        "",
        "| | p50 | p95 |",
        "| --- | ---: | ---: |",
        f"| WAL not yet replayed, KiB | {percentile(kib, 50):.0f} | {percentile(kib, 95):.0f} |",
        f"| `replay_lag`, ms | {percentile(ms, 50):.1f} | {percentile(ms, 95):.1f} |",
        "",
    ]


def _measured_on(section: dict[str, Any]) -> list[str]:
    """The machine a section kept from its own run (``--only`` reruns sections alone)."""
    return [
        "Measured on (this section only; the table at the top describes the full run):",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in section.get("machine", {}).items()),
        "",
    ]


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _targets(results: Results) -> list[str]:
    """Issue 6's targets, each with the measured figure, met or missed and by how much."""
    rows = []
    proxy = results.get("proxy")
    if proxy:
        cells = _Proxy(proxy)
        for workload in ("select-only (-S)", "TPC-B-like"):
            for count in proxy["clients"]:
                prism = cells.ratio(workload, count, "prism-sockmap")
                bouncer = cells.ratio(workload, count, "pgbouncer")
                rows.append(
                    f"| sockmap TPS ratio ≥ PgBouncer's, {workload}, {count} client(s) | "
                    f"{prism:.2f} vs {bouncer:.2f} | {_verdict(prism >= bouncer)} "
                    f"({(prism - bouncer) * 100:+.0f} points) |"
                )
                added = cells.added_us(workload, count, "prism-sockmap")
                limit = cells.added_us(workload, count, "pgbouncer")
                rows.append(
                    f"| sockmap added p50 ≤ PgBouncer's, {workload}, {count} client(s) | "
                    f"{added:.0f} µs vs ≤ {limit:.0f} µs | {_verdict(added <= limit)} "
                    f"({added - limit:+.0f} µs) |"
                )
    idle = results.get("idle")
    if idle:
        per = (idle["rss_after_kb"] - idle["rss_before_kb"]) / idle["connections"]
        rows.append(
            f"| ≤ 50 KB Prism RSS per idle connection ({idle['connections']} idle) | "
            f"{per:.1f} KB | {_verdict(per <= 50)} |"
        )
    for d in (results.get("coldstart") or {}).get("drivers", []):
        if d["label"].split()[0] in ("btrfs", "reflink"):
            p50 = percentile(_parts(d["cold"], "total"), 50) * 1000
            rows.append(
                f"| cold start p50 ≤ 100 ms, process, {d['label']} | {p50:.0f} ms | "
                f"{_verdict(p50 <= 100)} ({p50 - 100:+.0f} ms) |"
            )
    docker = (results.get("docker") or {}).get("summary", {}).get("cold_ms")
    if docker:
        rows.append(
            f"| cold start p50 ≤ 300 ms, docker, btrfs | {docker['p50']:.0f} ms | "
            f"{_verdict(docker['p50'] <= 300)} ({docker['p50'] - 300:+.0f} ms) |"
        )
    if not rows:
        return []
    return [
        "## Targets (issues 6 and 11)",
        "",
        "| target | measured | verdict |",
        "| --- | --- | --- |",
        *rows,
        "",
    ]


def write(results: Results) -> None:
    """Write docs/benchmarks.md (and plots) from ``results``."""
    machine = results.get("machine", {})
    lines = [
        "# Benchmarks",
        "",
        f"Every figure below is produced by one command, `{COMMAND}` (about "
        f"{results.get('duration_s', 0) // 60 + 1} min here), which writes this page, its plots "
        "and `docs/benchmarks/results.json`. Everything runs on 127.0.0.1; comparisons are "
        "measured side by side in the same run. The machine is shared with other developers' "
        "test runs, so expect a few percent of noise between runs.",
        "",
        "To reproduce: as root on Debian, `tools/sysenv/setup.sh` (pools, Docker, test image), "
        "`apt-get install pgbouncer`, `.venv/bin/pip install -e '.[bench]'` (matplotlib for "
        "the plots), then the command above.",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in machine.items()),
        "",
    ]
    lines += _targets(results)
    sections = (_coldstart, _docker, _wakeup, _o1, _proxy, _idle, _events, _source, _pitr)
    for render in (*sections, _standby):
        lines += render(results)
    if NOTES.exists():
        lines += ["", *NOTES.read_text().splitlines()]
    DOC.write_text("\n".join(lines).rstrip() + "\n")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_coldstart(drivers: list[dict[str, Any]]) -> None:
    plt = _pyplot()
    labels, parts = [], {"clone": [], "start": [], "rest": []}  # type: ignore[var-annotated]
    for d in drivers:
        for series, suffix in (("cold", ""), ("floor", " floor")):
            labels.append(f"{d['label']} {d['size_mb']:.0f} MB{suffix}")
            for part in parts:
                parts[part].append(median(_parts(d[series], part)) * 1000)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.2))
    left = [0.0] * len(labels)
    for part, values in parts.items():
        ax.barh(labels, values, left=left, label=part)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.axvline(100, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("milliseconds (medians); dashed: 100 ms target")
    ax.invert_yaxis()
    ax.legend()
    ax.set_title("Cold start split: Prism vs physical floor")
    _save(fig, "coldstart.png")


def _plot_o1(rows: dict[str, dict[int, float]], big: int) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    names = list(rows)
    width = 0.4
    for offset, scale in ((-width / 2, 1), (width / 2, big)):
        values = [rows[n].get(scale, float("nan")) for n in names]
        ax.bar([i + offset for i in range(len(names))], values, width, label=f"scale {scale}")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (log)")
    ax.legend()
    ax.set_title("Time to a usable copy vs database size")
    _save(fig, "o1.png")


def _plot_ratios(labels: list[str], ratios: dict[str, list[float]]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(ratios)
    for n, (name, values) in enumerate(ratios.items()):
        offset = (n - (len(ratios) - 1) / 2) * width
        ax.bar([i + offset for i in range(len(labels))], values, width, label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("TPS / direct TPS")
    ax.set_ylim(0, 1.1)
    ax.legend()
    ax.set_title("Throughput relative to a direct connection")
    _save(fig, "proxy.png")


def _save(fig: Any, name: str) -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(ASSETS / name, dpi=100)
    _pyplot().close(fig)
