"""The pieces of main's dump generations (--source-mode dump) that need no source."""

from __future__ import annotations

import subprocess

import pytest

from prism.mainsource.generations import Every
from prism.runtime._programs import pipe_script
from prism.source.dump import roles_script


@pytest.mark.parametrize(
    ("first", "second", "status"),
    [
        (["echo", "rows"], ["grep", "-q", "rows"], 0),
        (["false"], ["cat"], 1),  # the first fails: the second's success hides nothing
        (["echo", "rows"], ["grep", "-q", "other"], 1),
    ],
)
def test_the_containers_pipe_fails_when_either_program_fails(
    first: list[str], second: list[str], status: int
) -> None:
    # The script a docker runtime's container runs for pg_dump | pg_restore, run by a real sh.
    done = subprocess.run(["sh", "-c", pipe_script(first, second)], check=False)
    assert done.returncode == status


def test_the_role_script_leaves_prisms_superuser_alone() -> None:
    script = (
        "CREATE ROLE app;\n"
        "ALTER ROLE app WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$x';\n"
        "CREATE ROLE postgres;\n"
        "ALTER ROLE postgres WITH SUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$y';\n"
        'ALTER ROLE "postgres" WITH SUPERUSER;\n'
        "CREATE ROLE postgres_reader;\n"
        "GRANT pg_read_all_data TO postgres;\n"
    )
    assert roles_script(script, keep_out="postgres") == (
        "CREATE ROLE app;\n"
        "ALTER ROLE app WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$x';\n"
        "CREATE ROLE postgres_reader;\n"
        "GRANT pg_read_all_data TO postgres;\n"
    )


def test_progress_is_reported_at_most_once_a_period_each_on_its_own_clock() -> None:
    events, log = Every(1.0), Every(5.0)
    said = [(now, events.due(now), log.due(now)) for now in (0.0, 0.5, 1.0, 2.5, 4.9, 5.0, 5.5)]
    assert said == [
        (0.0, True, True),
        (0.5, False, False),
        (1.0, True, False),
        (2.5, True, False),
        (4.9, True, False),
        (5.0, False, True),
        (5.5, False, False),
    ]
