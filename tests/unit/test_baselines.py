"""The HPA-like scaler and the oracle of policies/baselines.py, which the simulator runs beside
sluice's decider. HPA behaviour is table-driven: one sync from a fresh state, then sequences for
the sync period, the scale-down stabilization window and the rate limits' period.

Unless a test says otherwise the policy scales on rps with target 100 at utilization 0.7, so the
HPA's target is 70 rps per replica.
"""

import pytest

from policies import baselines, decider, scaling


def policy(**overrides):
    return scaling.ScalingPolicy(**{"metric": "rps", "target": 100, **overrides})


def sync_once(current, metric, the_policy=None):
    inputs = decider.ScalingInputs(now=0, value=metric, ready=current)
    decision, _ = baselines.hpa_decide(inputs, baselines.HpaState(), the_policy or policy())
    return decision.desired


@pytest.mark.parametrize(
    ("current", "metric", "overrides", "desired"),
    [
        pytest.param(10, 700, {}, 10, id="on-target"),
        pytest.param(10, 763, {}, 10, id="9%-over-is-within-tolerance"),
        pytest.param(10, 637, {}, 10, id="9%-under-is-within-tolerance"),
        pytest.param(10, 780, {}, 12, id="11%-over-scales-to-ceil-of-metric-over-target"),
        pytest.param(10, 140, {}, 2, id="fresh-state-scales-down-at-once"),
        pytest.param(2, 7000, {}, 6, id="scale-up-limited-to-plus-4-pods"),
        pytest.param(10, 7000, {}, 20, id="scale-up-limited-to-plus-100-percent"),
        pytest.param(3, 0, {}, 1, id="never-below-one"),
        pytest.param(3, 0, {"min_replicas": 2}, 2, id="min-replicas"),
        pytest.param(4, 7000, {"max_replicas": 5}, 5, id="max-replicas"),
        pytest.param(10, 700, {"target_utilization": 1.0}, 7, id="target-is-target-x-utilization"),
    ],
)
def test_one_sync(current, metric, overrides, desired):
    assert sync_once(current, metric, policy(**overrides)) == desired


def drive(metric, seconds, ready, behavior=baselines.HPA_DEFAULTS):
    """Call the HPA every second with ``metric(now)``; replicas follow its decisions at once.
    Returns the desired count per second."""
    state, counts = baselines.HpaState(), []
    for now in range(seconds):
        inputs = decider.ScalingInputs(now=now, value=metric(now), ready=ready)
        decision, state = baselines.hpa_decide(inputs, state, policy(), behavior)
        ready = decision.desired
        counts.append(ready)
    return counts


def test_acts_only_once_per_15_s_sync_period():
    counts = drive(lambda t: 700 if t == 0 else 1400, 31, ready=10)
    assert counts[:15] == [10] * 15
    assert counts[15:30] == [20] * 15
    assert counts[30] == 20


def test_scale_down_waits_for_the_highest_recommendation_of_the_last_300_s():
    def load(t):
        return 700 if t < 30 else 140

    counts = drive(load, 331, ready=10)
    # recommendations: 10 at t=0 and t=15, then 2 from t=30 on; t=15 leaves the window at 315
    assert set(counts[:315]) == {10}
    assert counts[315:] == [2] * 16


def test_held_scale_down_says_so():
    state = baselines.HpaState()
    _, state = baselines.hpa_decide(decider.ScalingInputs(now=0, value=700, ready=10), state,
                                    policy())
    held, _ = baselines.hpa_decide(decider.ScalingInputs(now=15, value=140, ready=10), state,
                                   policy())
    assert (held.desired, held.wanted) == (10, 2)
    assert held.conditions == {decider.Condition.SCALE_DOWN_DELAYED}


def test_scale_up_limit_counts_changes_within_the_period():
    every_5_s = baselines.HpaBehavior(sync_period_s=5)
    counts = drive(lambda t: 7000, 16, ready=2, behavior=every_5_s)
    # +4 at t=0 uses the period's allowance until it is 15 s old
    assert counts[0] == counts[5] == counts[10] == 6
    assert counts[15] == 12


@pytest.mark.parametrize(
    ("overrides", "limit", "expected"),
    [
        pytest.param({}, None, (0, 1, 1, 2, 10), id="ceil-of-load-over-capacity"),
        pytest.param({"min_replicas": 1}, None, (1, 1, 1, 2, 10), id="min-replicas"),
        pytest.param({"max_replicas": 5}, None, (0, 1, 1, 2, 5), id="max-replicas"),
        pytest.param({}, 3, (0, 1, 1, 2, 3), id="gpu-inventory-limit"),
    ],
)
def test_oracle_holds_exactly_enough_each_second(overrides, limit, expected):
    rates = [0, 69, 70, 71, 700]
    assert baselines.oracle_replicas(rates, 70, policy(**overrides), limit) == expected
