"""The one journal: typed intents round-trip, older data directories are converted, and one
recovery pass runs its owners in the declared order and refuses what nobody recovers."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from prism.durable.intents import (
    KINDS,
    BaseBackupIntent,
    CreateIntent,
    DeleteIntent,
    InitdbIntent,
    Intent,
    IntentUnreadable,
    RefreshIntent,
    ResetIntent,
    ResetPhase,
    SnapshotIntent,
    UndeleteIntent,
    decode,
)
from prism.durable.journal import Journal
from prism.durable.recovery import ORDER, Owner, UnrecoverableIntent, plan, recover
from tests.fakes import InlineStateStore

TAKEN = datetime(2026, 12, 1, 6, 40, tzinfo=UTC)
EVERY_KIND: list[Intent] = [
    InitdbIntent(),
    CreateIntent("feature", "main"),
    ResetIntent("feature", "main", "abcd1234", ResetPhase.HOOKED_CLONE),
    DeleteIntent("feature", "0123456789ab"),
    UndeleteIntent("feature", "0123456789ab"),
    RefreshIntent("gen:2", "beef0001", 2, TAKEN),
    BaseBackupIntent(),
    SnapshotIntent("snap:main:20261201T064000000000Z", "main"),
]


def _journal(tmp_path: Path) -> Journal:
    return Journal(InlineStateStore(tmp_path / "prism.db"))


@pytest.mark.parametrize("intent", EVERY_KIND, ids=lambda intent: intent.KIND)
def test_every_kind_of_intent_round_trips_through_its_json_body(intent: Intent) -> None:
    body = json.loads(intent.encode())
    assert (body["kind"], body["version"]) == (intent.KIND, intent.VERSION)
    assert decode(intent.encode(), type(intent)) == intent


def test_every_kind_is_registered_once_and_tested() -> None:
    assert sorted(KINDS) == sorted(intent.KIND for intent in EVERY_KIND)


@pytest.mark.parametrize(
    "body",
    [
        '{"kind": "reset", "version": 2, "name": "f", "parent": null, "token": "t"}',
        '{"kind": "initdb", "version": 1, "name": "main"}',
        '{"kind": "reset", "version": 1, "name": "f"}',
        '{"kind": "reset", "version": 1, "name": "f", "parent": null, "token": "t", '
        '"phase": "half"}',
        "[1, 2]",
        "not json",
    ],
    ids=["newer-version", "other-kind", "missing-field", "bad-phase", "not-an-object", "junk"],
)
def test_a_body_of_another_shape_is_unreadable_never_guessed_at(body: str) -> None:
    with pytest.raises(IntentUnreadable):
        decode(body, ResetIntent)


async def test_a_later_step_replaces_its_intent_and_keeps_its_place(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    first = ResetIntent("feature", "main", "abcd1234")
    await journal.record(first)
    await journal.record(InitdbIntent())
    await journal.record(ResetIntent("feature", "main", "abcd1234", ResetPhase.CLONING))
    entries = await journal.entries()
    assert [entry.kind for entry in entries] == ["reset", "initdb"]
    assert entries[0].decode(ResetIntent).phase is ResetPhase.CLONING
    await journal.done(first)
    assert [entry.kind for entry in await journal.entries()] == ["initdb"]


async def test_recovery_runs_owners_in_the_declared_order_and_drops_only_what_it_finished(
    tmp_path: Path,
) -> None:
    journal = _journal(tmp_path)
    for intent in EVERY_KIND:
        await journal.record(intent)
    ran: list[str] = []

    def owner(name: str, *kinds: type[Intent]) -> Owner:
        async def recover_one(intent: Intent) -> None:
            ran.append(f"{name}:{intent.KIND}")

        async def sweep() -> None:
            ran.append(f"{name}:sweep")

        return Owner(name, dict.fromkeys(kinds, recover_one), sweep=sweep)

    owners = [
        owner("branches", InitdbIntent, CreateIntent, ResetIntent, DeleteIntent, UndeleteIntent),
        owner("snapshots", SnapshotIntent),
        owner("generations", RefreshIntent),
        owner("source", BaseBackupIntent),
    ]
    await recover(journal, owners)
    assert ran == [
        "source:basebackup",
        "source:sweep",
        "generations:refresh",
        "generations:sweep",
        "snapshots:snapshot",
        "snapshots:sweep",
        "branches:initdb",
        "branches:create",
        "branches:reset",
        "branches:delete",
        "branches:undelete",
        "branches:sweep",
    ]
    assert [name for name in ORDER] == ["source", "generations", "snapshots", "branches"]
    assert await journal.entries() == []


async def test_a_recoverer_that_fails_leaves_its_intent_for_the_next_start(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    await journal.record(CreateIntent("feature", "main"))

    async def fail(intent: CreateIntent) -> None:
        raise OSError("disk on fire")

    with pytest.raises(OSError):
        await recover(journal, [Owner("branches", {CreateIntent: fail})])
    assert [entry.kind for entry in await journal.entries()] == ["create"]


async def test_an_intent_nobody_recovers_stops_recovery_before_anything_runs(
    tmp_path: Path,
) -> None:
    journal = _journal(tmp_path)
    await journal.record(CreateIntent("feature", "main"))
    await journal.record(RefreshIntent("gen:2", "beef0001", 2, TAKEN))
    ran: list[Intent] = []

    async def recover_one(intent: Intent) -> None:
        ran.append(intent)

    owners = [Owner("branches", {CreateIntent: recover_one, ResetIntent: recover_one})]
    with pytest.raises(UnrecoverableIntent) as caught:
        await recover(journal, owners)
    error = caught.value
    assert "refresh of main" in error.message
    assert "journal id 2" in error.message
    assert error.hint is not None
    assert "--source-mode dump" in error.hint
    assert "DELETE FROM journal WHERE id = 2" in error.hint
    assert ran == []  # not even the create before it: nothing is touched
    assert len(await journal.entries()) == 2  # and nothing is dropped


def test_plan_refuses_an_owner_outside_the_declared_order() -> None:
    with pytest.raises(ValueError, match="ORDER"):
        plan([], [Owner("stranger", {})], db="prism.db")


def _old_data_dir(
    tmp_path: Path, operations: list[tuple[str, str, str | None, str | None]]
) -> Path:
    """A state file as an older Prism left it: an ``operations`` table with ``rows``."""
    path = tmp_path / "prism.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE operations (branch TEXT PRIMARY KEY, op TEXT NOT NULL, parent TEXT, "
        "detail TEXT, started_at TEXT NOT NULL)"
    )
    for branch, op, parent, detail in operations:
        db.execute(
            "INSERT INTO operations VALUES (?, ?, ?, ?, ?)",
            (branch, op, parent, detail, TAKEN.isoformat()),
        )
    db.commit()
    db.close()
    return path


async def test_an_older_operations_table_becomes_typed_intents(tmp_path: Path) -> None:
    path = _old_data_dir(
        tmp_path,
        [
            ("main", "refresh", None, f"gen:2 beef0001 2 {TAKEN.isoformat()}"),
            ("feature", "reset", "main", "abcd1234:hooked-clone"),
            ("other", "reset", "main", "12345678"),
        ],
    )
    journal = Journal(InlineStateStore(path))
    found = {entry.key: entry for entry in await journal.entries()}
    assert found["refresh:main"].decode(RefreshIntent) == RefreshIntent(
        "gen:2", "beef0001", 2, TAKEN
    )
    assert found["reset:feature"].decode(ResetIntent) == ResetIntent(
        "feature", "main", "abcd1234", ResetPhase.HOOKED_CLONE
    )
    assert found["reset:other"].decode(ResetIntent).phase is ResetPhase.WHOLE
    assert not journal.state.has_table("operations")


async def test_an_older_row_nobody_can_read_is_kept_and_refused(tmp_path: Path) -> None:
    path = _old_data_dir(
        tmp_path, [("main", "frobnicate", None, "x"), ("f", "refresh", None, "half")]
    )
    journal = Journal(InlineStateStore(path))
    assert sorted(entry.kind for entry in await journal.entries()) == ["frobnicate", "refresh"]

    async def recover_one(intent: Intent) -> None:
        raise AssertionError("nothing may run")

    owners = [Owner("generations", {RefreshIntent: recover_one})]
    with pytest.raises(UnrecoverableIntent, match="frobnicate of main"):
        await recover(journal, owners)


async def test_older_marker_files_and_provisioning_records_become_intents(tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "basebackup.incomplete").write_text("in progress\n")
    (tmp_path / "snapshots").mkdir()
    taking = tmp_path / "snapshots" / "snap:main:20261201T064000000000Z.taking"
    taking.write_text("")
    store = InlineStateStore(tmp_path / "prism.db")
    store.load(
        "INSERT INTO branches (name, parent, created_at, last_active, status) "
        "VALUES ('half', 'main', ?, ?, 'provisioning')",
        (TAKEN.isoformat(), TAKEN.isoformat()),
    )
    journal = Journal(store)
    found = {entry.kind: entry for entry in await journal.entries()}
    assert found["basebackup"].decode(BaseBackupIntent) == BaseBackupIntent()
    assert found["snapshot"].decode(SnapshotIntent) == SnapshotIntent(
        "snap:main:20261201T064000000000Z", "main"
    )
    assert found["create"].decode(CreateIntent) == CreateIntent("half", "main")
    assert not (tmp_path / "source" / "basebackup.incomplete").exists()
    assert not taking.exists()
