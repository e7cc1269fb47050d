"""The replica decider: how many replicas one revision should have, tick by tick.

Purely computational. ``decide(inputs, state, policy)`` takes one tick's observations, the state
the previous call returned and the policy, and returns the decision and the next state. There is
no clock, no I/O and no randomness here: the autoscaler loop collects the inputs, stores the state
(persist it in the revision's status to survive restarts) and applies ``decision.desired``. The
same function runs on Kubernetes, locally and in the simulator.

The baseline is Knative's KPA (anchors/autoscaling.md §1.2); ``kpa_decide`` is that baseline
alone, for comparison. Everything below is in the metric's unit, summed over the revision.

1. Demand. Each tick records a sample: the served load (``inputs.value``) and the router backlog
   in metric units (concurrency: buffered requests; rps: buffered / panic window, i.e. drained
   within one panic window; custom signals: none). Averages are taken over the stable window
   (60 s) and the panic window (6 s). KPA averages the backlog like any load, since Knative's
   activator reports held requests as concurrency; sluice counts the backlog at its current size
   when that is larger, so a burst waiting in the buffer is demand at once, not 1/60 of it.
2. Replicas. ``want = ceil(demand / max(0.01, target * utilization))`` for each window. Sluice
   also fits a line through the stable window and, while the load clearly rises (the line fits
   the window and the panic window rises too), asks for the demand the line predicts one learned
   cold start ahead (an EWMA of observed ready-minus-start times), so that new replicas are ready
   when the load arrives.
3. Rate limits, on ``base = max(1, ready)``; sluice uses ready + starting, since starting replicas
   are capacity on the way: each want is clamped to ``[floor(base / maxScaleDownRate),
   ceil(base * maxScaleUpRate)]``, and raised to activationScale when positive.
4. Panic when ``panic want / base ≥ threshold / 100``. While panicking the count is the highest
   of max(stable, panic) seen (it never decreases); panic ends a full stable window after the
   last tick over the threshold. Counting starting replicas in ``base`` means a burst that has
   already been answered does not keep panicking and ordering more.
5. Scale-down delay: the highest count over the last scaleDownDelay seconds.
6. Bounds, in order: initialScale until reached once; sluice never cancels a starting replica
   (its cold start would be wasted and the next tick would launch it again); sluice caps at what
   free GPUs hold, ``ready + starting + floor(free / gpusPerReplica)``, reporting CapacityLimited;
   min/max replicas; at least 1 while anything is in flight or buffered, and activationScale at
   once when the first request waits at zero; zero only after no demand for the stable window
   plus the grace period (one replica is kept until then).

Worked example, concurrency with target 10 and utilization 0.7, so 7 in flight per replica; one
sample a second. A revision at zero has been idle for a minute; 100 requests arrive and wait in
the router buffer. KPA sees a stable average of 100/60 ≈ 1.7 and a panic average of 100/6 ≈ 16.7
(this sample among five idle ones): stable want 1, panic want ceil(16.7/7) = 3 ≥ 2 * 1, so it
panics and asks for 3, then 5, 8, 10, 12 and 15 as the burst fills its panic window. Sluice
counts the 100 buffered requests at once: ceil(100/7) = 15 replicas on the first tick. On the
next tick those 15 are starting, so ``base`` is 15 and sluice asks for 15 again, not more.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from policies import scaling

EPSILON = 1e-9
"""Slack for ceil/floor: 14.000000000000002 requests over a target of 7 is 2 replicas, not 3."""

COLD_START_EWMA_WEIGHT = 0.3
"""Weight of the newest cold-start observation: follows a slower image or model within a few
starts without letting one outlier (a node pulling the image) dominate."""

MIN_TREND_SAMPLES = 3
"""Fewer points than this do not make a trend."""

TREND_MIN_FIT = 0.8
"""R² a line must reach over the stable window before the decider scales ahead along it: a
steady ramp reaches 0.9 and more; noise around a level, or a square wave, stays far below."""


@dataclass(frozen=True)
class ScalingInputs:
    """One tick's observations of one revision, collected by the autoscaler loop."""

    now: float
    """Seconds on a monotonic clock; never decreases from one call to the next."""
    value: float
    """The metric over the last second, revision total. rps: requests per second arriving at
    the routers (buffered ones included, as arrivals). concurrency: mean requests in flight at
    the replicas (buffered ones excluded: they are ``buffered``). custom: the signal's value."""
    buffered: int = 0
    """Requests held at the routers for this revision, summed over routers."""
    in_flight: int = 0
    """Requests being served by this revision's replicas now."""
    ready: int = 0
    """Replicas ready to serve."""
    starting: int = 0
    """Replicas asked for but not yet ready (Pending or starting up)."""
    free_gpus: int | None = None
    """Free units of the policy's GPU resource that this revision's new replicas could use, net
    of what its Pending replicas already requested; None when unknown or unlimited."""
    cold_starts: tuple[float, ...] = ()
    """Seconds from start to ready of each replica that became ready since the last tick."""

    def __post_init__(self) -> None:
        counts = (self.value, self.buffered, self.in_flight, self.ready, self.starting)
        if min(counts) < 0 or (self.free_gpus or 0) < 0 or any(d < 0 for d in self.cold_starts):
            raise ValueError(f"negative observation in {self}")


