"""docs/recipes.md, run as written: the marked blocks are extracted and executed for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from .harness import PrismHandle, psql

_RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
_BLOCK = re.compile(r"<!-- recipe: (\S+) -->\n```\w+\n(.*?)```", re.S)


def recipe(name: str) -> str:
    blocks = dict(_BLOCK.findall(_RECIPES.read_text()))
    return blocks[name]


async def run_block(
    prism: PrismHandle, name: str, cwd: Path, **env: str
) -> subprocess.CompletedProcess[bytes]:
    """Run a shell block with the ``prism`` client on PATH, pointed at ``prism``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PRISM_", "PG"))}
    path = f"{Path(sys.executable).parent}:{clean.get('PATH', '')}"
    return await trio.run_process(
        ["bash", "-c", recipe(name)],
        cwd=cwd,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**clean, "PATH": path, "PRISM_API": "{}:{}".format(*prism.info.api), **env},
    )


async def run_recipe(prism: PrismHandle, name: str, cwd: Path, **env: str) -> str:
    """Run a shell block that must succeed; its standard output."""
    result = await run_block(prism, name, cwd, **env)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def test_ci_job_recipe_makes_uses_and_removes_its_branch(
    prism: PrismHandle, tmp_path: Path
) -> None:
    first = await run_recipe(prism, "ci-job", tmp_path, PR_NUMBER="42")
    assert first.strip() == "100"
    assert prism.manager.get("pr-42") is None  # the trap removed it
    # A leftover from a killed run is replaced, not an error: the re-run starts fresh.
    await psql(prism.dsn("postgres@pr-7"), "CREATE TABLE orders (id int PRIMARY KEY, total int)")
    await psql(prism.dsn("postgres@pr-7"), "INSERT INTO orders VALUES (999, 1)")
    again = await run_recipe(prism, "ci-job", tmp_path, PR_NUMBER="7")
    assert again.strip() == "100"
    assert [b.name for b in prism.manager.list()] == ["main"]


_PRODUCTION = """
CREATE TABLE customers (id int PRIMARY KEY, full_name text, email text UNIQUE, phone text);
CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers, shipping_note text);
INSERT INTO customers VALUES
    (1, 'Ada Lovelace', 'ada@analytical.example', '+44 20 7946 0001'),
    (2, 'Grace Hopper', 'grace@navy.example', '+1 202 555 0199');
INSERT INTO orders VALUES (10, 1, 'leave with the neighbour at 12 Baker St'), (11, 2, NULL);
"""
_LEAK = (
    "SELECT count(*) FROM customers WHERE full_name !~ '^Customer [0-9]+$' "
    "OR email NOT LIKE '%@example.invalid' OR phone NOT LIKE '+1-555-%'"
)


async def _value(prism: PrismHandle, branch: str, sql: str) -> str:
    return (await psql(prism.dsn(f"postgres@{branch}"), sql)).stdout.decode().strip()


async def test_sanitized_template_recipe_end_to_end(start_prism: Any, tmp_path: Path) -> None:
    prism: PrismHandle = await start_prism(default_parent="sanitized")
    await psql(prism.dsn(), _PRODUCTION)
    (tmp_path / "mask.sql").write_text(recipe("mask.sql"))
    await run_recipe(prism, "sanitized-setup", tmp_path)

    assert prism.manager.policy("sanitized").protected
    assert await _value(prism, "sanitized", _LEAK) == "0"
    # A developer's branch, created by connecting, comes from the masked copy.
    row = await _value(prism, "alice-feature", "SELECT full_name, email, phone FROM customers")
    assert row.splitlines()[0] == "Customer 1|customer1@example.invalid|+1-555-0001"
    assert await _value(prism, "alice-feature", "SELECT count(shipping_note) FROM orders") == "0"
    assert prism.manager.get("alice-feature").parent == "sanitized"
    # main keeps production's data.
    assert await _value(prism, "main", "SELECT full_name FROM customers WHERE id = 1") == (
        "Ada Lovelace"
    )

    # New production data arrives in main; a refresh re-masks it before anyone connects.
    await psql(
        prism.dsn(),
        "INSERT INTO customers VALUES (3, 'Alan Turing', 'alan@bletchley.example', '1')",
    )
    await run_recipe(prism, "sanitized-refresh", tmp_path)
    assert prism.manager.policy("sanitized").protected
    assert await _value(prism, "sanitized", "SELECT count(*) FROM customers") == "3"
    assert await _value(prism, "sanitized", _LEAK) == "0"
    assert await _value(prism, "bob-fix", _LEAK) == "0"
    # Alice's branch keeps what it was made with.
    assert await _value(prism, "alice-feature", "SELECT count(*) FROM customers") == "2"


