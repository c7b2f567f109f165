"""Schema diff between real branches: real DDL changes, renames as drop + add, DDL that works."""

from __future__ import annotations

import json
import sys
from typing import Any

import trio

from .api_helpers import api
from .harness import PrismHandle, psql

V1 = "/api/v1"

_BASE = """
CREATE EXTENSION amcheck;
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text, phone text);
CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers, total numeric);
CREATE INDEX customers_email ON customers (email);
CREATE VIEW big_orders AS SELECT id, total FROM orders WHERE total > 100;
CREATE FUNCTION order_tax(total numeric) RETURNS numeric LANGUAGE sql AS 'SELECT total * 0.2';
CREATE SEQUENCE invoice_numbers START 1000;
INSERT INTO customers (name, email) VALUES ('a', 'a@x'), ('b', 'b@x');
"""

_CHANGES = """
ALTER TABLE orders RENAME TO purchases;
ALTER TABLE customers ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE customers DROP COLUMN phone;
ALTER TABLE customers ALTER COLUMN email TYPE varchar(200);
ALTER TABLE customers ADD CONSTRAINT email_has_at CHECK (email LIKE '%@%');
CREATE INDEX customers_name ON customers (name);
CREATE OR REPLACE VIEW big_orders AS SELECT id, total FROM purchases WHERE total > 500;
CREATE FUNCTION greet(who text) RETURNS text LANGUAGE sql AS 'SELECT ''hi '' || who';
DROP SEQUENCE invoice_numbers;
CREATE TABLE audit (id bigserial PRIMARY KEY, note text DEFAULT 'none');
"""


def _names(items: list[dict[str, Any]], kind: str) -> set[str]:
    return {item["name"] for item in items if item["kind"] == kind}


async def test_diff_reports_real_changes_and_its_ddl_turns_b_into_a(prism: PrismHandle) -> None:
    await psql(prism.dsn(), _BASE)
    await psql(prism.dsn("postgres@before"), "SELECT 1")  # B: main as it was
    await psql(prism.dsn("postgres@after"), _CHANGES)  # A: changed
    async with api(prism) as http:
        response = await http.get(f"{V1}/branches/after/diff", params={"against": "before"})
    assert response.status_code == 200
    diff = response.json()
    assert (diff["branch"], diff["against"], diff["identical"]) == ("after", "before", False)
    added, removed = diff["added"], diff["removed"]
    # The rename is a drop and an add: the catalogs cannot tell a rename from the two.
    assert "public.purchases" in _names(added, "table")
    assert "public.orders" in _names(removed, "table")
    assert {"public.customers.created_at", "public.audit.note"} <= _names(added, "column")
    assert "public.customers.phone" in _names(removed, "column")
    assert "public.customers.email_has_at" in _names(added, "constraint")
    assert "public.customers_name" in _names(added, "index")
    assert "public.greet(who text)" in _names(added, "function")
    assert "public.invoice_numbers" in _names(removed, "sequence")
    changed = {(item["kind"], item["name"]): item for item in diff["changed"]}
    email = changed[("column", "public.customers.email")]
    assert (email["against"]["type"], email["branch"]["type"]) == (
        "text",
        "character varying(200)",
    )
    assert ("view", "public.big_orders") in changed
    destructive = [s["sql"] for s in diff["ddl"] if s["destructive"]]
    assert "DROP TABLE public.orders;" in destructive
    assert "ALTER TABLE public.customers DROP COLUMN phone;" in destructive

    # The DDL really turns B into A: applied to B, the two schemas are the same.
    ddl = "\n".join(statement["sql"] for statement in diff["ddl"])
    await psql(prism.dsn("postgres@before"), ddl)
    async with api(prism) as http:
        again = (await http.get(f"{V1}/branches/after/diff", params={"against": "before"})).json()
    assert again["identical"], again


async def test_identical_branches_and_bad_requests(prism: PrismHandle) -> None:
    await psql(prism.dsn(), "CREATE TABLE t (id int PRIMARY KEY)")
    await psql(prism.dsn("postgres@same"), "SELECT 1")
    async with api(prism) as http:
        same = (await http.get(f"{V1}/branches/same/diff", params={"against": "main"})).json()
        missing = await http.get(f"{V1}/branches/same/diff")
        ghost = await http.get(f"{V1}/branches/same/diff", params={"against": "ghost"})
        nodb = await http.get(
            f"{V1}/branches/same/diff", params={"against": "main", "database": "nope"}
        )
    assert same["identical"] and same["ddl"] == []
    assert (missing.status_code, missing.json()["code"]) == (422, "invalid_request")
    assert (ghost.status_code, ghost.json()["code"]) == (404, "branch_not_found")
    assert (nodb.status_code, nodb.json()["code"]) == (422, "query_failed")
    assert 'database "nope" does not exist' in nodb.json()["message"]


async def test_prism_diff_prints_text_json_and_a_pg_dump_diff(prism: PrismHandle) -> None:
    await psql(prism.dsn("postgres@feature"), "CREATE TABLE widgets (id int, label text)")
    url = ("--api", prism.info.api_url)

    async def run(*args: str) -> str:
        result = await trio.run_process(
            [sys.executable, "-m", "prism.cli.main", "diff", *args, *url], capture_stdout=True
        )
        return result.stdout.decode()

    text = await run("feature", "main")
    assert text.splitlines()[0] == "schema of feature against main (database postgres):"
    assert "+ table public.widgets" in text
    assert "+ column public.widgets.label text" in text
    assert "CREATE TABLE public.widgets (\n    id integer,\n    label text\n);" in text
    as_json = json.loads(await run("feature", "main", "--json"))
    assert _names(as_json["added"], "table") == {"public.widgets"}
    assert (await run("main", "main")).strip().endswith(": identical")
    # pg_dump's own view of the same change, as a unified diff from B to A.
    dumped = await run("feature", "main", "--format", "pg_dump")
    assert dumped.startswith("--- main/postgres\n+++ feature/postgres\n"), dumped
    assert "+CREATE TABLE public.widgets (\n" in dumped
    same = await run("main", "main", "--format", "pg_dump")
    assert same.strip() == "pg_dump of main and main: identical"