@dataclass(frozen=True)
class Sample:
    """One tick's demand, in the metric's unit."""

    at: float
    served: float
    backlog: float

    @property
    def total(self) -> float:
        return self.served + self.backlog


@dataclass(frozen=True)
class Recommendation:
    """A count asked for at a time, kept for the scale-down delay window."""

    at: float
    replicas: int


@dataclass(frozen=True)
class DeciderState:
    """What one revision's decider remembers between ticks; start with ``DeciderState()``."""

    history: tuple[Sample, ...] = ()
    """Samples within the stable window, oldest first."""
    panic_last_over: float | None = None
    """When the panic want last crossed the threshold; None when not panicking."""
    panic_peak: int = 0
    """The highest count asked for during this panic (Knative's maxPanicPods)."""
    recent: tuple[Recommendation, ...] = ()
    """Counts asked for within the scale-down delay window."""
    last_demand_at: float | None = None
    """When anything was last measured, in flight or buffered; the scale-to-zero clock."""
    cold_start_s: float | None = None
    """Learned start-to-ready time in seconds (EWMA); None until a replica has become ready."""
    reached_initial_scale: bool = False
    """Whether initialScale replicas have been ready once; until then it is the floor."""

    @property
    def panicking(self) -> bool:
        return self.panic_last_over is not None


class Condition(enum.StrEnum):
    """Why the count is what it is; published as status conditions and events."""

    PANICKING = "Panicking"
    SCALING_AHEAD = "ScalingAhead"
    SCALE_DOWN_DELAYED = "ScaleDownDelayed"
    CAPACITY_LIMITED = "CapacityLimited"
    ACTIVATING = "Activating"
    SCALED_TO_ZERO = "ScaledToZero"


@dataclass(frozen=True)
class ScalingDecision:
    desired: int
    """Replicas the revision should have: ready, starting and new together."""
    conditions: frozenset[Condition]
    stable_demand: float
    """Demand over the stable window, in the metric's unit."""
    panic_demand: float
    """Demand over the panic window, in the metric's unit."""
    wanted: int
    """The count before the GPU capacity cap; above ``desired`` when CapacityLimited."""
    capacity_limit: int | None
    """Replicas free GPUs can hold; None when not GPU-bound or unknown."""
    cold_start_s: float | None
    """The learned cold-start time the decision used."""


@dataclass(frozen=True)
class Features:
    """What sluice adds to Knative's KPA; all off is a faithful KPA."""

    instant_backlog: bool = True
    """Count the router backlog at its current size (and in rps terms), not only averaged."""
    startup_aware: bool = True
    """Count starting replicas as capacity, and never cancel one."""
    scale_ahead: bool = True
    """Extrapolate a rising trend by the learned cold-start time."""
    gpu_capacity: bool = True
    """Never ask for more replicas than free GPUs can hold."""


