"""The API's trust boundary without a token: which Host, Origin and body type are answered."""

from __future__ import annotations

import pytest

from prism.api.sameorigin import (
    Arrival,
    Origin,
    is_json,
    is_served_host,
    refusal,
    refuses_body,
    same_origin,
    split_host,
)
from prism.core.hostnames import host_name

SERVED = ("prism.example",)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("LocalHost.", "localhost"),
        ("[::1]", "::1"),
        ("::0001", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("prism.example", "prism.example"),
        ("http://prism.example", None),
        ("prism.example/x", None),
        ("", None),
        ("a..b", None),
        ("[not-ip]", None),
    ],
)
def test_host_names_are_normalised_or_refused(text: str, name: str | None) -> None:
    assert host_name(text) == name


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("localhost:8080", ("localhost", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::1]", ("::1", None)),
        ("Prism.Example", ("prism.example", None)),
        ("::1", None),  # an IPv6 Host must be bracketed
        ("localhost:http", None),
        ("localhost:99999", None),
        ("user@localhost", None),
        ("localhost:80:80", None),
    ],
)
def test_a_host_header_is_a_name_and_an_optional_port(
    header: str, parsed: tuple[str, int | None] | None
) -> None:
    assert split_host(header) == parsed


@pytest.mark.parametrize(
    "header",
    ["localhost", "localhost:8080", "127.0.0.1:8080", "127.1.2.3", "[::1]:8080", "LOCALHOST."],
)
def test_loopback_names_are_always_served(header: str) -> None:
    assert is_served_host(header, (), None)


@pytest.mark.parametrize(
    "header",
    ["rebind.evil.example", "rebind.evil.example:8080", "localhost.evil.example", "", "a b"],
)
def test_any_other_name_is_not_served(header: str) -> None:
    assert not is_served_host(header, SERVED, None)
    assert not is_served_host(None, SERVED, None)


def test_configured_names_and_the_address_a_connection_arrived_on_are_served() -> None:
    assert is_served_host("Prism.Example:9000", SERVED, None)  # any port: forwards change it
    assert is_served_host("192.0.2.7:8080", (), "192.0.2.7")
    assert not is_served_host("192.0.2.8:8080", (), "192.0.2.7")


@pytest.mark.parametrize(
    ("source", "scheme", "host", "same"),
    [
        ("http://localhost:8080", "http", "localhost:8080", True),
        ("http://localhost:8080/page?x=1", "http", "localhost:8080", True),  # a Referer
        ("http://LOCALHOST:8080", "ws", "localhost:8080", True),  # a WebSocket handshake
        ("http://localhost", "http", "localhost:80", True),  # default ports
        ("https://prism.example", "https", "prism.example:443", True),
        ("http://[::1]:8080", "http", "[::1]:8080", True),
        ("http://localhost:8081", "http", "localhost:8080", False),  # another port
        ("http://127.0.0.1:8080", "http", "localhost:8080", False),  # another name
        ("https://localhost:8080", "http", "localhost:8080", False),  # another scheme
        ("null", "http", "localhost:8080", False),  # sandboxed frame, file://
        ("file:///tmp/evil.html", "http", "localhost:8080", False),
        ("http://localhost:notaport", "http", "localhost:8080", False),
    ],
)
def test_same_origin_is_scheme_host_and_port_of_the_request(
    source: str, scheme: str, host: str, same: bool
) -> None:
    assert same_origin(source, scheme, host) is same


def test_an_origin_prints_as_a_browser_would_show_it() -> None:
    assert str(Origin.of_url("http://[::1]")) == "http://[::1]:80"


