"""A full disk, on each file system Prism runs on: ext4 (copy), XFS (reflink), btrfs, ZFS.

Filled with branches, with snapshots and with main's own writes: every failure must be a clear
error that leaves nothing half-made, deleting a branch must work on the full disk (the state
file cannot take a write then) and free space, and Prism must recover without a restart. With
the disk budget the refusal comes first, before any space is used, and main's own writes never
drive its server into a PANIC. Each test makes and removes a small disk of its own under a
temporary directory (a 300 MB loop image, or on ZFS a dataset of the test pool with a quota);
the shared /mnt/prism-test filesystems are never touched.

Copy-on-write clones and snapshots share main's bytes, so on XFS, btrfs and ZFS a filler file
takes the disk to where the check under test starts; each test's docstring says how.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from prism.core.settings import Settings
from prism.server import PrismServer
from tests.integration.harness import PrismHandle, make_settings, psql, refused_sqlstate
from tests.sysenv import require_command, require_root
from tests.system.stacks import ZFS_PARENT, require_zfs
from tests.waiting import wait_until

pytestmark = pytest.mark.system

_IMAGE_MB = 300
_MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}
# The driver Prism picks on each file system (`--storage auto`): ext4 can only copy.
_DRIVER = {"ext4": "copy", "xfs": "reflink", "btrfs": "btrfs", "zfs": "zfs"}
_KINDS = ["ext4", "xfs", "btrfs", "zfs"]
_BTRFS_NEAR_FULL = pytest.mark.xfail(
    run=False,
    reason="open bug: on a nearly full 300 MB btrfs, main crashes before the watcher stops it "
    "(the front door sees it 'in recovery mode'; made with --mixed block groups its log shows "
    "a PANIC), and statvfs drops to 0 available while data space is left (metadata used up): "
    "what the budget reads is not what btrfs can still write",
)
_NEAR_FULL_KINDS = ["xfs", pytest.param("btrfs", marks=_BTRFS_NEAR_FULL), "zfs"]
"""Past ext4: where the disk is taken to the brink of main's stop room."""
_ZFS_FUSE_DIES = pytest.mark.xfail(
    run=False,
    reason="not run: in one of five runs the shared zfs-fuse daemon died while main filled "
    "its quota'd dataset (pool intact; tools/sysenv/zfs.sh started it again), and every ZFS "
    "test after it would fail; when it ran, main was stopped without a PANIC but also started "
    "again as the deferred frees came back (see _BOUNCES_BACK)",
)
_BOUNCES_BACK = pytest.mark.xfail(
    strict=False,
    reason="open: once main is stopped the free space comes back above its stop room (XFS "
    "gives back speculative preallocation, zfs-fuse its deferred frees, btrfs its metadata "
    "reservations), main is started again by something not yet found and stopped again, and "
    "the test's sequence does not hold every time; run so that the report shows how it went",
)
# Left free before the branches fill the rest, so a copy driver needs a few clones to fill it.
_HEADROOM = {"copy": 110 * 2**20, "reflink": 3 * 2**20, "btrfs": 12 * 2**20, "zfs": 3 * 2**20}


@dataclass(frozen=True)
class SmallDisk:
    """A small private "disk" of one file system type, all of Prism's data on it."""

    kind: str
    """ext4, xfs, btrfs or zfs."""
    root: Path
    """Its top directory: the filler goes here, Prism's data directory below it."""
    zfs_dataset: str = ""
    """On ZFS, the quota'd dataset Prism makes its branches' datasets in."""

    @property
    def storage(self) -> str:
        return _DRIVER[self.kind]

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def settings(self, **overrides: Any) -> Settings:
        """Prism's settings on this disk, with its driver and the test's ``overrides``.

        The reclaimer is off: it would evict the idle branches these tests fill the disk with
        before the budget refused anything (it has tests of its own); here the budget and the
        file system are what is tested. A deleted branch is purged at once (no undelete
        window), so deleting frees its space as these tests expect.
        """
        return make_settings(
            self.data_dir,
            storage=self.storage,
            zfs_dataset=self.zfs_dataset,
            startup_timeout=60.0,
            evict_on_pressure=False,
            undelete_window=0.0,
            **overrides,
        )


