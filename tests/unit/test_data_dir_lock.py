"""One Prism per data dir: the lock's refusal names the holder; a released lock is free again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prism.core.errors import DataDirInUse
from prism.durable.datadirlock import LOCK_FILE, hold_data_dir


def test_a_second_holder_is_refused_with_the_first_ones_pid_and_addresses(
    tmp_path: Path,
) -> None:
    with hold_data_dir(tmp_path) as lock:
        with pytest.raises(DataDirInUse) as starting, hold_data_dir(tmp_path):
            pass
        assert starting.value.message == (
            f"data directory {tmp_path} is in use by another Prism (pid {os.getpid()}), "
            "still starting"
        )
        lock.describe(listen=("127.0.0.1", 5432), api=("127.0.0.1", 8080))
        with pytest.raises(DataDirInUse) as serving, hold_data_dir(tmp_path):
            pass
        assert serving.value.message.endswith(
            "serving postgres clients on 127.0.0.1:5432 and the API on http://127.0.0.1:8080"
        )
        assert "--data-dir" in (serving.value.hint or "")


def test_a_lock_file_left_behind_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text('{"pid": 1, "listen": "127.0.0.1:1", "api": null}')
    with hold_data_dir(tmp_path):
        assert f'"pid": {os.getpid()}' in (tmp_path / LOCK_FILE).read_text()
    with hold_data_dir(tmp_path):  # released at the end of the block
        pass


def test_an_unreadable_holder_is_still_refused(tmp_path: Path) -> None:
    with hold_data_dir(tmp_path):
        (tmp_path / LOCK_FILE).write_text("not json")
        refused = pytest.raises(DataDirInUse, match="in use by another Prism, still starting")
        with refused, hold_data_dir(tmp_path):
            pass
