"""The disk-use cache on a real directory: answers are reused, and dropped when they go stale."""

from __future__ import annotations

from pathlib import Path

import trio

from prism.storage.copy import CopyStorage
from prism.storage.diskuse import DiskUse, DiskUseCache


def test_cache_forgets_a_branch_that_was_deleted_or_reset(tmp_path: Path) -> None:
    store = CopyStorage(tmp_path)
    cache = DiskUseCache(store)

    async def measure_twice() -> tuple[DiskUse, DiskUse, DiskUse]:
        path = await store.create("b")
        (path / "f").write_bytes(b"x" * 10000)
        first = await cache.get("b")
        (path / "g").write_bytes(b"y" * 50000)
        cached = await cache.get("b")  # within the cache's age: the old answer
        cache.observe({"type": "reset", "branch": "b"})
        return first, cached, await cache.get("b")

    first, cached, fresh = trio.run(measure_twice)
    assert cached == first and first.basis.startswith("copy")
    assert fresh.total is not None and first.total is not None and fresh.total > first.total
    assert cache.known(["b", "other"]) == {"b": fresh}
