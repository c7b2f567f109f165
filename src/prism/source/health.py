"""How main is keeping up with its source: read from main itself, shown in the API, metrics, events.

Main's walreceiver knows both ends: ``pg_stat_wal_receiver.latest_end_lsn`` is the end of the
source's WAL as the source last reported it, ``pg_last_wal_replay_lsn()`` is how far main has
applied. Their difference is the replay lag in bytes; the lag in seconds is how old the last
replayed commit is, and 0 when nothing is left to replay (an idle source is not "behind").
Reconnecting is Postgres' own walreceiver's job (every ``wal_retrieve_retry_interval``); while
the source is gone the watcher makes that interval grow (``prism.source.backoff``). When main is
disconnected, the walreceiver's last failure in main's server log
(written after it last started streaming) is explained like a failed base backup: one message
naming what to change on the source (a role that lost ``REPLICATION``, a ``pg_hba.conf`` line,
a password), in ``error`` and ``hint``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import trio

from prism.core.address import BackendAddress
from prism.core.errors import PrismError
from prism.core.names import MAIN_BRANCH
from prism.durable.state import rfc3339
from prism.postgres.client import ServiceConnection, connect_branch
from prism.source.basebackup import Progress, explain_failure
from prism.source.follow import Source

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 2.0
_STREAMING_STARTED = "started streaming WAL from primary"
_RECEIVER_FAILURE = re.compile(r"FATAL:\s+(could not connect to the primary server|.*primary).*")

_QUERY = """
SELECT (SELECT status FROM pg_stat_wal_receiver),
       greatest(0, pg_wal_lsn_diff(
           coalesce((SELECT latest_end_lsn FROM pg_stat_wal_receiver), pg_last_wal_receive_lsn()),
           pg_last_wal_replay_lsn()))::bigint,
       extract(epoch FROM pg_last_xact_replay_timestamp()),
       (SELECT setting FROM pg_settings WHERE name = 'wal_retrieve_retry_interval')
"""


class WatchedMain(Protocol):
    """What reading main's health needs of the branches: where main runs, and whether it is
    still being made (``prism.mainsource.base.MainHost`` is one)."""

    def address(self, name: str) -> BackendAddress | None: ...

    def making_main(self) -> bool: ...


class SourceState(enum.Enum):
    BACKING_UP = "backing_up"
    STREAMING = "streaming"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class SourceHealth:
    """One reading of main's replication from the source."""

    state: SourceState
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    last_replayed: datetime | None = None
    backup: Progress | None = None
    error: str | None = None
    hint: str | None = None
    retry_interval_s: float | None = None
    next_attempt: datetime | None = None

    def view(self) -> dict[str, Any]:
        """The ``source`` object of ``GET /api/v1/branches/main``."""
        return {
            "state": self.state.value,
            "replay_lag_bytes": self.lag_bytes,
            "replay_lag_seconds": self.lag_seconds,
            "last_replayed": None if self.last_replayed is None else rfc3339(self.last_replayed),
            "backup": None if self.backup is None else self.backup.fields(),
            "error": self.error,
            "hint": self.hint,
            "retry_interval_s": self.retry_interval_s,
            "next_attempt": None if self.next_attempt is None else rfc3339(self.next_attempt),
        }


def receiver_failure(log_text: str) -> str | None:
    """The walreceiver's last failure in a server log, unless it streamed again since."""
    started = log_text.rfind(_STREAMING_STARTED)
    failures = list(_RECEIVER_FAILURE.finditer(log_text, max(started, 0)))
    return failures[-1].group(0) if failures else None


async def _explained(health: SourceHealth, source: Source) -> SourceHealth:
    """``health`` with why main is disconnected, if main's log says."""
    failure = receiver_failure(await source.tools.server_log())
    if failure is None:
        return health
    user = source.conninfo.get("user") or "?"
    explained = explain_failure(failure, user=user, where=source.conninfo.describe())
    return dataclasses.replace(health, error=explained.message, hint=explained.hint)


