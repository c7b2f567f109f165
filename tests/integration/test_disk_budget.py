"""The disk budget with real servers: the archive stays within --retention's size bound, and
the archive can be pruned through the API at once (copy driver, where every create or reset of
the running main archives a 16 MiB WAL segment)."""

from __future__ import annotations

from typing import Any

import httpx

from prism.core.diskrules import Retention
from prism.storage._tree import disk_usage
from tests.waiting import wait_until

from .harness import PrismHandle
from .pitr_checks import first_snapshot

_BOUND = 160 * 2**20


def _kept_bytes(prism: PrismHandle) -> int:
    """What main's snapshots and WAL archive hold on disk now."""
    kept = prism.manager.point_in_time
    snapshots = sum(disk_usage(prism.manager.storage.path(s.name)) for s in kept.snapshots())
    return snapshots + disk_usage(kept.archive_of("main").directory)


async def test_a_hundred_creates_and_resets_leave_the_archive_within_its_size_bound(
    start_prism: Any,
) -> None:
    """Before the size bound, 30 creates left 561 MiB of archive for 7 days. Now a snapshot is
    due early once the archive outgrows a quarter of the bound, and older ones (with the WAL
    only they needed) go, oldest first."""
    prism = await start_prism(snapshot_every=3600.0, retention=Retention(86400.0, _BOUND))
    await first_snapshot(prism)
    async with httpx.AsyncClient(base_url=prism.info.api_url, timeout=300) as http:
        for index in range(50):
            name = f"b{index}"
            assert (await http.post("/api/v1/branches", json={"name": name})).status_code == 201
            assert (await http.post(f"/api/v1/branches/{name}/reset")).status_code == 200
            assert (await http.delete(f"/api/v1/branches/{name}")).status_code == 200
    await wait_until(
        lambda: _kept_bytes(prism) <= _BOUND, what="the archive within its bound", within=120
    )
    assert len(prism.manager.point_in_time.snapshots()) >= 1  # the window is never emptied


async def test_deleting_a_snapshot_or_pruning_the_archive_frees_it_at_once(
    start_prism: Any,
) -> None:
    prism = await start_prism(snapshot_every=5.0, retention=Retention(86400.0, None))
    await first_snapshot(prism)
    kept = prism.manager.point_in_time
    archive = kept.archive_of("main")
    async with httpx.AsyncClient(base_url=prism.info.api_url, timeout=300) as http:
        for index in range(3):
            assert (await http.post("/api/v1/branches", json={"name": f"b{index}"})).is_success
        grown = archive.size_bytes()
        assert grown >= 3 * 16 * 2**20
        await wait_until(lambda: len(kept.snapshots()) >= 3, what="later snapshots", within=60)
        oldest = kept.snapshots()[0].name
        response = await http.delete(f"/api/v1/branches/main/snapshots/{oldest}")
        assert response.status_code == 200, response.text
        assert archive.size_bytes() < grown  # at once, not at the next round
        assert oldest not in {s.name for s in kept.snapshots()}
        missing = await http.delete(f"/api/v1/branches/main/snapshots/{oldest}")
        assert missing.status_code == 404 and missing.json()["code"] == "snapshot_not_found"

        response = await http.post("/api/v1/archive/prune", json={"before": "-0s"})
        assert response.status_code == 200, response.text
        assert response.json()["removed_snapshots"] >= 1
        assert len(kept.snapshots()) == 1
        refused = await http.post("/api/v1/archive/prune", json={"before": "yesterday"})
        assert refused.status_code == 422 and refused.json()["field"] == "before"