async def test_a_failing_refresh_keeps_the_masked_copy_protected(
    start_prism: Any, tmp_path: Path
) -> None:
    prism: PrismHandle = await start_prism(default_parent="sanitized")
    await psql(prism.dsn(), _PRODUCTION)
    (tmp_path / "mask.sql").write_text(recipe("mask.sql"))
    await run_recipe(prism, "sanitized-setup", tmp_path)
    # Production renamed a column the masking SQL needs, and took in a new customer.
    await psql(
        prism.dsn(),
        "ALTER TABLE customers RENAME COLUMN phone TO mobile;"
        "INSERT INTO customers VALUES (3, 'Alan Turing', 'alan@bletchley.example', '1')",
    )
    failed = await run_block(prism, "sanitized-refresh", tmp_path)
    assert failed.returncode == 1
    assert 'column "phone" of relation "customers" does not exist' in failed.stderr.decode()
    # The previous masked copy is back, and protected again: nothing unmasked is reachable.
    assert prism.manager.policy("sanitized").protected
    assert await _value(prism, "sanitized", "SELECT count(*) FROM customers") == "2"
    assert await _value(prism, "sanitized", _LEAK) == "0"
    assert await _value(prism, "carol-new", _LEAK) == "0"


async def _file_holds(prism: PrismHandle, branch: str, table: str, text: bytes) -> bool:
    """Whether ``table``'s file in ``branch`` holds ``text``, dead row versions included."""
    await psql(prism.dsn(f"postgres@{branch}"), "CHECKPOINT")
    relpath = await _value(prism, branch, f"SELECT pg_relation_filepath('{table}')")
    return text in (prism.manager.storage.path(branch) / relpath).read_bytes()


async def test_sanitized_template_with_a_hook_command_leaves_no_old_rows(
    start_prism: Any, tmp_path: Path
) -> None:
    prism: PrismHandle = await start_prism(default_parent="sanitized", allow_hook_commands=True)
    await psql(prism.dsn(), _PRODUCTION)
    (tmp_path / "mask.sql").write_text(recipe("mask.sql"))
    (tmp_path / "mask.sh").write_text(recipe("mask.sh"))
    await run_recipe(prism, "sanitized-setup-command", tmp_path)

    assert prism.manager.policy("sanitized").protected
    assert prism.manager.policy("main").on_create_command == (str(tmp_path / "mask.sh"),)
    assert await _value(prism, "sanitized", _LEAK) == "0"
    assert await _value(prism, "dave-feature", _LEAK) == "0"
    # The real e-mail is in main's table file; VACUUM FULL left no old version in the copy's.
    assert await _file_holds(prism, "main", "customers", b"ada@analytical.example")
    assert not await _file_holds(prism, "sanitized", "customers", b"ada@analytical.example")


def test_github_actions_example_runs_the_tested_recipe() -> None:
    """The workflow cannot run here (no GitHub); its script must be the recipe tested above."""
    workflow = re.search(r"```yaml\n(.*?)```", _RECIPES.read_text(), re.S)
    assert workflow is not None
    script = workflow.group(1).split("run: |\n", 1)[1]
    steps = [line.strip() for line in script.splitlines() if line.strip()]
    tested = {line.strip() for line in recipe("ci-job").splitlines()}
    assert steps[-2:] == ["./run-migrations.sh", "./run-tests.sh"]  # the job's own steps
    assert all(step in tested for step in steps[:-2]), steps
