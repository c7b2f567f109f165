"""The SQL for one object: how to create it, drop it, or change it in place.

Pure functions of the model. ``alter`` answers None when an object cannot be changed in place
and must be dropped and created again (with what depends on it). What SQL cannot express
safely comes back as a ``manual`` statement: a comment saying so, never a statement known to
fail.
"""

from __future__ import annotations

from dataclasses import dataclass

from prism.branches.schemadiff.model import SchemaObject


@dataclass(frozen=True)
class Statement:
    """One statement of the DDL; ``destructive`` ones lose data, ``manual`` ones are comments
    about what a person has to do."""

    sql: str
    destructive: bool = False
    manual: bool = False


def manual(what: str) -> Statement:
    return Statement(f"-- cannot script: {what}", manual=True)


def _last(name: str) -> str:
    """The object's own name in a ``schema.table.member`` name (identifiers are quoted, so the
    last dot outside quotes separates it)."""
    quoted = False
    for i in range(len(name) - 1, -1, -1):
        if name[i] == '"':
            quoted = not quoted
        elif name[i] == "." and not quoted:
            return name[i + 1 :]
    return name


def _lines(value: str | None) -> list[str]:
    return value.split("\n") if value else []


def column_sql(obj: SchemaObject) -> str:
    """``name type [GENERATED …] [DEFAULT …] [NOT NULL]``, as in CREATE TABLE or ADD COLUMN."""
    d = obj.definition
    parts = [_last(obj.name), str(d["type"])]
    if d["generated"] is not None:
        parts.append(f"GENERATED ALWAYS AS ({d['generated']}) STORED")
    if d["identity"] is not None:
        parts.append(f"GENERATED {d['identity']} AS IDENTITY")
    if d["default"] is not None:
        parts.append(f"DEFAULT {d['default']}")
    if d["nullable"] == "NOT NULL" and d["identity"] is None:
        parts.append("NOT NULL")
    return " ".join(parts)


def _create_type(obj: SchemaObject) -> str:
    d = obj.definition
    if d["type"] == "ENUM":
        return f"CREATE TYPE {obj.name} AS ENUM ({', '.join(_lines(d['elements']))});"
    if d["type"] == "COMPOSITE":
        return f"CREATE TYPE {obj.name} AS ({', '.join(_lines(d['elements']))});"
    parts = [f"CREATE DOMAIN {obj.name} AS {d['elements']}"]
    if d["default"] is not None:
        parts.append(f"DEFAULT {d['default']}")
    if d["not_null"] is not None:
        parts.append("NOT NULL")
    return " ".join(parts + _lines(d["constraints"])) + ";"


def _create_policy(obj: SchemaObject) -> str:
    d = obj.definition
    sql = (
        f"CREATE POLICY {_last(obj.name)} ON {obj.parent} AS {d['permissive']} "
        f"FOR {d['command']} TO {d['roles']}"
    )
    if d["using"] is not None:
        sql += f" USING ({d['using']})"
    if d["check"] is not None:
        sql += f" WITH CHECK ({d['check']})"
    return sql + ";"


def _grant(obj: SchemaObject) -> str:
    on, _, grantee = obj.name.rpartition(" TO ")
    return f"GRANT {obj.definition['privileges']} ON {on} TO {grantee};"


def create(obj: SchemaObject, columns: list[SchemaObject]) -> list[Statement]:
    """Create ``obj`` (a table with ``columns``, its own, those not inherited)."""
    d = obj.definition
    kind = obj.kind
    if kind == "extension":
        return [Statement(f"CREATE EXTENSION IF NOT EXISTS {obj.name};")]
    if kind == "schema":
        return [Statement(f"CREATE SCHEMA {obj.name};")]
    if kind == "type":
        return [Statement(_create_type(obj))]
    if kind == "sequence":
        sql = f"CREATE SEQUENCE {obj.name} AS {d['type']} START {d['start']}"
        return [Statement(f"{sql} INCREMENT {d['increment']};")]
    if kind == "table":
        return _create_table(obj, columns)
    if kind == "column":
        return [Statement(f"ALTER TABLE {obj.parent} ADD COLUMN {column_sql(obj)};")]
    if kind == "constraint":
        sql = f"ALTER TABLE {obj.parent} ADD CONSTRAINT {_last(obj.name)} {d['definition']};"
        return [Statement(sql)]
    if kind == "index":
        # An index on a partitioned table reads ON ONLY; created plainly it covers the partitions.
        return [Statement(str(d["definition"]).replace(" ON ONLY ", " ON ", 1) + ";")]
    if kind == "view":
        return [Statement(f"CREATE {d['type']} {obj.name} AS\n{str(d['definition']).strip()}")]
    if kind == "trigger":
        return [Statement(f"{d['definition']};")]
    if kind == "policy":
        return [Statement(_create_policy(obj))]
    if kind == "comment":
        return [Statement(f"COMMENT ON {obj.name} IS {d['text']};")]
    if kind == "grant":
        return [Statement(_grant(obj))]
    if kind == "function":
        return [Statement(f"{str(d['definition']).strip()};")]
    return [manual(f"{obj.name} ({d['what']}) exists only here")]


