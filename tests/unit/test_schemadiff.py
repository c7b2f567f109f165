"""The schema diff's pure parts: comparing catalog rows and deriving DDL in a working order."""

from __future__ import annotations

from prism.branches.schemadiff import diff_schemas, diff_view, format_diff, schema_from_rows

_B = schema_from_rows(
    {
        "table": [("public.t", None), ("public.old", None)],
        "column": [
            ("public.t.id", "public.t", "integer", "NOT NULL", None),
            ("public.t.gone", "public.t", "text", "NULL", None),
            ("public.old.x", "public.old", "integer", "NULL", None),
        ],
        "index": [
            ("public.old_x", "public.old", "CREATE INDEX old_x ON public.old USING btree (x)")
        ],
    }
)
_A = schema_from_rows(
    {
        "table": [("public.t", None), ("public.new", None)],
        "column": [
            ("public.t.id", "public.t", "bigint", "NOT NULL", "0"),
            ("public.new.x", "public.new", "integer", "NULL", None),
        ],
        "constraint": [("public.t.t_pkey", "public.t", "p", "PRIMARY KEY (id)")],
    }
)


def test_a_rename_is_a_removal_and_an_addition() -> None:
    diff = diff_schemas(_A, _B)
    assert [(o.kind, o.name) for o in diff.added] == [
        ("table", "public.new"),
        ("column", "public.new.x"),
        ("constraint", "public.t.t_pkey"),
    ]
    assert [(o.kind, o.name) for o in diff.removed] == [
        ("table", "public.old"),
        ("column", "public.old.x"),
        ("column", "public.t.gone"),
        ("index", "public.old_x"),
    ]
    assert [(new.name, old.definition["type"]) for new, old in diff.changed] == [
        ("public.t.id", "integer")
    ]


def test_ddl_drops_dependents_first_and_creates_tables_whole() -> None:
    ddl = [(s.sql, s.destructive) for s in diff_schemas(_A, _B).ddl]
    assert ddl == [
        # The old table's index and column go with it; only the table is dropped.
        ("ALTER TABLE public.t DROP COLUMN gone;", True),
        ("DROP TABLE public.old;", True),
        ("ALTER TABLE public.t ALTER COLUMN id TYPE bigint USING id::bigint;", True),
        ("ALTER TABLE public.t ALTER COLUMN id SET DEFAULT 0;", False),
        ("CREATE TABLE public.new (\n    x integer\n);", False),
        ("ALTER TABLE public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);", False),
    ]


def test_text_marks_destructive_statements_and_identical_schemas() -> None:
    view = diff_view(diff_schemas(_A, _B), a="a", b="b", database="app")
    text = format_diff(view)
    assert text.startswith("schema of a against b (database app):\n+ table public.new\n")
    assert "~ column public.t.id: type integer -> bigint, default None -> 0" in text
    assert "-- destructive: review before running\nDROP TABLE public.old;" in text
    same = diff_view(diff_schemas(_A, _A), a="a", b="a", database="app")
    assert format_diff(same) == "schema of a against a (database app): identical"
