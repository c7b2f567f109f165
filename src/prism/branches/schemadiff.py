"""Schema diff between two branches: what objects A has that B lacks, lacks, or has otherwise.

Read straight from the system catalogs of each branch's server (no driver, no extra package:
the one maintained Python tool for this, migra, is abandoned and pulls SQLAlchemy and psycopg2
in), over Prism's own service connection. Every object gets a kind, a quoted qualified name and
a small definition; the diff compares those, so a rename shows as a removal plus an addition —
the catalogs cannot tell a rename from a drop and a create, and guessing would be worse.

``ddl`` lists the statements that turn B's schema into A's, in an order that works (things that
others depend on are created first and dropped last). Statements that lose data (dropping a
table or a column, changing a column's type) are marked ``destructive``, for a person to read
before running them. Catalog reading is I/O (``read_schema``); everything else here is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prism.postgres.client import ServiceConnection

# User objects only: no system schemas, no objects that belong to an extension.
_USER_NS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'"
)


def _not_in_extension(oid: str) -> str:
    return f"NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = {oid} AND e.deptype = 'e')"


# kind -> query returning (name, parent, *definition values); columns named in _FIELDS.
_QUERIES: dict[str, str] = {
    "extension": "SELECT quote_ident(extname), NULL, extversion FROM pg_extension "
    "WHERE extname <> 'plpgsql'",
    "schema": "SELECT quote_ident(n.nspname), NULL FROM pg_namespace n "
    f"WHERE {_USER_NS} AND n.nspname <> 'public' AND {_not_in_extension('n.oid')}",
    "sequence": "SELECT format('%I.%I', n.nspname, c.relname), NULL, "
    "format_type(s.seqtypid, NULL), s.seqstart::text, s.seqincrement::text, "
    "(SELECT format('%I.%I.%I', tn.nspname, t.relname, a.attname) FROM pg_depend d "
    "JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace "
    "JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
    "WHERE d.objid = c.oid AND d.deptype IN ('a', 'i') LIMIT 1) "
    "FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid "
    f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_NS} "
    f"AND {_not_in_extension('c.oid')}",
    "table": "SELECT format('%I.%I', n.nspname, c.relname), NULL FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE c.relkind IN ('r', 'p') AND {_USER_NS} AND {_not_in_extension('c.oid')}",
    "column": "SELECT format('%I.%I.%I', n.nspname, c.relname, a.attname), "
    "format('%I.%I', n.nspname, c.relname), format_type(a.atttypid, a.atttypmod), "
    "CASE WHEN a.attnotnull THEN 'NOT NULL' ELSE 'NULL' END, "
    "pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a "
    "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
    "WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') "
    f"AND {_USER_NS} AND {_not_in_extension('c.oid')} ORDER BY a.attnum",
    "constraint": "SELECT format('%I.%I.%I', n.nspname, c.relname, con.conname), "
    "format('%I.%I', n.nspname, c.relname), con.contype::text, "
    "pg_get_constraintdef(con.oid) FROM pg_constraint con "
    "JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE con.contype IN ('p', 'u', 'f', 'c', 'x') AND {_USER_NS} "
    f"AND {_not_in_extension('c.oid')}",
    "index": "SELECT format('%I.%I', n.nspname, ic.relname), "
    "format('%I.%I', n.nspname, tc.relname), pg_get_indexdef(i.indexrelid) FROM pg_index i "
    "JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class tc ON tc.oid = i.indrelid "
    f"JOIN pg_namespace n ON n.oid = ic.relnamespace WHERE {_USER_NS} "
    "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) "
    f"AND {_not_in_extension('tc.oid')}",
    "view": "SELECT format('%I.%I', n.nspname, c.relname), NULL, "
    "CASE c.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END, "
    "pg_get_viewdef(c.oid, true) FROM pg_class c JOIN pg_namespace n "
    f"ON n.oid = c.relnamespace WHERE c.relkind IN ('v', 'm') AND {_USER_NS} "
    f"AND {_not_in_extension('c.oid')}",
    "function": "SELECT format('%I.%I(%s)', n.nspname, p.proname, "
    "pg_get_function_identity_arguments(p.oid)), NULL, "
    "CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, "
    "pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
    f"WHERE p.prokind IN ('f', 'p') AND {_USER_NS} AND {_not_in_extension('p.oid')}",
}

_FIELDS: dict[str, tuple[str, ...]] = {
    "extension": ("version",),
    "schema": (),
    "sequence": ("type", "start", "increment", "owned_by"),
    "table": (),
    "column": ("type", "nullable", "default"),
    "constraint": ("type", "definition"),
    "index": ("definition",),
    "view": ("type", "definition"),
    "function": ("type", "definition"),
}

# Creation order: what others depend on first. Drops go in the reverse order.
KINDS = (
    "extension",
    "schema",
    "function",
    "sequence",
    "table",
    "column",
    "constraint",
    "index",
    "view",
)


@dataclass(frozen=True)
class SchemaObject:
    """One object of a schema: ``kind`` and quoted qualified ``name`` identify it."""

    kind: str
    name: str
    parent: str | None
    definition: Mapping[str, str | None]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, **dict(self.definition)}


Schema = dict[tuple[str, str], SchemaObject]


def schema_from_rows(rows_by_kind: Mapping[str, Iterable[Sequence[str | None]]]) -> Schema:
    """Build a schema from each kind's catalog rows (``name, parent, *fields``)."""
    schema: Schema = {}
    for kind, rows in rows_by_kind.items():
        for name, parent, *values in rows:
            assert name is not None
            definition = dict(zip(_FIELDS[kind], values, strict=True))
            schema[(kind, name)] = SchemaObject(kind, name, parent, definition)
    return schema


