"""Connection strings: every format from one set of parameters, ``user@branch`` escaped right."""

from __future__ import annotations

import shlex
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from prism.postgres.dsn import (
    FORMATS,
    ConnectionParams,
    Endpoint,
    confirmed,
    connection_view,
    params_for,
    render,
)

_TLS = Endpoint(host="db.example", port=5432, superuser="postgres", password="s3cr:t@x", tls="on")
_PLAIN = Endpoint(host="0.0.0.0", port=6432, superuser="postgres", password="pw", tls="off")


def test_uri_escapes_the_at_sign_of_user_at_branch() -> None:
    uri = render(params_for(_TLS, "feature"), "uri")
    assert uri == "postgresql://postgres%40feature@db.example:5432/postgres?sslmode=require"
    parsed = urlsplit(uri)
    assert unquote(parsed.username or "") == "postgres@feature"
    assert parsed.hostname == "db.example" and parsed.password is None


def test_password_is_left_out_unless_asked_and_escaped_when_given() -> None:
    view = connection_view(params_for(_TLS, "feature"))
    assert "password" not in view and all("s3cr" not in view[fmt] for fmt in FORMATS)
    uri = render(params_for(_TLS, "feature", with_password=True), "uri")
    assert unquote(urlsplit(uri).password or "") == "s3cr:t@x"


def test_tls_off_says_disable_and_a_wildcard_host_becomes_the_callers_host() -> None:
    params = params_for(_PLAIN, "pr-42", host="prism.internal")
    assert params.host == "prism.internal" and params.sslmode == "disable"
    assert params_for(_PLAIN, "pr-42").host == "127.0.0.1"


def test_keyword_env_jdbc_and_prisma_formats() -> None:
    params = params_for(_TLS, "feature", with_password=True)
    assert render(params, "keyword") == (
        "host=db.example port=5432 user=postgres@feature dbname=postgres sslmode=require "
        "password=s3cr:t@x"
    )
    env = dict(line.split("=", 1) for line in render(params, "env").splitlines())
    assert {k: shlex.split(v)[0] for k, v in env.items()} == {
        "PGHOST": "db.example",
        "PGPORT": "5432",
        "PGUSER": "postgres@feature",
        "PGDATABASE": "postgres",
        "PGSSLMODE": "require",
        "PGPASSWORD": "s3cr:t@x",
    }
    assert render(params, "jdbc") == (
        "jdbc:postgresql://db.example:5432/postgres"
        "?user=postgres%40feature&sslmode=require&password=s3cr%3At%40x"
    )
    prisma = render(params, "prisma")
    assert prisma.startswith("postgresql://postgres%40feature:s3cr%3At%40x@db.example:5432/")
    assert "schema=public" in prisma and "sslaccept=accept_invalid_certs" in prisma


def test_keyword_values_with_spaces_or_quotes_are_quoted() -> None:
    odd = Endpoint(host="h", port=1, superuser="postgres", password="it's a pw", tls="off")
    keyword = render(params_for(odd, "b", with_password=True), "keyword")
    assert keyword.endswith(r"password='it\'s a pw'")


def test_ipv6_hosts_are_bracketed_in_uris() -> None:
    v6 = Endpoint(host="::1", port=5432, superuser="postgres", password="pw", tls="off")
    assert "@[::1]:5432/" in render(params_for(v6, "b"), "uri")


def test_unknown_format_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        render(params_for(_TLS, "b"), "yaml")


_STANDBY = Endpoint(host="h", port=5432, superuser="postgres", password=None, tls="off")


def test_a_standby_of_a_source_gives_no_password_and_says_why() -> None:
    view = connection_view(params_for(_STANDBY, "main", with_password=True))
    assert view["password"] is None
    assert "source" in view["password_note"] and "postgres" in view["password_note"]
    assert urlsplit(view["uri"]).password is None and "PGPASSWORD" not in view["env"]
    assert "password" not in connection_view(params_for(_STANDBY, "main"))


def _check(answer: bool | None) -> Any:
    async def check(branch: str, role: str, password: str) -> bool | None:
        assert (branch, role, password) == ("feature", "postgres", "s3cr:t@x")
        return answer

    return check


async def test_a_password_the_branch_refuses_is_withheld_and_an_unknown_answer_keeps_it() -> None:
    asked = params_for(_TLS, "feature", with_password=True)
    refused = await confirmed(asked, "feature", "postgres", _check(False))
    assert refused.password is None and "ALTER ROLE" in (refused.password_note or "")
    for answer in (True, None):
        kept: ConnectionParams = await confirmed(asked, "feature", "postgres", _check(answer))
        assert kept == asked
    assert await confirmed(asked, "feature", "postgres", None) == asked
