"""decide() and kpa_decide(): single ticks (table-driven), whole traces fed tick by tick through
a fake revision whose replicas take time to start, and invariants checked with hypothesis.

Time is the ``now`` each test passes, one tick a second; nothing sleeps. Unless a test says
otherwise the policy scales on concurrency with target 10 at utilization 0.7, so 7 requests in
flight per replica. Policy validation is in test_scaling_policy.py.
"""

import dataclasses
import math
from collections.abc import Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from policies import decider, scaling, signals

Condition = decider.Condition
DECIDERS = [
    pytest.param(decider.decide, id="sluice"),
    pytest.param(decider.kpa_decide, id="kpa"),
]


SIGNAL = signals.Signal(query="sum(queue_waiting)")
"""A custom signal's definition; the decider sees only its value."""


def policy(**overrides):
    return scaling.ScalingPolicy(**{"target": 10, **overrides})


def settled(value):
    """The state after ``value`` every second for t = 0..59, initial scale reached."""
    return decider.DeciderState(
        history=tuple(decider.Sample(float(at), value, 0.0) for at in range(60)),
        last_demand_at=59.0 if value else 0.0,
        reached_initial_scale=True,
    )


AT_ZERO = decider.DeciderState(reached_initial_scale=True)
"""A revision that has scaled to zero before: no history, nothing to start with."""


def served_before(value, service_s):
    """``settled(value)`` for a revision that has served before: its service time is known."""
    return dataclasses.replace(settled(value), service_s=service_s)


@pytest.mark.parametrize(
    ("the_policy", "state", "inputs", "sluice", "kpa", "conditions"),
    [
        pytest.param(
            policy(), decider.DeciderState(), decider.ScalingInputs(now=0, value=0),
            1, 1, set(), id="new-revision-starts-at-initial-scale"),
        pytest.param(
            policy(initial_scale=0), decider.DeciderState(), decider.ScalingInputs(now=0, value=0),
            0, 0, {Condition.SCALED_TO_ZERO}, id="zero-initial-scale-stays-cold"),
        pytest.param(
            policy(), settled(0), decider.ScalingInputs(now=60, value=0, buffered=1),
            1, 1, {Condition.ACTIVATING}, id="first-request-at-zero-wakes-one"),
        pytest.param(
            policy(activation_scale=3), settled(0),
            decider.ScalingInputs(now=60, value=0, buffered=1),
            3, 3, {Condition.ACTIVATING}, id="first-request-wakes-activation-scale"),
        pytest.param(
            policy(), settled(35), decider.ScalingInputs(now=60, value=35, ready=5),
            5, 5, set(), id="steady-load-keeps-its-count"),
        pytest.param(
            policy(metric="rps", target=100), settled(700),
            decider.ScalingInputs(now=60, value=700, ready=10),
            10, 10, set(), id="rps-target"),
        pytest.param(
            policy(metric="custom:kv-cache", target=0.7, signal=SIGNAL), settled(3.5),
            decider.ScalingInputs(now=60, value=3.5, ready=5),
            5, 5, set(), id="custom-signal-target"),
        pytest.param(
            policy(metric="custom:kv-cache", target=0.7, signal=SIGNAL), settled(3.5),
            decider.ScalingInputs(now=60, value=7, ready=5),
            10, 6, set(), id="clear-rise-of-a-noiseless-signal-counts-at-once"),
        pytest.param(
            policy(metric="rps"), settled(0), decider.ScalingInputs(now=60, value=0, buffered=60),
            2, 1, {Condition.ACTIVATING, Condition.PANICKING},
            id="rps-backlog-drained-within-panic-window"),
        pytest.param(
            policy(), settled(0),
            decider.ScalingInputs(now=60, value=7, buffered=70, ready=1),
            11, 2, {Condition.PANICKING}, id="backlog-while-replicas-serve-counts-at-once"),
        pytest.param(
            policy(), settled(0),
            decider.ScalingInputs(now=60, value=0, buffered=70, arrivals=70, starting=1),
            10, 2, {Condition.PANICKING},
            id="never-served-each-waiting-request-is-one-in-flight-at-once"),
        pytest.param(
            policy(), served_before(0, 0.05),
            decider.ScalingInputs(now=60, value=0, buffered=70, arrivals=70, starting=1),
            1, 2, set(), id="cold-start-backlog-of-short-requests-is-drained-by-one"),
        pytest.param(
            policy(), served_before(0, 0.5),
            decider.ScalingInputs(now=60, value=0, buffered=70, arrivals=70, starting=1),
            5, 2, {Condition.PANICKING}, id="cold-start-arrivals-of-long-requests-count-at-once"),
        pytest.param(
            policy(), served_before(0, 0.05),
            decider.ScalingInputs(now=60, value=0, buffered=1400, arrivals=1400, starting=1),
            10, 34, {Condition.PANICKING}, id="surge-of-arrivals-counts-at-once"),
        pytest.param(
            policy(metric="rps"), settled(0),
            decider.ScalingInputs(now=1000, value=0, in_flight=1, ready=1),
            1, 1, set(), id="long-request-in-flight-keeps-a-replica"),
        pytest.param(
            policy(min_replicas=3), settled(0), decider.ScalingInputs(now=1000, value=0),
            3, 3, set(), id="min-replicas-without-load"),
        pytest.param(
            policy(max_replicas=4), settled(70), decider.ScalingInputs(now=60, value=70, ready=4),
            4, 4, {Condition.PANICKING}, id="max-replicas-caps-demand"),
        pytest.param(
            policy(max_scale_up_rate=2), settled(70),
            decider.ScalingInputs(now=60, value=70, ready=2),
            4, 4, {Condition.PANICKING}, id="scale-up-rate-limited"),
        pytest.param(
            policy(), settled(0), decider.ScalingInputs(now=60, value=0, ready=8),
            4, 4, set(), id="scale-down-at-most-halves"),
        pytest.param(
            policy(), settled(0), decider.ScalingInputs(now=60, value=0, ready=1, starting=4),
            5, 1, set(), id="starting-replicas-are-not-cancelled"),
        pytest.param(
            policy(gpus_per_replica=2), settled(70),
            decider.ScalingInputs(now=60, value=70, ready=1, free_gpus=4),
            3, 10, {Condition.CAPACITY_LIMITED, Condition.PANICKING}, id="gpu-capacity-caps"),
        pytest.param(
            policy(gpus_per_replica=1), settled(70),
            decider.ScalingInputs(now=60, value=70, ready=1, free_gpus=None),
            10, 10, {Condition.PANICKING}, id="unknown-gpu-capacity-does-not-cap"),
        pytest.param(
            policy(gpus_per_replica=1, min_replicas=3), settled(70),
            decider.ScalingInputs(now=60, value=70, ready=1, free_gpus=0),
            3, 10, {Condition.CAPACITY_LIMITED, Condition.PANICKING},
            id="min-replicas-wins-over-gpu-capacity"),
    ],
)
def test_single_tick(the_policy, state, inputs, sluice, kpa, conditions):
    decision, _ = decider.decide(inputs, state, the_policy)
    assert (decision.desired, decision.conditions) == (sluice, conditions)
    assert decider.kpa_decide(inputs, state, the_policy)[0].desired == kpa


