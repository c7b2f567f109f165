"""The schema diff's pure parts: comparing catalog rows and deriving DDL in a working order."""

from __future__ import annotations

from prism.branches.schemadiff import diff_schemas, diff_view, format_diff, schema_from_rows
from prism.branches.schemadiff.dump import dump_diff

_B = schema_from_rows(
    {
        "table": [
            ("public.t", None, None, None, None, None),
            ("public.old", None, None, None, None, None),
        ],
        "column": [
            ("public.t.id", "public.t", "integer", "NOT NULL", None, None, None),
            ("public.t.gone", "public.t", "text", "NULL", None, None, None),
            ("public.old.x", "public.old", "integer", "NULL", None, None, None),
        ],
        "index": [
            ("public.old_x", "public.old", "CREATE INDEX old_x ON public.old USING btree (x)")
        ],
        "view": [("public.v", None, "VIEW", " SELECT id FROM t;")],
        "type": [("public.mood", None, "ENUM", "'sad'\n'ok'", None, None, None)],
    },
    [("view", "public.v", "column", "public.t.id")],
)
_A = schema_from_rows(
    {
        "table": [
            ("public.t", None, None, None, None, None),
            ("public.new", None, None, None, None, None),
        ],
        "column": [
            ("public.t.id", "public.t", "bigint", "NOT NULL", "0", None, None),
            ("public.new.x", "public.new", "mood", "NULL", None, None, None),
            ("public.new.y", "public.new", "integer", "NULL", None, "x2", None),
        ],
        "constraint": [("public.t.t_pkey", "public.t", "PRIMARY KEY (id)")],
        "view": [("public.v", None, "VIEW", " SELECT id FROM t;")],
        "type": [("public.mood", None, "ENUM", "'sad'\n'meh'\n'ok'", None, None, None)],
    },
    [
        ("view", "public.v", "column", "public.t.id"),
        ("column", "public.new.x", "type", "public.mood"),
    ],
)


def test_a_rename_is_a_removal_and_an_addition() -> None:
    diff = diff_schemas(_A, _B)
    assert [(o.kind, o.name) for o in diff.added] == [
        ("table", "public.new"),
        ("column", "public.new.x"),
        ("column", "public.new.y"),
        ("constraint", "public.t.t_pkey"),
    ]
    assert [(o.kind, o.name) for o in diff.removed] == [
        ("table", "public.old"),
        ("column", "public.old.x"),
        ("column", "public.t.gone"),
        ("index", "public.old_x"),
    ]
    assert [(new.name, old.definition["type"]) for new, old in diff.changed] == [
        ("public.mood", "ENUM"),
        ("public.t.id", "integer"),
    ]


def test_ddl_recreates_a_view_over_a_retyped_column_and_orders_by_dependencies() -> None:
    ddl = [(s.sql, s.destructive) for s in diff_schemas(_A, _B).ddl]
    assert ddl == [
        # The view on the retyped column goes first; the old table's index goes with it.
        ("DROP VIEW public.v;", False),
        ("ALTER TABLE public.t DROP COLUMN gone;", True),
        ("DROP TABLE public.old;", True),
        ("ALTER TYPE public.mood ADD VALUE 'meh' BEFORE 'ok';", False),
        (
            "CREATE TABLE public.new (\n    x mood,\n"
            "    y integer GENERATED ALWAYS AS (x2) STORED\n);",
            False,
        ),
        ("ALTER TABLE public.t ALTER COLUMN id TYPE bigint USING id::bigint;", True),
        ("ALTER TABLE public.t ALTER COLUMN id SET DEFAULT 0;", False),
        ("ALTER TABLE public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);", False),
        ("CREATE VIEW public.v AS\nSELECT id FROM t;", False),
    ]


def test_text_reads_as_sql_and_marks_destructive_statements() -> None:
    view = diff_view(diff_schemas(_A, _B), a="a", b="b", database="app")
    text = format_diff(view)
    assert text.startswith("schema of a against b (database app):\n+ table public.new\n")
    assert "+ column public.new.y integer GENERATED ALWAYS AS (x2) STORED" in text
    assert "+ constraint public.t.t_pkey PRIMARY KEY (id)" in text
    assert "- index public.old_x ON public.old USING btree (x)" in text
    assert "~ column public.t.id: integer -> bigint; no DEFAULT -> DEFAULT 0" in text
    assert "+ type public.mood ENUM ('sad', 'ok')" not in text  # changed, not added
    assert "~ type public.mood: ('sad', 'ok') -> ('sad', 'meh', 'ok')" in text
    assert "-- destructive: review before running\nDROP TABLE public.old;" in text
    same = diff_view(diff_schemas(_A, _A), a="a", b="a", database="app")
    assert format_diff(same) == "schema of a against a (database app): identical"


def test_pg_dump_diff_ignores_the_per_run_restrict_key() -> None:
    before = "\\restrict abc\nCREATE TABLE t ();\n\\unrestrict abc\n"
    after = "\\restrict xyz\nCREATE TABLE t ();\nCREATE TABLE u ();\n\\unrestrict xyz\n"
    assert dump_diff(before, before.replace("abc", "def"), before_name="b", after_name="a") == ""
    diff = dump_diff(before, after, before_name="main/db", after_name="feature/db")
    assert diff.startswith("--- main/db\n+++ feature/db\n")
    assert "+CREATE TABLE u ();\n" in diff and "restrict" not in diff


def test_what_sql_cannot_do_is_a_comment_never_a_failing_statement() -> None:
    def enum(labels: str) -> dict[str, list[tuple[str | None, ...]]]:
        return {"type": [("public.mood", None, "ENUM", labels, None, None, None)]}

    diff = diff_schemas(schema_from_rows(enum("'ok'")), schema_from_rows(enum("'sad'\n'ok'")))
    [statement] = diff.ddl
    assert statement.manual and statement.sql.startswith("-- cannot script: enum public.mood")