@contextmanager
def _loop_fs(fstype: str, size_mb: int) -> Iterator[SmallDisk]:
    """A fresh loop image of ``fstype`` mounted in a temporary directory."""
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
        yield SmallDisk(fstype, mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        image.unlink(missing_ok=True)
        mount.rmdir()
        base.rmdir()


@contextmanager
def _zfs_quota(size_mb: int) -> Iterator[SmallDisk]:
    """A dataset of the shared pool with a ``quota`` of ``size_mb``: its own small disk.

    zfs-fuse's statvfs of any dataset under it reports the quota as the total and what is
    left of it as free, and a write past it fails with EDQUOT, as a full disk would. The
    top dataset is mounted as the disk's root; Prism mounts its branches' datasets (children
    of it, so under the quota) inside it.
    """
    require_zfs()
    dataset = f"{ZFS_PARENT}/d{uuid.uuid4().hex[:10]}"
    base = Path(tempfile.mkdtemp(prefix="prism-diskfull-zfs-"))
    base.chmod(0o711)
    mount = base / "mnt"
    subprocess.run(
        ["zfs", "create", "-o", f"quota={size_mb}M", "-o", f"mountpoint={mount}", dataset],
        check=True,
        capture_output=True,
    )
    try:
        mount.chmod(0o711)
        subprocess.run(["zfs", "create", "-o", "mountpoint=none", f"{dataset}/prism"], check=True)
        yield SmallDisk("zfs", mount, f"{dataset}/prism")
    finally:
        # Children (Prism's branches) first; zfs-fuse may call a dataset busy for a moment.
        for _ in range(20):
            if subprocess.run(["zfs", "destroy", "-r", dataset], capture_output=True).returncode:
                time.sleep(0.5)
            else:
                break
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def small_disk(request: pytest.FixtureRequest) -> Iterator[SmallDisk]:
    """A fresh, private small disk of type ``request.param`` (``ext4``, or ``ext4:600`` for
    600 MB instead of ``_IMAGE_MB``); a ZFS one is a quota'd dataset."""
    fstype, _, megabytes = str(request.param).partition(":")
    size_mb = int(megabytes or _IMAGE_MB)
    require_root()
    with _zfs_quota(size_mb) if fstype == "zfs" else _loop_fs(fstype, size_mb) as disk:
        yield disk


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


async def _create_until_refused(http: httpx.AsyncClient) -> tuple[list[str], httpx.Response]:
    """Create branches until one is refused: the names made and the refusal."""
    created = []
    for index in range(60):
        response = await http.post("/api/v1/branches", json={"name": f"fill{index}"})
        if response.status_code != 201:
            return created, response
        created.append(f"fill{index}")
    raise AssertionError("the disk never filled up")


@pytest.mark.parametrize("small_disk", _KINDS, indirect=True)
async def test_a_full_disk_gives_clear_errors_and_deleting_frees_it(small_disk: SmallDisk) -> None:
    small_fs, data_dir, storage = small_disk.root, small_disk.data_dir, small_disk.storage
    settings = small_disk.settings()
    async with trio.open_nursery() as nursery:
        prism = PrismHandle(await nursery.start(PrismServer(settings).run), settings)
        await psql(prism.dsn(), "CREATE TABLE keep AS SELECT generate_series(1, 1000) AS id")
        await psql(prism.dsn("postgres@before"), "SELECT 1")
        filler = small_fs / "filler"
        await trio.to_thread.run_sync(_fill, filler, _HEADROOM[storage])
        async with httpx.AsyncClient(base_url=prism.info.api_url, timeout=300) as http:
            made, failure = await _create_until_refused(http)
            created = ["before", *made]
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


async def _main_level(http: httpx.AsyncClient) -> str:
    """How full main's file system is, as /healthz says."""
    disk = (await http.get("/healthz")).json()["disk"]
    (level,) = [fs["level"] for fs in disk["filesystems"] if "main" in fs["holds"]]
    return str(level)


async def _disk_back_to(http: httpx.AsyncClient, level: str) -> None:
    async def there() -> bool:
        return await _main_level(http) == level

    # ZFS (zfs-fuse) frees a removed file's blocks a transaction group or more later.
    await wait_until(there, what=f"main's disk back to {level}", within=60)


def _main_log(data_dir: Path) -> str:
    return (data_dir / "logs" / "main.log").read_text(encoding="utf-8", errors="replace")


# Incompressible rows stored as written (a repeated string would compress to nothing).
_BIG_TABLE = "CREATE TABLE big (pad text); ALTER TABLE big ALTER pad SET STORAGE EXTERNAL"
_BIG_ROWS = "INSERT INTO big SELECT repeat(md5(random()::text), 64) FROM generate_series(1, 2000)"
"""About 4 MiB more of ``big``."""


async def _branches_of_their_own(prism: PrismHandle, names: list[str]) -> None:
    """Make branches ``names``, each holding about 24 MiB that only it has, and stop them."""
    for name in names:
        dsn = prism.dsn(f"postgres@{name}")
        await psql(dsn, _BIG_TABLE + "; " + "; ".join([_BIG_ROWS] * 6) + "; CHECKPOINT")
        await prism.manager.stop(name)


def _archived(data_dir: Path) -> list[str]:
    archive = data_dir / "wal-archive" / "main"
    return sorted(os.listdir(archive)) if archive.is_dir() else []


@pytest.mark.parametrize("small_disk", ["ext4:450", *_NEAR_FULL_KINDS], indirect=True)
async def test_a_create_that_does_not_fit_is_refused_before_using_any_space(
    small_disk: SmallDisk,
) -> None:
    """The issue's case: a copy of a running main that keeps WAL. Creates go on until the
    budget refuses one (507, never a 500 half-way); a refused try, through the API or the front
    door (53100), uses no space; deleting a branch frees it and the next create works.

    A copy-on-write clone shares its parent's bytes, so creates alone would not fill the disk
    in a test's time: there, two branches first write data of their own, then a filler takes
    the disk under the reserve (not so far that main is stopped); deleting them frees their
    data and the next create fits again.
    """
    small_fs, data_dir = small_disk.root, small_disk.data_dir
    copies = small_disk.storage == "copy"
    settings = small_disk.settings(snapshot_every=3600.0, disk_reserve="16MiB")
    async with trio.open_nursery() as nursery:
        prism = PrismHandle(await nursery.start(PrismServer(settings).run), settings)
        await psql(prism.dsn(), "CREATE TABLE keep AS SELECT generate_series(1, 1000) AS id")
        async with httpx.AsyncClient(base_url=prism.info.api_url, timeout=300) as http:
            await _first_snapshot(http)  # a copy of main too, which the budget holds meanwhile
            if copies:
                created, response = await _create_until_refused(http)
                assert len(created) >= 2, "fewer than two branches fitted"
            else:
                created = ["own0", "own1"]
                await _branches_of_their_own(prism, created)
                # Free: 14 MiB, the 8 MiB ballast beside it; a clone needs 16 beyond the 16
                # reserved, yet main has more than the 8 MiB it needs to stop.
                await trio.to_thread.run_sync(_fill, small_fs / "filler", 14 * 2**20)
                response = await http.post("/api/v1/branches", json={"name": "refused"})
            body = response.json()
            assert response.status_code == 507, body
            assert body["code"] == "disk_full"
            assert "free" in body["message"] and "--disk-reserve" in body["message"], body
            assert await trio.to_thread.run_sync(_leftovers, data_dir) == []

            segments, before = _archived(data_dir), _free_bytes(small_fs)
            for attempt in range(3):
                response = await http.post("/api/v1/branches", json={"name": f"again{attempt}"})
                assert response.status_code == 507, response.text
            assert await refused_sqlstate(prism, "front-door") == "53100"
            # Before the budget each try archived another 16 MiB segment; now none is, and
            # the free space moves only by what the running servers write meanwhile.
            assert _archived(data_dir) == segments
            assert before - _free_bytes(small_fs) < 8 * 2**20

            status = (await http.get("/api/v1/status")).json()
            (fs,) = [f for f in status["disk"]["filesystems"] if "branches" in f["holds"]]
            assert fs["reserve"] == 16 * 2**20 and fs["free"] > 0

            async def archived() -> bool:
                use = (await http.get("/api/v1/status")).json()["disk"]["use"]
                return bool(use["wal_archive"] >= len(created) * 16 * 2**20)  # one per create

            if copies:
                await wait_until(archived, what="the archive's segments in the disk's use")

            # A branch frees its copy, not the segment its create archived: two make room.
            before = _free_bytes(small_fs)
            for name in created[-2:]:
                response = await http.delete(f"/api/v1/branches/{name}")
                assert response.status_code == 200, response.text
            await trio.to_thread.run_sync(_wait_freed, small_fs, before + 16 * 2**20)
            response = await http.post("/api/v1/branches", json={"name": "after"})
            assert response.status_code == 201, response.text
        out = await psql(prism.dsn("postgres@after"), "SELECT count(*) FROM keep")
        assert out.stdout.decode().strip() == "1000"
        assert "PANIC" not in _main_log(data_dir)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "small_disk",
    [
        "ext4",
        pytest.param("xfs", marks=_BOUNCES_BACK),
        pytest.param("btrfs", marks=_BTRFS_NEAR_FULL),
        pytest.param("zfs", marks=_ZFS_FUSE_DIES),
    ],
    indirect=True,
)
async def test_main_filling_its_own_disk_is_stopped_before_it_panics(
    small_disk: SmallDisk,
) -> None:
    """Main's own writes fill the disk: the ballast is released, then main is stopped with a
    clean shutdown instead of PANICking; the API says so and what to do; once space is freed
    main starts again with its data.

    Starting main is refused only while the disk is still full: on XFS (speculative
    preallocation given back) and ZFS (frees deferred to the next transaction group) the free
    space comes back up once main stops writing, so there the refusal may not be seen, and main
    may even be started again (allowed below "full"; what starts it is not yet known): there
    the test asks that the API tells the truth about it.
    """
    small_fs, data_dir = small_disk.root, small_disk.data_dir
    settings = small_disk.settings(disk_reserve="96MiB")
    async with trio.open_nursery() as nursery:
        prism = PrismHandle(await nursery.start(PrismServer(settings).run), settings)
        await psql(prism.dsn(), "CREATE TABLE keep AS SELECT generate_series(1, 1000) AS id")
        await psql(prism.dsn(), _BIG_TABLE)
        filler = small_fs / "filler"
        # Leave main about 110 MB (the ballast takes 48 of it) to fill by itself.
        await trio.to_thread.run_sync(_fill, filler, 110 * 2**20)
        async with prism.manager.events.subscribe() as events:
            for _ in range(200):
                out = await psql(prism.dsn(), _BIG_ROWS, check=False)
                if out.returncode != 0:
                    break
            else:
                raise AssertionError("main never ran out of space")
            with trio.fail_after(30):
                async for event in events:
                    if event["type"] == "disk_low" and event["level"] == "full":
                        break
        # What to do is said when it happens: the advice now may already be the "low" one
        # (XFS gives back its speculative preallocation, ZFS its deferred frees, once main
        # stops writing).
        assert "start main" in str(event["error"]), event
        async with httpx.AsyncClient(base_url=prism.info.api_url, timeout=300) as http:
            main = (await http.get("/api/v1/branches/main")).json()
            if small_disk.kind in ("xfs", "zfs") and main["status"] != "stopped":
                # Started again once the space given back took the disk to "low" (and
                # stopped again if it fills it): whatever the API says must be true.
                assert main["status"] in ("running", "stopping", "starting"), main
                if main["status"] == "running":
                    await psql(prism.dsn(), "SELECT 1")
            else:
                assert main["status"] == "stopped", main
            assert "PANIC" not in _main_log(data_dir)

            if await _main_level(http) == "full":
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