SLUICE = Features()
KPA = Features(instant_backlog=False, startup_aware=False, scale_ahead=False, gpu_capacity=False)


def decide(
    inputs: ScalingInputs,
    state: DeciderState,
    policy: scaling.ScalingPolicy,
    *,
    features: Features = SLUICE,
) -> tuple[ScalingDecision, DeciderState]:
    """Decide one tick for one revision. Pure; the autoscaler loop applies the result.

    ``features`` switches sluice's additions on and off (the simulator's ablations);
    ``kpa_decide`` is the plain KPA baseline.
    """
    conditions: set[Condition] = set()
    state = _resumed(state, inputs)
    cold_start_s = _learned_cold_start(state.cold_start_s, inputs.cold_starts)
    # 1. demand
    history = _recorded(state.history, _sample(inputs, policy, features), policy.stable_window_s)
    stable_demand = _demand(history, inputs.now - policy.stable_window_s, features)
    panic_demand = _demand(history, inputs.now - policy.panic_window_s, features)

    # 2. replicas
    stable_want = _replicas_for(stable_demand, policy)
    if features.scale_ahead and cold_start_s is not None:
        ahead = _trend_demand(state.history, history, inputs.now + cold_start_s, policy)
        ahead_want = _replicas_for(ahead, policy)
        if ahead_want > stable_want:
            stable_want = ahead_want
            conditions.add(Condition.SCALING_AHEAD)
    panic_want = _replicas_for(panic_demand, policy)

    # 3. rate limits and 4. panic
    base = max(1, inputs.ready + (inputs.starting if features.startup_aware else 0))
    panic_last_over, panic_peak = _panic_mode(state, inputs.now, panic_want / base, policy)
    stable_count = _rate_limited(stable_want, base, policy)
    desired = stable_count
    if panic_last_over is not None:
        conditions.add(Condition.PANICKING)
        panic_peak = max(panic_peak, stable_count, _rate_limited(panic_want, base, policy))
        desired = panic_peak

    # 5. scale-down delay
    recent = _delay_window(state.recent, Recommendation(inputs.now, desired), policy)
    delayed = max((r.replicas for r in recent), default=desired)
    if delayed > desired:
        conditions.add(Condition.SCALE_DOWN_DELAYED)

    # 6. bounds
    reached_initial = state.reached_initial_scale or inputs.ready >= policy.initial_scale
    wanted, desired, capacity_limit = _capped(delayed, inputs, policy, features, reached_initial)
    if capacity_limit is not None and wanted > capacity_limit:
        conditions.add(Condition.CAPACITY_LIMITED)
    last_demand_at = _last_demand_at(state.last_demand_at, inputs, history[-1])
    desired = _floored_for_demand(desired, inputs, policy, last_demand_at)
    if desired == 0:
        conditions.add(Condition.SCALED_TO_ZERO)
    elif inputs.buffered > 0 and inputs.ready + inputs.starting == 0:
        conditions.add(Condition.ACTIVATING)

    decision = ScalingDecision(
        desired=desired,
        conditions=frozenset(conditions),
        stable_demand=stable_demand,
        panic_demand=panic_demand,
        wanted=wanted,
        capacity_limit=capacity_limit,
        cold_start_s=cold_start_s,
    )
    next_state = DeciderState(
        history=history,
        panic_last_over=panic_last_over,
        panic_peak=panic_peak,
        recent=recent,
        last_demand_at=last_demand_at,
        cold_start_s=cold_start_s,
        reached_initial_scale=reached_initial,
    )
    return decision, next_state


def kpa_decide(
    inputs: ScalingInputs, state: DeciderState, policy: scaling.ScalingPolicy
) -> tuple[ScalingDecision, DeciderState]:
    """Knative KPA's decision for the same inputs: the baseline sluice is measured against."""
    return decide(inputs, state, policy, features=KPA)


