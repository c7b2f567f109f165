"""The crash-point suite: kill ``prism serve`` at every step of every lifecycle operation.

Each case runs a real ``prism serve`` with ``PRISM_TEST_CRASH_AT=<point>`` (see
``prism.core.crashpoints``), asks it for the operation, checks that it really died by SIGKILL at
that point, starts it again and asserts the invariants of issue #10:

* every branch Prism lists starts and serves its last committed data;
* every data directory belongs to a listed branch, and no trash or staging is left;
* no Postgres server runs under the data directory without a branch;
* main's committed rows are all there.

Every case runs on a storage driver and a runtime (``process``, or ``docker``, whose servers
are containers: those count as servers under the data directory too).

With ``PRISM_CRASH_REPORT=<file>`` every case appends one JSON line (driver, point, what was
found), which ``tools/reliability.py`` sums up for docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import trio

from prism.core.crashpoints import POINTS
from prism.core.secretfiles import is_leftover
from prism.runtime._postmaster import postmasters_under
from prism.runtime.docker import LABEL_PGDATA
from tests.integration.harness import PASSWORD, free_port, psql, serve_args
from tests.sysenv import DOCKER_IMAGE

REPORT_ENV = "PRISM_CRASH_REPORT"
MAIN_ROWS = 250
VICTIM_VALUE = 42
#: Every step boundary of the operations on an existing branch, for the parametrized cases.
OPERATION_POINTS = [
    point
    for op in ("create", "delete", "undelete", "reset", "start", "stop")
    for point in POINTS[op]
]


@dataclass
class Prism:
    """A running ``prism serve`` and where to reach it."""

    process: trio.Process
    pg_port: int
    api_port: int

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def dsn(self, user: str) -> str:
        return (
            f"host=127.0.0.1 port={self.pg_port} user={user} password={PASSWORD} "
            "dbname=postgres sslmode=disable"
        )


async def spawn(
    data_dir: Path, storage: str, *, crash_at: str | None = None, runtime: str = "process"
) -> Prism:
    """Start ``prism serve`` in its own process group (SIGKILL of the group spares pytest)."""
    pg_port, api_port = free_port(), free_port()
    args = serve_args(data_dir, pg_port, api_port, storage=storage)
    if runtime != "process":
        args += ["--runtime", runtime, "--image", DOCKER_IMAGE]
    env = {key: value for key, value in os.environ.items() if key != "PRISM_TEST_CRASH_AT"}
    if crash_at is not None:
        env["PRISM_TEST_CRASH_AT"] = crash_at
    log = (data_dir.parent / f"{data_dir.name}.log").open("ab")
    with log:
        process = await trio.lowlevel.open_process(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return Prism(process, pg_port, api_port)


async def wait_ready(prism: Prism) -> bool:
    """Wait until the API answers (True) or the process exits first (False)."""
    async with httpx.AsyncClient() as http:
        with trio.fail_after(120):
            while prism.process.poll() is None:
                try:
                    if (await http.get(f"{prism.api}/healthz")).is_success:
                        return True
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
    return False


@asynccontextmanager
async def serving(
    data_dir: Path, storage: str, *, runtime: str = "process"
) -> AsyncIterator[Prism]:
    """A ready ``prism serve``; stopped with SIGINT (a clean shutdown) afterwards."""
    prism = await spawn(data_dir, storage, runtime=runtime)
    try:
        assert await wait_ready(prism), f"prism serve exited early; see {data_dir}.log"
        yield prism
    finally:
        if prism.process.poll() is None:
            prism.process.send_signal(signal.SIGINT)
            with trio.move_on_after(60):
                await prism.process.wait()
        if prism.process.poll() is None:
            prism.process.kill()
            await prism.process.wait()


async def sql(dsn: str, statement: str) -> str:
    """Run ``psql`` and return its unaligned output; AssertionError with stderr on failure."""
    return (await psql(dsn, statement)).stdout.decode().strip()


async def seed(prism: Prism) -> None:
    """Main with MAIN_ROWS committed rows; branch ``victim`` holding one row of its own."""
    await sql(
        prism.dsn("postgres"),
        f"CREATE TABLE keep AS SELECT g AS id FROM generate_series(1, {MAIN_ROWS}) g",
    )
    await sql(prism.dsn("postgres@victim"), f"CREATE TABLE t AS SELECT {VICTIM_VALUE} AS v")


async def request(prism: Prism, method: str, path: str, body: object = None) -> None:
    """Send one API request; the answer does not matter (the server is meant to die)."""
    async with httpx.AsyncClient(timeout=120) as http:
        with suppress(httpx.TransportError):
            await http.request(method, f"{prism.api}{path}", json=body)


#: Operation → (method, path, body) of the API call that runs it.
CALLS: dict[str, tuple[str, str, object]] = {
    "create": ("POST", "/api/v1/branches", {"name": "fresh"}),
    "delete": ("DELETE", "/api/v1/branches/victim", None),
    "undelete": ("POST", "/api/v1/branches/victim/undelete", None),
    "reset": ("POST", "/api/v1/branches/victim/reset", None),
    "start": ("POST", "/api/v1/branches/victim/start", None),
    "stop": ("POST", "/api/v1/branches/victim/stop", None),
}
#: Operations that need a call first: a branch is stopped after the seeding Prism's shutdown.
BEFORE: dict[str, tuple[str, str, object]] = {"stop": CALLS["start"], "undelete": CALLS["delete"]}


@dataclass
class Outcome:
    """What one crash case found after the restart (all lists empty = invariants hold)."""

    driver: str
    point: str
    killed: bool
    broken_branches: list[str] = field(default_factory=list)
    orphan_servers: list[str] = field(default_factory=list)
    leftover_dirs: list[str] = field(default_factory=list)
    rows_lost: int = 0
    #: What was interrupted; a point's prefix unless the point lies in shared code.
    operation: str = ""

    def __post_init__(self) -> None:
        self.operation = self.operation or operation_of(self.point)

    @property
    def ok(self) -> bool:
        return self.killed and not (
            self.broken_branches or self.orphan_servers or self.leftover_dirs or self.rows_lost
        )

    def record(self) -> None:
        report = os.environ.get(REPORT_ENV)
        if report:
            with open(report, "a", encoding="utf-8") as file:
                file.write(json.dumps({**asdict(self), "ok": self.ok}) + "\n")


async def _branch_serves(prism: Prism, name: str, has_main_rows: bool) -> bool:
    """Whether ``name`` starts and serves its last committed data."""
    user = "postgres" if name == "main" else f"postgres@{name}"
    try:
        if has_main_rows:
            count = await sql(prism.dsn(user), "SELECT count(*) FROM keep")
            if int(count) != MAIN_ROWS:
                return False
        if name == "victim":
            # Before a reset: its own row; after a finished reset: its parent's state.
            if await sql(prism.dsn(user), "SELECT to_regclass('t') IS NULL") == "t":
                return True
            value = await sql(prism.dsn(user), "SELECT v FROM t")
            return value == str(VICTIM_VALUE)
        await sql(prism.dsn(user), "SELECT 1")
    except AssertionError as exc:
        print(f"branch {name} does not serve: {exc}")
        return False
    return True


def operation_of(point: str) -> str:
    """The operation a crash point belongs to (``clone:appeared`` is a reset's, say)."""
    owners = [operation for operation, points in POINTS.items() if point in points]
    return owners[0] if owners else point.partition(":")[0]


def _label(storage: str, runtime: str) -> str:
    """The ``driver`` of a case in the report: the storage, and the runtime unless process."""
    return storage if runtime == "process" else f"{storage}+{runtime}"


def servers_under(data_dir: Path, runtime: str) -> dict[str, str]:
    """Every Postgres server on a directory under ``data_dir``: id → its data directory.

    Postmasters are found in /proc; containers (any state: an exited one is a leftover too) by
    the data directory Prism labels them with, since their processes see another filesystem.
    Blocking.
    """
    found = {str(pid): str(path) for pid, path in postmasters_under(data_dir).items()}
    if runtime == "docker":
        for container in _containers_under(data_dir):
            found[f"{container.name}({container.status})"] = container.labels[LABEL_PGDATA]
    return found


def _containers_under(data_dir: Path) -> list[Any]:
    client = docker.from_env(version="auto")
    prefix = str(data_dir.resolve()) + "/"
    return [
        container
        for container in client.containers.list(all=True, filters={"label": LABEL_PGDATA})
        if container.labels[LABEL_PGDATA].startswith(prefix)
    ]


def kill_servers_under(data_dir: Path, runtime: str) -> list[int]:
    """SIGKILL every server under ``data_dir``, as systemd does to a unit; the pids killed.

    A killed postmaster's children outlive it for a moment and then look like postmasters of
    their own (their parent is gone), so the scan repeats until nothing is left, as systemd
    kills every process of the unit. A container is waited for until it has exited; the pids
    are returned to be waited for until reaped (by pid 1, not by us).
    """
    killed: list[int] = []
    while pids := list(postmasters_under(data_dir)):
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed += pids
    if runtime == "docker":
        for container in _containers_under(data_dir):
            if container.status == "running":
                container.kill()
                container.wait(timeout=60)
    return killed


def _directories(data_dir: Path) -> tuple[set[str], list[str]]:
    """Branch directories on disk, and anything else under ``branches/`` (trash, staging)."""
    names = {"main"} if (data_dir / "master").is_dir() else set()
    others = []
    branches = data_dir / "branches"
    if branches.is_dir():
        for entry in sorted(branches.iterdir()):
            if entry.name == ".deleted":
                # Deleted branches kept for undelete: checked against the trash's list.
                names |= {f"trash:{kept.name.rpartition('.')[0]}" for kept in entry.iterdir()}
            elif entry.name.startswith("."):
                if entry.name != ".trash" or any(entry.iterdir()):
                    others.append(entry.name)
            else:
                names.add(entry.name)
    others += [entry.name for entry in data_dir.iterdir() if entry.name.startswith(".master")]
    return names, others


async def check_invariants(
    data_dir: Path,
    storage: str,
    outcome: Outcome,
    *,
    has_main_rows: bool,
    runtime: str = "process",
) -> None:
    """Restart Prism on ``data_dir`` and fill ``outcome`` with every invariant that broke."""
    async with serving(data_dir, storage, runtime=runtime) as prism:
        async with httpx.AsyncClient() as http:
            listed = (await http.get(f"{prism.api}/api/v1/branches")).json()["branches"]
            trashed = (await http.get(f"{prism.api}/api/v1/trash")).json()["trash"]
        names = sorted(branch["name"] for branch in listed)
        for name in names:
            if not await _branch_serves(prism, name, has_main_rows):
                outcome.broken_branches.append(name)
        if has_main_rows and "main" not in outcome.broken_branches:
            count = int(await sql(prism.dsn("postgres"), "SELECT count(*) FROM keep"))
            outcome.rows_lost = MAIN_ROWS - count
        on_disk, others = _directories(data_dir)
        kept = {f"trash:{entry['name']}" for entry in trashed}
        outcome.leftover_dirs += sorted(on_disk - set(names) - kept) + others
        outcome.broken_branches += sorted(kept - on_disk)
        # A password a killed initdb left must be gone once Prism is back.
        run = data_dir / "run"
        outcome.leftover_dirs += sorted(p.name for p in run.iterdir() if is_leftover(p.name))
        owned = {str(data_dir / "master")} | {str(data_dir / "branches" / n) for n in names}
        servers = await trio.to_thread.run_sync(servers_under, data_dir, runtime)
        outcome.orphan_servers += [
            f"{server}:{path}" for server, path in servers.items() if path not in owned
        ]
    # A clean shutdown must leave no server behind either.
    outcome.orphan_servers += [
        f"{server}:{path} (after shutdown)"
        for server, path in (
            await trio.to_thread.run_sync(servers_under, data_dir, runtime)
        ).items()
    ]


async def _after_kill(
    data_dir: Path, storage: str, point: str, status: int, *, has_main_rows: bool, runtime: str
) -> Outcome:
    """Check the invariants after Prism exited with ``status``; record and return the outcome."""
    outcome = Outcome(_label(storage, runtime), point, killed=status == -signal.SIGKILL)
    await check_invariants(data_dir, storage, outcome, has_main_rows=has_main_rows, runtime=runtime)
    outcome.record()
    return outcome


async def crash_during(
    data_dir: Path,
    storage: str,
    point: str,
    *calls: tuple[str, str, object],
    runtime: str = "process",
) -> int:
    """Start ``prism serve`` set to die at ``point``, send it ``calls`` (method, path, body)
    in order, and return its exit status once it died."""
    prism = await spawn(data_dir, storage, crash_at=point, runtime=runtime)
    assert await wait_ready(prism), f"prism serve exited early; see {data_dir}.log"
    for call in calls:
        await request(prism, *call)
    with trio.fail_after(60):
        return await prism.process.wait()


async def crash_operation(
    data_dir: Path, storage: str, point: str, *, runtime: str = "process"
) -> Outcome:
    """Seed, crash ``prism serve`` at ``point`` during its operation, restart and check."""
    operation = operation_of(point)
    async with serving(data_dir, storage, runtime=runtime) as prism:
        await seed(prism)
    before = [BEFORE[operation]] if operation in BEFORE else []
    status = await crash_during(
        data_dir, storage, point, *before, CALLS[operation], runtime=runtime
    )
    return await _after_kill(data_dir, storage, point, status, has_main_rows=True, runtime=runtime)


def _wait_reaped(pids: list[int], timeout: float = 120.0) -> None:
    """Block until none of ``pids`` is in /proc any more (not even as a zombie)."""
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, f"killed servers {pids} were never reaped"
        time.sleep(0.1)


async def crash_at_random(
    data_dir: Path, storage: str, *, delay: float, kill_servers: bool, runtime: str = "process"
) -> Outcome:
    """Kill the process group ``delay`` s into a burst of creates, a reset and a delete.

    ``kill_servers`` also SIGKILLs every server under the data directory, as systemd does
    to a whole unit; without it the branch servers outlive Prism and must be adopted or
    stopped by the next start.
    """
    async with serving(data_dir, storage, runtime=runtime) as prism:
        await seed(prism)
        await sql(prism.dsn("postgres@doomed"), "SELECT 1")
    prism = await spawn(data_dir, storage, runtime=runtime)
    assert await wait_ready(prism), f"prism serve exited early; see {data_dir}.log"
    async with trio.open_nursery() as nursery:
        for index in range(6):
            nursery.start_soon(request, prism, "POST", "/api/v1/branches", {"name": f"b{index}"})
        nursery.start_soon(request, prism, *CALLS["reset"])
        nursery.start_soon(request, prism, "DELETE", "/api/v1/branches/doomed", None)
        await trio.sleep(delay)
        os.killpg(prism.process.pid, signal.SIGKILL)
        killed = []
        if kill_servers:
            killed = await trio.to_thread.run_sync(kill_servers_under, data_dir, runtime)
    status = await prism.process.wait()
    # systemd restarts a unit once its processes are gone and reaped; the orphaned postmasters
    # are reaped by pid 1, and until then Postgres takes their zombies for live servers.
    await trio.to_thread.run_sync(_wait_reaped, killed)
    point = f"random:{delay:.2f}s{'+servers' if kill_servers else ''}"
    return await _after_kill(data_dir, storage, point, status, has_main_rows=True, runtime=runtime)


async def crash_initdb(
    data_dir: Path, storage: str, point: str, *, runtime: str = "process"
) -> Outcome:
    """Crash the very first start (initdb of main) at ``point``, restart and check."""
    prism = await spawn(data_dir, storage, crash_at=point, runtime=runtime)
    with trio.fail_after(120):
        status = await prism.process.wait()
    return await _after_kill(data_dir, storage, point, status, has_main_rows=False, runtime=runtime)