@pytest.mark.parametrize(
    "small_disk",
    ["ext4:450", "xfs", pytest.param("btrfs", marks=_BOUNCES_BACK), "zfs"],
    indirect=True,
)
async def test_snapshots_that_would_fill_the_disk_are_refused_and_pruning_frees_them(
    small_disk: SmallDisk,
) -> None:
    """Snapshots every second on the copy driver (each a full copy of main) with no size bound:
    they go on until the budget refuses one, which leaves nothing half-made and keeps the
    reserve free; pruning the archive frees their space at once.

    A copy-on-write snapshot shares main's bytes, so snapshots alone never fill the disk, and
    pruning them gives back only what main changed since: there, once two are kept, a filler
    takes the disk under the reserve (not so far that main is stopped), the next snapshot is
    refused, and once the filler is gone snapshots are taken again.
    """
    small_fs, data_dir = small_disk.root, small_disk.data_dir
    copies = small_disk.storage == "copy"
    settings = small_disk.settings(snapshot_every=1.0, retention="7d", disk_reserve="40MiB")
    filler = small_fs / "filler"
    async with trio.open_nursery() as nursery:
        prism = PrismHandle(await nursery.start(PrismServer(settings).run), settings)
        kept = prism.manager.point_in_time
        if not copies:
            await wait_until(lambda: len(kept.snapshots()) >= 2, what="two snapshots", within=60)
            # Free: 30 MiB, the 20 MiB ballast beside it; a snapshot needs 16 beyond the 40
            # reserved, yet main has more than the 20 MiB it needs to stop.
            await trio.to_thread.run_sync(_fill, filler, 30 * 2**20)
        async with prism.manager.events.subscribe() as events:
            with trio.fail_after(120):
                async for event in events:
                    # Refused; or main's own WAL (each snapshot's backup switches segments)
                    # took the rest, and main was stopped before it could PANIC.
                    if event["type"] == "snapshot_failed" or event.get("level") == "full":
                        break
        if event["type"] == "snapshot_failed":
            assert "not enough disk space" in event["error"], event
            if copies:  # elsewhere the filler, not the snapshots, took the disk under it
                assert (
                    _free_bytes(small_fs) + 20 * 2**20 >= 40 * 2**20
                )  # the reserve, ballast in it
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
            if copies:
                assert _free_bytes(small_fs) > before + 30 * 2**20  # a copy of main back
            else:
                filler.unlink()
                left = len(kept.snapshots())
                await wait_until(
                    lambda: len(kept.snapshots()) > left, what="a snapshot again", within=60
                )
            response = await http.post("/api/v1/branches/main/start")  # if it was stopped
            assert response.status_code == 200, response.text
        assert "PANIC" not in _main_log(data_dir)
        nursery.cancel_scope.cancel()
