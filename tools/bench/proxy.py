"""Proxy overhead: pgbench straight to a branch's Postgres, through Prism, through PgBouncer.

Prism is measured with each data plane: the kernel's sockmap (``--data-plane auto`` as root) and
the user-space pump (``--data-plane pump``). A data plane is chosen per Prism process and a main
server belongs to one Prism, so the pump runs in a second Prism with its own main (same data,
same settings), measured straight as well (``direct-pump-main``): each Prism column's ratio is
to the direct figure of the server it reaches. Direct, Prism-sockmap and PgBouncer reach the
same server. Everything runs in one run, interleaved: every round runs each (workload, clients)
cell against all targets back to back in a shuffled order, so a noisy neighbour on this shared
machine hits all alike. Medians over rounds are reported.
"""

from __future__ import annotations

import contextlib
import random
import re
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from prism.postgres.binaries import PgInstall
from tools.bench import cpu
from tools.bench.common import (
    HOST,
    PASSWORD,
    SUPERUSER,
    PgbenchResult,
    PrismProcess,
    free_port,
    median,
    pgbench,
    pgbench_command,
    run,
)

TARGETS = ("direct", "prism-sockmap", "pgbouncer", "direct-pump-main", "prism-pump")
REFERENCE = {"prism-pump": "direct-pump-main"}
"""The direct target each target's ratio is taken to, when it is not ``direct``."""
WORKLOADS = {"select-only (-S)": True, "TPC-B-like": False}
PGBENCH_SCALE = 10


@dataclass
class ProxyResults:
    """Every run, by (workload, clients, target), plus the commands used."""

    clients: tuple[int, ...]
    seconds: float
    rounds: int
    runs: dict[str, list[PgbenchResult]] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    data_planes: dict[str, str] = field(default_factory=dict)
    """What each Prism target's start-up log said about its data plane."""
    costs: dict[str, list[cpu.CpuCost]] = field(default_factory=dict)
    """Per run, by the same keys as ``runs``: where the transactions' CPU went (see cpu.py)."""

    @staticmethod
    def key(workload: str, clients: int, target: str) -> str:
        return f"{workload}|{clients}|{target}"

    def tps(self, workload: str, clients: int, target: str) -> float:
        return median([r.tps for r in self.runs.get(self.key(workload, clients, target), [])])

    def p50_us(self, workload: str, clients: int, target: str) -> float:
        return median([r.p50_us for r in self.runs.get(self.key(workload, clients, target), [])])

    def ratio(self, workload: str, clients: int, target: str) -> float:
        reference = REFERENCE.get(target, "direct")
        return self.tps(workload, clients, target) / self.tps(workload, clients, reference)

    def added_us(self, workload: str, clients: int, target: str) -> float:
        direct = self.p50_us(workload, clients, REFERENCE.get(target, "direct"))
        return self.p50_us(workload, clients, target) - direct


_PGBOUNCER_INI = """\
[databases]
postgres = host={host} port={server_port} user={user} password={password} dbname=postgres

[pgbouncer]
listen_addr = {host}
listen_port = {port}
unix_socket_dir =
auth_type = {auth_type}
auth_file = {dir}/userlist.txt
pool_mode = session
max_client_conn = 500
default_pool_size = 100
max_db_connections = 100
logfile = {dir}/pgbouncer.log
log_connections = 0
log_disconnections = 0
pidfile = {dir}/pgbouncer.pid
"""


@contextlib.asynccontextmanager
async def pgbouncer(
    install: PgInstall, work: Path, server_port: int, *, client_auth: str = "trust"
) -> AsyncIterator[tuple[int, int]]:
    """Run Debian's pgbouncer (session mode) in front of ``server_port``; yields port and pid.

    PgBouncer refuses to run as root, so it runs as the servers' user. Clients are trusted
    (``client_auth="scram-sha-256"``: checked with SCRAM, as Prism checks them, for the
    connect benchmark) and PgBouncer logs in to Postgres with the password (SCRAM).
    """
    port = free_port()
    directory = work / "pgbouncer"
    directory.mkdir(exist_ok=True)
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        _PGBOUNCER_INI.format(
            host=HOST,
            port=port,
            server_port=server_port,
            user=SUPERUSER,
            password=PASSWORD,
            dir=directory,
            auth_type=client_auth,
        )
    )
    secret = "" if client_auth == "trust" else PASSWORD
    (directory / "userlist.txt").write_text(f'"{SUPERUSER}" "{secret}"\n')
    install.chown(directory)
    for path in directory.iterdir():
        install.chown(path)
    process = await trio.lowlevel.open_process(
        ["pgbouncer", "--quiet", str(ini)],
        **install.spawn_options(),
        stdout=subprocess.DEVNULL,
        stderr=None,
    )
    try:
        with trio.fail_after(10):
            while True:
                with contextlib.suppress(OSError):
                    stream = await trio.open_tcp_stream(HOST, port)
                    await stream.aclose()
                    break
                await trio.sleep(0.05)
        yield port, process.pid
    finally:
        with trio.CancelScope(shield=True):
            process.terminate()
            await process.wait()


