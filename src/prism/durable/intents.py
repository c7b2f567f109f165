"""The typed intents of the one journal: what a multi-step change on disk meant to do.

Each kind of operation that takes more than one step on disk has one frozen dataclass here,
written to the journal (``prism.durable.journal``) as JSON before its first step and removed when it
is done. A crash leaves the row; start-up recovery (``prism.durable.recovery``) hands it back,
decoded, to the recoverer its owner registered. All kinds live in this one module so that the
journal can convert the formats of older Prisms into them without importing their owners, and a
reader finds every intent Prism may leave behind in one place. Pure: no I/O.

A body is ``{"kind": ..., "version": ..., <fields>}``. ``version`` says which shape of the kind
wrote it: a recoverer never guesses at a newer shape (``IntentUnreadable``) — an older Prism
started on a newer data directory stops instead of undoing what it does not understand.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from prism.core.names import MAIN_BRANCH


class IntentUnreadable(ValueError):
    """A journal body that is no intent of a known kind and version (said in the message)."""


@dataclass(frozen=True)
class Intent:
    """Base of every intent: its ``KIND`` (the discriminator), ``VERSION`` and journal key."""

    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    #: The flags a Prism needs to recover this kind, when not every Prism can (for the error).
    NEEDS: ClassVar[str] = ""

    @property
    def branch(self) -> str:
        """The branch (or storage name) the operation changes, for messages."""
        raise NotImplementedError

    @property
    def key(self) -> str:
        """One row per key: a later step of the same operation replaces its intent."""
        return f"{self.KIND}:{self.branch}"

    def encode(self) -> str:
        """The JSON body of this intent (``kind`` and ``version`` first)."""
        fields = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return json.dumps({"kind": self.KIND, "version": self.VERSION, **fields})


@dataclass(frozen=True)
class _OnName(Intent):
    """An intent about one storage name (a branch's, or a snapshot's): ``name``."""

    name: str

    @property
    def branch(self) -> str:
        return self.name


@dataclass(frozen=True)
class InitdbIntent(_OnName):
    """Main is being made (initdb, a base backup or a first dump): discard it if cut short."""

    KIND: ClassVar[str] = "initdb"
    name: str = MAIN_BRANCH


@dataclass(frozen=True)
class CreateIntent(_OnName):
    """A new branch is being cloned and started: roll it back if cut short."""

    KIND: ClassVar[str] = "create"
    parent: str


class ResetPhase(enum.Enum):
    """How far a reset got, which says what a directory found under its name is."""

    #: Whatever stands under the name is whole: the old data (before the retire) or the new
    #: clone (finished, and no hook to run in it).
    WHOLE = "whole"
    #: The new clone is being made: a directory under the name may be cut short.
    CLONING = "cloning"
    #: The old data is gone and the parent has an ``on_create`` hook: a clone found may lack it.
    HOOKED_CLONE = "hooked-clone"


@dataclass(frozen=True)
class ResetIntent(_OnName):
    """A branch is being re-cloned from its parent; its old data waits in the trash under
    ``token``."""

    KIND: ClassVar[str] = "reset"
    parent: str | None
    token: str
    phase: ResetPhase = ResetPhase.WHOLE


@dataclass(frozen=True)
class DeleteIntent(_OnName):
    """A branch is being moved into the undelete trash under ``token`` (its trash row is
    written first): finish it if the data left, else drop the row."""

    KIND: ClassVar[str] = "delete"
    token: str


@dataclass(frozen=True)
class UndeleteIntent(_OnName):
    """A branch kept in the trash under ``token`` is being put back (its record and policy
    are written first): finish it if the data is back, else drop the record again."""

    KIND: ClassVar[str] = "undelete"
    token: str


@dataclass(frozen=True)
class RefreshIntent(Intent):
    """Main is being swapped to the staged generation ``staged`` (``--source-mode dump``);
    the old main waits in the trash under ``token``."""

    KIND: ClassVar[str] = "refresh"
    NEEDS: ClassVar[str] = "--source-mode dump (and the same --source)"
    staged: str
    token: str
    generation: int
    taken_at: datetime

    @property
    def branch(self) -> str:
        return MAIN_BRANCH


@dataclass(frozen=True)
class BaseBackupIntent(_OnName):
    """A base backup of the source is being taken into main: a half backup is never main."""

    KIND: ClassVar[str] = "basebackup"
    NEEDS: ClassVar[str] = "--source (the source the backup was taken from)"
    name: str = MAIN_BRANCH


@dataclass(frozen=True)
class SnapshotIntent(_OnName):
    """A snapshot (storage name ``name``) of ``of`` is being cloned; its record commits it."""

    KIND: ClassVar[str] = "snapshot"
    of: str


#: Every kind Prism writes, by its discriminator.
KINDS: dict[str, type[Intent]] = {
    kind.KIND: kind
    for kind in (
        InitdbIntent,
        CreateIntent,
        ResetIntent,
        DeleteIntent,
        UndeleteIntent,
        RefreshIntent,
        BaseBackupIntent,
        SnapshotIntent,
    )
}

IntentT = TypeVar("IntentT", bound=Intent)


def decode(body: str, kind: type[IntentT]) -> IntentT:
    """The intent of ``kind`` in ``body``; ``IntentUnreadable`` for any other shape."""
    try:
        raw = json.loads(body)
        if not isinstance(raw, dict):
            raise IntentUnreadable(f"not a JSON object: {body[:80]!r}")
        if raw.get("kind") != kind.KIND:
            raise IntentUnreadable(f"kind {raw.get('kind')!r} is not {kind.KIND!r}")
        if raw.get("version") != kind.VERSION:
            raise IntentUnreadable(
                f"{kind.KIND} intent of version {raw.get('version')!r}; this Prism reads "
                f"version {kind.VERSION}"
            )
        values = {f.name: _typed(f.type, raw[f.name]) for f in _init_fields(kind)}
        return kind(**values)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, IntentUnreadable):
            raise
        raise IntentUnreadable(f"unreadable {kind.KIND} intent {body[:80]!r}: {exc}") from None


def kind_of(body: str) -> str:
    """The ``kind`` a body says it is (``"?"`` if it says none)."""
    try:
        raw = json.loads(body)
    except ValueError:
        return "?"
    return str(raw.get("kind", "?")) if isinstance(raw, dict) else "?"


def _init_fields(kind: type[Intent]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(kind) if f.init]


def _plain(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _typed(annotation: object, value: object) -> object:
    """A JSON value back in its field's type (annotations are strings: see the import)."""
    if annotation == "ResetPhase":
        return ResetPhase(value)
    if annotation == "datetime":
        return datetime.fromisoformat(str(value))
    if annotation == "int":
        if not isinstance(value, int):
            raise TypeError(f"{value!r} is not a number")
        return value
    if annotation == "str" and not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value
