"""Which files hold a secret only while Prism uses them, and the start-up sweep of leftovers."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from prism.core import secretfiles

_FILE = stat.S_IFREG | 0o600


def test_initdb_password_files_and_workdirs_in_the_run_dir_are_leftovers_at_start() -> None:
    assert secretfiles.is_leftover("prism-initdb-abc123.pw")
    assert secretfiles.is_leftover(".initdb-x1y2")
    for kept in ("main", "prism_hba.conf", "prism-initdb-abc123.pw.keep", "pgpass"):
        assert not secretfiles.is_leftover(kept)


def test_a_password_file_in_the_temporary_directory_is_swept_only_when_old_and_ours() -> None:
    now = 10_000.0
    old = now - secretfiles.LEGACY_MIN_AGE_S
    name = "prism-initdb-abc.pw"
    assert secretfiles.is_stale_legacy(name, _FILE, old, now, mine=True)
    # A young one may be another Prism's initdb reading it right now.
    assert not secretfiles.is_stale_legacy(name, _FILE, now - 5, now, mine=True)
    assert not secretfiles.is_stale_legacy(name, _FILE, old, now, mine=False)
    assert not secretfiles.is_stale_legacy(name, stat.S_IFDIR | 0o700, old, now, mine=True)
    assert not secretfiles.is_stale_legacy("other.pw", _FILE, old, now, mine=True)


def test_a_password_file_is_private_from_its_first_byte(tmp_path: Path) -> None:
    path = secretfiles.write_password_file(tmp_path, "s3cret")
    assert path.parent == tmp_path and secretfiles.is_pwfile(path.name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "s3cret\n"


def test_the_sweep_removes_leftovers_and_keeps_everything_else(tmp_path: Path) -> None:
    run, source, legacy = tmp_path / "run", tmp_path / "source", tmp_path / "tmp"
    for directory in (run, source, legacy):
        directory.mkdir()
    leftover = secretfiles.write_password_file(run, "s3cret")
    (run / ".initdb-abc").mkdir()
    (run / ".initdb-abc" / "pwfile").write_text("s3cret\n")
    (run / "prism_hba.conf").write_text("kept\n")
    (source / "roles.sql").write_text("ALTER ROLE app PASSWORD 'SCRAM-SHA-256$...';\n")
    (source / "pgpass").write_text("*:*:*:*:s3cret\n")  # main's walreceiver needs it: kept
    stale = secretfiles.write_password_file(legacy, "s3cret")
    hour_ago = time.time() - secretfiles.LEGACY_MIN_AGE_S - 1
    os.utime(stale, (hour_ago, hour_ago))
    young = secretfiles.write_password_file(legacy, "s3cret")

    removed = secretfiles.sweep(run, source, legacy_dir=legacy)

    assert sorted(removed) == sorted([leftover, run / ".initdb-abc", source / "roles.sql", stale])
    assert sorted(p.name for p in run.iterdir()) == ["prism_hba.conf"]
    assert [p.name for p in source.iterdir()] == ["pgpass"]
    assert list(legacy.iterdir()) == [young]
