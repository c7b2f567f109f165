"""Branch-on-connect end to end: real Prism, real Postgres servers, real psql and psycopg."""

from __future__ import annotations

import struct
from typing import Any

import httpx
import psycopg
import pytest
import trio

from prism.durable.state import StateStore
from prism.server import PrismServer
from tests.waiting import wait_until

from .harness import PrismHandle, make_settings, psql


async def test_user_without_suffix_reaches_main(prism: PrismHandle) -> None:
    await psql(prism.dsn(), "CREATE TABLE on_main (x int)")
    out = await psql(prism.dsn(), "SELECT current_user, to_regclass('on_main') IS NOT NULL")
    assert out.stdout.decode().strip() == "postgres|t"
    assert [b.name for b in prism.manager.list()] == ["main"]


async def test_new_branch_is_created_on_connect_and_isolated(prism: PrismHandle) -> None:
    await psql(prism.dsn(), "CREATE TABLE shared (v text); INSERT INTO shared VALUES ('before')")
    out = await psql(prism.dsn("postgres@feature-1"), "SELECT current_user, v FROM shared")
    assert out.stdout.decode().split() == ["postgres|before"]

    await psql(prism.dsn("postgres@feature-1"), "CREATE TABLE only_f1 (x int)")
    await psql(prism.dsn(), "INSERT INTO shared VALUES ('after')")

    check = "SELECT to_regclass('only_f1') IS NOT NULL, string_agg(v, ',' ORDER BY v) FROM shared"
    assert (await psql(prism.dsn(), check)).stdout.decode().strip() == "f|after,before"
    f1 = await psql(prism.dsn("postgres@feature-1"), check)
    assert f1.stdout.decode().strip() == "t|before"
    f2 = await psql(prism.dsn("postgres@feature-2"), check)
    assert f2.stdout.decode().strip() == "f|after,before"
    assert [b.name for b in prism.manager.list()] == ["feature-1", "feature-2", "main"]


async def test_startup_parameters_reach_the_branch_unchanged(prism: PrismHandle) -> None:
    dsn = prism.dsn("postgres@params", application_name="prism-test", options="'-c work_mem=7MB'")
    out = await psql(dsn, "SELECT current_setting('application_name'), current_setting('work_mem')")
    assert out.stdout.decode().strip() == "prism-test|7MB"