def reading(
    status: str | None,
    lag_bytes: str | None,
    replayed_epoch: str | None,
    *,
    now: float,
    retry_ms: str | None = None,
) -> SourceHealth:
    """A ``SourceHealth`` from one row of ``_QUERY`` (sans-IO)."""
    state = SourceState.STREAMING if status == "streaming" else SourceState.DISCONNECTED
    lag = int(lag_bytes) if lag_bytes is not None else None
    replayed = float(replayed_epoch) if replayed_epoch is not None else None
    seconds = None
    if lag == 0:
        seconds = 0.0
    elif replayed is not None:
        seconds = round(max(0.0, now - replayed), 3)
    return SourceHealth(
        state,
        lag_bytes=lag,
        lag_seconds=seconds,
        last_replayed=None if replayed is None else datetime.fromtimestamp(replayed, UTC),
        retry_interval_s=None if retry_ms is None else int(retry_ms) / 1000,
    )


@contextlib.asynccontextmanager
async def _main_service(main: WatchedMain, superuser: str) -> AsyncIterator[ServiceConnection]:
    """Prism's own connection to main's running server; ``PrismError`` if it has none."""
    address = main.address(MAIN_BRANCH)
    if address is None or address.service_socket_dir is None:
        raise PrismError("main is not running")
    async with await connect_branch(
        address, user=superuser, application_name="prism source health"
    ) as service:
        yield service


async def read_health(source: Source, main: WatchedMain, *, superuser: str) -> SourceHealth:
    """Ask main how far behind the source it is; disconnected when main cannot be asked."""
    if source.backing_up or main.making_main():
        return SourceHealth(SourceState.BACKING_UP, backup=source.progress)
    try:
        async with _main_service(main, superuser) as service:
            rows = await service.query(_QUERY)
    except PrismError as exc:
        log.debug("source health: cannot ask main: %s", exc.message)
        return SourceHealth(SourceState.DISCONNECTED)
    status, lag, replayed, retry_ms = rows[0]
    health = reading(status, lag, replayed, now=time.time(), retry_ms=retry_ms)
    if health.retry_interval_s is not None:
        attempt = source.backoff.next_attempt(health.retry_interval_s)
        if attempt is not None:
            health = dataclasses.replace(health, next_attempt=datetime.fromtimestamp(attempt, UTC))
    if health.state is SourceState.DISCONNECTED:
        return await _explained(health, source)
    return health


async def watch_source(source: Source, main: WatchedMain, *, superuser: str) -> None:
    """Publish a ``source`` event (and log) whenever main starts or stops streaming, or its
    retry interval changes; make that interval grow while the source is gone."""
    previous: tuple[SourceState, str | None, float | None] | None = None
    while True:
        health = await read_health(source, main, superuser=superuser)
        if health.retry_interval_s is not None:
            health = await _back_off(source, main, health, superuser=superuser)
        now = (health.state, health.error, health.retry_interval_s)
        if now != previous and health.state is not SourceState.BACKING_UP:
            level = logging.WARNING if health.state is SourceState.DISCONNECTED else logging.INFO
            log.log(
                level,
                "source: main is %s (%s)%s",
                health.state.value,
                source.conninfo.describe(),
                "" if health.error is None else f": {health.error} (hint: {health.hint})",
            )
            view = health.view()
            del view["backup"]
            source.events.publish("source", MAIN_BRANCH, **view)
            previous = now
        await trio.sleep(WATCH_INTERVAL_S)


async def _back_off(
    source: Source, main: WatchedMain, health: SourceHealth, *, superuser: str
) -> SourceHealth:
    """Give main the retry interval the backoff wants now; ``health`` as it is then."""
    assert health.retry_interval_s is not None
    wanted = source.backoff.decide(
        streaming=health.state is SourceState.STREAMING,
        current_s=health.retry_interval_s,
        now=time.time(),
    )
    if wanted is None:
        return health
    try:
        async with _main_service(main, superuser) as service:
            # Two statements: ALTER SYSTEM cannot run in the implicit transaction of one query.
            await service.query(f"ALTER SYSTEM SET wal_retrieve_retry_interval = '{wanted:g}s'")
            await service.query("SELECT pg_reload_conf()")
    except PrismError as exc:
        log.warning("source: could not set main's retry interval: %s", exc.message)
        return health
    attempt = source.backoff.next_attempt(wanted)
    next_attempt = None if attempt is None else datetime.fromtimestamp(attempt, UTC)
    log.info(
        "source: main tries the source every %g s%s",
        wanted,
        "" if next_attempt is None else f" (next attempt about {rfc3339(next_attempt)})",
    )
    return dataclasses.replace(health, retry_interval_s=wanted, next_attempt=next_attempt)
