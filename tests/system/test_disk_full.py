"""A full disk: branches are created until ENOSPC on a small loop filesystem of the test's own.

Every failure must be a clear error that leaves nothing half-made, deleting a branch must work
on the full disk (the state file cannot take a write then) and free space, and Prism must
recover without a restart. With the disk budget the refusal comes first, before any space is
used, and main's own writes never drive its server into a PANIC. Each test makes, mounts and
removes its own 300 MB image under a temporary directory; the shared /mnt/prism-test
filesystems are never touched.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from prism.server import PrismServer
from tests.integration.harness import PrismHandle, make_settings, psql, refused_sqlstate
from tests.sysenv import require_command, require_root
from tests.waiting import wait_until

pytestmark = pytest.mark.system

_IMAGE_MB = 300
_MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}
# Left free before the branches fill the rest, so a copy driver needs a few clones to fill it.
_HEADROOM = {"copy": 110 * 2**20, "btrfs": 12 * 2**20}


@pytest.fixture
def small_fs(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh, private loop filesystem of type ``request.param`` (``ext4``, or ``ext4:600``
    for 600 MB instead of ``_IMAGE_MB``)."""
    fstype, _, megabytes = str(request.param).partition(":")
    size_mb = int(megabytes or _IMAGE_MB)
    require_root()
    require_command(_MKFS[fstype][0])
    base = Path(tempfile.mkdtemp(prefix=f"prism-diskfull-{uuid.uuid4().hex[:8]}-"))
    base.chmod(0o711)
    image, mount = base / "fs.img", base / "mnt"
    mount.mkdir()
    with image.open("wb") as file:
        file.truncate(size_mb * 2**20)
    subprocess.run([*_MKFS[fstype], str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        mount.chmod(0o711)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        image.unlink(missing_ok=True)
        mount.rmdir()
        base.rmdir()


def _fill(path: Path, leave: int) -> None:
    """Grow ``path`` until only ``leave`` bytes are free (0: until the disk refuses)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            free = _free_bytes(path.parent)
            if leave and free <= leave:
                return
            size = 2**20 if free > 2**20 or leave else max(free, 4096)
            try:
                os.write(fd, b"\0" * size)
                os.fsync(fd)
            except OSError:
                return
    finally:
        os.close(fd)


def _free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _wait_freed(path: Path, before: int, timeout: float = 60.0) -> None:
    """Block until more than ``before`` bytes are free (btrfs frees a deleted subvolume's
    space in the background)."""
    deadline = time.monotonic() + timeout
    while _free_bytes(path) <= before:
        assert time.monotonic() < deadline, "deleting a branch freed no space"
        time.sleep(0.2)


def _leftovers(data_dir: Path) -> list[str]:
    branches = data_dir / "branches"
    kept = (".trash", ".deleted")  # made at start: on a full disk a mkdir fails
    found = [e.name for e in branches.iterdir() if e.name.startswith(".") and e.name not in kept]
    return found + [e.name for e in (branches / ".trash").iterdir()]


@pytest.mark.parametrize(
    ("small_fs", "storage"),
    [("ext4", "copy"), ("xfs", "copy"), ("btrfs", "btrfs")],
    indirect=["small_fs"],
)
async def test_a_full_disk_gives_clear_errors_and_deleting_frees_it(
    small_fs: Path, storage: str
) -> None:
    data_dir = small_fs / "data"
    settings = make_settings(data_dir, storage=storage, startup_timeout=60.0)
    async with trio.open_nursery() as nursery:
        prism = PrismHandle(await nursery.start(PrismServer(settings).run), settings)
        await psql(prism.dsn(), "CREATE TABLE keep AS SELECT generate_series(1, 1000) AS id")
        await psql(prism.dsn("postgres@before"), "SELECT 1")
        filler = small_fs / "filler"
        await trio.to_thread.run_sync(_fill, filler, _HEADROOM[storage])
        async with httpx.AsyncClient(base_url=prism.info.api_url, timeout=300) as http:
            created = ["before"]
            failure = None
            for index in range(60):
                response = await http.post("/api/v1/branches", json={"name": f"fill{index}"})
                if response.status_code != 201:
                    failure = response
                    break
                created.append(f"fill{index}")
            assert failure is not None, "the disk never filled up"
            body = failure.json()
            assert failure.status_code in (500, 503, 507), body
            assert "Traceback" not in body["message"]
            assert any(word in body["message"].lower() for word in ("space", "full", "quota")), body
            names = {b["name"] for b in (await http.get("/api/v1/branches")).json()["branches"]}
            assert names == {"main", *created}
            assert await trio.to_thread.run_sync(_leftovers, data_dir) == []

            # To the brim: now even the state file cannot take a write.
            await trio.to_thread.run_sync(_fill, filler, 0)
            before = _free_bytes(small_fs)
            response = await http.delete(f"/api/v1/branches/{created[-1]}")
            assert response.status_code == 200, response.text
            await trio.to_thread.run_sync(_wait_freed, small_fs, before)
            names = {b["name"] for b in (await http.get("/api/v1/branches")).json()["branches"]}
            assert created[-1] not in names

            # Recovery without a restart: with room again, creating works and main is intact.
            before, size = _free_bytes(small_fs), filler.stat().st_size
            filler.unlink()  # XFS frees an unlinked file's blocks in the background
            await trio.to_thread.run_sync(_wait_freed, small_fs, before + size // 2)
            response = await http.post("/api/v1/branches", json={"name": "after"})
            assert response.status_code == 201, response.text
        out = await psql(prism.dsn("postgres@after"), "SELECT count(*) FROM keep")
        assert out.stdout.decode().strip() == "1000"
        out = await psql(prism.dsn(), "SELECT count(*) FROM keep")
        assert out.stdout.decode().strip() == "1000"
        nursery.cancel_scope.cancel()


async def _first_snapshot(http: httpx.AsyncClient) -> None:
    async def kept() -> bool:
        answer = await http.get("/api/v1/branches/main/snapshots")
        return bool(answer.json()["snapshots"])

    await wait_until(kept, what="main's first snapshot", within=120)


async def _disk_back_to(http: httpx.AsyncClient, level: str) -> None:
    async def there() -> bool:
        disk = (await http.get("/healthz")).json()["disk"]
        return any(fs["level"] == level for fs in disk["filesystems"] if "main" in fs["holds"])

    await wait_until(there, what=f"main's disk back to {level}", within=30)


def _main_log(data_dir: Path) -> str:
    return (data_dir / "logs" / "main.log").read_text(encoding="utf-8", errors="replace")


@pytest.mark.parametrize("small_fs", ["ext4:450"], indirect=True)
async def test_a_create_that_does_not_fit_is_refused_before_using_any_space(
    small_fs: Path,
) -> None:
    """The issue's case: a copy of a running main that keeps WAL. Creates go on until the
    budget refuses one (507, never a 500 half-way); a refused try, through the API or the front
    door (53100), uses no space; deleting a branch frees it and the next create works."""
    data_dir = small_fs / "data"
    settings = make_settings(
        data_dir,
        storage="copy",
        startup_timeout=60.0,
        snapshot_every=3600.0,
        disk_reserve="16MiB",
    )
    async with trio.open_nursery() as nursery:
        prism = PrismHandle(await nursery.start(PrismServer(settings).run), settings)
        await psql(prism.dsn(), "CREATE TABLE keep AS SELECT generate_series(1, 1000) AS id")
        async with httpx.AsyncClient(base_url=prism.info.api_url, timeout=300) as http:
            await _first_snapshot(http)  # a copy of main too, which the budget holds meanwhile
            created = []
            for index in range(60):
                response = await http.post("/api/v1/branches", json={"name": f"fill{index}"})
                if response.status_code != 201:
                    break
                created.append(f"fill{index}")
            assert len(created) >= 2, "fewer than two branches fitted"
            body = response.json()
            assert response.status_code == 507, body
            assert body["code"] == "disk_full"
            assert "free" in body["message"] and "--disk-reserve" in body["message"], body
            assert await trio.to_thread.run_sync(_leftovers, data_dir) == []

            archive = data_dir / "wal-archive" / "main"
            segments, before = sorted(os.listdir(archive)), _free_bytes(small_fs)
            for attempt in range(3):
                response = await http.post("/api/v1/branches", json={"name": f"again{attempt}"})
                assert response.status_code == 507, response.text
            assert await refused_sqlstate(prism, "front-door") == "53100"
            # Before the budget each try archived another 16 MiB segment; now none is, and
            # the free space moves only by what the running servers write meanwhile.
            assert sorted(os.listdir(archive)) == segments
            assert before - _free_bytes(small_fs) < 8 * 2**20

            status = (await http.get("/api/v1/status")).json()
            (fs,) = [f for f in status["disk"]["filesystems"] if "branches" in f["holds"]]
            assert fs["reserve"] == 16 * 2**20 and fs["free"] > 0

            async def archived() -> bool:
                use = (await http.get("/api/v1/status")).json()["disk"]["use"]
                return bool(use["wal_archive"] >= len(created) * 16 * 2**20)  # one per create

            await wait_until(archived, what="the archive's segments in the disk's use")

            # A branch frees its copy, not the segment its create archived: two make room.
            for name in created[-2:]:
                response = await http.delete(f"/api/v1/branches/{name}")
                assert response.status_code == 200, response.text
            response = await http.post("/api/v1/branches", json={"name": "after"})
            assert response.status_code == 201, response.text
        out = await psql(prism.dsn("postgres@after"), "SELECT count(*) FROM keep")
        assert out.stdout.decode().strip() == "1000"
        assert "PANIC" not in _main_log(data_dir)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("small_fs", ["ext4"], indirect=True)
async def test_main_filling_its_own_disk_is_stopped_before_it_panics(small_fs: Path) -> None:
    """Main's own writes fill the disk: the ballast is released, then main is stopped with a
    clean shutdown instead of PANICking; the API says so and what to do; once space is freed
    main starts again with its data."""
    data_dir = small_fs / "data"
    settings = make_settings(data_dir, storage="copy", startup_timeout=60.0, disk_reserve="96MiB")
    async with trio.open_nursery() as nursery:
        prism = PrismHandle(await nursery.start(PrismServer(settings).run), settings)
        await psql(prism.dsn(), "CREATE TABLE keep AS SELECT generate_series(1, 1000) AS id")
        # Stored as written: a repeated string would compress to nothing.
        await psql(
            prism.dsn(),
            "CREATE TABLE big (pad text); ALTER TABLE big ALTER pad SET STORAGE EXTERNAL",
        )
        filler = small_fs / "filler"
        # Leave main about 110 MB (the ballast takes 48 of it) to fill by itself.
        await trio.to_thread.run_sync(_fill, filler, 110 * 2**20)
        async with prism.manager.events.subscribe() as events:
            for _ in range(200):
                out = await psql(
                    prism.dsn(),
                    "INSERT INTO big SELECT repeat(md5(random()::text), 64) "
                    "FROM generate_series(1, 2000)",
                    check=False,
                )
                if out.returncode != 0:
                    break
            else:
                raise AssertionError("main never ran out of space")
            with trio.fail_after(30):
                async for event in events:
                    if event["type"] == "disk_low" and event["level"] == "full":
                        break
        async with httpx.AsyncClient(base_url=prism.info.api_url, timeout=300) as http:
            health = (await http.get("/healthz")).json()
            assert "start main" in health["disk"]["advice"], health
            main = (await http.get("/api/v1/branches/main")).json()
            assert main["status"] == "stopped", main
            assert "PANIC" not in _main_log(data_dir)

            response = await http.post("/api/v1/branches/main/start")
            assert response.status_code == 507, response.text  # it would PANIC

            filler.unlink()  # enough for main to run again, not yet to be above the reserve
            await _disk_back_to(http, "low")
            response = await http.post("/api/v1/branches/main/start")
            assert response.status_code == 200, response.text
            out = await psql(prism.dsn(), "SELECT count(*) FROM keep")
            assert out.stdout.decode().strip() == "1000"
            await psql(prism.dsn(), "DROP TABLE big; CHECKPOINT")
            await _disk_back_to(http, "ok")
        assert "PANIC" not in _main_log(data_dir)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("small_fs", ["ext4:450"], indirect=True)
async def test_snapshots_that_would_fill_the_disk_are_refused_and_pruning_frees_them(
    small_fs: Path,
) -> None:
    """Snapshots every second on the copy driver (each a full copy of main) with no size bound:
    they go on until the budget refuses one, which leaves nothing half-made and keeps the
    reserve free; pruning the archive frees their space at once."""
    data_dir = small_fs / "data"
    settings = make_settings(
        data_dir,
        storage="copy",
        startup_timeout=60.0,
        snapshot_every=1.0,
        retention="7d",
        disk_reserve="40MiB",
    )
    async with trio.open_nursery() as nursery:
        prism = PrismHandle(await nursery.start(PrismServer(settings).run), settings)
        kept = prism.manager.point_in_time
        async with prism.manager.events.subscribe() as events:
            with trio.fail_after(120):
                async for event in events:
                    # Refused; or main's own WAL (each snapshot's backup switches segments)
                    # took the rest, and main was stopped before it could PANIC.
                    if event["type"] == "snapshot_failed" or event.get("level") == "full":
                        break
        if event["type"] == "snapshot_failed":
            assert "not enough disk space" in event["error"], event
            assert _free_bytes(small_fs) + 20 * 2**20 >= 40 * 2**20  # the reserve, ballast in it
        else:
            assert "start main" in event["error"], event
        taken = len(kept.snapshots())
        assert taken >= 2
        # Nothing half-made: every clone on disk is a kept snapshot, and nothing is staged.
        assert set(prism.manager.storage.list()) == {"main", *(s.name for s in kept.snapshots())}
        assert await trio.to_thread.run_sync(_leftovers, data_dir) == []

        before = _free_bytes(small_fs)
        async with httpx.AsyncClient(base_url=prism.info.api_url, timeout=300) as http:
            response = await http.post("/api/v1/archive/prune", json={"before": "-0s"})
            assert response.status_code == 200, response.text
            assert response.json()["removed_snapshots"] >= taken - 1
            assert _free_bytes(small_fs) > before + 30 * 2**20  # at least one copy of main back
            response = await http.post("/api/v1/branches/main/start")  # if it was stopped
            assert response.status_code == 200, response.text
        assert "PANIC" not in _main_log(data_dir)
        nursery.cancel_scope.cancel()