async def read_schema(service: ServiceConnection) -> Schema:
    """Read every user object's definition from a branch's catalogs."""
    return schema_from_rows({kind: await service.query(sql) for kind, sql in _QUERIES.items()})


@dataclass(frozen=True)
class Statement:
    sql: str
    destructive: bool = False


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


def _order(key: tuple[str, str]) -> tuple[int, str]:
    return KINDS.index(key[0]), key[1]


def diff_schemas(a: Schema, b: Schema) -> SchemaDiff:
    """Compare A with B; the DDL turns B into A."""
    added = [a[k] for k in sorted(a.keys() - b.keys(), key=_order)]
    removed = [b[k] for k in sorted(b.keys() - a.keys(), key=_order)]
    changed = [
        (a[k], b[k])
        for k in sorted(a.keys() & b.keys(), key=_order)
        if a[k].definition != b[k].definition
    ]
    return SchemaDiff(added, removed, changed, _ddl(a, added, removed, changed))


def _table_of_column(name: str) -> tuple[str, str]:
    table, _, column = name.rpartition(".")
    return table, column


def _column_sql(obj: SchemaObject) -> str:
    _, column = _table_of_column(obj.name)
    parts = [column, str(obj.definition["type"])]
    if obj.definition["default"] is not None:
        parts.append(f"DEFAULT {obj.definition['default']}")
    if obj.definition["nullable"] == "NOT NULL":
        parts.append("NOT NULL")
    return " ".join(parts)


def _create(obj: SchemaObject, a: Schema, new_tables: set[str]) -> list[Statement]:
    d = obj.definition
    if obj.kind == "extension":
        return [Statement(f"CREATE EXTENSION IF NOT EXISTS {obj.name};")]
    if obj.kind == "schema":
        return [Statement(f"CREATE SCHEMA {obj.name};")]
    if obj.kind == "sequence":
        sql = f"CREATE SEQUENCE {obj.name} AS {d['type']} START {d['start']}"
        return [Statement(f"{sql} INCREMENT {d['increment']};")]
    if obj.kind == "table":
        columns = [c for c in a.values() if c.kind == "column" and c.parent == obj.name]
        body = ",\n    ".join(_column_sql(c) for c in columns)
        return [Statement(f"CREATE TABLE {obj.name} (\n    {body}\n);")]
    if obj.kind == "column":
        if obj.parent in new_tables:
            return []  # part of its table's CREATE TABLE
        return [Statement(f"ALTER TABLE {obj.parent} ADD COLUMN {_column_sql(obj)};")]
    if obj.kind == "constraint":
        _, name = _table_of_column(obj.name)
        return [Statement(f"ALTER TABLE {obj.parent} ADD CONSTRAINT {name} {d['definition']};")]
    if obj.kind == "index":
        return [Statement(f"{d['definition']};")]
    if obj.kind == "view":
        return [Statement(f"CREATE {d['type']} {obj.name} AS\n{str(d['definition']).strip()}")]
    return [Statement(f"{str(d['definition']).strip()};")]  # function: its full definition


def _drop(obj: SchemaObject, dropped_tables: set[str]) -> list[Statement]:
    if obj.kind == "column":
        if obj.parent in dropped_tables:
            return []
        _, column = _table_of_column(obj.name)
        return [Statement(f"ALTER TABLE {obj.parent} DROP COLUMN {column};", destructive=True)]
    if obj.kind in ("constraint", "index") and obj.parent in dropped_tables:
        return []
    if obj.kind == "constraint":
        _, name = _table_of_column(obj.name)
        return [Statement(f"ALTER TABLE {obj.parent} DROP CONSTRAINT {name};")]
    if obj.kind == "sequence" and obj.definition["owned_by"] is not None:
        owner = _table_of_column(str(obj.definition["owned_by"]))[0]
        if owner in dropped_tables:
            return []  # goes with its table
    kind = obj.definition["type"] if obj.kind in ("view", "function") else obj.kind.upper()
    destructive = obj.kind in ("table", "sequence")
    return [Statement(f"DROP {kind} {obj.name};", destructive=destructive)]


