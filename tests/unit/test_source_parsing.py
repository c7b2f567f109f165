"""The source's connection string, pg_basebackup's progress, and failures explained."""

from __future__ import annotations

import pytest

from prism.core.errors import ConfigError
from prism.postgres.conninfo import parse_conninfo, pgpass_line
from prism.source.basebackup import explain_failure, parse_progress
from prism.source.health import reading, receiver_failure


def test_a_keyword_string_loses_its_password_and_keeps_the_rest() -> None:
    info = parse_conninfo("host=db.internal port=5433 user=replicator password='s3 cr\\'et'")
    assert info.password == "s3 cr'et"
    assert info.render() == "host=db.internal port=5433 user=replicator"
    assert "s3" not in info.render(application_name="prism")
    assert info.describe() == "replicator@db.internal:5433"


def test_a_url_means_the_same_as_keywords() -> None:
    info = parse_conninfo("postgresql://replicator:p%40ss@db.internal:5433/app?sslmode=require")
    assert info.password == "p@ss"
    assert dict(info.params) == {
        "host": "db.internal",
        "port": "5433",
        "user": "replicator",
        "dbname": "app",
        "sslmode": "require",
    }


def test_values_that_need_quotes_are_quoted_back() -> None:
    info = parse_conninfo("host=h passfile='/data dir/pgpass'")
    assert parse_conninfo(info.render()) == info


@pytest.mark.parametrize("text", ["", "host", "host='unterminated"])
def test_a_malformed_string_is_a_clear_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_conninfo(text)


@pytest.mark.parametrize(
    "text", ["host=h password=hunter2 morehunter2", "postgresql://u:hunter2@h:notaport/db"]
)
def test_a_malformed_string_is_refused_without_echoing_its_password(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_conninfo(text)
    assert "hunter2" not in f"{caught.value.message} {caught.value.hint}"


def test_pgpass_escapes_separators() -> None:
    assert pgpass_line("a:b\\c") == "*:*:*:*:a\\:b\\\\c\n"


def test_progress_has_bytes_percent_rate_and_eta() -> None:
    progress = parse_progress("  51200/102400 kB (50%), 0/1 tablespace", elapsed_s=10.0)
    assert progress is not None
    assert (progress.done_bytes, progress.total_bytes, progress.percent) == (
        51200 * 1024,
        102400 * 1024,
        50,
    )
    assert progress.rate_bytes_s == 51200 * 1024 / 10
    assert progress.eta_s == 10.0
    assert parse_progress("pg_basebackup: checkpoint completed", elapsed_s=1.0) is None


@pytest.mark.parametrize(
    ("stderr", "names"),
    [
        ('FATAL:  no pg_hba.conf entry for replication connection from host "10.0.0.5"', "pg_hba"),
        ("FATAL:  permission denied to start WAL sender", "REPLICATION"),
        (
            "number of requested standby connections exceeds max_wal_senders (currently 0)",
            "wal_level",
        ),
        ('FATAL:  password authentication failed for user "replicator"', "password"),
    ],
)
def test_each_refusal_names_the_setting_to_change(stderr: str, names: str) -> None:
    error = explain_failure(stderr, user="replicator", where="replicator@db:5432")
    assert names in f"{error.message} {error.hint}"
    assert error.detail is not None and stderr.strip() in error.detail


def test_an_idle_caught_up_main_has_no_lag_even_without_a_replayed_commit() -> None:
    health = reading("streaming", "0", None, now=1000.0, retry_ms="5000")
    assert health.view() == {
        "state": "streaming",
        "replay_lag_bytes": 0,
        "replay_lag_seconds": 0.0,
        "last_replayed": None,
        "backup": None,
        "error": None,
        "hint": None,
        "retry_interval_s": 5.0,
        "next_attempt": None,
    }


def test_a_main_behind_lags_by_the_age_of_its_last_replayed_commit() -> None:
    health = reading(None, "4096", "990.5", now=1000.0)
    assert health.state.value == "disconnected"
    assert (health.lag_bytes, health.lag_seconds) == (4096, 9.5)
    assert health.view()["last_replayed"] == "1970-01-01T00:16:30Z"


_STREAMED = "LOG:  started streaming WAL from primary at 0/3000000 on timeline 1\n"
_REFUSED = (
    "FATAL:  could not connect to the primary server: connection to server at "
    '"127.0.0.1", port 5433 failed: FATAL:  must be superuser or replication role to start '
    "walsender\n"
)


def test_a_source_that_became_another_cluster_is_named_with_the_way_out() -> None:
    line = "FATAL:  database system identifier differs between the primary and standby"
    failure = receiver_failure(_STREAMED + line + "\n")
    assert failure is not None
    error = explain_failure(failure, user="replicator", where="replicator@db:5432")
    assert "no longer the cluster main was backed up from" in error.message
    assert error.hint is not None and "--data-dir" in error.hint


def test_the_walreceivers_last_failure_is_found_in_mains_log() -> None:
    assert receiver_failure(_STREAMED + _REFUSED) == _REFUSED.strip()
    # Streaming again since: nothing is wrong any more.
    assert receiver_failure(_REFUSED + _STREAMED) is None
    assert receiver_failure("LOG:  database system is ready to accept connections\n") is None


def test_progress_in_words_says_percent_megabytes_rate_and_time_left() -> None:
    progress = parse_progress("123904/297216 kB (41%), 0/1 tablespace", elapsed_s=30.0)
    assert progress is not None
    assert progress.summary() == "41% (121 of 290 MB, 4.0 MB/s, eta 42 s)"
    first = parse_progress("0/297216 kB (0%), 0/1 tablespace", elapsed_s=0.0)
    assert first is not None and first.summary() == "0% (0 of 290 MB, 0.0 MB/s, eta ? s)"
