"""Where a proxied transaction's CPU goes: the relay's own process, the kernel's workers, switches.

``perf`` is not available here, so the profile is read from /proc around each pgbench run:

* the relay process's run time (Prism, PgBouncer), summed over its threads from
  ``/proc/<pid>/task/*/schedstat`` (nanoseconds, not the 10 ms ticks of ``stat``), and the
  time those threads were runnable but waiting for a CPU (the second schedstat field): on a
  saturated machine a hop waits for the relay to be scheduled;
* the same two for every ``kworker`` thread: the sockmap plane moves no byte in Prism, but the
  kernel sends each redirected segment from a worker (``sk_psock_backlog``), so its cost and
  its waits show there and not in any process of ours;
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
    """The counters at one instant (run and wait times in nanoseconds, switches)."""

    relay_ns: int
    relay_wait_ns: int
    kworker_ns: int
    kworker_wait_ns: int
    switches: int


@dataclass(frozen=True)
class CpuCost:
    """One run's cost per transaction beyond pgbench and Postgres."""

    relay_us: float
    """CPU of the relaying process (0 for direct)."""
    relay_wait_us: float
    """Time the relay's threads waited, runnable, for a CPU."""
    kworker_us: float
    """CPU of the kernel's worker threads, machine-wide."""
    kworker_wait_us: float
    """Time the kernel's worker threads waited, runnable, for a CPU."""
    switches: float
    """Context switches, machine-wide."""


def _times(task: Path) -> tuple[int, int]:
    """Run and run-queue wait time of one task (ns)."""
    with contextlib.suppress(OSError, ValueError, IndexError):  # the task may have ended
        run, wait, _ = (task / "schedstat").read_text().split()
        return int(run), int(wait)
    return 0, 0


def _sum(tasks: list[tuple[int, int]]) -> tuple[int, int]:
    return sum(run for run, _ in tasks), sum(wait for _, wait in tasks)


def _process(pid: int) -> tuple[int, int]:
    return _sum([_times(task) for task in (_PROC / str(pid) / "task").iterdir()])


def _kworkers() -> tuple[int, int]:
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().startswith("kworker"):
                found.append(_times(entry))
    return _sum(found)


def _switches() -> int:
    for line in (_PROC / "stat").read_text().splitlines():
        if line.startswith("ctxt "):
            return int(line.split()[1])
    raise RuntimeError("no ctxt line in /proc/stat")


def established(port: int) -> int:
    """Established IPv4 TCP connections whose local port is ``port`` (a server's clients)."""
    count = 0
    for line in (_PROC / "net" / "tcp").read_text().splitlines()[1:]:
        local, _, state = line.split()[1:4]
        count += state == "01" and int(local.rsplit(":", 1)[1], 16) == port
    return count


def read(relay_pid: int | None) -> Counters:
    """The counters now; ``relay_pid`` None (direct) counts no relay."""
    relay = _process(relay_pid) if relay_pid is not None else (0, 0)
    kworkers = _kworkers()
    return Counters(*relay, *kworkers, _switches())


def cost(before: Counters, after: Counters, transactions: int) -> CpuCost:
    """Per-transaction cost between two readings."""
    per = max(transactions, 1)

    def us(field: str) -> float:
        return float(getattr(after, field) - getattr(before, field)) / per / 1000

    return CpuCost(
        relay_us=us("relay_ns"),
        relay_wait_us=us("relay_wait_ns"),
        kworker_us=us("kworker_ns"),
        kworker_wait_us=us("kworker_wait_ns"),
        switches=(after.switches - before.switches) / per,
    )