def _resumed(state: DeciderState, inputs: ScalingInputs) -> DeciderState:
    """A decider without history starts panicking at the current count, as Knative's does after
    a restart, so that an empty history does not read as no load and scale everything down."""
    if state.history or inputs.ready <= 1:
        return state
    return dataclasses.replace(state, panic_last_over=inputs.now, panic_peak=inputs.ready)


def _learned_cold_start(learned: float | None, observed: Iterable[float]) -> float | None:
    for seconds in observed:
        if learned is None:
            learned = seconds
        else:
            learned = COLD_START_EWMA_WEIGHT * seconds + (1 - COLD_START_EWMA_WEIGHT) * learned
    return learned


def _sample(inputs: ScalingInputs, policy: scaling.ScalingPolicy, features: Features) -> Sample:
    match policy.metric_kind:
        case scaling.MetricKind.CONCURRENCY:
            backlog = float(inputs.buffered)
        case scaling.MetricKind.RPS if features.instant_backlog:
            backlog = inputs.buffered / policy.panic_window_s
        case _:
            # rps under KPA: the held requests were counted as arrivals already.
            # custom: a signal's unit says nothing about requests.
            backlog = 0.0
    return Sample(inputs.now, inputs.value, backlog)


def _recorded(history: tuple[Sample, ...], sample: Sample, window_s: float) -> tuple[Sample, ...]:
    return (*(s for s in history if s.at > sample.at - window_s), sample)


def _demand(history: tuple[Sample, ...], since: float, features: Features) -> float:
    """Mean demand of the samples after ``since``; with instant_backlog, the backlog counts at
    its latest size when that is above its mean."""
    window = [s for s in history if s.at > since]
    served = sum(s.served for s in window) / len(window)
    backlog = sum(s.backlog for s in window) / len(window)
    if features.instant_backlog:
        backlog = max(backlog, history[-1].backlog)
    return served + backlog


def _replicas_for(demand: float, policy: scaling.ScalingPolicy) -> int:
    per_replica = max(0.01, policy.target_per_replica * policy.target_utilization)
    return max(0, math.ceil(demand / per_replica - EPSILON))


def _trend_demand(
    previous: tuple[Sample, ...],
    history: tuple[Sample, ...],
    at: float,
    policy: scaling.ScalingPolicy,
) -> float:
    """Demand at ``at`` on the line through the history; 0 unless the load is clearly rising.

    Clearly: the previous ticks' history spans half a stable window and a line explains most of
    its variance, so noise around a level is not extrapolated (judging the previous ticks keeps
    more load from ever switching the trend off). The slope is the smaller of the stable and
    the panic window's, so a step up, flat in the panic window once it has passed, is met by
    the ordinary windows instead of being extrapolated like a ramp.
    """
    if not previous or previous[-1].at - previous[0].at < policy.stable_window_s / 2:
        return 0.0
    judged = _line(previous)
    if judged.slope <= 0 or judged.fit < TREND_MIN_FIT:
        return 0.0
    recent = [s for s in history if s.at > history[-1].at - policy.panic_window_s]
    slope = min(_line(history).slope, _line(recent).slope)
    if slope <= 0:
        return 0.0
    mean_at = sum(s.at for s in history) / len(history)
    mean_demand = sum(s.total for s in history) / len(history)
    return mean_demand + slope * (at - mean_at)


@dataclass(frozen=True)
class _Line:
    slope: float
    """Demand per second."""
    fit: float
    """R², the share of the demand's variance the line explains."""


def _line(samples: Sequence[Sample]) -> _Line:
    """Least-squares line of demand over time; flat for too few points to make a trend."""
    if len(samples) < MIN_TREND_SAMPLES:
        return _Line(0.0, 0.0)
    mean_at = sum(s.at for s in samples) / len(samples)
    mean_demand = sum(s.total for s in samples) / len(samples)
    spread_at = sum((s.at - mean_at) ** 2 for s in samples)
    spread_demand = sum((s.total - mean_demand) ** 2 for s in samples)
    if spread_at <= 0 or spread_demand <= 0:
        return _Line(0.0, 0.0)
    covariance = sum((s.at - mean_at) * (s.total - mean_demand) for s in samples)
    return _Line(covariance / spread_at, covariance**2 / (spread_at * spread_demand))