def _create_table(obj: SchemaObject, columns: list[SchemaObject]) -> list[Statement]:
    d = obj.definition
    tail = f" {d['partition_by']}" if d["partition_by"] else ""
    if d["partition_of"] is not None:  # its columns are its parent's
        statements = [Statement(f"CREATE TABLE {obj.name} {d['partition_of']}{tail};")]
    else:
        body = ",\n    ".join(column_sql(c) for c in columns)
        statements = [Statement(f"CREATE TABLE {obj.name} (\n    {body}\n){tail};")]
    for field in ("row_security", "force_row_security"):
        if d[field] is not None:
            statements.append(Statement(f"ALTER TABLE {obj.name} {d[field]};"))
    return statements


def drop(obj: SchemaObject) -> list[Statement]:
    """Drop ``obj`` (never CASCADE: what depends on it is dropped first, by name)."""
    kind, name = obj.kind, obj.name
    if kind == "column":
        sql = f"ALTER TABLE {obj.parent} DROP COLUMN {_last(name)};"
        return [Statement(sql, destructive=obj.definition["generated"] is None)]
    if kind == "constraint":
        return [Statement(f"ALTER TABLE {obj.parent} DROP CONSTRAINT {_last(name)};")]
    if kind in ("trigger", "policy"):
        return [Statement(f"DROP {kind.upper()} {_last(name)} ON {obj.parent};")]
    if kind == "comment":
        return [Statement(f"COMMENT ON {name} IS NULL;")]
    if kind == "grant":
        on, _, grantee = name.rpartition(" TO ")
        return [Statement(f"REVOKE ALL ON {on} FROM {grantee};")]
    if kind == "unsupported":
        return [manual(f"{name} ({obj.definition['what']}) exists only in the other branch")]
    if kind == "type":
        word = "DOMAIN" if obj.definition["type"] == "DOMAIN" else "TYPE"
        return [Statement(f"DROP {word} {name};")]
    word = str(obj.definition["type"]) if kind in ("view", "function") else kind.upper()
    return [Statement(f"DROP {word} {name};", destructive=kind in ("table", "sequence"))]


def alter(new: SchemaObject, old: SchemaObject) -> list[Statement] | None:
    """Statements that change ``old`` into ``new`` in place; None: drop and create instead."""
    kind = new.kind
    if kind == "column":
        return _alter_column(new, old)
    if kind == "type":
        return _alter_type(new, old)
    if kind == "table":
        return _alter_table(new, old)
    if kind == "function":
        same = all(new.definition[f] == old.definition[f] for f in ("type", "returns"))
        return create(new, []) if same else None  # pg_get_functiondef says CREATE OR REPLACE
    if kind == "comment":
        return create(new, [])
    if kind == "grant":
        return [*drop(old), *create(new, [])]
    if kind == "extension":
        return [Statement(f"ALTER EXTENSION {new.name} UPDATE TO '{new.definition['version']}';")]
    if kind == "sequence":
        d = new.definition
        sql = f"ALTER SEQUENCE {new.name} AS {d['type']} START {d['start']} "
        owner = d["owned_by"] or "NONE"
        return [Statement(f"{sql}INCREMENT {d['increment']} OWNED BY {owner};")]
    if kind == "unsupported":
        return [manual(f"{new.name} ({new.definition['what']}) differs")]
    return None


def _alter_table(new: SchemaObject, old: SchemaObject) -> list[Statement]:
    statements = []
    for field in ("partition_by", "partition_of"):
        if new.definition[field] != old.definition[field]:
            statements.append(manual(f"{new.name}: {new.definition[field] or 'not partitioned'}"))
    undo = {
        "row_security": "DISABLE ROW LEVEL SECURITY",
        "force_row_security": "NO FORCE ROW LEVEL SECURITY",
    }
    for field, off in undo.items():
        if new.definition[field] != old.definition[field]:
            statements.append(Statement(f"ALTER TABLE {new.name} {new.definition[field] or off};"))
    return statements