def test_capacity_limited_reports_what_was_wanted():
    inputs = decider.ScalingInputs(now=60, value=70, ready=1, free_gpus=4)
    decision, _ = decider.decide(inputs, settled(70), policy(gpus_per_replica=2))
    assert (decision.desired, decision.wanted, decision.capacity_limit) == (3, 10, 3)


def test_negative_observation_is_rejected():
    with pytest.raises(ValueError, match="negative"):
        decider.ScalingInputs(now=0, value=0, buffered=-1)


def test_cold_start_is_learned_as_an_ewma():
    state = AT_ZERO
    learned = []
    for now, cold_starts in enumerate([(), (10.0,), (), (20.0, 20.0)]):
        inputs = decider.ScalingInputs(now=now, value=0, cold_starts=cold_starts)
        decision, state = decider.decide(inputs, state, policy())
        learned.append(decision.cold_start_s)
    assert learned == [None, 10.0, 10.0, pytest.approx(0.3 * 20 + 0.7 * (0.3 * 20 + 0.7 * 10))]


@pytest.mark.parametrize(("decide", "service_s", "expected"), [
    pytest.param(decider.kpa_decide, None, [3, 5, 8, 10, 12, 15], id="kpa"),
    pytest.param(decider.decide, None, [15] * 6, id="sluice-never-served"),
    pytest.param(decider.decide, 0.5, [8] * 6, id="sluice-served-before"),
])
def test_worked_example_of_the_module_docstring(decide, service_s, expected):
    state = dataclasses.replace(AT_ZERO, service_s=service_s)
    for now in range(60):
        _, state = decide(decider.ScalingInputs(now=now, value=0), state, policy())
    counts, starting = [], 0
    for now in range(60, 66):
        inputs = decider.ScalingInputs(now=now, value=0, buffered=100, starting=starting,
                                       arrivals=100 if now == 60 else 0)
        decision, state = decide(inputs, state, policy())
        counts.append(decision.desired)
        starting = decision.desired
    assert counts == expected


@pytest.mark.parametrize(
    ("decide", "last_panicking"),
    [
        # The burst is in the 6 s panic window, and over the threshold, until t=69; KPA holds
        # its peak a full stable window after that.
        pytest.param(decider.kpa_decide, 69 + 59, id="kpa"),
        # Sluice forgets the burst once the load has been clearly lower for a cold start (here
        # unknown, so the panic window): from t=69 the last 6 s are all back at the level.
        pytest.param(decider.decide, 68, id="sluice"),
    ],
)
def test_panic_ends_after_the_load_has_clearly_dropped(decide, last_panicking):
    state, panicking, counts = settled(7), [], []
    for now in range(60, 200):
        inputs = decider.ScalingInputs(now=now, value=70 if now < 65 else 7, ready=1)
        decision, state = decide(inputs, state, policy())
        if Condition.PANICKING in decision.conditions:
            panicking.append(now)
            counts.append(decision.desired)
    assert panicking == list(range(60, last_panicking + 1))
    assert counts == sorted(counts), "a panicking decider never scales down"