def _alter_column(new: SchemaObject, old: SchemaObject) -> list[Statement]:
    table, column = new.parent, _table_of_column(new.name)[1]
    prefix = f"ALTER TABLE {table} ALTER COLUMN {column}"
    statements = []
    if new.definition["type"] != old.definition["type"]:
        sql = f"{prefix} TYPE {new.definition['type']} USING {column}::{new.definition['type']};"
        statements.append(Statement(sql, destructive=True))
    if new.definition["default"] != old.definition["default"]:
        default = new.definition["default"]
        sql = f"{prefix} DROP DEFAULT;" if default is None else f"{prefix} SET DEFAULT {default};"
        statements.append(Statement(sql))
    if new.definition["nullable"] != old.definition["nullable"]:
        verb = "SET" if new.definition["nullable"] == "NOT NULL" else "DROP"
        statements.append(Statement(f"{prefix} {verb} NOT NULL;"))
    return statements


def _ddl(
    a: Schema,
    added: list[SchemaObject],
    removed: list[SchemaObject],
    changed: list[tuple[SchemaObject, SchemaObject]],
) -> list[Statement]:
    new_tables = {o.name for o in added if o.kind == "table"}
    dropped_tables = {o.name for o in removed if o.kind == "table"}
    ddl: list[Statement] = []
    # Changed objects other than columns and extensions are replaced: dropped, then re-created.
    replaced = [(n, o) for n, o in changed if n.kind not in ("column", "extension", "sequence")]
    for obj in sorted([*removed, *(o for _, o in replaced)], key=lambda o: _order(_key(o)))[::-1]:
        ddl += _drop(obj, dropped_tables)
    for new, old in changed:
        if new.kind == "column":
            ddl += _alter_column(new, old)
        elif new.kind == "extension":
            ddl.append(
                Statement(f"ALTER EXTENSION {new.name} UPDATE TO '{new.definition['version']}';")
            )
        elif new.kind == "sequence":
            d = new.definition
            ddl.append(
                Statement(f"ALTER SEQUENCE {new.name} AS {d['type']} INCREMENT {d['increment']};")
            )
    for obj in sorted([*added, *(n for n, _ in replaced)], key=lambda o: _order(_key(o))):
        ddl += _create(obj, a, new_tables)
    for obj in added:
        if obj.kind == "sequence" and obj.definition["owned_by"] is not None:
            ddl.append(
                Statement(f"ALTER SEQUENCE {obj.name} OWNED BY {obj.definition['owned_by']};")
            )
    return ddl


def _key(obj: SchemaObject) -> tuple[str, str]:
    return obj.kind, obj.name


def diff_view(diff: SchemaDiff, *, a: str, b: str, database: str) -> dict[str, Any]:
    """The JSON of ``GET /api/v1/branches/{a}/diff?against={b}``."""
    return {
        "branch": a,
        "against": b,
        "database": database,
        "identical": diff.identical,
        "added": [o.as_dict() for o in diff.added],
        "removed": [o.as_dict() for o in diff.removed],
        "changed": [
            {
                "kind": new.kind,
                "name": new.name,
                "branch": dict(new.definition),
                "against": dict(old.definition),
            }
            for new, old in diff.changed
        ],
        "ddl": [{"sql": s.sql, "destructive": s.destructive} for s in diff.ddl],
    }


def _summary(item: Mapping[str, Any]) -> str:
    # In the catalog's order (JSON objects may come back with their keys sorted).
    values = [(key, item.get(key)) for key in _FIELDS[item["kind"]]]
    details = [
        f"{key} {value}" if key in ("default", "owned_by") else str(value)
        for key, value in values
        if value is not None and "\n" not in str(value)
    ]
    return f"{item['kind']} {item['name']}" + (f" ({', '.join(details)})" if details else "")


def format_diff(view: Mapping[str, Any]) -> str:
    """The readable text of a diff (``prism diff A B``), from its JSON."""
    head = f"schema of {view['branch']} against {view['against']} (database {view['database']})"
    if view["identical"]:
        return f"{head}: identical"
    lines = [f"{head}:"]
    lines += [f"+ {_summary(item)}" for item in view["added"]]
    lines += [f"- {_summary(item)}" for item in view["removed"]]
    for item in view["changed"]:
        what = ", ".join(
            f"{key} {item['against'].get(key)!s} -> {value!s}"
            if "\n" not in f"{value}{item['against'].get(key)}"
            else f"{key} changed"
            for key in _FIELDS[item["kind"]]
            if item["against"].get(key) != (value := item["branch"].get(key))
        )
        lines.append(f"~ {item['kind']} {item['name']}: {what}")
    lines.append("")
    lines.append(f"-- DDL that turns {view['against']} into {view['branch']}:")
    for statement in view["ddl"]:
        marker = "-- destructive: review before running\n" if statement["destructive"] else ""
        lines.append(marker + statement["sql"])
    return "\n".join(lines)