def drop_default(new: SchemaObject, old: SchemaObject) -> list[Statement]:
    """A column default that goes or changes is dropped before anything else, so that the
    sequence or function it used can be dropped; the new one is set later."""
    if (
        old.definition["default"] is not None
        and new.definition["default"] != old.definition["default"]
    ):
        return [Statement(f"ALTER TABLE {new.parent} ALTER COLUMN {_last(new.name)} DROP DEFAULT;")]
    return []


def _alter_column(new: SchemaObject, old: SchemaObject) -> list[Statement] | None:
    n, o = new.definition, old.definition
    if n["generated"] != o["generated"]:
        return None  # an expression cannot be changed in place before Postgres 17
    column = _last(new.name)
    prefix = f"ALTER TABLE {new.parent} ALTER COLUMN {column}"
    statements = []
    if o["identity"] is not None and n["identity"] != o["identity"]:
        statements.append(Statement(f"{prefix} DROP IDENTITY;"))
    if n["type"] != o["type"]:
        sql = f"{prefix} TYPE {n['type']} USING {column}::{n['type']};"
        statements.append(Statement(sql, destructive=True))
    if n["nullable"] != o["nullable"]:
        verb = "SET" if n["nullable"] == "NOT NULL" else "DROP"
        statements.append(Statement(f"{prefix} {verb} NOT NULL;"))
    if n["default"] != o["default"] and n["default"] is not None:
        statements.append(Statement(f"{prefix} SET DEFAULT {n['default']};"))
    if n["identity"] is not None and n["identity"] != o["identity"]:
        statements.append(Statement(f"{prefix} ADD GENERATED {n['identity']} AS IDENTITY;"))
    return statements


def _alter_type(new: SchemaObject, old: SchemaObject) -> list[Statement] | None:
    n, o = new.definition, old.definition
    if n["type"] != o["type"]:
        return None
    if n["type"] == "ENUM":
        return _alter_enum(new, old)
    if n["type"] == "COMPOSITE":
        return _alter_composite(new, old)
    if n["elements"] != o["elements"]:
        return [manual(f"domain {new.name} changes its base type to {n['elements']}")]
    prefix = f"ALTER DOMAIN {new.name}"
    statements = []
    if n["default"] != o["default"]:
        default = "DROP DEFAULT" if n["default"] is None else f"SET DEFAULT {n['default']}"
        statements.append(Statement(f"{prefix} {default};"))
    if n["not_null"] != o["not_null"]:
        statements.append(Statement(f"{prefix} {'SET' if n['not_null'] else 'DROP'} NOT NULL;"))
    before, after = _lines(o["constraints"]), _lines(n["constraints"])
    for gone in before:
        if gone not in after:
            name = gone.split(" ", 2)[1]
            statements.append(Statement(f"{prefix} DROP CONSTRAINT {name};"))
    statements += [Statement(f"{prefix} ADD {c};") for c in after if c not in before]
    return statements


def _alter_enum(new: SchemaObject, old: SchemaObject) -> list[Statement]:
    labels, had = _lines(new.definition["elements"]), _lines(old.definition["elements"])
    if [label for label in labels if label in had] != had:
        # Postgres cannot remove or reorder enum values.
        return [manual(f"enum {new.name} drops or reorders values: now ({', '.join(labels)})")]
    statements = []
    for i, label in enumerate(labels):
        if label not in had:
            where = f" BEFORE {labels[i + 1]}" if i + 1 < len(labels) else ""
            if not where and i > 0:
                where = f" AFTER {labels[i - 1]}"
            statements.append(Statement(f"ALTER TYPE {new.name} ADD VALUE {label}{where};"))
            had.insert(i, label)
    return statements


def _alter_composite(new: SchemaObject, old: SchemaObject) -> list[Statement]:
    def attributes(obj: SchemaObject) -> dict[str, str]:
        pairs = (a.split(" ", 1) for a in _lines(obj.definition["elements"]))
        return {name: type_ for name, type_ in pairs}

    now, had = attributes(new), attributes(old)
    prefix = f"ALTER TYPE {new.name}"
    statements = [Statement(f"{prefix} DROP ATTRIBUTE {a};") for a in had if a not in now]
    for name, type_ in now.items():
        if name not in had:
            statements.append(Statement(f"{prefix} ADD ATTRIBUTE {name} {type_};"))
        elif had[name] != type_:
            statements.append(Statement(f"{prefix} ALTER ATTRIBUTE {name} TYPE {type_};"))
    return statements
