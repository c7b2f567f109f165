"""What older Prisms left as intent, converted into journal rows once when the journal opens.

Older Prisms kept intent in four places: rows of an ``operations`` table whose ``detail`` each
owner parsed its own way, a ``provisioning`` status on a new branch's record, the marker file
``source/basebackup.incomplete`` and one ``snapshots/<name>.taking`` file per snapshot being
taken. Each becomes a typed intent (``prism.durable.intents``) in the journal, then the old form is
removed, so a data directory a crash left under an older Prism still recovers. This module is
the only place those old forms are read.

A row that cannot be converted (an operation this Prism does not know, a ``detail`` it cannot
parse) is kept as it was, under its old name and version 0: recovery then refuses to start and
names it, rather than drop what it does not understand.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prism.core.names import SNAPSHOT_PREFIX
from prism.durable.intents import (
    BaseBackupIntent,
    CreateIntent,
    InitdbIntent,
    Intent,
    RefreshIntent,
    ResetIntent,
    ResetPhase,
    SnapshotIntent,
)

if TYPE_CHECKING:  # the journal runs these when it opens
    from prism.durable.journal import Journal

log = logging.getLogger(__name__)

#: The marker an older Prism wrote before a base backup into main.
BASEBACKUP_MARKER = Path("source") / "basebackup.incomplete"
#: The directory where an older Prism wrote ``<snapshot>.taking`` before a snapshot's clone.
SNAPSHOT_RECORDS = Path("snapshots")
_TAKING = ".taking"


def convert_operations(journal: Journal) -> None:
    """Move every row of an older Prism's ``operations`` table into the journal, typed."""
    state = journal.state
    if not state.has_table("operations"):
        return
    rows = state.load("SELECT branch, op, parent, detail, started_at FROM operations")
    state.load("BEGIN IMMEDIATE")
    try:
        for branch, op, parent, detail, started_at in rows:
            row = _from_operation(str(branch), str(op), parent, detail)
            journal.record_at_start(*row, started_at=str(started_at))
        state.load("DROP TABLE operations")
        state.load("COMMIT")
    except BaseException:
        state.load("ROLLBACK")
        raise
    if rows:
        log.info("journal: converted %d intent(s) an older Prism left", len(rows))


def convert_markers(journal: Journal, data_dir: Path) -> None:
    """Turn an older Prism's marker files and ``provisioning`` records into journal rows."""
    started = datetime.now().astimezone().isoformat()
    marker = data_dir / BASEBACKUP_MARKER
    if marker.exists():
        journal.record_at_start(*_row(BaseBackupIntent()), started_at=started)
        marker.unlink()
        log.info("journal: converted %s into a base backup intent", marker)
    records = data_dir / SNAPSHOT_RECORDS
    for taking in sorted(records.glob(f"*{_TAKING}")) if records.is_dir() else []:
        name = taking.name.removesuffix(_TAKING)
        of = name.removeprefix(SNAPSHOT_PREFIX).rpartition(":")[0]
        journal.record_at_start(*_row(SnapshotIntent(name, of)), started_at=started)
        taking.unlink()
        log.info("journal: converted %s into a snapshot intent", taking)
    rows = journal.state.load(
        "SELECT name, parent, created_at FROM branches WHERE status = 'provisioning'"
    )
    for branch, parent, created_at in rows:
        # A record from before the journal: no create intent was written beside it.
        intent = CreateIntent(str(branch), str(parent or ""))
        journal.record_at_start(*_row(intent), started_at=str(created_at))


def _from_operation(branch: str, op: str, parent: object, detail: object) -> tuple[str, str, str]:
    """An ``operations`` row as a journal row (key, kind, body): a typed intent, or the row as
    it was, for recovery to refuse."""
    text = "" if detail is None else str(detail)
    try:
        if op == "initdb":
            return _row(InitdbIntent(branch))
        if op == "reset":
            token, _, phase = text.partition(":")
            parent_name = None if parent is None else str(parent)
            whole = ResetPhase(phase) if phase else ResetPhase.WHOLE
            return _row(ResetIntent(branch, parent_name, token, whole))
        if op == "refresh":
            staged, token, number, taken_at = text.split(" ")
            taken = datetime.fromisoformat(taken_at)
            return _row(RefreshIntent(staged, token, int(number), taken))
    except ValueError:
        log.error("journal: cannot read the %s intent of %s (%r); kept as it was", op, branch, text)
    raw = {"kind": op, "version": 0, "branch": branch, "parent": parent, "detail": detail}
    return (f"{op}:{branch}", op, json.dumps(raw))


def _row(intent: Intent) -> tuple[str, str, str]:
    return intent.key, intent.KIND, intent.encode()


__all__ = ["BASEBACKUP_MARKER", "convert_markers", "convert_operations"]
