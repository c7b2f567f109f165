"""Start-up reconciliation, and clones of a parent that is busy writing."""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from prism.server import PrismServer
from prism.state import BranchRecord, StateStore

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
