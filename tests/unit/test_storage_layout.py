"""The branch directory layout every storage driver shares; pure path logic, no disk access."""

from __future__ import annotations

from pathlib import Path

import pytest

from prism.core.errors import InvalidBranchName, StorageError
from prism.core.names import MAIN_BRANCH
from prism.storage._layout import BranchLayout
from prism.storage._tree import subdir_parts

ROOT = Path("/srv/prism")


def test_main_lives_in_master_and_others_under_branches() -> None:
    layout = BranchLayout(ROOT)
    assert layout.path(MAIN_BRANCH) == ROOT / "master"
    assert layout.path("feature-1") == ROOT / "branches" / "feature-1"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../etc", ".a.partial", "x\0y"])
def test_names_that_are_not_one_plain_directory_are_refused(name: str) -> None:
    with pytest.raises(InvalidBranchName):
        BranchLayout(ROOT).path(name)


def test_staging_directory_is_a_hidden_sibling_of_the_target() -> None:
    layout = BranchLayout(ROOT)
    assert layout.staging_path("feat", "partial") == ROOT / "branches" / ".feat.partial"
    assert layout.staging_path(MAIN_BRANCH, "partial") == ROOT / ".master.partial"


@pytest.mark.parametrize("relpath", ["pg_wal", "base/1", "pg_wal/archive_status"])
def test_refresh_accepts_paths_inside_the_data_directory(relpath: str) -> None:
    assert str(subdir_parts(relpath)) == relpath


@pytest.mark.parametrize("relpath", ["", ".", "..", "/pg_wal", "pg_wal/../.."])
def test_refresh_refuses_paths_that_could_escape_or_replace_the_whole_directory(
    relpath: str,
) -> None:
    with pytest.raises(StorageError, match="not a path inside a data directory"):
        subdir_parts(relpath)
