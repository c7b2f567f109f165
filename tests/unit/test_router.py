"""Routing a startup message to a branch, and branch name validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prism.core.errors import InvalidBranchName, PrismError
from prism.core.names import BRANCH_NAME_RE, validate_branch_name
from prism.frontdoor.router import Route, route, split_user
from prism.postgres.wire import PROTOCOL_3_0, StartupMessage


def startup(*params: tuple[str, str]) -> StartupMessage:
    return StartupMessage(PROTOCOL_3_0, params)


@pytest.mark.parametrize("name", ["main", "feature-1", "a", "0", "pr_42", "x" * 63, "9-_"])
def test_valid_branch_names_are_accepted(name: str) -> None:
    assert validate_branch_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "..", ".", "a/b", "a b", " a", "Feature", "-a", "_a", "x" * 64, "a\n", "é", "a.b", "a\0"],
)
def test_invalid_branch_names_are_refused_with_what_is_valid(name: str) -> None:
    with pytest.raises(InvalidBranchName) as info:
        validate_branch_name(name)
    assert info.value.sqlstate == "42602"
    assert repr(name) in info.value.message
    assert "lower-case letters, digits, '-' and '_'" in info.value.message
    assert "63" in info.value.message


def test_a_very_long_bad_name_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidBranchName) as info:
        validate_branch_name("x" * 5000)
    assert len(info.value.message) < 300


@given(st.text(max_size=70))
def test_validation_agrees_with_the_regex(name: str) -> None:
    ok = BRANCH_NAME_RE.fullmatch(name) is not None
    try:
        validate_branch_name(name)
    except InvalidBranchName:
        assert not ok
    else:
        assert ok


def test_user_at_branch_routes_to_the_branch_with_the_bare_user() -> None:
    target = route(startup(("user", "alice@feature-1"), ("database", "app")))
    assert target == Route("feature-1", startup(("user", "alice"), ("database", "app")))


def test_user_without_at_routes_to_main() -> None:
    target = route(startup(("user", "alice"), ("database", "app")))
    assert target.branch == "main"
    assert target.startup == startup(("user", "alice"), ("database", "app"))


def test_main_branch_name_is_configurable() -> None:
    assert route(startup(("user", "alice")), main_branch="trunk").branch == "trunk"


def test_split_is_on_the_last_at_because_roles_may_contain_at() -> None:
    target = route(startup(("user", "a@b@feat"), ("database", "d")))
    assert target.branch == "feat"
    assert target.startup.get("user") == "a@b"
    assert split_user("a@b@feat") == ("a@b", "feat")
    assert split_user("plain") == ("plain", None)


def test_empty_user_before_at_is_refused_clearly() -> None:
    with pytest.raises(PrismError) as info:
        route(startup(("user", "@feat")))
    assert info.value.sqlstate == "28000"
    assert "user name before the '@'" in info.value.message


@pytest.mark.parametrize("user", ["alice@", "alice@Feature", "alice@../x", "alice@a b"])
def test_bad_branch_after_at_is_refused(user: str) -> None:
    with pytest.raises(InvalidBranchName):
        route(startup(("user", user)))


def test_missing_user_is_refused() -> None:
    with pytest.raises(PrismError) as info:
        route(startup(("database", "d")))
    assert info.value.sqlstate == "28000"


def test_every_other_parameter_passes_unchanged_and_in_order() -> None:
    params = (
        ("application_name", "psql"),
        ("user", "bob@dev"),
        ("database", "shop"),
        ("options", "-c search_path=x"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("replication", "database"),
        ("_pq_.unknown", "1"),
    )
    target = route(startup(*params))
    expected = tuple(("user", "bob") if k == "user" else (k, v) for k, v in params)
    assert target.startup.params == expected
    assert target.startup.protocol == PROTOCOL_3_0


def test_missing_database_is_set_to_the_rewritten_user_right_after_it() -> None:
    target = route(startup(("application_name", "x"), ("user", "alice@feature-1")))
    assert target.startup.params == (
        ("application_name", "x"),
        ("user", "alice"),
        ("database", "alice"),
    )


def test_empty_database_is_treated_like_a_missing_one_as_postgres_does() -> None:
    target = route(startup(("user", "alice@f"), ("database", "")))
    assert target.startup.params == (("user", "alice"), ("database", "alice"))


def test_libpqs_default_database_of_user_at_branch_becomes_the_role() -> None:
    """psql "user=postgres@feature" sends database=postgres@feature (libpq's default)."""
    target = route(startup(("user", "postgres@feature"), ("database", "postgres@feature")))
    assert target == Route("feature", startup(("user", "postgres"), ("database", "postgres")))


def test_database_is_made_explicit_on_main_too() -> None:
    target = route(startup(("user", "alice")))
    assert target.startup.params == (("user", "alice"), ("database", "alice"))


def test_repeated_user_params_use_the_last_and_leave_one() -> None:
    target = route(startup(("user", "x@a"), ("database", "d"), ("user", "y@b")))
    assert target.branch == "b"
    assert target.startup.params == (("user", "y"), ("database", "d"))


def test_protocol_version_is_kept() -> None:
    message = StartupMessage(3 << 16 | 2, (("user", "u@b"), ("database", "d")))
    assert route(message).startup.protocol == 3 << 16 | 2