def _psycopg_session(dsn: str) -> dict[str, Any]:
    """Extended protocol, prepared statements and COPY both ways, as an app would use them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        with conn.cursor() as cur:
            for i in range(5):
                cur.execute("INSERT INTO items VALUES (%s, %s)", (i, f"n{i}"), prepare=True)
            with cur.copy("COPY items FROM STDIN") as copy:
                for i in range(5, 10):
                    copy.write_row((i, f"n{i}"))
            row = cur.execute(
                "SELECT count(*), max(name) FROM items WHERE id >= %s", (0,)
            ).fetchone()
            with cur.copy("COPY (SELECT id FROM items ORDER BY id) TO STDOUT") as copy:
                copied = b"".join(bytes(chunk) for chunk in copy)
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        still_usable = conn.execute("SELECT 42").fetchone()
    return {"row": row, "copied": copied, "after_error": still_usable}


async def test_psycopg_extended_protocol_and_copy_through_prism(prism: PrismHandle) -> None:
    result = await trio.to_thread.run_sync(_psycopg_session, prism.dsn("postgres@psycopg-branch"))
    assert result["row"] == (10, "n9")
    assert result["copied"] == b"".join(f"{i}\n".encode() for i in range(10))
    assert result["after_error"] == (42,)


async def test_twenty_clients_at_once_share_one_provision(prism: PrismHandle) -> None:
    results: list[str] = []
    async with prism.manager.events.subscribe() as events:
        async with trio.open_nursery() as nursery:
            for _ in range(20):

                async def one() -> None:
                    out = await psql(prism.dsn("postgres@crowd"), "SELECT 1")
                    results.append(out.stdout.decode().strip())

                nursery.start_soon(one)
        seen = []
        while True:
            try:
                seen.append(events.receive_nowait())
            except trio.WouldBlock:
                break
    assert results == ["1"] * 20
    provisions = [e for e in seen if e["type"] == "provisioning" and e["branch"] == "crowd"]
    assert len(provisions) == 1
    assert sum(1 for e in seen if e["type"] == "connected" and e["branch"] == "crowd") == 20


@pytest.mark.parametrize(
    "name", ["..", "a/b", "Upper", "has space", "", "x" * 64, "-leading-dash", "semi;colon"]
)
async def test_invalid_branch_names_are_refused_and_create_nothing(
    prism: PrismHandle, name: str
) -> None:
    out = await psql(prism.dsn(f"'postgres@{name}'"), "SELECT 1", check=False)
    assert out.returncode != 0
    message = out.stderr.decode()
    assert "FATAL" in message
    assert "branch name" in message
    assert "lower-case" in message
    assert [b.name for b in prism.manager.list()] == ["main"]
    assert prism.manager.storage.list() == ["main"]


async def _raw_exchange(port: int, payload: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes to Prism and collect everything it answers until it closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        if payload:
            await stream.send_all(payload)
        received = b""
        with trio.fail_after(read_timeout):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return received


def _error_fields(data: bytes) -> dict[str, str]:
    assert data[:1] == b"E", data
    (length,) = struct.unpack("!I", data[1:5])
    fields = {}
    for part in data[5 : 1 + length].split(b"\0"):
        if part:
            fields[part[:1].decode()] = part[1:].decode()
    return fields


@pytest.mark.parametrize(
    "payload",
    [struct.pack("!II", 20_000, 196608), b"GET / HTTP/1.1\r\n\r\n"],
    ids=["oversize", "garbage"],
)
async def test_a_first_packet_with_an_impossible_length_is_closed_without_an_answer(
    prism: PrismHandle, payload: bytes
) -> None:
    """As Postgres (see test_front_door_conformance.py): no answer, and nothing is made."""
    assert await _raw_exchange(prism.port, payload) == b""
    assert [b.name for b in prism.manager.list()] == ["main"]


def _task_count() -> int:
    """Tasks of the front door (a connection's own, and the listener's): the background tasks
    (health probes, the disk watch) come and go on their own clocks and are not counted."""

    def count(task: trio.lowlevel.Task) -> int:
        mine = 1 if task.name.startswith("prism.frontdoor") else 0
        return mine + sum(count(child) for n in task.child_nurseries for child in n.child_tasks)

    return count(trio.lowlevel.current_root_task())


async def test_silent_client_is_timed_out_without_leaking_tasks(
    start_prism: Any,
) -> None:
    prism = await start_prism(startup_timeout=0.5)
    before = _task_count()
    data = await _raw_exchange(prism.port, b"")
    fields = _error_fields(data)
    assert fields["C"] == "08P01"
    assert "start-up packet" in fields["M"]
    await wait_until(lambda: _task_count() == before, what="the connection's tasks to end")
    # The server goes on serving real clients.
    assert (await psql(prism.dsn(), "SELECT 7")).stdout.decode().strip() == "7"


async def test_failed_provision_is_rolled_back_and_explained(prism: PrismHandle) -> None:
    conf = prism.manager.storage.path("main") / "postgresql.conf"
    original = conf.read_text()
    conf.write_text(original + "\nthis is not a setting\n")
    try:
        out = await psql(prism.dsn("postgres@doomed"), "SELECT 1", check=False)
    finally:
        conf.write_text(original)
    message = out.stderr.decode()
    assert out.returncode != 0
    assert 'could not create branch "doomed"' in message
    assert [b.name for b in prism.manager.list()] == ["main"]
    assert not prism.manager.storage.path("doomed").exists()
    assert [r.name for r in await prism.manager.state.all()] == ["main"]
    # The same name works once the cause is gone.
    assert (await psql(prism.dsn("postgres@doomed"), "SELECT 1")).stdout.decode().strip() == "1"


async def test_get_branches_returns_seed_format(prism: PrismHandle) -> None:
    await psql(prism.dsn("postgres@listed"), "SELECT 1")
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{prism.info.api_url}/branches")
    assert response.status_code == 200
    body = response.json()
    assert sorted(body) == ["listed", "main"]
    for stamp in body.values():
        assert stamp.endswith("Z") and "T" in stamp and len(stamp) == 20


async def test_restart_keeps_branches_and_their_data(start_prism: Any, data_dir: Any) -> None:
    async with trio.open_nursery() as nursery:
        settings = make_settings(data_dir)
        info = await nursery.start(PrismServer(settings).run)
        first = PrismHandle(info, settings)
        await psql(first.dsn("postgres@keeper"), "CREATE TABLE kept AS SELECT 99 AS v")
        nursery.cancel_scope.cancel()

    second: PrismHandle = await start_prism()
    assert [b.name for b in second.manager.list()] == ["keeper", "main"]
    assert second.manager.get("keeper").status.value == "stopped"
    out = await psql(second.dsn("postgres@keeper"), "SELECT v FROM kept")
    assert out.stdout.decode().strip() == "99"
    async with httpx.AsyncClient() as http:
        body = (await http.get(f"{second.info.api_url}/branches")).json()
    assert sorted(body) == ["keeper", "main"]


async def test_state_records_match_branches(prism: PrismHandle) -> None:
    await psql(prism.dsn("postgres@recorded"), "SELECT 1")
    store: StateStore = prism.manager.state
    records = {r.name: r for r in await store.all()}
    assert records["recorded"].parent == "main"
    assert records["recorded"].status == "running"
