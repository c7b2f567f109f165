"""Password checks see a branch's roles as they are now, and never start a server."""

from __future__ import annotations

from .harness import PrismHandle, kill_branch_server, psql


async def _login(prism: PrismHandle, user: str, password: str) -> bool:
    """Whether ``user`` gets a session with ``password`` (a refusal must be 28P01)."""
    result = await psql(prism.dsn(user, password=password), "SELECT 1", check=False)
    if result.returncode == 0:
        return True
    assert "password authentication failed" in result.stderr.decode(), result.stderr
    return False


async def test_a_password_changed_inside_a_branch_works_at_once(prism: PrismHandle) -> None:
    admin = prism.dsn("postgres@roles")
    await psql(admin, "CREATE ROLE alice LOGIN PASSWORD 'first'")
    assert await _login(prism, "alice@roles", "first")
    await psql(admin, "ALTER ROLE alice PASSWORD 'second'")
    assert await _login(prism, "alice@roles", "second")
    assert not await _login(prism, "alice@roles", "first")


async def test_roles_created_renamed_and_dropped_inside_a_branch_count_at_once(
    prism: PrismHandle,
) -> None:
    admin = prism.dsn("postgres@roles")
    assert not await _login(prism, "bob@roles", "pw")
    await psql(admin, "CREATE ROLE bob LOGIN PASSWORD 'pw'")
    assert await _login(prism, "bob@roles", "pw")
    await psql(admin, "ALTER ROLE bob RENAME TO carol")
    assert await _login(prism, "carol@roles", "pw")
    assert not await _login(prism, "bob@roles", "pw")
    await psql(admin, "DROP ROLE carol")
    assert not await _login(prism, "carol@roles", "pw")


async def test_a_wrong_password_never_wakes_a_branch_whose_server_died(
    prism: PrismHandle,
) -> None:
    """The issue's case: created through the API, never connected to, then its server died."""
    manager = prism.manager
    await manager.create("sleepy")
    await kill_branch_server(manager, "sleepy")
    assert not await _login(prism, "postgres@sleepy", "wrong")
    assert manager.runtime.address("sleepy") is None
    assert await _login(prism, "postgres@sleepy", "password")
    assert manager.runtime.address("sleepy") is not None


async def test_a_reset_branch_checks_logins_against_its_new_roles(prism: PrismHandle) -> None:
    await psql(prism.dsn("postgres@fresh"), "CREATE ROLE dave LOGIN PASSWORD 'pw'")
    assert await _login(prism, "dave@fresh", "pw")
    await prism.manager.stop("fresh")
    await prism.manager.reset("fresh")
    assert not await _login(prism, "dave@fresh", "pw")
    assert prism.manager.runtime.address("fresh") is None


async def test_roles_are_read_over_one_held_connection_that_is_replaced_when_it_dies(
    prism: PrismHandle,
) -> None:
    admin = prism.dsn("postgres@held")
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'prism'"
    assert await _login(prism, "postgres@held", "password")
    assert await _login(prism, "postgres@held", "password")
    assert (await psql(admin, count)).stdout.decode().strip() == "1"
    await psql(
        admin,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'prism'",
    )
    await psql(admin, "CREATE ROLE erin LOGIN PASSWORD 'pw'")
    assert await _login(prism, "erin@held", "pw")
    assert (await psql(admin, count)).stdout.decode().strip() == "1"
