"""Revision choice: smooth weighting accuracy, sticky assignment stability, zero weights."""

import collections

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies import weighting


@pytest.mark.parametrize("weights", [
    pytest.param([90, 10], id="90/10"),
    pytest.param([50, 50], id="50/50"),
    pytest.param([1, 99], id="1/99"),
    pytest.param([70, 20, 10], id="three-way"),
    pytest.param([5, 0, 95], id="zero-in-the-middle"),
])
def test_smooth_weighting_hits_the_weights_within_one_percent(weights):
    picker = weighting.SmoothWeighted(weights)
    counts = collections.Counter(picker.pick() for _ in range(10_000))
    for i, weight in enumerate(weights):
        assert abs(counts[i] / 10_000 - weight / sum(weights)) <= 0.01


@given(st.lists(st.integers(0, 100), min_size=1, max_size=6).filter(lambda w: sum(w) > 0),
       st.integers(1, 500))
def test_every_window_is_within_one_request_per_revision(weights, n):
    """Smooth WRR's guarantee: any prefix of n picks is within 1 of n * share per revision."""
    picker = weighting.SmoothWeighted(weights)
    counts = collections.Counter(picker.pick() for _ in range(n))
    for i, weight in enumerate(weights):
        assert abs(counts[i] - n * weight / sum(weights)) < len(weights)
        if weight == 0:
            assert counts[i] == 0


def test_all_zero_weights_pick_nothing():
    with pytest.raises(LookupError):
        weighting.SmoothWeighted([0, 0]).pick()
    with pytest.raises(LookupError):
        weighting.sticky_pick(b"user", [0, 0])


def test_sticky_split_matches_weights():
    counts = collections.Counter(weighting.sticky_pick(b"user-%d" % i, [90, 10])
                                 for i in range(20_000))
    assert abs(counts[1] / 20_000 - 0.10) < 0.01


@pytest.mark.parametrize(("before", "after"), [
    pytest.param([95, 5], [90, 10], id="canary-5-to-10"),
    pytest.param([75, 25], [50, 50], id="canary-25-to-50"),
    pytest.param([50, 50], [100, 0], id="rollback"),
])
def test_a_weight_change_moves_only_the_users_it_must(before, after):
    users = [b"user-%d" % i for i in range(20_000)]
    moved = sum(weighting.sticky_pick(u, before) != weighting.sticky_pick(u, after)
                for u in users)
    must_move = abs(after[1] - before[1]) / 100
    assert moved / len(users) <= must_move + 0.01
    assert moved / len(users) >= must_move - 0.01


def test_sticky_key_is_stable():
    assert weighting.key_point(b"alice") == weighting.key_point(b"alice")
    assert 0 <= weighting.key_point(b"alice") < 1
