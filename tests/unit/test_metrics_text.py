"""The Prometheus text Prism renders: histogram arithmetic and what events count."""

from __future__ import annotations

from prism.metrics import Histogram


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    histogram = Histogram(buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 0.7, 3.0):
        histogram.observe(value)
    assert histogram.lines("x") == [
        'x_bucket{le="0.1"} 1',
        'x_bucket{le="1"} 3',
        'x_bucket{le="+Inf"} 4',
        "x_sum 4.25",
        "x_count 4",
    ]


def test_value_on_a_bucket_bound_counts_in_that_bucket() -> None:
    histogram = Histogram(buckets=(1.0,))
    histogram.observe(1.0)
    assert histogram.lines("x")[0] == 'x_bucket{le="1"} 1'
