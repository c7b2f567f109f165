"""Which of ``cp``'s complaints mean a file vanished from a live source (and are no failure)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from prism.storage._tree import vanished_path

SOURCE = Path("/data/master")


@pytest.mark.parametrize(
    ("line", "relpath"),
    [
        (
            "cp: cannot stat '/data/master/pg_wal/archive_status/"
            "000000010000000000000002.00000028.backup.ready': No such file or directory",
            "pg_wal/archive_status/000000010000000000000002.00000028.backup.ready",
        ),
        (
            "cp: cannot open '/data/master/pg_wal/000000010000000000000003' for reading: "
            "No such file or directory",
            "pg_wal/000000010000000000000003",
        ),
        (
            "cp: cannot access '/data/master/base/pgsql_tmp/x.fileset': No such file or directory",
            "base/pgsql_tmp/x.fileset",
        ),
        ("cp: '/data/master/pg_replslot/s': No such file or directory", "pg_replslot/s"),
        (
            "cp: skipping file '/data/master/global/pg_internal.init', as it was replaced while "
            "being copied",
            "global/pg_internal.init",
        ),
        ("cp: cannot stat '/data/master/it'\\''s': No such file or directory", "it's"),
    ],
)
def test_a_file_gone_from_the_source_is_a_vanished_path(line: str, relpath: str) -> None:
    assert vanished_path(line, source=SOURCE) == PurePosixPath(relpath)


@pytest.mark.parametrize(
    "line",
    [
        # The target is Prism's own staging directory: a file missing there is a failure.
        "cp: cannot create regular file '/data/branches/.b.partial/x': No such file or directory",
        "cp: cannot stat '/data/branches/.b.partial/x': No such file or directory",
        # The source itself gone, or a source path that is not a subpath of it.
        "cp: cannot stat '/data/master': No such file or directory",
        "cp: cannot stat '/data/master-old/x': No such file or directory",
        # Other errors on a source path.
        "cp: cannot open '/data/master/x' for reading: Permission denied",
        "cp: error writing '/data/branches/.b.partial/x': No space left on device",
        "cp: cannot stat '/data/master/a' 'b': No such file or directory",
        "cp: cannot stat '/data/master/unclosed: No such file or directory",
    ],
)
def test_any_other_complaint_is_not_a_vanished_path(line: str) -> None:
    assert vanished_path(line, source=SOURCE) is None
