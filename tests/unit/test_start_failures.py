"""Why a branch server exited during start-up, as both runtimes say it."""

from __future__ import annotations

from pathlib import Path

from prism.runtime._postmaster import exit_failure

_FULL_LOG = (
    "LOG:  starting PostgreSQL 18.1\n"
    'FATAL:  could not write to file "pg_wal/xlogtemp.42": No space left on device\n'
)


def test_a_full_disk_is_said_in_words_with_what_to_do() -> None:
    failure = exit_failure("fill3", "status 1", _FULL_LOG, Path("/nonexistent"))
    assert failure.message == (
        "the server of branch fill3 could not start: the disk is full (No space left on device)"
    )
    assert failure.hint is not None
    assert "deleting a branch works on a full disk" in failure.hint
    assert "xlogtemp.42" in failure.hint


def test_another_exit_keeps_the_status_and_the_log_as_the_hint(tmp_path: Path) -> None:
    failure = exit_failure("dev", "exit code 1", 'FATAL:  invalid value for "port"', tmp_path)
    assert failure.message == "the server of branch dev exited during start-up (exit code 1)"
    assert failure.hint == 'FATAL:  invalid value for "port"'
