"""One script of behaviour every Postgres client must see through Prism, and its expected result.

The client matrix (``tests/integration/test_client_matrix.py``: psql, psycopg, asyncpg, pg8000)
and the drivers the seed's users run (``tests/system/test_client_drivers.py``: pgjdbc,
node-postgres) each play the same script against a new branch and report what they saw as a
:class:`Seen`; :func:`assert_behaves_like_postgres` holds the one definition of "right", so a
client cannot pass by a looser standard than the others.

The script, on one session unless a client cannot (psql's cancel ends its run); the order may
suit the client (pipeline mode batches the queries):

1. connect (TLS or not) as ``postgres@<new branch>``;
2. ``SELECT $1::int + $2::int`` with 40 and 2 over the extended protocol;
3. one named prepared statement ``SELECT $1::int * 10`` run for 1, 2, 3, and whether the server
   still holds a prepared statement afterwards (it must: the session is one backend session);
4. ``CREATE TEMP TABLE copied (t text)``, ``COPY copied FROM STDIN`` of ``alpha``, ``beta``,
   then ``COPY copied TO STDOUT``;
5. ``LISTEN prism_matrix``, ``NOTIFY prism_matrix, 'hello'``: the payload, and whether the
   notification names the pid the client was given at connect (as Postgres's does);
6. ``SELECT pg_sleep(30)`` cancelled 0.5 s in by the client's own cancel mechanism: the seconds
   from the cancel until the session answered its next query;
7. ``SELECT 1/0`` (``22012``) and then ``SELECT 7`` on the same session.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from dataclasses import dataclass
from typing import Any

from tests.integration.harness import PASSWORD, PrismHandle

SUM_ARGS = (40, 2)
PREPARED_ARGS = (1, 2, 3)
COPY_ROWS = ("alpha", "beta")
CHANNEL = "prism_matrix"
PAYLOAD = "hello"
CANCEL_AFTER = 0.5
CANCEL_BOUND = 5.0
"""Generous: the tests prove the cancel reached the query (else it would take 30 s), not speed."""


@dataclass(frozen=True)
class Target:
    """Where a client connects: Prism's port, as ``postgres@<branch>``, with or without TLS."""

    host: str
    port: int
    user: str
    password: str
    dbname: str
    tls: bool

    def as_json(self) -> str:
        """The target for a client program in another language (argument 1 of its command)."""
        return json.dumps(dataclasses.asdict(self))


_branches = itertools.count()


def target_for(prism: PrismHandle, *, tls: bool) -> Target:
    """A branch of ``prism`` that does not exist yet, for one client run."""
    return Target(
        host="127.0.0.1",
        port=prism.port,
        user=f"postgres@matrix-{next(_branches)}",
        password=PASSWORD,
        dbname="postgres",
        tls=tls,
    )


@dataclass(frozen=True)
class Seen:
    """What one client observed while playing the script."""

    tls: bool
    sum: int
    prepared: list[int]
    prepared_on_server: bool
    copied: list[str]
    notification: str
    notified_by_own_pid: bool
    cancelled_within: float
    error_sqlstate: str
    after_error: int

    @classmethod
    def from_json(cls, text: str) -> Seen:
        """Parse the one JSON object a client program in another language prints."""
        data: dict[str, Any] = json.loads(text)
        return cls(**data)


def assert_behaves_like_postgres(seen: Seen, target: Target) -> None:
    """Fail with every difference between what the client saw and what Postgres gives."""
    expected = Seen(
        tls=target.tls,
        sum=sum(SUM_ARGS),
        prepared=[arg * 10 for arg in PREPARED_ARGS],
        prepared_on_server=True,
        copied=list(COPY_ROWS),
        notification=PAYLOAD,
        notified_by_own_pid=True,
        cancelled_within=seen.cancelled_within,
        error_sqlstate="22012",
        after_error=7,
    )
    assert seen == expected, f"saw {seen}, Postgres gives {expected}"
    assert 0 <= seen.cancelled_within < CANCEL_BOUND, "the cancel did not reach the query"


async def assert_new_branch_was_made(prism: PrismHandle, target: Target) -> None:
    """The client really went through branch creation, not to an existing server."""
    assert prism.manager.get(target.user.split("@")[1]) is not None


def assert_relayed_by_the_expected_plane(prism: PrismHandle, target: Target) -> None:
    """As root (as in CI) plain sessions went through the kernel's sockmap; TLS ones the pump."""
    plane = prism.info.data_plane
    if os.geteuid() == 0:
        assert plane.name == "sockmap", plane.reason
    expected = "pump" if target.tls or plane.sockmap is None else "sockmap"
    assert plane.sessions[expected] >= 1, dict(plane.sessions)
