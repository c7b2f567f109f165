"""The sandbox policy of a local branch server: which paths, programs and ports it keeps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prism.postgres.binaries import PgInstall
from prism.runtime import _process_dirs, landlock
from prism.runtime.base import BindMount
from prism.runtime.landlock import Support
from prism.runtime.process import ProcessRuntime
from prism.runtime.sandbox import SandboxPolicy, ServerAccess, describe, server_access

_BIN = Path("/opt/pg/bin")
_DATA = Path("/var/lib/prism/branches/dev1")
_SOCKET = Path("/var/lib/prism/run/dev1")
_HBA = Path("/var/lib/prism/run/prism_hba.conf")
_POLICY = SandboxPolicy(
    egress_ports=(5433,), main_reads=(Path("/var/lib/prism/source"),), main_ports=(6543,)
)


def _access(
    branch: str = "dev1",
    settings: dict[str, str] | None = None,
    mounts: tuple[BindMount, ...] = (),
) -> ServerAccess:
    return server_access(
        _POLICY,
        branch=branch,
        bin_dir=_BIN,
        pgdata=_DATA,
        socket_dir=_SOCKET,
        config_files=(_HBA,),
        port=40001,
        settings=settings or {},
        mounts=mounts,
    )


def _rights(access: ServerAccess, path: Path) -> int:
    return sum(rule.rights for rule in access.paths if rule.path == path)


def _executable(access: ServerAccess) -> set[Path]:
    return {rule.path for rule in access.paths if rule.rights & landlock.EXECUTE}


def test_a_branch_writes_only_its_own_data_and_socket_directories() -> None:
    access = _access()
    writable = {rule.path for rule in access.paths if rule.rights & landlock.WRITE_FILE}
    assert writable == {_DATA, _SOCKET, Path("/dev/null")}
    assert _rights(access, _HBA) == landlock.READ_FILE
    assert not any(str(rule.path).startswith("/var/lib/prism/source") for rule in access.paths)
    assert not any(rule.path == Path("/etc") for rule in access.paths)


def test_a_branch_runs_only_postgres_programs_unless_a_wal_command_needs_a_shell() -> None:
    plain = _executable(_access())
    assert _BIN in plain and Path("/usr/bin") not in plain
    archiving = _executable(_access(settings={"archive_command": "cp %p /a/%f"}))
    assert Path("/usr/bin") in archiving
    recovering = _executable(
        _access(mounts=(BindMount(Path("/var/lib/prism/wal-archive/main"), "/x", True),))
    )
    assert Path("/usr/bin") in recovering


def test_read_only_mounts_are_read_only_and_the_archive_is_writable() -> None:
    archive = Path("/var/lib/prism/wal-archive/dev1")
    restore = Path("/var/lib/prism/wal-archive/main")
    access = _access(
        mounts=(BindMount(archive, str(archive)), BindMount(restore, str(restore), True))
    )
    assert _rights(access, archive) & landlock.WRITE_FILE
    assert _rights(access, restore) == landlock.READ


def test_only_main_reaches_the_source_and_every_branch_its_egress() -> None:
    branch, main = _access("dev1"), _access("main")
    assert branch.bind_ports == (40001,)
    assert branch.connect_ports == (5433,)
    assert main.connect_ports == (5433, 6543)
    assert Path("/var/lib/prism/source") in {rule.path for rule in main.paths}


def test_what_an_older_kernel_cannot_enforce_is_named() -> None:
    assert describe(Support(7)).complete
    assert not describe(Support(3)).complete
    assert any("TCP" in gap for gap in describe(Support(3)).missing)
    assert any("Unix socket" in gap for gap in describe(Support(5)).missing)
    nothing = describe(Support(0, "not in this kernel"))
    assert nothing.mechanism == "none" and not nothing.enforced
    assert "Landlock" in nothing.missing[0]


def test_the_handled_rights_grow_with_the_abi() -> None:
    assert Support(1).handled_fs() & landlock.REFER == 0
    assert Support(2).handled_fs() & landlock.REFER
    assert Support(3).handled_fs() & landlock.TRUNCATE
    assert Support(5).handled_fs() & landlock.IOCTL_DEV


def test_a_nameless_prism_user_keeps_sockets_private_and_says_what_is_lost(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``peer`` needs a user name: a uid without one (an arbitrary container uid) gets the
    private socket directory back, and the report names the gap."""
    if not landlock.probe().scopes:
        pytest.skip("this kernel's Landlock lacks scopes (ABI < 6)")
    install = PgInstall(_BIN, "18.0", os.geteuid(), os.getegid(), "nobody-at-all")
    named = ProcessRuntime(install, run_dir=tmp_path, log_dir=tmp_path, sandbox_policy=_POLICY)
    assert named.confinement().complete
    monkeypatch.setattr(_process_dirs, "user_name", lambda uid: None)
    nameless = ProcessRuntime(install, run_dir=tmp_path, log_dir=tmp_path, sandbox_policy=_POLICY)
    report = nameless.confinement()
    assert not report.complete
    assert any("user name" in gap for gap in report.missing)
    assert not any("service sockets" in item for item in report.enforced)