@pytest.mark.parametrize(("decide", "panicking", "last_two"), [
    pytest.param(decider.kpa_decide, range(60, 120), 119, id="kpa"),
    # A cold start (3 s) is shorter than the panic window (6 s): panic for the panic window.
    pytest.param(decider.decide, range(60, 66), 72, id="sluice"),
])
def test_a_blip_holds_a_fast_starting_replica_for_a_cold_start_not_a_stable_window(
        decide, panicking, last_two):
    """A level of 6.5 in flight, one replica's worth, with one tick at 14: the panic asks for a
    second replica, which restarts in 3 s; holding it a minute costs more than that."""
    history = tuple(decider.Sample(float(at), 6.0 if at % 2 else 7.0, 0.0) for at in range(60))
    state = decider.DeciderState(history=history, last_demand_at=59.0, cold_start_s=3.0,
                                 reached_initial_scale=True)
    ready, seen = 1, {}
    for now in range(60, 140):
        value = 14.0 if now == 60 else (6.0 if now % 2 else 7.0)
        decision, state = decide(decider.ScalingInputs(now=now, value=value, ready=ready), state,
                                 policy())
        seen[now], ready = decision, decision.desired
    assert [t for t, d in seen.items() if Condition.PANICKING in d.conditions] == list(panicking)
    assert max(t for t, d in seen.items() if d.desired == 2) == last_two


@pytest.mark.parametrize(("decide", "panicking_at_66"), [
    pytest.param(decider.kpa_decide, True, id="kpa"),
    pytest.param(decider.decide, False, id="sluice"),
])
def test_a_panic_on_a_cold_start_backlog_ends_when_nothing_waits(decide, panicking_at_66):
    """300 rps at a revision at zero with a 5 s cold start: sluice buys the load and the drain
    of what waits, and once the replicas are ready and nothing waits, only the load."""
    state = dataclasses.replace(settled(0), cold_start_s=5.0)
    ready = starting = buffered = 0
    counts = []
    for now in range(60, 70):
        if now == 66:
            ready, starting, buffered = ready + starting, 0, 0
        elif now < 66:
            buffered += 300
        inputs = decider.ScalingInputs(now=now, value=300, buffered=buffered, ready=ready,
                                       starting=starting)
        decision, state = decide(inputs, state, policy(metric="rps", target=100))
        starting = decision.desired - ready if now < 66 else 0
        counts.append(decision.desired)
        if now == 66:
            assert (Condition.PANICKING in decision.conditions) == panicking_at_66
    assert counts[-1] == math.ceil(300 / 70)
    if decide is decider.decide:
        assert counts[:6] == [9] * 6  # the load and the drain of what waits


@pytest.mark.parametrize("decide", DECIDERS)
def test_scale_down_delay_holds_the_highest_count_of_the_window(decide):
    def counts(the_policy):
        state, result = settled(70), {}
        for now in range(60, 200):
            inputs = decider.ScalingInputs(now=now, value=70 if now < 70 else 7, ready=10)
            decision, state = decide(inputs, state, the_policy)
            result[now] = decision
        return result

    prompt, delayed = counts(policy()), counts(policy(scale_down_delay_s=30))
    for now, decision in delayed.items():
        held = max(prompt[t].desired for t in range(max(60, now - 29), now + 1))
        assert decision.desired == held
        assert (Condition.SCALE_DOWN_DELAYED in decision.conditions) == (
            held > prompt[now].desired
        )
    assert min(d.desired for d in delayed.values()) < 10


@pytest.mark.parametrize("decide", DECIDERS)
def test_restarted_decider_holds_the_current_count_for_a_stable_window(decide):
    state = decider.DeciderState(reached_initial_scale=True)
    counts = []
    for now in range(62):
        decision, state = decide(decider.ScalingInputs(now=now, value=7, ready=8), state,
                                 policy())
        counts.append(decision.desired)
    assert counts[:60] == [8] * 60
    assert counts[61] < 8


