"""The per-second latency histogram (loadtests/latency.py): quantiles within 5 % above truth."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from loadtests import latency

LATENCIES = st.lists(st.floats(0.01, 3_600_000), min_size=1, max_size=300)


@given(LATENCIES, st.floats(0.01, 1.0))
def test_a_quantile_is_at_most_5_percent_above_the_nearest_rank(values, fraction):
    histogram: dict[int, int] = {}
    for value in values:
        index = latency.bucket(value)
        histogram[index] = histogram.get(index, 0) + 1
    truth = sorted(values)[max(1, math.ceil(fraction * len(values))) - 1]
    found = latency.quantile(histogram, fraction)
    assert max(truth, latency.SMALLEST_MS) <= found * (1 + 1e-9)
    assert found <= max(truth, latency.SMALLEST_MS) * latency.GROWTH * (1 + 1e-9)


@given(LATENCIES, LATENCIES)
def test_merging_histograms_adds_their_counts(first, second):
    def histogram(values):
        counts: dict[int, int] = {}
        for value in values:
            counts[latency.bucket(value)] = counts.get(latency.bucket(value), 0) + 1
        return counts

    assert latency.merged([histogram(first), histogram(second)]) == histogram(first + second)


def test_an_empty_histogram_has_no_quantile_nor_mean():
    assert latency.quantile({}, 0.99) is None
    assert latency.mean_ms({}) is None


def test_the_mean_of_one_bucket_is_its_upper_bound():
    assert latency.mean_ms({latency.bucket(20.0): 7}) == latency.upper_ms(latency.bucket(20.0))
