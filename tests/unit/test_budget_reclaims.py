"""The disk budget and the reclaimer wired together by the manager: a create short of space
frees the trash first, and is refused (before anything is made) only when nothing can go."""

from __future__ import annotations

from pathlib import Path

import pytest

from prism.core.diskrules import DiskReserve
from prism.core.errors import DiskFull
from prism.storage.budget import DiskBudget
from tests.fakes import FakeStorage
from tests.manager_kit import open_manager

MiB, GiB = 2**20, 2**30


def _budget(storage: FakeStorage, tmp_path: Path) -> DiskBudget:
    """A 1 GiB file system under a 100 MiB reserve whose free space is the fake storage's."""
    return DiskBudget(
        storage=storage,
        data_dir=tmp_path,
        reserve=DiskReserve.parse("100MiB"),
        archives=False,
        statfs=lambda path: (GiB, storage.free),
    )


async def test_a_create_short_of_space_purges_the_trash_and_goes_ahead(tmp_path: Path) -> None:
    storage = FakeStorage(tmp_path / "data")
    storage.free = 500 * MiB
    async with open_manager(tmp_path, storage=storage, budget=_budget(storage, tmp_path)) as (
        manager,
        _,
        _,
    ):
        await manager.create("old")
        storage.sizes["old"] = 300 * MiB
        await manager.delete("old")
        assert [entry.name for entry in manager.trash.list()] == ["old"]
        storage.free = 50 * MiB  # under the reserve: a create needs room made first
        seen: list[tuple[str, str | None]] = []
        manager.events.add_listener(lambda event: seen.append((event["type"], event["branch"])))

        await manager.create("new")

        assert manager.get("new") is not None
        assert manager.trash.list() == []
        assert storage.free == 350 * MiB
        assert seen.index(("evicted", "old")) < seen.index(("created", "new"))


async def test_a_create_is_refused_before_anything_is_made_when_nothing_can_go(
    tmp_path: Path,
) -> None:
    storage = FakeStorage(tmp_path / "data")
    storage.free = 500 * MiB
    async with open_manager(tmp_path, storage=storage, budget=_budget(storage, tmp_path)) as (
        manager,
        _,
        _,
    ):
        await manager.create("kept", protected=True)
        storage.free = 50 * MiB
        with pytest.raises(DiskFull) as refused:
            await manager.create("new")
        assert refused.value.sqlstate == "53100"
        assert manager.get("new") is None
        assert "new" not in storage.branches
        assert manager.get("kept") is not None
