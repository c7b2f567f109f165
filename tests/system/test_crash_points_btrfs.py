"""The crash-point suite (``tests/crash_suite.py``) on btrfs: snapshots, subvolumes in the
trash, and both runtimes: branch servers as processes, and as Docker containers (which outlive
Prism's process group and are found again by their labels). Each case works in its own
directory on the shared test btrfs and deletes every container and subvolume it made
afterwards."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from prism.core.crashpoints import POINTS
from prism.storage._probe import is_btrfs_subvolume
from tests.crash_suite import OPERATION_POINTS, crash_at_random, crash_initdb, crash_operation
from tests.sysenv import BTRFS_MOUNT, require_command, require_mount
from tests.system.stacks import remove_containers_on, require_docker

pytestmark = pytest.mark.system


def _delete_subvolumes(root: Path) -> None:
    """Delete every subvolume below ``root`` (deepest first), then the rest of the tree."""
    paths = sorted(
        (p for p in root.rglob("*") if p.is_dir() and is_btrfs_subvolume(p)),
        key=lambda p: len(p.parts),
        reverse=True,
    )
    for path in paths:
        subprocess.run(["btrfs", "subvolume", "delete", str(path)], capture_output=True)
    shutil.rmtree(root)


@pytest.fixture(params=["process", "docker"])
def runtime(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":
        require_docker()
    return str(request.param)


@pytest.fixture
async def btrfs_data_dir() -> AsyncIterator[Path]:
    require_mount(BTRFS_MOUNT, "btrfs")
    require_command("btrfs")
    root = BTRFS_MOUNT / f"crash-{uuid.uuid4().hex[:12]}"
    root.mkdir(mode=0o711)
    root.chmod(0o711)
    try:
        yield root / "data"
    finally:
        await trio.to_thread.run_sync(remove_containers_on, root)
        await trio.to_thread.run_sync(_delete_subvolumes, root)


@pytest.mark.parametrize("point", OPERATION_POINTS)
async def test_operation_on_btrfs_survives_a_kill_at(
    point: str, runtime: str, btrfs_data_dir: Path
) -> None:
    outcome = await crash_operation(btrfs_data_dir, "btrfs", point, runtime=runtime)
    assert outcome.killed, f"prism did not die at {point}"
    assert outcome.ok, outcome


@pytest.mark.parametrize("point", POINTS["initdb"])
async def test_initdb_of_main_on_btrfs_survives_a_kill_at(
    point: str, runtime: str, btrfs_data_dir: Path
) -> None:
    outcome = await crash_initdb(btrfs_data_dir, "btrfs", point, runtime=runtime)
    assert outcome.killed, f"prism did not die at {point}"
    assert outcome.ok, outcome


@pytest.mark.parametrize("seed", range(2))
async def test_a_kill_at_a_random_time_on_btrfs(
    seed: int, runtime: str, btrfs_data_dir: Path
) -> None:
    outcome = await crash_at_random(
        btrfs_data_dir,
        "btrfs",
        delay=0.2 + 0.6 * seed,
        kill_servers=seed % 2 == 1,
        runtime=runtime,
    )
    assert outcome.ok, outcome
