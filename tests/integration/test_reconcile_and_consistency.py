"""Start-up reconciliation, and clones of a parent that is busy writing."""

from __future__ import annotations

import logging
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from prism.branches.clone import clone_consistent
from prism.durable.state import BranchRecord, StateStore
from prism.server import PrismServer

from .harness import (
    PrismHandle,
    assert_clones_of_busy_parent_are_consistent,
    make_settings,
    psql,
)


async def _records(data_dir: Path) -> dict[str, BranchRecord]:
    store = StateStore(data_dir / "prism.db")
    try:
        return {record.name: record for record in await store.all()}
    finally:
        store.close()


async def test_reconcile_registers_a_data_dir_without_record(
    start_prism: Any, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (data_dir / "branches").mkdir()
    await trio.run_process(
        ["cp", "-a", str(data_dir / "master"), str(data_dir / "branches" / "orphan")]
    )
    with caplog.at_level(logging.WARNING, logger="prism"):
        prism: PrismHandle = await start_prism()
    assert [b.name for b in prism.manager.list()] == ["main", "orphan"]
    assert "registering branch orphan found on disk" in caplog.text
    out = await psql(prism.dsn("postgres@orphan"), "SELECT 1")
    assert out.stdout.decode().strip() == "1"


async def test_reconcile_forgets_a_branch_whose_data_vanished_and_rolls_back_half_made_ones(
    start_prism: Any, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with trio.open_nursery() as nursery:
        info = await nursery.start(PrismServer(make_settings(data_dir)).run)
        first = PrismHandle(info, make_settings(data_dir))
        await psql(first.dsn("postgres@vanishing"), "SELECT 1")
        nursery.cancel_scope.cancel()
    shutil.rmtree(data_dir / "branches" / "vanishing")
    # A crash in the middle of provisioning leaves a record and a partial clone.
    half_made = data_dir / "branches" / "half-made"
    half_made.mkdir()
    (half_made / "PG_VERSION").write_text("18\n")
    store = StateStore(data_dir / "prism.db")
    now = datetime.now(UTC)
    await store.put(BranchRecord("half-made", "main", now, now, "provisioning"))
    store.close()

    with caplog.at_level(logging.WARNING, logger="prism"):
        prism: PrismHandle = await start_prism()
    assert [b.name for b in prism.manager.list()] == ["main"]
    assert not half_made.exists()
    assert sorted(await _records(data_dir)) == ["main"]
    assert "forgetting branch vanishing" in caplog.text
    assert "rolling back branch half-made" in caplog.text


@pytest.mark.parametrize("storage", ["copy"])
async def test_clones_of_a_busy_parent_are_consistent(start_prism: Any, storage: str) -> None:
    """A writer keeps main busy while branches are cut (backup mode for the copy driver)."""
    prism: PrismHandle = await start_prism(storage=storage)
    await assert_clones_of_busy_parent_are_consistent(prism)


async def test_fifty_copies_of_a_main_writing_and_archiving_all_start_consistent(
    start_prism: Any,
) -> None:
    """Files vanish under the copy driver's cp (archive_status, recycled WAL, a replaced table
    file) while main writes and archives: every create still succeeds and starts consistent."""
    prism: PrismHandle = await start_prism(storage="copy", snapshot_every=3600.0)
    await assert_clones_of_busy_parent_are_consistent(prism, branches=50, churn_wal=True)
    archive = prism.settings.data_dir / "wal-archive" / "main"
    assert len(list(archive.iterdir())) > 50  # main did archive all along


class _CheckpointsDuringClone:
    """The manager's storage, but every clone is followed by WAL switches and checkpoints on
    main, as a busy main would make while a large copy runs."""

    def __init__(self, prism: PrismHandle) -> None:
        self._prism = prism
        self._storage = prism.manager.storage

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def clone(self, parent: str, child: str) -> Path:
        path: Path = await self._storage.clone(parent, child)
        for _ in range(4):
            await psql(self._prism.dsn(), "INSERT INTO ticks VALUES (1); SELECT pg_switch_wal()")
            await psql(self._prism.dsn(), "CHECKPOINT")
        return path


async def test_a_copy_keeps_the_wal_from_its_backup_start_through_checkpoints(
    start_prism: Any,
) -> None:
    """A non-exclusive backup holds no WAL: without the clone's slot the checkpoints during
    the copy recycle the segment the child's recovery starts in."""
    prism: PrismHandle = await start_prism(storage="copy")
    await psql(prism.dsn(), "CREATE TABLE ticks (v int)")
    path = await clone_consistent(
        _CheckpointsDuringClone(prism),  # type: ignore[arg-type]
        "main",
        "kept-wal",
        parent_address=prism.manager.address("main"),
        superuser="postgres",
    )
    label = (path / "backup_label").read_text()
    start = re.search(r"START WAL LOCATION: \S+ \(file (\w+)\)", label)
    assert start is not None, label
    assert (path / "pg_wal" / start.group(1)).is_file()
    await prism.manager.storage.destroy("kept-wal")
