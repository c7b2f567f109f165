"""What the REST API accepts in each field: the pure checks of ``prism.api.fields``.

Property tests feed any JSON value to every field: the answer is a value in range or a 4xx
naming the field, never another exception (which the API would turn into a 500).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prism.api import fields
from prism.api.errors import ApiError
from prism.durable.state import rfc3339

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()  # NaN and ±Infinity included: json.loads makes them from 1e400
    | st.text()
    | st.sampled_from(["72h", "1e308", "NaN", "-15m", "\x00", "\ud800", "\u0661\u0662", "9" * 5000])
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


def _refusal(call: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args)
    return caught.value


def _refused_naming(error: ApiError, field: str) -> None:
    assert 400 <= error.status < 500
    assert error.field == field
    assert f'"{field}"' in error.message


# ---- ttl ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"), [("72h", 259200.0), (90, 90.0), (0.5, 0.5), ("36500d", 3153600000.0)]
)
def test_ttl_is_a_duration_or_seconds(value: Any, seconds: float) -> None:
    assert fields.ttl_seconds(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        1e308,
        math.nan,
        math.inf,
        -math.inf,
        10**400,
        "999999999999d",
        "36501d",
        "NaN",
        "Infinity",
        "1e308",
        "\u0661\u0662h",
        0,
        -1,
        True,
        [],
        {},
    ],
)
def test_ttl_out_of_range_or_of_the_wrong_type_is_refused_naming_the_range(value: Any) -> None:
    error = _refusal(fields.ttl_seconds, value)
    _refused_naming(error, "ttl")
    assert "at most 100 years" in error.message


def test_no_ttl_is_none() -> None:
    assert fields.ttl_seconds(None) is None


@given(json_values)
def test_any_ttl_is_seconds_in_range_or_a_4xx(value: Any) -> None:
    try:
        seconds = fields.ttl_seconds(value)
    except ApiError as error:
        _refused_naming(error, "ttl")
        return
    if seconds is not None:
        assert 0 < seconds <= fields.MAX_LIFETIME.total_seconds()
        rfc3339(fields.expiry_after(seconds, NOW))


# ---- expires_at -----------------------------------------------------------------------------


def test_expires_at_is_kept_in_utc() -> None:
    moment = fields.expires_at("2026-12-08T03:00:00+14:00", NOW)
    assert moment == datetime(2026, 12, 7, 13, 0, tzinfo=UTC)
    assert moment is not None and moment.utcoffset() == timedelta(0)
    assert fields.expires_at(None, NOW) is None


@pytest.mark.parametrize(
    "value",
    [
        "9999-12-31T23:59:59-14:00",  # overflows when shown in UTC
        "0001-01-01T00:00:00+14:00",  # overflows, and would expire at once
        "9999-12-31T23:59:59Z",  # further than 100 years
        rfc3339(NOW),  # now: not in the future
        rfc3339(NOW - timedelta(seconds=1)),
        "2030-01-01T00:00:00",  # no zone
        "\u0662\u0660\u0663\u0660-01-01T00:00:00Z",
        "tomorrow",
        "2030-01-01T00:00:00Z\x00",
        "9" * 5000,
        1893456000,
        True,
    ],
)
def test_expires_at_out_of_range_is_refused_naming_the_range(value: Any) -> None:
    error = _refusal(fields.expires_at, value, NOW)
    _refused_naming(error, "expires_at")
    assert "100 years from now" in error.message
    assert len(error.message) < 400


@given(json_values)
def test_any_expires_at_is_a_showable_future_time_or_a_4xx(value: Any) -> None:
    try:
        moment = fields.expires_at(value, NOW)
    except ApiError as error:
        _refused_naming(error, "expires_at")
        return
    if moment is not None:
        assert NOW < moment <= NOW + fields.MAX_LIFETIME
        rfc3339(moment)


@given(st.datetimes(timezones=st.timezones()))
def test_any_zoned_time_is_an_expiry_in_range_or_a_4xx(moment: datetime) -> None:
    try:
        checked = fields.expires_at(moment.isoformat(), NOW)
    except ApiError as error:
        _refused_naming(error, "expires_at")
        return
    assert checked is not None and NOW < checked <= NOW + fields.MAX_LIFETIME


# ---- at -------------------------------------------------------------------------------------


def test_at_is_a_time_or_a_duration_back() -> None:
    assert fields.at("-15m", NOW) == NOW - timedelta(minutes=15)
    assert fields.at("2026-12-07T13:00:00+01:00", NOW) == NOW
    assert fields.at(None, NOW) is None


def test_a_future_at_is_left_to_the_window() -> None:
    """The window's refusal (outside_window) names the window, which helps more."""
    assert fields.at("2030-01-01T00:00:00Z", NOW) == datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "-999999999999d",
        "-36501d",
        "0001-01-01T00:00:00+14:00",
        "-\u0661\u0662m",
        "yesterday",
        "-",
        5,
        [],
    ],
)
def test_at_out_of_range_is_refused_naming_the_range(value: Any) -> None:
    error = _refusal(fields.at, value, NOW)
    _refused_naming(error, "at")
    assert "at most 100 years back" in error.message


