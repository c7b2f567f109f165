"""How often main's walreceiver tries the source again while it is gone: a growing backoff.

Postgres retries every ``wal_retrieve_retry_interval`` (5 s by default), for ever: against a
source that is down for maintenance or gone for the night that is a failed connection, and a
line in both servers' logs, every 5 s. While main is disconnected, Prism doubles the interval
each time a retry at the current one has had its chance and failed (5 s → 10 → 20 … → 2 min),
and puts it back to 5 s as soon as main streams again. The interval is main's own setting
(``ALTER SYSTEM`` + ``pg_reload_conf()``; a standby applies it without a restart), so it
also holds across a restart of Prism, which reads it back from main. Sans-IO: the source
watcher (``prism.source.health``) reads and applies.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE_S = 5.0
"""Postgres' default ``wal_retrieve_retry_interval``: the interval while the source is up."""
CAP_S = 120.0


@dataclass
class Backoff:
    """The retry interval main should have, from what Prism sees of main over time."""

    base_s: float = BASE_S
    cap_s: float = CAP_S
    since: float | None = None
    """When main's walreceiver began retrying at its current interval (epoch seconds); None
    while it streams."""

    def decide(self, *, streaming: bool, current_s: float, now: float) -> float | None:
        """The interval to give main now, or None to leave ``current_s`` as it is."""
        if streaming:
            self.since = None
            return None if current_s == self.base_s else self.base_s
        if self.since is None:
            self.since = now
            return None
        if now - self.since < current_s:
            return None  # no retry at this interval has had its chance yet
        self.since = now
        wanted = min(current_s * 2, self.cap_s)
        return None if wanted == current_s else wanted

    def next_attempt(self, current_s: float) -> float | None:
        """About when the walreceiver tries next (epoch seconds); None while it streams."""
        return None if self.since is None else self.since + current_s
