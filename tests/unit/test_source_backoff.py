"""The backoff of main's retries while its source is gone (sans-IO)."""

from __future__ import annotations

from prism.source.backoff import BASE_S, CAP_S, Backoff


def _disconnected_for(backoff: Backoff, seconds: float, current: float) -> list[float]:
    """Feed one disconnected reading every 2 s (as the watcher does); the intervals set."""
    chosen = []
    for tick in range(int(seconds / 2) + 1):
        wanted = backoff.decide(streaming=False, current_s=current, now=1000.0 + 2 * tick)
        if wanted is not None:
            chosen.append(wanted)
            current = wanted
    return chosen


def test_the_interval_doubles_after_each_failed_retry_up_to_the_cap() -> None:
    chosen = _disconnected_for(Backoff(), 600, BASE_S)
    assert chosen == [10.0, 20.0, 40.0, 80.0, CAP_S]


def test_nothing_changes_before_a_retry_at_the_interval_had_its_chance() -> None:
    backoff = Backoff()
    assert backoff.decide(streaming=False, current_s=5.0, now=100.0) is None
    assert backoff.decide(streaming=False, current_s=5.0, now=104.0) is None
    assert backoff.next_attempt(5.0) == 105.0
    assert backoff.decide(streaming=False, current_s=5.0, now=105.0) == 10.0
    assert backoff.next_attempt(10.0) == 115.0


def test_streaming_again_puts_the_base_interval_back_once() -> None:
    backoff = Backoff()
    _disconnected_for(backoff, 30, BASE_S)
    assert backoff.decide(streaming=True, current_s=40.0, now=2000.0) == BASE_S
    assert backoff.next_attempt(BASE_S) is None
    assert backoff.decide(streaming=True, current_s=BASE_S, now=2002.0) is None


def test_an_interval_left_by_an_earlier_prism_keeps_growing_from_where_it_was() -> None:
    assert _disconnected_for(Backoff(), 200, 40.0) == [80.0, CAP_S]