@given(json_values)
def test_any_at_is_a_time_in_range_or_a_4xx(value: Any) -> None:
    try:
        moment = fields.at(value, NOW)
    except ApiError as error:
        _refused_naming(error, "at")
        return
    if moment is not None:
        assert moment >= NOW - fields.MAX_LIFETIME
        rfc3339(moment)


# ---- since and database ---------------------------------------------------------------------


def test_since_is_an_event_seq() -> None:
    assert fields.event_seq(None) == 0
    assert fields.event_seq("120") == 120


@pytest.mark.parametrize("value", ["\u0661\u0662", "\u00b2", "-1", "", "1.5", "9" * 19, "9" * 5000])
def test_since_is_ascii_digits_of_bounded_length(value: str) -> None:
    error = _refusal(fields.event_seq, value)
    _refused_naming(error, "since")
    assert "1 to 18 ASCII digits" in error.message


@given(st.text())
def test_any_since_is_a_seq_or_a_4xx(value: str) -> None:
    try:
        assert fields.event_seq(value) >= 0
    except ApiError as error:
        _refused_naming(error, "since")


@pytest.mark.parametrize("value", ["", "x" * 64, "é" * 32, "a\x00b", "\ud800"])
def test_database_is_a_postgres_identifier(value: str) -> None:
    _refused_naming(_refusal(fields.database, value), "database")


def test_database_defaults_to_postgres() -> None:
    assert fields.database(None) == "postgres"
    assert fields.database("app") == "app"


# ---- whole bodies ---------------------------------------------------------------------------

_create_bodies = st.fixed_dictionaries(
    {"name": st.just("feature") | json_values},
    optional={name: json_values for name in ("parent", "ttl", "protected", "at")},
)
_patch_bodies = st.fixed_dictionaries(
    {},
    optional={name: json_values for name in sorted(fields.PATCH_FIELDS)},
)


@given(_create_bodies)
def test_any_create_body_is_checked_whole_or_refused_naming_a_field(body: dict[str, Any]) -> None:
    try:
        asked = fields.create_request(body, NOW)
    except ApiError as error:
        assert error.status == 422 and error.field in fields.CREATE_FIELDS
        return
    assert isinstance(asked.name, str) and isinstance(asked.parent, str)
    assert isinstance(asked.protected, bool)


@given(_patch_bodies)
def test_any_patch_body_is_checked_whole_or_refused(body: dict[str, Any]) -> None:
    try:
        changes = fields.policy_changes(body, NOW)
    except ApiError as error:
        assert error.status == 422
        assert error.field in fields.PATCH_FIELDS or "nothing to change" in error.message
        return
    assert changes and set(changes) <= {"protected", "expires_at", "on_create", "on_create_command"}
    if changes.get("expires_at") is not None:
        rfc3339(changes["expires_at"])


def test_a_patch_with_one_bad_field_changes_nothing() -> None:
    """The good field is not taken alone: the caller gets no changes at all."""
    error = _refusal(
        fields.policy_changes, {"protected": True, "expires_at": "9999-12-31T23:59:59-14:00"}, NOW
    )
    assert error.field == "expires_at"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": 5}, "name"),
        ({"name": "a\x00"}, "name"),
        ({"name": "x", "parent": None}, "parent"),
        ({"name": "x", "protected": 1}, "protected"),
        ({"name": "x", "protected": None}, "protected"),
        ({"name": "x", "colour": "red"}, "colour"),
        ({}, "name"),
    ],
)
def test_bad_create_fields_are_named(body: dict[str, Any], field: str) -> None:
    assert _refusal(fields.create_request, body, NOW).field == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"on_create": "SELECT 1\x00"}, "on_create"),
        ({"on_create": "\ud800"}, "on_create"),
        ({"on_create": "  "}, "on_create"),
        ({"on_create_command": ["psql", "\x00"]}, "on_create_command"),
        ({"on_create_command": [" "]}, "on_create_command"),
        ({"on_create_command": "psql"}, "on_create_command"),
        ({"protected": "yes"}, "protected"),
    ],
)
def test_bad_patch_fields_are_named(body: dict[str, Any], field: str) -> None:
    assert _refusal(fields.policy_changes, body, NOW).field == field
