"""Where a client connection's start-up time goes, phase by phase, for the connect benchmark.

``PRISM_CONNECT_PHASES=1`` in Prism's environment makes every connection log one INFO line,
``connect phases: peer=... hello=0.210 tls=... lookup=... ms``, from its accept to the splice
(``tools/bench/connect.py`` sums them). It is an environment switch, not a setting, because it
is for measuring Prism rather than for running it; off, a connection pays one attribute look-up
per phase and no clock read.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Final, Protocol

log = logging.getLogger(__name__)

ENV: Final = "PRISM_CONNECT_PHASES"


class Phases(Protocol):
    """A connection's stopwatch: ``lap`` ends the phase running since the last lap."""

    def lap(self, phase: str) -> None: ...

    def report(self, peer: str) -> None: ...


class _Stopwatch:
    __slots__ = ("_last", "_spent")

    def __init__(self) -> None:
        self._last = time.perf_counter_ns()
        self._spent: dict[str, int] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter_ns()
        self._spent[phase] = self._spent.get(phase, 0) + now - self._last
        self._last = now

    def report(self, peer: str) -> None:
        spent = " ".join(f"{phase}={ns / 1e6:.3f}" for phase, ns in self._spent.items())
        log.info("connect phases: peer=%s %s ms", peer, spent)


class _Off:
    __slots__ = ()

    def lap(self, phase: str) -> None:
        pass

    def report(self, peer: str) -> None:
        pass


_OFF: Final = _Off()
_ON: Final = os.environ.get(ENV) == "1"


def stopwatch() -> Phases:
    """A running stopwatch when ``PRISM_CONNECT_PHASES=1``, else one that does nothing."""
    return _Stopwatch() if _ON else _OFF