def _rate_limited(want: int, base: int, policy: scaling.ScalingPolicy) -> int:
    """Clamp to what one decision may change; with rates above 1 this always allows ±1."""
    lowest = math.floor(base / policy.max_scale_down_rate + EPSILON)
    highest = math.ceil(base * policy.max_scale_up_rate - EPSILON)
    limited = min(max(want, lowest), highest)
    if want > 0:
        limited = max(limited, policy.activation_scale)
    return limited


def _panic_mode(
    state: DeciderState, now: float, panic_ratio: float, policy: scaling.ScalingPolicy
) -> tuple[float | None, int]:
    """The next (panic_last_over, panic_peak): enter or extend while over the threshold, leave
    a full stable window after the last tick over it."""
    if panic_ratio >= policy.panic_threshold_percentage / 100:
        return now, state.panic_peak
    if state.panic_last_over is not None and now - state.panic_last_over < policy.stable_window_s:
        return state.panic_last_over, state.panic_peak
    return None, 0


def _delay_window(
    recent: tuple[Recommendation, ...], latest: Recommendation, policy: scaling.ScalingPolicy
) -> tuple[Recommendation, ...]:
    if policy.scale_down_delay_s <= 0:
        return ()
    since = latest.at - policy.scale_down_delay_s
    return (*(r for r in recent if r.at > since), latest)


def _last_demand_at(previous: float | None, inputs: ScalingInputs, sample: Sample) -> float:
    if sample.total > 0 or inputs.in_flight > 0 or inputs.buffered > 0 or previous is None:
        return inputs.now
    return previous


def _capped(
    desired: int,
    inputs: ScalingInputs,
    policy: scaling.ScalingPolicy,
    features: Features,
    reached_initial: bool,
) -> tuple[int, int, int | None]:
    """The count within the revision's limits: (wanted, capped, capacity_limit).

    Min replicas is applied after the GPU cap: it is the user's explicit floor, and pods it
    leaves Pending are what a cluster autoscaler needs to see.
    """
    if not reached_initial:
        desired = max(desired, policy.initial_scale)
    if features.startup_aware and inputs.starting > 0:
        desired = max(desired, inputs.ready + inputs.starting)
    wanted = desired
    capacity_limit = _gpu_capacity_limit(inputs, policy) if features.gpu_capacity else None
    if capacity_limit is not None:
        desired = min(desired, capacity_limit)
    desired = max(desired, policy.min_replicas)
    ceiling = policy.replica_ceiling
    return wanted, desired if ceiling is None else min(desired, ceiling), capacity_limit


def _floored_for_demand(
    desired: int, inputs: ScalingInputs, policy: scaling.ScalingPolicy, last_demand_at: float
) -> int:
    """Never zero with work outstanding; wake to activationScale at once; keep one replica
    until the stable window and the grace period have passed without demand."""
    committed = inputs.ready + inputs.starting
    if inputs.in_flight > 0 or inputs.buffered > 0:
        desired = max(desired, 1)
    if inputs.buffered > 0 and committed == 0:
        desired = max(desired, policy.activation_scale)
    idle_s = inputs.now - last_demand_at
    if desired == 0 and committed > 0:
        return 0 if idle_s >= policy.stable_window_s + policy.scale_to_zero_grace_s else 1
    return desired


def _gpu_capacity_limit(inputs: ScalingInputs, policy: scaling.ScalingPolicy) -> int | None:
    if policy.gpus_per_replica == 0 or inputs.free_gpus is None:
        return None
    return inputs.ready + inputs.starting + inputs.free_gpus // policy.gpus_per_replica
