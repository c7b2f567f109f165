"""The schema model: objects identified by kind and quoted qualified name, and what they need.

A schema is what the catalogs say, reduced to what a diff compares (each object's
``definition``) plus the dependencies read from ``pg_depend`` (``depends``), which decide the
order of the DDL and which objects must be dropped and re-created along with another.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]
"""(kind, quoted qualified name)."""

# kind -> the definition's fields, in the order the catalog query returns them.
FIELDS: dict[str, tuple[str, ...]] = {
    "extension": ("version",),
    "schema": (),
    "type": ("type", "elements", "default", "not_null", "constraints"),
    "sequence": ("type", "start", "increment", "owned_by"),
    "table": ("partition_by", "partition_of", "row_security", "force_row_security"),
    "column": ("type", "nullable", "default", "generated", "identity"),
    "function": ("type", "returns", "definition"),
    "constraint": ("definition",),
    "index": ("definition",),
    "view": ("type", "definition"),
    "trigger": ("definition",),
    "policy": ("permissive", "command", "roles", "using", "check"),
    "comment": ("text",),
    "grant": ("privileges",),
    "unsupported": ("what",),
}

KINDS = tuple(FIELDS)
"""Kinds in a creation order that works when nothing else says otherwise."""


@dataclass(frozen=True)
class SchemaObject:
    """One object of a schema: ``kind`` and quoted qualified ``name`` identify it."""

    kind: str
    name: str
    parent: str | None
    """The table a column, constraint, index, trigger or policy belongs to."""
    definition: Mapping[str, str | None]

    @property
    def key(self) -> Key:
        return self.kind, self.name

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, **dict(self.definition)}


@dataclass(frozen=True)
class Schema:
    """Every user object of one database, and what each depends on."""

    objects: dict[Key, SchemaObject]
    depends: Mapping[Key, frozenset[Key]] = field(default_factory=dict)

    def needs(self, key: Key) -> frozenset[Key]:
        """What ``key`` depends on: ``pg_depend``, and a member's own table."""
        obj = self.objects.get(key)
        parent = {("table", obj.parent)} if obj is not None and obj.parent else set()
        return self.depends.get(key, frozenset()) | parent


def schema_from_rows(
    rows_by_kind: Mapping[str, Iterable[Sequence[str | None]]],
    depends: Iterable[Sequence[str | None]] = (),
) -> Schema:
    """Build a schema from each kind's catalog rows (``name, parent, *fields``) and the
    dependency rows (``kind, name, needed kind, needed name``)."""
    objects: dict[Key, SchemaObject] = {}
    for kind, rows in rows_by_kind.items():
        for name, parent, *values in rows:
            assert name is not None
            definition = dict(zip(FIELDS[kind], values, strict=True))
            objects[(kind, name)] = SchemaObject(kind, name, parent, definition)
    needs: dict[Key, set[Key]] = {}
    for row in depends:
        user, needed = (str(row[0]), str(row[1])), (str(row[2]), str(row[3]))
        if user != needed:
            needs.setdefault(user, set()).add(needed)
    return Schema(objects, {key: frozenset(value) for key, value in needs.items()})
