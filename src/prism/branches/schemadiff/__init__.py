"""Schema diff between two branches: what objects A has that B lacks, lacks, or has otherwise.

Every object gets a kind, a quoted qualified name and a small definition; the diff compares
those, so a rename shows as a removal plus an addition — the catalogs cannot tell a rename
from a drop and a create, and guessing would be worse. ``catalog`` reads (the only I/O),
``plan`` compares and orders, ``render`` writes each object's SQL, ``text`` shows it.
"""

from prism.branches.schemadiff.catalog import read_schema
from prism.branches.schemadiff.model import Schema, SchemaObject, schema_from_rows
from prism.branches.schemadiff.plan import SchemaDiff, diff_schemas
from prism.branches.schemadiff.render import Statement
from prism.branches.schemadiff.text import diff_view, format_diff

__all__ = [
    "Schema",
    "SchemaDiff",
    "SchemaObject",
    "Statement",
    "diff_schemas",
    "diff_view",
    "format_diff",
    "read_schema",
    "schema_from_rows",
]
