"""A latency histogram small enough to keep one per second of a long run.

Buckets grow by 5 %: bucket ``b`` holds latencies in (0.1 ms x 1.05^(b-1), 0.1 ms x 1.05^b],
so about 330 buckets cover 0.1 ms to an hour, and a quantile read from them is at most 5 %
above the truth. Pure arithmetic: the locustfile fills histograms inside Locust, the judge and
the report read them outside it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

SMALLEST_MS = 0.1
GROWTH = 1.05


def bucket(ms: float) -> int:
    """The bucket a latency of `ms` milliseconds falls in."""
    if ms <= SMALLEST_MS:
        return 0
    return math.ceil(math.log(ms / SMALLEST_MS) / math.log(GROWTH) - 1e-9)


def upper_ms(index: int) -> float:
    """The bucket's upper bound in milliseconds: what a quantile in it is reported as."""
    return SMALLEST_MS * GROWTH ** index


def merged(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    total: dict[int, int] = {}
    for histogram in histograms:
        for index, count in histogram.items():
            total[index] = total.get(index, 0) + count
    return total


def quantile(histogram: Mapping[int, int], fraction: float) -> float | None:
    """Nearest-rank quantile in milliseconds (a bucket's upper bound); None when empty."""
    count = sum(histogram.values())
    if count == 0:
        return None
    rank = max(1, math.ceil(fraction * count))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return upper_ms(index)
    raise AssertionError("unreachable: the ranks add up to the count")


def mean_ms(histogram: Mapping[int, int]) -> float | None:
    """Mean latency from the buckets' upper bounds (within 5 % above the truth)."""
    count = sum(histogram.values())
    if count == 0:
        return None
    return sum(upper_ms(index) * n for index, n in histogram.items()) / count
