"""Start-up recovery: one pass over the journal, its owners in one declared order.

Each owner of multi-step operations (the source's base backup, main's dump generations,
snapshots, the branch manager) hands in an ``Owner``: a recoverer per intent kind it writes,
which finishes or undoes one interrupted operation, and a sweep that makes the rest of its
state agree with the disk afterwards. ``recover`` first checks that every intent in the journal
has a recoverer and is readable (``plan``, pure): if one has not, start-up stops with an error
naming it, before anything is changed. A row is dropped only after its recoverer returned.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prism.core.errors import PrismError
from prism.durable.intents import KINDS, Intent, IntentUnreadable
from prism.durable.journal import Entry, Journal

#: The owners in the order they recover, and why this order:
#: ``source`` kills a base backup a dead Prism left writing into main before anyone looks at
#: main; ``generations`` puts main (back) in its place after a cut-short swap, before the
#: branch manager registers what it finds; ``snapshots`` removes half-made snapshots, which the
#: manager's sweep ignores; ``branches`` last: it undoes creates and resets, matches records to
#: directories, adopts or stops servers and empties the trash, which by then holds only what
#: no earlier owner still needed.
ORDER: tuple[str, ...] = ("source", "generations", "snapshots", "branches")

Recoverer = Callable[[Any], Awaitable[None]]


class UnrecoverableIntent(PrismError):
    """An intent in the journal that this Prism, as started, cannot finish or undo."""


@dataclass(frozen=True)
class Owner:
    """One owner's part of recovery: its recoverers by intent kind, then its sweep."""

    name: str
    recoverers: Mapping[type[Intent], Recoverer]
    sweep: Callable[[], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Step:
    """One intent to recover, decoded, with the recoverer that takes it."""

    entry: Entry
    intent: Intent
    recover: Recoverer


def plan(entries: Sequence[Entry], owners: Sequence[Owner], *, db: str) -> dict[str, list[Step]]:
    """Each owner's steps, oldest intent first; ``UnrecoverableIntent`` for the first entry no
    owner recovers or none can read. ``db`` is the state file, named in the error."""
    unknown = [owner.name for owner in owners if owner.name not in ORDER]
    if unknown:
        raise ValueError(f"owners {unknown} are not in recovery.ORDER")
    by_kind = {
        kind.KIND: (owner.name, kind, recover)
        for owner in owners
        for kind, recover in owner.recoverers.items()
    }
    steps: dict[str, list[Step]] = {owner.name: [] for owner in owners}
    for entry in entries:
        found = by_kind.get(entry.kind)
        if found is None:
            raise _refusal(entry, "nothing in this Prism, as started, recovers it", db=db)
        name, kind, recover = found
        try:
            intent = entry.decode(kind)
        except IntentUnreadable as exc:
            raise _refusal(entry, f"it cannot be read: {exc}", db=db) from None
        steps[name].append(Step(entry, intent, recover))
    return steps


async def recover(journal: Journal, owners: Sequence[Owner]) -> None:
    """Finish or undo every intent the journal holds, then run each owner's sweep, in
    ``ORDER``; nothing is touched if any intent is one nobody here recovers."""
    steps = plan(await journal.entries(), owners, db=str(journal.state.path))
    for owner in sorted(owners, key=lambda owner: ORDER.index(owner.name)):
        for step in steps[owner.name]:
            await step.recover(step.intent)
            await journal.drop(step.entry)
        if owner.sweep is not None:
            await owner.sweep()


def _refusal(entry: Entry, why: str, *, db: str) -> UnrecoverableIntent:
    kind = KINDS.get(entry.kind)
    needs = "" if kind is None else kind.NEEDS
    finish = f"start Prism with {needs} to finish it, or " if needs else ""
    return UnrecoverableIntent(
        f"an interrupted operation is in the journal: {entry.kind} of "
        f"{entry.key.partition(':')[2] or entry.key} (journal id {entry.id}, recorded "
        f"{entry.started_at}); {why}. Prism will not start until it is finished or removed",
        hint=f"{finish}if you know it is safe to forget, remove it with: "
        f"sqlite3 {db} 'DELETE FROM journal WHERE id = {entry.id}'",
    )


__all__ = ["ORDER", "Owner", "UnrecoverableIntent", "plan", "recover"]
