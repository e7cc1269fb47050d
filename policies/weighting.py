"""Which revision a request goes to: smooth weighted choice and sticky assignment.

Both are deterministic. Smooth weighted round robin (nginx's algorithm) spreads a 90/10 split
as evenly as possible, so any window of n requests is within one request per revision of the
weights. Sticky assignment maps a key to a fixed point on [0, total weight); each revision owns
a contiguous range in table order, so moving weight between two neighbours moves only the
users in the range that changed hands, no others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


class SmoothWeighted:
    """nginx's smooth weighted round robin over fixed weights.

    Each pick adds every weight to its running score, takes the highest score and subtracts the
    total from it. Zero weights never win. Mutable on purpose: this runs once per request.
    """

    __slots__ = ("_current", "_indices", "_total", "_weights")

    def __init__(self, weights: Sequence[int]) -> None:
        self._weights = list(weights)
        self._indices = [i for i, w in enumerate(weights) if w > 0]
        self._current = [0] * len(weights)
        self._total = sum(weights)

    @property
    def total(self) -> int:
        return self._total

    def pick(self) -> int:
        """Index of the next revision; raises LookupError when every weight is zero."""
        indices = self._indices
        if len(indices) == 1:
            return indices[0]
        if not indices:
            raise LookupError("no revision has weight")
        current, weights = self._current, self._weights
        best = indices[0]
        for i in indices:
            current[i] += weights[i]
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return best


def key_point(key: bytes) -> float:
    """A stable point in [0, 1) for a stickiness key (the same in every process and release)."""
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def sticky_pick(key: bytes, weights: Sequence[int]) -> int:
    """The revision whose cumulative-weight range holds the key's point; LookupError if none."""
    total = sum(weights)
    if total <= 0:
        raise LookupError("no revision has weight")
    point = key_point(key) * total
    upper = 0
    for i, weight in enumerate(weights):
        upper += weight
        if point < upper:
            return i
    return max(i for i, w in enumerate(weights) if w > 0)  # float rounding at the top edge
