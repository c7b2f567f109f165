"""Comparing two schemas, and the DDL that turns B into A in an order that runs.

The order comes from the dependencies each branch's ``pg_depend`` records: drops go in B's
reverse dependency order, creations and in-place changes in A's. What cannot change in place
is dropped and created again, and so is everything that depends on it (views on a column
whose type changes, triggers on a function whose result type changes, a view's comment...),
because Postgres refuses to drop or retype what others still use and we never CASCADE.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prism.branches.schemadiff.model import KINDS, Key, Schema, SchemaObject
from prism.branches.schemadiff.render import Statement, alter, create, drop, drop_default

# Kinds that can be dropped and created again without losing data.
_RECREATABLE = frozenset(
    {"view", "index", "constraint", "trigger", "policy", "comment", "grant", "function"}
)
# Kinds whose members go with them when they are dropped.
_CONTAINERS = frozenset({"table", "view", "column", "type", "function", "sequence", "schema"})


@dataclass(frozen=True)
class SchemaDiff:
    """What A has that B lacks (``added``), lacks (``removed``) and has otherwise (``changed``)."""

    added: list[SchemaObject]
    removed: list[SchemaObject]
    changed: list[tuple[SchemaObject, SchemaObject]]
    """Pairs (in A, in B)."""
    ddl: list[Statement]

    @property
    def identical(self) -> bool:
        return not (self.added or self.removed or self.changed)


def _rank(key: Key) -> tuple[int, str]:
    return KINDS.index(key[0]), key[1]


def _topological(keys: Iterable[Key], needs: Callable[[Key], Iterable[Key]]) -> list[Key]:
    """``keys`` with what each needs first; ties (and cycles, which only a catalog bug makes)
    are broken by kind, then name."""
    pending = set(keys)
    waits = {k: {n for n in needs(k) if n in pending and n != k} for k in pending}
    users: dict[Key, set[Key]] = {}
    for k, ns in waits.items():
        for n in ns:
            users.setdefault(n, set()).add(k)
    ready = [(_rank(k), k) for k, ns in waits.items() if not ns]
    heapq.heapify(ready)
    order: list[Key] = []
    while pending:
        if not ready:  # a cycle: take the first by rank
            k = min(pending, key=_rank)
            heapq.heappush(ready, (_rank(k), k))
            waits[k] = set()
        _, k = heapq.heappop(ready)
        if k not in pending:
            continue
        pending.discard(k)
        order.append(k)
        for user in users.get(k, ()):
            if user in pending and k in waits[user]:
                waits[user].discard(k)
                if not waits[user]:
                    heapq.heappush(ready, (_rank(user), user))
    return order


def _dependents(schema: Schema, seeds: set[Key]) -> set[Key]:
    """Everything in ``schema`` that needs one of ``seeds``, directly or not."""
    users: dict[Key, set[Key]] = {}
    for key in schema.objects.keys() | schema.depends.keys():
        for needed in schema.needs(key):
            users.setdefault(needed, set()).add(key)
    found: set[Key] = set()
    todo = list(seeds)
    while todo:
        for user in users.get(todo.pop(), ()):
            if user not in found and user not in seeds:
                found.add(user)
                todo.append(user)
    return found


def diff_schemas(a: Schema, b: Schema) -> SchemaDiff:
    """Compare A with B; the DDL turns B into A."""
    added_keys = a.objects.keys() - b.objects.keys()
    removed_keys = b.objects.keys() - a.objects.keys()
    changed_keys = {
        k
        for k in a.objects.keys() & b.objects.keys()
        if a.objects[k].definition != b.objects[k].definition
    }
    added = [a.objects[k] for k in sorted(added_keys, key=_rank)]
    removed = [b.objects[k] for k in sorted(removed_keys, key=_rank)]
    changed = [(a.objects[k], b.objects[k]) for k in sorted(changed_keys, key=_rank)]
    return SchemaDiff(added, removed, changed, _ddl(a, b, added_keys, removed_keys, changed_keys))


def _ddl(
    a: Schema, b: Schema, added: set[Key], removed: set[Key], changed: set[Key]
) -> list[Statement]:
    altered = {k: alter(a.objects[k], b.objects[k]) for k in changed}
    replaced = {k for k, statements in altered.items() if statements is None}
    retyped = {
        k
        for k in changed
        if k[0] == "column" and a.objects[k].definition["type"] != b.objects[k].definition["type"]
    }
    forced = {
        k
        for k in _dependents(b, removed | replaced | retyped)
        if k[0] in _RECREATABLE and k in a.objects and k not in changed
    } | {k for k in _dependents(b, replaced) if k in changed and k[0] in _RECREATABLE}
    replaced |= forced
    ddl = [s for k in sorted(changed, key=_rank) if k[0] == "column" for s in _pre(a, b, k)]
    ddl += _drops(b, removed | replaced)
    ddl += _creations(a, added, replaced, {k: v for k, v in altered.items() if k not in replaced})
    if any(k[0] == "function" for k in added | replaced):
        # As pg_dump does: a function body may name what is created after it.
        ddl.insert(0, Statement("SET check_function_bodies = false;"))
    return ddl


def _pre(a: Schema, b: Schema, key: Key) -> list[Statement]:
    return drop_default(a.objects[key], b.objects[key])


def _drops(b: Schema, keys: set[Key]) -> list[Statement]:
    """Drop ``keys`` from B, users first, leaving out what goes with its container."""
    gone = {k for k in keys if k[0] in _CONTAINERS}

    def implied(key: Key) -> bool:
        obj = b.objects[key]
        if obj.parent is not None and ("table", obj.parent) in gone:
            return True
        if key[0] in ("comment", "grant"):
            return bool(b.needs(key) & gone)
        owner = obj.definition.get("owned_by") if key[0] == "sequence" else None
        return owner is not None and any(
            kind == "table" and owner.startswith(name + ".") for kind, name in gone
        )

    order = _topological(keys, b.needs)[::-1]
    return [s for k in order if not implied(k) for s in drop(b.objects[k])]


def _creations(
    a: Schema, added: set[Key], replaced: set[Key], altered: dict[Key, list[Statement] | None]
) -> list[Statement]:
    """Create ``added`` and ``replaced`` and change ``altered`` in A's dependency order, a
    new table with its columns."""
    new_tables = {k[1] for k in added if k[0] == "table"}
    columns: dict[str, list[SchemaObject]] = {}
    for obj in a.objects.values():
        if obj.kind == "column" and obj.parent in new_tables:
            columns.setdefault(obj.parent, []).append(obj)

    def node(key: Key) -> Key:
        parent = a.objects[key].parent if key in a.objects else None
        return ("table", parent) if key[0] == "column" and parent in new_tables else key

    def needs(key: Key) -> set[Key]:
        members = columns.get(key[1], []) if key[0] == "table" else []
        wanted = set(a.needs(key)).union(*(a.needs(c.key) for c in members))
        return {node(k) for k in wanted} - {key}

    keys = {node(k) for k in added | replaced | altered.keys()}
    ddl: list[Statement] = []
    for key in _topological(keys, needs):
        statements = altered.get(key)
        if statements is not None:
            ddl += statements
        else:
            ddl += create(a.objects[key], columns.get(key[1], []))
    for key in sorted(added, key=_rank):
        owner = a.objects[key].definition.get("owned_by") if key[0] == "sequence" else None
        if owner is not None:
            ddl.append(Statement(f"ALTER SEQUENCE {key[1]} OWNED BY {owner};"))
    return ddl
