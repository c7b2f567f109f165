"""The JSON of a diff and the text ``prism diff`` prints from it, which reads as SQL."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prism.branches.schemadiff.model import FIELDS
from prism.branches.schemadiff.plan import SchemaDiff

# How a field reads in SQL: its template, and what to say when it has no value.
_CLAUSES: dict[str, tuple[str, str]] = {
    "version": ("VERSION '{}'", ""),
    "default": ("DEFAULT {}", "no DEFAULT"),
    "generated": ("GENERATED ALWAYS AS ({}) STORED", "not generated"),
    "identity": ("GENERATED {} AS IDENTITY", "no identity"),
    "start": ("START {}", ""),
    "increment": ("INCREMENT {}", ""),
    "owned_by": ("OWNED BY {}", "OWNED BY NONE"),
    "returns": ("RETURNS {}", ""),
    "command": ("FOR {}", ""),
    "roles": ("TO {}", ""),
    "using": ("USING ({})", "no USING"),
    "check": ("WITH CHECK ({})", "no WITH CHECK"),
    "text": ("IS {}", "IS NULL"),
    "partition_by": ("{}", "not partitioned"),
    "partition_of": ("{}", "not a partition"),
    "row_security": ("{}", "DISABLE ROW LEVEL SECURITY"),
    "force_row_security": ("{}", "NO FORCE ROW LEVEL SECURITY"),
    "not_null": ("{}", "NULL"),
    "constraints": ("{}", "no constraints"),
}


def _clause(kind: str, field: str, value: Any) -> str:
    if value is None:
        return _CLAUSES.get(field, ("", ""))[1]
    text = str(value)
    if field == "elements":  # a domain's base type; an enum's values or a composite's fields
        joined = ", ".join(text.split("\n"))
        return f"AS {joined}" if kind == "domain" else f"({joined})"
    if "\n" in text:
        return ", ".join(text.split("\n")) if field == "constraints" else f"{field} (see DDL)"
    if kind == "index" and " ON " in text:  # the name is already said
        return text[text.index(" ON ") + 1 :]
    if field == "nullable":
        return "NOT NULL" if text == "NOT NULL" else ""
    return _CLAUSES.get(field, ("{}", ""))[0].format(text)


def _summary(item: Mapping[str, Any]) -> str:
    kind = _flavour(item["kind"], item)
    clauses = [
        _clause(kind, f, item.get(f)) for f in FIELDS[item["kind"]] if item.get(f) is not None
    ]
    shown = " ".join(c for c in clauses if c and "(see DDL)" not in c)
    return f"{item['kind']} {item['name']}" + (f" {shown}" if shown else "")


def _flavour(kind: str, definition: Mapping[str, Any]) -> str:
    """A type's flavour decides how its elements read; other kinds are themselves."""
    return "domain" if kind == "type" and definition.get("type") == "DOMAIN" else kind


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
        "ddl": [{"sql": s.sql, "destructive": s.destructive, "manual": s.manual} for s in diff.ddl],
    }


def format_diff(view: Mapping[str, Any]) -> str:
    """The readable text of a diff (``prism diff A B``), from its JSON."""
    head = f"schema of {view['branch']} against {view['against']} (database {view['database']})"
    if view["identical"]:
        return f"{head}: identical"
    lines = [f"{head}:"]
    lines += [f"+ {_summary(item)}" for item in view["added"]]
    lines += [f"- {_summary(item)}" for item in view["removed"]]
    for item in view["changed"]:
        new, old = item["branch"], item["against"]
        kind = _flavour(item["kind"], new)
        what = "; ".join(
            f"{_clause(kind, f, old.get(f)) or 'none'} -> {_clause(kind, f, new.get(f)) or 'none'}"
            if "\n" not in f"{new.get(f)}{old.get(f)}" or f in ("elements", "constraints")
            else f"{'body' if kind == 'function' else 'definition'} changed"
            for f in FIELDS[item["kind"]]
            if old.get(f) != new.get(f)
        )
        lines.append(f"~ {item['kind']} {item['name']}: {what}")
    lines.append("")
    lines.append(f"-- DDL that turns {view['against']} into {view['branch']}:")
    for statement in view["ddl"]:
        marker = "-- destructive: review before running\n" if statement["destructive"] else ""
        lines.append(marker + statement["sql"])
    return "\n".join(lines)
