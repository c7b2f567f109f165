"""A branch's superuser plays the attacker: nothing it does reaches outside its own branch.

Real servers under the process runtime's sandbox (Landlock), real psql, real ``dblink``. Every
attempt below worked before the sandbox (issue 19); each must now fail, while the attacker's
own branch keeps working: DDL, COPY, extensions, parallel queries.
"""

from __future__ import annotations

import httpx
import pytest

from prism.runtime import landlock

from .harness import PrismHandle, psql

pytestmark = pytest.mark.skipif(
    not landlock.probe().scopes, reason="this kernel's Landlock lacks scopes (ABI < 6)"
)

_SECRET = "hunter2-production-replication-password"


async def _attempt(prism: PrismHandle, sql: str) -> str:
    """Run ``sql`` as the superuser of branch ``dev1``; return the error it must raise."""
    result = await psql(prism.dsn("postgres@dev1"), sql, check=False)
    assert result.returncode != 0, f"the attack succeeded: {sql}\n{result.stdout.decode()}"
    return result.stderr.decode()


async def _sql(prism: PrismHandle, branch: str, sql: str) -> str:
    return (await psql(prism.dsn(f"postgres@{branch}"), sql)).stdout.decode().strip()


async def test_a_branch_superuser_reaches_nothing_outside_its_branch(prism: PrismHandle) -> None:
    manager = prism.manager
    data_dir = prism.settings.data_dir
    secret_dir = data_dir / "source"
    secret_dir.mkdir(exist_ok=True)
    (secret_dir / "pgpass").write_text(f"*:*:*:replicator:{_SECRET}\n")
    (secret_dir / "pgpass").chmod(0o644)  # readable by the server user: only the sandbox stops it
    await _sql(prism, "main", "CREATE TABLE customers AS SELECT 'real@customer.example' AS email")
    await _sql(prism, "dev2", "CREATE TABLE private_work (id int)")
    await _sql(prism, "dev1", "SELECT 1")

    main = manager.runtime.address("main")
    dev2 = manager.runtime.address("dev2")
    assert main is not None and dev2 is not None
    for path in (
        secret_dir / "pgpass",
        manager.storage.path("main") / "PG_VERSION",
        manager.storage.path("dev2") / "PG_VERSION",
        data_dir / "prism.db",
    ):
        error = await _attempt(prism, f"SELECT pg_read_file('{path}')")
        assert "Permission denied" in error, error
        assert _SECRET not in error

    error = await _attempt(prism, "COPY (SELECT 1) TO PROGRAM 'id'")
    assert "Permission denied" in error or "could not execute" in error, error

    await _sql(prism, "dev1", "CREATE EXTENSION dblink")
    api_port = prism.info.api[1]
    for where in (
        f"host=127.0.0.1 port={main.port} user=postgres password=password",
        f"host=127.0.0.1 port={dev2.port} user=postgres password=password",
        f"host=127.0.0.1 port={prism.port} user=postgres password=password",
        f"host=127.0.0.1 port={api_port} user=postgres password=password",
        f"host={main.service_host()} port={main.port} user=postgres",
        f"host={dev2.service_host()} port={dev2.port} user=postgres",
    ):
        error = await _attempt(prism, f"SELECT * FROM dblink('{where}', 'SELECT 1') AS t(x int)")
        assert "could not establish connection" in error or "Permission denied" in error, error

    # Still reachable from outside, as before: the attempts above were stopped, not broken.
    assert await _sql(prism, "main", "SELECT email FROM customers") == "real@customer.example"
    async with httpx.AsyncClient() as client:
        health = (await client.get(f"http://127.0.0.1:{api_port}/healthz")).json()
    assert health["sandbox"]["complete"] is True
    assert health["sandbox"]["mechanism"].startswith("landlock")


async def test_the_attackers_own_branch_keeps_working(prism: PrismHandle) -> None:
    script = """
        CREATE TABLE t (id int, payload text);
        INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g;
        COPY t TO '{own}/t.copy';
        CREATE TABLE t2 (LIKE t);
        COPY t2 FROM '{own}/t.copy';
        CREATE EXTENSION hstore;
        SET max_parallel_workers_per_gather = 2;
        SET parallel_setup_cost = 0;
        SET parallel_tuple_cost = 0;
        SET min_parallel_table_scan_size = 0;
        SELECT count(*) FROM t2;
    """
    await _sql(prism, "dev1", "SELECT 1")
    own = prism.manager.storage.path("dev1")
    output = await _sql(prism, "dev1", script.format(own=own))
    assert output.splitlines()[-1] == "200000"
    assert "Parallel" in await _sql(
        prism,
        "dev1",
        "SET max_parallel_workers_per_gather = 2; SET parallel_setup_cost = 0;"
        " SET min_parallel_table_scan_size = 0; EXPLAIN SELECT count(*) FROM t2",
    )
