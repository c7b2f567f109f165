"""Per-branch activity over the last hour, minute by minute: sessions opened and bytes moved.

What the page draws as each branch's sparkline. Kept in memory only (an hour of history is not
worth a write per minute per branch, and a restart starting it afresh is honest). Fed by the
event bus (``connected`` counts a session) and by the branches' byte counters, read whenever
an event or a reader comes by: bytes of a minute are the counter's growth during it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prism.core.events import Event

MINUTES = 60


@dataclass
class _Series:
    """One branch's buckets: minute number -> [sessions opened, bytes counter seen last]."""

    sessions: dict[int, int] = field(default_factory=dict)
    counter: dict[int, int] = field(default_factory=dict)


class ActivityLog:
    """Minute buckets per branch for the last ``MINUTES`` minutes."""

    def __init__(
        self, bytes_of: Callable[[str], int | None], clock: Callable[[], float] = time.time
    ) -> None:
        self._bytes_of = bytes_of
        self._clock = clock
        self._series: dict[str, _Series] = {}

    def _minute(self) -> int:
        return int(self._clock() // 60)

    def observe(self, event: Event) -> None:
        """An event-bus listener: count sessions, note byte counters, forget deleted branches."""
        name = event.get("branch")
        if name is None:
            return
        if event["type"] == "deleted":
            self._series.pop(name, None)
            return
        if event["type"] in ("connected", "disconnected"):
            series = self._series.setdefault(name, _Series())
            if event["type"] == "connected":
                minute = self._minute()
                series.sessions[minute] = series.sessions.get(minute, 0) + 1
            self._note_bytes(name, series)

    def _note_bytes(self, name: str, series: _Series) -> None:
        count = self._bytes_of(name)
        if count is not None:
            series.counter[self._minute()] = count
        oldest = self._minute() - MINUTES
        for buckets in (series.sessions, series.counter):
            for minute in [m for m in buckets if m < oldest]:
                # Keep the last counter before the window: the first minute's growth needs it.
                if buckets is series.counter and minute == max(buckets):
                    continue
                del buckets[minute]

    def sparkline(self, name: str) -> dict[str, list[int]]:
        """``sessions`` and ``bytes`` per minute, oldest first, the current minute last."""
        series = self._series.setdefault(name, _Series())
        self._note_bytes(name, series)
        now = self._minute()
        minutes = range(now - MINUTES + 1, now + 1)
        earlier = [m for m in series.counter if m < minutes[0]]
        last = series.counter[max(earlier)] if earlier else None
        moved = []
        for minute in minutes:
            current = series.counter.get(minute)
            if current is None:
                moved.append(0)
                continue
            # A reset sets the counter back to 0: count what moved since, not a negative.
            moved.append(current - last if last is not None and current >= last else current)
            last = current
        return {"sessions": [series.sessions.get(m, 0) for m in minutes], "bytes": moved}