@pytest.mark.parametrize(
    ("content_type", "length", "chunked", "refused"),
    [
        ("application/json", "12", None, False),
        ("Application/JSON; charset=utf-8", "12", None, False),
        (None, None, None, False),  # a bare POST /reset from curl or the CLI
        (None, "0", None, False),
        ("text/plain", "12", None, True),
        ("text/plain;charset=UTF-8", "0", None, True),  # declared, even if empty
        ("application/x-www-form-urlencoded", "0", None, True),
        ("multipart/form-data; boundary=x", "100", None, True),
        (None, "12", None, True),  # a body that says nothing of its type
        (None, None, "chunked", True),
    ],
)
def test_a_body_must_be_declared_json(
    content_type: str | None, length: str | None, chunked: str | None, refused: bool
) -> None:
    assert refuses_body(content_type, length, chunked) is refused
    assert is_json(content_type) is (content_type or "").lower().startswith("application/json")


def _arrival(method: str = "POST", **fields: str | bool | None) -> Arrival:
    base: dict[str, str | bool | None] = {
        "path": "/api/v1/branches",
        "scheme": "http",
        "host": "127.0.0.1:8080",
        "content_type": "application/json",
        "content_length": "20",
    }
    base.update(fields)
    return Arrival(method, **base)  # type: ignore[arg-type]


def _code(arrival: Arrival) -> str | None:
    refused = refusal(arrival, SERVED)
    return None if refused is None else f"{refused.status} {refused.code}"


def test_a_rebound_name_is_refused_on_reads_too_but_healthz_answers_probes() -> None:
    for method in ("GET", "DELETE", "POST"):
        assert _code(_arrival(method, host="rebind.evil.example:8080")) == "421 unknown_host"
    assert _code(_arrival("GET", host=None)) == "421 unknown_host"
    assert _code(_arrival("GET", path="/healthz", host="10.1.2.3:8080")) is None
    assert _code(_arrival("GET", path="/", host="prism.example", websocket=True)) is None


def test_the_host_refusal_says_how_to_serve_the_name() -> None:
    refused = refusal(_arrival("GET", host="Dev.Box:8080"), SERVED)
    assert refused is not None
    assert "'dev.box'" in refused.message
    assert "--api-hostname dev.box" in refused.hint


def test_a_write_from_another_origin_is_refused_whatever_its_body() -> None:
    evil = "http://127.0.0.2:9000"
    for content_type in ("text/plain;charset=UTF-8", "application/json"):
        arrival = _arrival(origin=evil, content_type=content_type)
        assert _code(arrival) == "403 cross_origin"
    assert _code(_arrival("DELETE", referer=f"{evil}/evil.html")) == "403 cross_origin"
    assert _code(_arrival("PATCH", origin="null")) == "403 cross_origin"


def test_origin_wins_over_referer() -> None:
    own = "http://127.0.0.1:8080"
    assert _code(_arrival(origin=own, referer="http://evil.example/")) is None
    assert _code(_arrival(origin="http://evil.example", referer=f"{own}/")) == "403 cross_origin"


def test_a_write_from_the_own_page_or_with_no_origin_at_all_goes_through() -> None:
    assert _code(_arrival(origin="http://127.0.0.1:8080")) is None
    assert _code(_arrival(referer="http://127.0.0.1:8080/")) is None
    assert _code(_arrival()) is None  # curl, the CLI's httpx


def test_a_same_origin_or_originless_write_must_still_send_json() -> None:
    form = "application/x-www-form-urlencoded"
    assert _code(_arrival(content_type="text/plain")) == "415 unsupported_media_type"
    own = "http://127.0.0.1:8080"
    assert _code(_arrival(origin=own, content_type=form)) == "415 unsupported_media_type"


def test_reads_from_another_origin_are_answered_the_browser_hides_them() -> None:
    assert _code(_arrival("GET", origin="http://evil.example", content_type="text/plain")) is None


def test_a_websocket_from_another_origin_is_refused_its_own_page_is_not() -> None:
    ws = {"path": "/api/v1/events", "scheme": "ws", "websocket": True, "content_type": None}
    assert _code(_arrival("GET", origin="http://evil.example:8080", **ws)) == "403 cross_origin"
    assert _code(_arrival("GET", origin="http://127.0.0.1:8080", **ws)) is None
    assert _code(_arrival("GET", **ws)) is None  # the CLI's trio-websocket sends no Origin