@dataclasses.dataclass
class FakeRevision:
    """Replicas that become ready ``cold_start_s`` after they are launched, serving a closed-loop
    load: ``load`` requests want service at once, at most ``limit`` per ready replica, and the rest
    wait in the router buffer. GPUs, when given, are held from launch on. With ``service_s`` the
    routers also report arrivals: each request served is followed by the next after
    ``service_s``, and a rise of the load arrives at once."""

    cold_start_s: float
    ready_at_start: int = 0
    limit: int = 10
    gpus: int | None = None
    gpus_per_replica: int = 0
    service_s: float | None = None
    launched_at: list[float] = dataclasses.field(default_factory=list)
    launches: int = 0
    cancellations: int = 0
    last: tuple[float, float] = (0.0, 0.0)
    """(load, served) at the previous observation."""

    def __post_init__(self):
        self.launched_at = [-math.inf] * self.ready_at_start

    def observe(self, now, load):
        ready = [t for t in self.launched_at if now - t >= self.cold_start_s]
        became_ready = [t for t in ready if now - 1 - t < self.cold_start_s]
        served = min(load, len(ready) * self.limit)
        free = None
        if self.gpus is not None:
            free = max(0, self.gpus - self.gpus_per_replica * len(self.launched_at))
        arrivals = None
        if self.service_s is not None:
            arrivals = self.last[1] / self.service_s + max(0.0, load - self.last[0])
        self.last = (load, served)
        return decider.ScalingInputs(
            now=now, value=served, buffered=math.ceil(load - served), in_flight=math.ceil(served),
            ready=len(ready), starting=len(self.launched_at) - len(ready), free_gpus=free,
            cold_starts=tuple(self.cold_start_s for _ in became_ready), arrivals=arrivals,
        )

    def scale(self, now, desired):
        self.launches += max(0, desired - len(self.launched_at))
        self.launched_at += [now] * (desired - len(self.launched_at))
        while len(self.launched_at) > desired:
            newest = self.launched_at.pop()
            self.cancellations += now - newest < self.cold_start_s


def run(decide, the_policy, revision, load: Callable[[float], float], seconds, state=AT_ZERO):
    """Feed the trace tick by tick; returns {now: decision}."""
    decisions = {}
    for now in range(seconds):
        decision, state = decide(revision.observe(now, load(now)), state, the_policy)
        revision.scale(now, decision.desired)
        decisions[now] = decision
    return decisions


@pytest.mark.parametrize("decide", DECIDERS)
def test_steady_noisy_load_causes_no_scale_events(decide):
    revision = FakeRevision(cold_start_s=30, ready_at_start=5)
    trained = decider.DeciderState(cold_start_s=30.0, reached_initial_scale=True)
    decisions = run(decide, policy(), revision, lambda t: 31 + 2 * math.sin(t / 3), 600,
                    state=trained)
    assert {d.desired for d in decisions.values()} == {5}
    assert revision.launches == revision.cancellations == 0


@pytest.mark.parametrize("decide", DECIDERS)
def test_step_up_settles_on_the_target_within_the_stable_window(decide):
    revision = FakeRevision(cold_start_s=20, ready_at_start=2)
    decisions = run(decide, policy(), revision, lambda t: 14 if t < 120 else 70, 400)
    assert {decisions[t].desired for t in range(120)} == {2}
    assert {decisions[t].desired for t in range(180, 400)} <= {9, 10, 11}
    assert max(d.desired for d in decisions.values()) <= 11


LONG_REQUESTS = dataclasses.replace(AT_ZERO, service_s=30.0)
"""A revision at zero that has served before, and learned that a request is in flight 30 s."""