async def prepare(install: PgInstall, prism: PrismProcess) -> int:
    """Load pgbench tables (scale 10, so 32 TPC-B clients do not all queue on one row)."""
    direct = prism.branch_port("main")
    command = [str(install.bin("pgbench")), "-i", "-q", "-s", str(PGBENCH_SCALE)]
    command += ["-I", "dtGvp", "-h", HOST, "-p", str(direct), "-U", SUPERUSER, "postgres"]
    await run(command)
    return direct


_DATA_PLANE_LINE = re.compile(r"data plane: (\w+) \((.*)\)")


def data_plane(prism: PrismProcess) -> str:
    """The data plane ``prism`` said it uses at start-up, with its reason."""
    found = _DATA_PLANE_LINE.findall(prism.log_text())
    if not found:
        raise RuntimeError(f"no data plane line in {prism.log_path}")
    name, reason = found[-1]
    return f"{name} ({reason})"


class _Probe:
    """Reads :mod:`cpu` counters over a third of a run, once every client has logged in.

    pgbench's clock starts when its clients are connected; log-ins (SCRAM through Prism, a
    backend fork each) are not per-transaction work and must stay out of the window.
    """

    def __init__(self, relay_pid: int | None, port: int, clients: int, seconds: float) -> None:
        self._pid = relay_pid
        self._port = port
        self._clients = clients
        self._seconds = seconds
        self._readings: list[cpu.Counters] = []

    async def watch(self) -> tuple[float, float]:
        with trio.fail_after(60):
            while cpu.established(self._port) < self._clients:  # noqa: ASYNC110 (no event)
                await trio.sleep(0.01)
        await trio.sleep(self._seconds / 6)  # the last log-in finishes its exchange
        start = time.time()
        self._readings.append(cpu.read(self._pid))
        await trio.sleep(self._seconds / 3)
        end = time.time()
        self._readings.append(cpu.read(self._pid))
        return start, end

    def cost(self, transactions: int) -> cpu.CpuCost:
        before, after = self._readings
        return cpu.cost(before, after, transactions)


async def measure(
    install: PgInstall,
    prism: PrismProcess,
    pump_prism: PrismProcess,
    work: Path,
    *,
    clients: tuple[int, ...],
    seconds: float,
    rounds: int,
    log: object = print,
) -> ProxyResults:
    """Run every (workload, clients, target) cell ``rounds`` times, interleaved.

    ``prism`` must relay with the sockmap and ``pump_prism`` with the pump: a column labelled
    with a data plane it did not use would be worse than none.
    """
    direct = await prepare(install, prism)
    pump_main = await prepare(install, pump_prism)
    results = ProxyResults(clients=clients, seconds=seconds, rounds=rounds)
    results.data_planes = {"prism-sockmap": data_plane(prism), "prism-pump": data_plane(pump_prism)}
    for target, plane in results.data_planes.items():
        if not plane.startswith(target.removeprefix("prism-") + " "):
            raise RuntimeError(f"{target} runs with data plane {plane}")
    async with pgbouncer(install, work, direct) as (bouncer_port, bouncer_pid):
        relays = {
            "prism-sockmap": prism.pid,
            "pgbouncer": bouncer_pid,
            "prism-pump": pump_prism.pid,
        }
        ports = {
            "direct": direct,
            "prism-sockmap": prism.port,
            "pgbouncer": bouncer_port,
            "direct-pump-main": pump_main,
            "prism-pump": pump_prism.port,
        }
        for select_only in WORKLOADS.values():
            for count in clients:
                for target in TARGETS:
                    command = pgbench_command(
                        install, ports[target], count, seconds, select_only, SUPERUSER
                    )
                    # The binary by name: the page must not show this machine's paths.
                    results.commands.append(f"{target}: pgbench " + " ".join(command[1:]))
        order = list(TARGETS)
        shuffle = random.Random(6)
        for round_no in range(rounds):
            for workload, select_only in WORKLOADS.items():
                for count in clients:
                    shuffle.shuffle(order)
                    for target in order:
                        probe = _Probe(relays.get(target), ports[target], count, seconds)
                        result = await pgbench(
                            install,
                            ports[target],
                            clients=count,
                            seconds=seconds,
                            select_only=select_only,
                            during=probe.watch,
                        )
                        key = results.key(workload, count, target)
                        results.runs.setdefault(key, []).append(result)
                        spent = probe.cost(result.in_window)
                        results.costs.setdefault(key, []).append(spent)
                        log(  # type: ignore[operator]
                            f"proxy: round {round_no + 1} {workload} c={count} {target}: "
                            f"{result.tps:.0f} tps p50 {result.p50_us:.0f} us; per tx "
                            f"relay {spent.relay_us:.1f} us (waited {spent.relay_wait_us:.1f}), "
                            f"kworkers {spent.kworker_us:.1f} us "
                            f"(waited {spent.kworker_wait_us:.1f}), {spent.switches:.1f} switches"
                        )
    return results
