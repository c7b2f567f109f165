"""Where a proxied transaction's CPU goes: the relay's own process, the kernel's workers, switches.

``perf`` is not available here, so the profile is read from /proc around each pgbench run:

* the relay process's run time (Prism, PgBouncer), summed over its threads from
  ``/proc/<pid>/task/*/schedstat`` (nanoseconds, not the 10 ms ticks of ``stat``);
* the run time of every ``kworker`` thread: the sockmap plane moves no byte in Prism, but the
  kernel sends each redirected segment from a worker (``sk_psock_backlog``), so its cost shows
  there and not in any process of ours;
* the machine's context switches (``ctxt`` in ``/proc/stat``).

Each is divided by the run's transactions. The machine-wide figures include other processes'
work (this machine is shared), so they are read as medians over rounds and next to direct's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True)
class Counters:
    """The three counters at one instant (nanoseconds, nanoseconds, switches)."""

    relay_ns: int
    kworker_ns: int
    switches: int


@dataclass(frozen=True)
class CpuCost:
    """One run's cost per transaction beyond pgbench and Postgres."""

    relay_us: float
    """CPU of the relaying process (0 for direct)."""
    kworker_us: float
    """CPU of the kernel's worker threads, machine-wide."""
    switches: float
    """Context switches, machine-wide."""


def _run_ns(task: Path) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):  # the task may have ended
        return int((task / "schedstat").read_text().split()[0])
    return 0


def _process_ns(pid: int) -> int:
    return sum(_run_ns(task) for task in (_PROC / str(pid) / "task").iterdir())


def _kworkers_ns() -> int:
    total = 0
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().startswith("kworker"):
                total += _run_ns(entry)
    return total


def _switches() -> int:
    for line in (_PROC / "stat").read_text().splitlines():
        if line.startswith("ctxt "):
            return int(line.split()[1])
    raise RuntimeError("no ctxt line in /proc/stat")


def read(relay_pid: int | None) -> Counters:
    """The counters now; ``relay_pid`` None (direct) counts no relay."""
    relay = _process_ns(relay_pid) if relay_pid is not None else 0
    return Counters(relay, _kworkers_ns(), _switches())


def cost(before: Counters, after: Counters, transactions: int) -> CpuCost:
    """Per-transaction cost between two readings."""
    per = max(transactions, 1)
    return CpuCost(
        relay_us=(after.relay_ns - before.relay_ns) / per / 1000,
        kworker_us=(after.kworker_ns - before.kworker_ns) / per / 1000,
        switches=(after.switches - before.switches) / per,
    )