@pytest.mark.parametrize("state", [
    # Before any replica has served, what a request weighs is unknown: each of the first
    # second's 100 arrivals counts one in flight, 15 replicas at once; the first measurement,
    # one cold start later, cannot tell a 30 s request from a whole second and keeps them.
    pytest.param(AT_ZERO, id="never-served"),
    # A revision that has served knows: the burst's arrivals make 100 in flight at once.
    pytest.param(LONG_REQUESTS, id="served-before"),
])
def test_burst_with_slow_starts_launches_replicas_once(state):
    def burst(t):
        return 0 if t < 60 else (100 if (t // 5) % 2 == 0 else 80)

    revision = FakeRevision(cold_start_s=60, service_s=30.0)
    decisions = run(decider.decide, policy(), revision, burst, 400, state=state)
    assert min(t for t, d in decisions.items() if d.desired >= 15) == 60
    assert revision.launches == math.ceil(100 / 7)
    assert revision.cancellations == 0


def test_burst_reaches_its_count_sooner_than_kpa():
    first_full = {}
    for decide in (decider.decide, decider.kpa_decide):
        decisions = run(decide, policy(), FakeRevision(cold_start_s=60, service_s=30.0),
                        lambda t: 0 if t < 60 else 100, 120, state=LONG_REQUESTS)
        first_full[decide] = min(t for t, d in decisions.items() if d.desired >= 15)
    assert first_full[decider.decide] == 60
    assert first_full[decider.kpa_decide] >= 65


@pytest.mark.parametrize("decide", DECIDERS)
def test_idle_revision_goes_to_zero_after_stable_window_and_grace(decide):
    revision = FakeRevision(cold_start_s=5, ready_at_start=2)
    decisions = run(decide, policy(), revision, lambda t: 10 if t < 120 else 0, 400)
    zero_at = [t for t, d in decisions.items() if d.desired == 0]
    assert zero_at == list(range(119 + 60 + 30, 400))
    assert all(Condition.SCALED_TO_ZERO in decisions[t].conditions for t in zero_at)


def test_gpu_bound_revision_stops_at_capacity_and_says_so():
    revision = FakeRevision(cold_start_s=60, gpus=8, gpus_per_replica=2, service_s=30.0)
    decisions = run(decider.decide, policy(gpus_per_replica=2), revision,
                    lambda t: 0 if t < 10 else 100, 200, state=LONG_REQUESTS)
    assert revision.launches == 4
    assert revision.cancellations == 0
    assert all(Condition.CAPACITY_LIMITED in decisions[t].conditions for t in range(10, 200))
    assert decisions[150].wanted == math.ceil(100 / 7)


def test_kpa_ignores_gpu_capacity():
    revision = FakeRevision(cold_start_s=60, gpus=8, gpus_per_replica=2)
    run(decider.kpa_decide, policy(gpus_per_replica=2), revision, lambda t: 0 if t < 10 else 100,
        200)
    assert revision.launches == math.ceil(100 / 7)


@dataclasses.dataclass
class Users:
    """``users`` clients from t=0 on, each sending one request a second that a replica serves in
    ``service_s``, and sending no other while one waits (locust's constant_throughput): the
    step from zero of the issue that made the backlog a drain. The router holds the requests
    while no replica is ready and releases them all to the first; replicas are ready
    ``cold_start_s`` after launch. A tick at ``now`` sees the second before it."""

    users: int
    service_s: float
    cold_start_s: float
    launched_at: list[float] = dataclasses.field(default_factory=list)

    def observe(self, now, _load=None):
        ready = [t for t in self.launched_at if now - t >= self.cold_start_s]
        became_ready = [t for t in ready if now - 1 - t < self.cold_start_s]
        if not ready:  # every user sent one request in the first second, and waits
            return decider.ScalingInputs(
                now=now, value=0, buffered=self.users, arrivals=self.users if now == 0 else 0,
                starting=len(self.launched_at))
        in_flight = self.users * self.service_s
        if len(became_ready) == len(ready):  # released: the backlog, then each user's next
            in_flight *= 2
        return decider.ScalingInputs(
            now=now, value=in_flight, arrivals=self.users, in_flight=math.ceil(in_flight),
            ready=len(ready), starting=len(self.launched_at) - len(ready),
            cold_starts=tuple(self.cold_start_s for _ in became_ready))

    def scale(self, now, desired):
        self.launched_at += [now] * (desired - len(self.launched_at))
        del self.launched_at[desired:]


ISSUE_POLICY = scaling.ScalingPolicy(metric="concurrency", target=1, target_utilization=1.0,
                                     max_replicas=8)
"""The policy of the issue: one request in flight per replica, at most 8."""


@pytest.mark.parametrize(("decide", "after_first_cold_start"), [
    pytest.param(decider.decide, {1}, id="sluice"),
    pytest.param(decider.kpa_decide, {8}, id="kpa"),
])
def test_step_from_zero_buys_what_the_load_needs_not_the_backlog(decide, after_first_cold_start):
    """40 users of 20 ms requests keep 0.8 in flight: one replica. The 40 requests held during
    the 3 s cold start are 0.8 s of one replica's work, not 40 in flight. Before a replica has
    served, both guess 8 (40 requests of unknown weight waiting); sluice's first measurement,
    once the first replica serves (t=3), replaces the guess at once, KPA holds it a stable
    window."""
    users = Users(users=40, service_s=0.02, cold_start_s=3)
    decisions = run(decide, ISSUE_POLICY, users, lambda t: 0, 60)
    assert {decisions[t].desired for t in range(3)} == {8}
    assert {decisions[t].desired for t in range(3, 60)} == after_first_cold_start
    replica_s = sum(d.desired for d in decisions.values())
    if decide is decider.decide:
        assert replica_s <= 1.5 * 60


@pytest.mark.parametrize("state", [
    # Never served: 400 requests of unknown weight waiting are 400 in flight until measured.
    pytest.param(AT_ZERO, id="never-served"),
    # Served before: the first second's 400 arrivals make 8 in flight.
    pytest.param(dataclasses.replace(AT_ZERO, service_s=0.02), id="served-before"),
])
def test_surge_from_zero_reaches_the_count_it_needs(state):
    """400 users of 20 ms requests keep 8 in flight: 8 replicas, asked for on the first tick
    and ready one cold start later, and kept once measured."""
    users = Users(users=400, service_s=0.02, cold_start_s=3)
    decisions = run(decider.decide, ISSUE_POLICY, users, lambda t: 0, 60, state=state)
    assert {d.desired for d in decisions.values()} == {8}


def test_service_time_is_learned_once_a_replica_serves():
    """In flight over the requests that went to replicas: at the tick the first replica takes
    the backlog, the 40 released requests and the 40 new ones (Little's law)."""
    users, state, learned = Users(users=40, service_s=0.02, cold_start_s=3), AT_ZERO, []
    for now in range(10):
        decision, state = decider.decide(users.observe(now), state, ISSUE_POLICY)
        users.scale(now, decision.desired)
        learned.append(state.service_s)
    assert learned == [None] * 3 + [pytest.approx(0.02)] * 7


@pytest.mark.parametrize(("admitted", "learned"), [
    pytest.param(6.0, 0.5, id="counted-by-the-routers-over-the-same-second"),
    pytest.param(None, 0.3, id="inferred-from-the-buffer-over-half-a-second-reads-short"),
])
def test_the_service_time_is_in_flight_over_what_the_routers_sent(admitted, learned):
    """Ticks every 0.5 s, the routers' figures over whole seconds. Two requests that waited
    left the buffer since the last tick; over the last second 6 arrived, 6 went to the one
    ready replica and 3 were in flight on average: 0.5 s each. Without the routers' count the
    admitted rate is inferred as 6 + 2 / 0.5 s = 10 a second, and 0.3 s learned."""
    the_policy = policy(metric="concurrency", target=1, targetUtilization=1.0)
    before = decider.DeciderState(history=(decider.Sample(0.0, 0.0, 0.0),), buffered=2)
    tick = decider.ScalingInputs(now=0.5, value=3.0, buffered=0, in_flight=3, ready=1,
                                 arrivals=6.0, admitted=admitted)
    _, after = decider.decide(tick, before, the_policy)
    assert after.service_s == pytest.approx(learned)


def test_rising_load_is_met_one_cold_start_ahead():
    def ramp(t):
        return 0.5 * t

    trained = decider.DeciderState(cold_start_s=30.0, reached_initial_scale=True)
    ahead = run(decider.decide, policy(), FakeRevision(cold_start_s=30, ready_at_start=1), ramp,
                300, state=trained)
    behind = run(decider.kpa_decide, policy(), FakeRevision(cold_start_s=30, ready_at_start=1),
                 ramp, 300, state=trained)
    assert Condition.SCALING_AHEAD in ahead[200].conditions
    assert ahead[200].desired >= math.ceil(ramp(200 + 30) / 7) - 1
    assert behind[200].desired < ahead[200].desired


# Hypothesis: random policies and random observation traces, both deciders.

observations = st.fixed_dictionaries({
    "dt": st.floats(0.1, 10),
    "value": st.just(0.0) | st.floats(0, 1000),
    "buffered": st.just(0) | st.integers(0, 300),
    "in_flight": st.integers(0, 100),
    "ready": st.just(0) | st.integers(0, 40),
    "starting": st.integers(0, 20),
    "free_gpus": st.none() | st.integers(0, 40),
    "cold_starts": st.lists(st.floats(0, 600), max_size=2).map(tuple),
    "arrivals": st.none() | st.floats(0, 1000),
})


@st.composite
def policies(draw):
    floor = draw(st.integers(0, 5))
    ceiling = draw(st.sampled_from([0, floor + draw(st.integers(1, 30))]))
    metric = draw(st.sampled_from(["rps", "concurrency", "streams", "custom:queue"]))
    return scaling.ScalingPolicy(
        metric=metric, signal=SIGNAL if metric.startswith("custom:") else None,
        target=draw(st.floats(0.5, 200)),
        min_replicas=floor,
        max_replicas=ceiling,
        initial_scale=draw(st.integers(0, ceiling or 10)),
        activation_scale=draw(st.integers(1, ceiling or 10)),
        max_scale_down_rate=draw(st.floats(1.1, 10)),
        scale_down_delay_s=draw(st.sampled_from([0, 10])),
        gpus_per_replica=draw(st.integers(0, 4)),
    )


@st.composite
def ramps(draw):
    """A load rising steadily, one tick a second, after a cold start of 30 s was observed: the
    traces on which sluice scales ahead."""
    start, rise = draw(st.floats(0, 100)), draw(st.floats(0.01, 5))
    constant = draw(observations)
    return [
        {**constant, "dt": 1.0, "value": start + rise * i, "cold_starts": (30.0,) * (i == 0)}
        for i in range(draw(st.integers(30, 90)))
    ]


traces = st.lists(observations, max_size=40) | ramps()


def inputs_at(now, observation):
    return decider.ScalingInputs(
        now=now, **{k: v for k, v in observation.items() if k != "dt"}
    )


def replay(decide, the_policy, trace):
    """Run the trace from a fresh state; returns ([(inputs, decision)], final state, now)."""
    state, now, steps = decider.DeciderState(), 0.0, []
    for observation in trace:
        now += observation["dt"]
        inputs = inputs_at(now, observation)
        decision, state = decide(inputs, state, the_policy)
        steps.append((inputs, decision))
    return steps, state, now


@pytest.mark.parametrize("decide", DECIDERS)
@settings(max_examples=150, deadline=None)
@given(the_policy=policies(), trace=traces)
def test_desired_is_always_within_bounds_and_never_zero_with_work(decide, the_policy, trace):
    steps, _, _ = replay(decide, the_policy, trace)
    for inputs, decision in steps:
        assert decision.desired >= the_policy.min_replicas
        assert decision.desired <= (the_policy.replica_ceiling or math.inf)
        if inputs.in_flight or inputs.buffered:
            assert decision.desired >= 1


def test_a_drain_held_by_the_rate_limit_never_lowers_a_panic_peak_kept_from_before():
    """Found by the property below: a panic's peak of 10 was kept, the drain asked for more,
    and the rate limit (5 from one replica's base) cut the drain to 5 and replaced the peak."""
    state = dataclasses.replace(settled(0), panic_last_over=59.0, panic_peak=10)
    decision, _ = decider.decide(decider.ScalingInputs(now=60, value=0, buffered=100), state,
                                 policy(metric="rps", target=1, targetUtilization=1.0,
                                        maxScaleUpRate=5))
    assert decision.desired == 10


def test_one_more_request_waiting_never_asks_for_fewer_replicas_after_a_ramp_at_zero():
    """Found by the property below: a request left the buffer with nothing measured in flight
    (rounded to 0), which read as a learned service time of 0 s and sized the revision for a
    drain (67 replicas), while one more request waiting learned nothing (43)."""
    the_policy = policy(metric="concurrency", target=1, minReplicas=0, maxReplicas=0,
                        initialScale=0, scaleToZeroGraceSeconds=30)
    trace = [{"dt": 1.0, "value": float(i), "buffered": 1, "in_flight": 0, "ready": 0,
              "starting": 0, "free_gpus": None, "cold_starts": (30.0,) * (i == 0),
              "arrivals": None} for i in range(30)]
    _, state, now = replay(decider.decide, the_policy, trace)
    last = decider.ScalingInputs(now=now + 1, value=0.0, buffered=0, in_flight=0, ready=1,
                                 starting=0, arrivals=0.0)
    fewer, _ = decider.decide(last, state, the_policy)
    more, _ = decider.decide(dataclasses.replace(last, buffered=1), state, the_policy)
    assert more.desired >= fewer.desired


@pytest.mark.parametrize("decide", DECIDERS)
@pytest.mark.parametrize("load", ["value", "buffered", "arrivals"])
@settings(max_examples=150, deadline=None)
@given(
    the_policy=policies(),
    trace=traces,
    last=observations,
    more=st.integers(1, 500),
)
def test_more_load_never_gives_fewer_replicas(decide, load, the_policy, trace, last, more):
    """Except on the tick that first measures a service time (see the test below): with a
    request's weight unknown each waiting one counts whole, as Knative counts it; once it is
    known to be short, the waiting are a drain; and the same in flight over more requests
    measures a shorter one (Little's law), so more arrivals may first measure less work."""
    _, state, now = replay(decide, the_policy, trace)
    less = inputs_at(now + last["dt"], last)
    if getattr(less, load) is None:  # unknown arrivals: compare with none measured
        less = dataclasses.replace(less, **{load: 0.0})
    heavier = dataclasses.replace(less, **{load: getattr(less, load) + more})
    fewer, after_less = decide(less, state, the_policy)
    more_decided, after_heavier = decide(heavier, state, the_policy)
    if isinstance(state, decider.DeciderState):
        assume(state.service_s is not None
               or (after_less.service_s is None and after_heavier.service_s is None))
    assert more_decided.desired >= fewer.desired


@pytest.mark.parametrize(("cold_start_s", "kept"), [
    pytest.param(60.0, 6, id="slow-start-keeps-the-replica-noise-may-need"),
    pytest.param(1.0, 5, id="fast-start-releases-it-and-restarts-if-needed"),
])
def test_a_replica_is_kept_for_noise_only_when_it_is_slow_to_start(cold_start_s, kept):
    """A level of 35 in flight is exactly 5 replicas of 7, with noise around it: one more
    replica is kept while the mean might need it, unless starting it again is cheap."""
    history = tuple(decider.Sample(float(at), 33.0 if at % 2 else 37.0, 0.0) for at in range(60))
    state = decider.DeciderState(history=history, last_demand_at=59.0, cold_start_s=cold_start_s,
                                 reached_initial_scale=True)
    decision, _ = decider.decide(decider.ScalingInputs(now=60, value=35, ready=6), state,
                                 policy())
    assert decision.desired == kept


# The idle shortcuts (an idle revision's tick is most of a controller's ticks) give exactly what
# the full computation gives: each is compared with it, on the same inputs.

def risen_by_every_split(previous, history, the_policy):
    """``_risen`` without its shortcut: the stable window split at every point."""
    if len(previous) < decider.MIN_TREND_SAMPLES:
        return 0.0, None
    window = tuple(s for s in history if s.at > history[-1].at - the_policy.stable_window_s)
    return decider._rise_by_splits(previous, window, [s.total for s in window], the_policy)


def after_by_scan(history, since):
    """``_after`` without bisection: every sample looked at."""
    return tuple(s for s in history if s.at > since)


def window_of(values, start=0.0):
    return tuple(decider.Sample(start + at, value, 0.0) for at, value in enumerate(values))


@pytest.mark.parametrize("metric", ["concurrency", "rps"])
@pytest.mark.parametrize(("previous", "history"), [
    pytest.param(window_of([0.0] * 60), window_of([0.0] * 60, 1.0), id="idle"),
    pytest.param(window_of([9.0] + [0.0] * 59), window_of([0.0] * 60, 1.0),
                 id="idle-after-a-blip-that-left-the-window"),
    pytest.param(window_of([0.0] * 60), window_of([0.0] * 59 + [1.0], 1.0), id="first-request"),
    pytest.param(window_of([3.0] * 60), window_of([3.0] * 60, 1.0), id="flat-with-load"),
    pytest.param(window_of([0.0] * 60), window_of([0.0] * 40 + [5.0] * 20, 1.0), id="step"),
    pytest.param(window_of([0.0] * 2), window_of([0.0] * 3), id="too-few-to-know-the-noise"),
])
def test_the_rise_found_with_the_idle_shortcut_is_the_one_every_split_finds(
        metric, previous, history):
    the_policy = policy(metric=metric)
    assert decider._risen(previous, history, the_policy) == risen_by_every_split(
        previous, history, the_policy)


@pytest.mark.parametrize("since", [-1.0, 0.0, 0.5, 3.0, 5.0, 100.0])
@pytest.mark.parametrize("history", [
    pytest.param((), id="empty"),
    pytest.param(window_of([1.0] * 6), id="one-a-second"),
    pytest.param(tuple(decider.Sample(at, 1.0, 0.0) for at in (0.0, 3.0, 3.0, 3.0, 4.5)),
                 id="repeated-times"),
])
def test_the_samples_after_a_time_are_the_ones_a_scan_finds(history, since):
    assert decider._after(history, since) == after_by_scan(history, since)


def traces():
    idle = [(0.0, 0)] * 150
    burst = [(0.0, 0)] * 70 + [(40.0, 3)] * 20 + [(0.0, 3)] * 130
    ramp = [(float(t) / 4, 1 + t // 20) for t in range(120)] + [(0.0, 6)] * 90
    noisy = [(3.0 + (t * 7919 % 13) / 4, 1) for t in range(200)]
    return {"idle-at-zero": idle, "idle-at-one": [(0.0, 1)] * 150, "burst-then-idle": burst,
            "ramp-then-idle": ramp, "noisy": noisy}


@pytest.mark.parametrize("decide", DECIDERS)
@pytest.mark.parametrize("metric", ["concurrency", "rps"])
@pytest.mark.parametrize("trace", list(traces()))
def test_every_decision_and_state_is_the_full_computations(decide, metric, trace, monkeypatch):
    """Tick by tick, the decider with its shortcuts and with the full scans (monkeypatched in)
    returns equal decisions and equal states."""
    the_policy = policy(metric=metric)

    def run():
        state, out = decider.DeciderState(), []
        for now, (value, ready) in enumerate(traces()[trace]):
            inputs = decider.ScalingInputs(now=float(now), value=value, ready=ready,
                                           in_flight=int(value), arrivals=value,
                                           cold_starts=(20.0,) if now == 80 else ())
            decision, state = decide(inputs, state, the_policy)
            out.append((decision, state))
        return out

    fast = run()
    monkeypatch.setattr(decider, "_risen", risen_by_every_split)
    monkeypatch.setattr(decider, "_after", after_by_scan)
    assert fast == run()


def test_a_state_without_its_times_is_equal_tick_after_tick_while_idle():
    the_policy = policy()
    state = settled(0.0)
    said = []
    for now in range(60, 63):
        _, state = decider.decide(decider.ScalingInputs(now=float(now), value=0.0, ready=1),
                                  state, the_policy)
        said.append(decider.timeless(state))
    assert said[0] == said[1] == said[2]
    _, busy = decider.decide(decider.ScalingInputs(now=63.0, value=5.0, in_flight=5, ready=1),
                             state, the_policy)
    assert decider.timeless(busy) != said[-1]


def test_a_guess_at_zero_counts_the_first_period_s_waiting_then_its_rate_not_the_wait():
    """Never served, nothing ready, 1 in flight per replica. Half a second into the wait no
    whole second of arrivals is measured yet (arrivals 0): the 200 waiting arrived within it,
    200 replicas. Then a measured 400 a second: 400 replicas however long they wait (Knative
    would count the 1,000 waiting after 2.5 s)."""
    the_policy = policy(metric="concurrency", target=1, targetUtilization=1.0, maxReplicas=0)
    state, counts = settled(0), []
    for now, buffered, arrivals in ((60.0, 1, 0.0), (60.5, 200, 0.0), (61.5, 600, 400.0),
                                    (62.5, 1000, 400.0)):
        decision, state = decider.decide(decider.ScalingInputs(
            now=now, value=0, buffered=buffered, arrivals=arrivals, starting=counts[-1] if
            counts else 0), state, the_policy)
        counts.append(decision.desired)
    assert counts == [1, 200, 400, 400]


def test_a_guess_is_kept_while_requests_still_wait_for_the_first_replicas():
    """8 requests of a minute at zero, never served: the guess asks for 8. A second later the
    first replica has taken one for half a second, the 7 others wait: Little's law over that
    second would read a 0.5 s service time and 1 replica's load. The guess holds until nothing
    waits (likely what had the cluster's GPU test see 3 asked where 4 fit)."""
    state = settled(0)
    decision, state = decider.decide(decider.ScalingInputs(
        now=60, value=0, buffered=8, arrivals=8.0), state, ISSUE_POLICY)
    assert decision.desired == 8
    decision, state = decider.decide(decider.ScalingInputs(
        now=61, value=0.5, buffered=7, in_flight=1, arrivals=0.0, ready=1, starting=7),
        state, ISSUE_POLICY)
    assert (decision.desired, state.service_s) == (8, None)
