"""Cloning a branch from a consistent state of its parent, even while the parent is running.

Three cases, cheapest first:

* The parent is stopped: its data directory was left by a clean shutdown, so any clone of it is
  consistent as it stands.
* The parent runs and the driver is atomic (btrfs, ZFS): the snapshot captures one instant, which
  is exactly what a power cut would leave; Postgres replays the WAL from the last checkpoint when
  the child starts (crash recovery), like after a power cut.
* The parent runs and the driver copies file by file (reflink, copy): files change while they are
  copied, so a torn page could hide behind a later checkpoint. This is the case PostgreSQL's
  online backup API exists for: ``pg_backup_start`` (fast checkpoint, full-page writes forced)
  → copy → ``pg_backup_stop`` (switches WAL) → copy ``pg_wal`` again so it holds every record up
  to the stop point → write the returned ``backup_label``. The child then starts recovery from
  the backup's checkpoint, not from whatever ``pg_control`` happened to say when it was copied.

In every case the parent's ``postmaster.pid`` is removed from the child: it names a live process
and would stop the child's server from starting.

So a clone is finished only when ``clone_consistent`` returns, not when its directory appears:
a crash in between can leave the parent's lock file in it, or (copy, reflink) a copy without
its ``backup_label``. A caller that must survive a crash there records that the clone is under
way (a reset does) and has reconcile finish or discard it.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import trio

from prism.core.address import BackendAddress
from prism.core.crashpoints import crash_point
from prism.core.errors import BackendQueryError, StorageError
from prism.postgres.client import ServiceConnection, connect_branch
from prism.postgres.serverconf import detach_clone
from prism.storage.base import Storage

log = logging.getLogger(__name__)


async def clone_consistent(
    storage: Storage,
    parent: str,
    child: str,
    *,
    parent_address: BackendAddress | None,
    superuser: str,
) -> Path:
    """Clone ``parent`` into ``child`` so the child's server starts on a consistent state."""
    socket_dir = None if parent_address is None else parent_address.service_socket_dir
    if parent_address is None or storage.atomic:
        path = await storage.clone(parent, child)
        crash_point("clone:appeared")
    elif socket_dir is None or parent_address is None:
        raise StorageError(
            f"cannot clone running branch {parent!r} with the {storage.name} driver: "
            "the runtime offers no service connection for the online backup API",
            hint="stop the parent branch first, or use btrfs or ZFS storage",
        )
    else:
        path = await _clone_in_backup_mode(storage, parent, child, parent_address, superuser)
    await trio.to_thread.run_sync(_remove_if_present, path / "postmaster.pid")
    if await trio.to_thread.run_sync(detach_clone, path):
        log.debug("clone: %s is a standby; %s recovers its WAL, opens writable", parent, child)
    return path


async def _clone_in_backup_mode(
    storage: Storage, parent: str, child: str, parent_address: BackendAddress, superuser: str
) -> Path:
    async with await connect_branch(
        parent_address, user=superuser, application_name="prism clone"
    ) as service:
        await _hold_wal(service, parent)
        await service.query(f"SELECT pg_backup_start('prism: branch {child}', true)")
        try:
            path = await storage.clone(parent, child)
            crash_point("clone:appeared")
        except BaseException:
            with trio.CancelScope(shield=True):
                await service.query("SELECT pg_backup_stop(false)")
            raise
        rows = await service.query("SELECT labelfile, spcmapfile FROM pg_backup_stop(false)")
        # The parent goes on writing, and its pg_wal is copied after the stop, so the copy
        # holds every record up to the stop point; the slot still keeps what the backup needs.
        await storage.refresh_subdir(parent, child, "pg_wal")
    label, spcmap = rows[0]
    await trio.to_thread.run_sync(_write_backup_files, path, label or "", spcmap or "")
    log.debug("clone: %s -> %s in backup mode", parent, child)
    return path


async def _hold_wal(service: ServiceConnection, parent: str) -> None:
    """Keep the parent's WAL from the backup's start until this service session ends.

    A non-exclusive backup holds no WAL: a checkpoint during the copy (a busy parent reaches
    ``max_wal_size`` soon) may recycle the segments from the backup's start before ``pg_wal`` is
    copied, and the child would find no checkpoint to start from. A temporary physical slot,
    reserving WAL from now on, is dropped by the server when the session ends, even if Prism
    dies. Without a slot to spare (``max_replication_slots``) the clone goes on, warned of.
    """
    slot = f"prism_clone_{secrets.token_hex(6)}"
    try:
        await service.query(f"SELECT pg_create_physical_replication_slot('{slot}', true, true)")
    except BackendQueryError as exc:
        log.warning(
            "clone: cannot keep %s's WAL while it is copied (%s): a checkpoint during the copy "
            "may remove WAL the new branch needs; raise max_replication_slots",
            parent,
            exc.message,
        )


def _write_backup_files(pgdata: Path, label: str, spcmap: str) -> None:
    """Write backup_label (and tablespace_map) owned like the data directory itself."""
    owner = pgdata.stat()
    for name, content in (("backup_label", label), ("tablespace_map", spcmap)):
        if not content:
            continue
        target = pgdata / name
        target.write_text(content, encoding="utf-8")
        target.chmod(0o600)
        if os.geteuid() == 0:
            os.chown(target, owner.st_uid, owner.st_gid)


def remove_parent_lock_file(pgdata: Path) -> None:
    """Remove a clone's ``postmaster.pid``, which it copied from its running parent (blocking).

    Only for a clone no server has run on yet: there the file can only be the parent's.
    """
    _remove_if_present(pgdata / "postmaster.pid")


def _remove_if_present(path: Path) -> None:
    path.unlink(missing_ok=True)
