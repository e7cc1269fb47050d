"""The replica decider: how many replicas one revision should have, tick by tick.

Purely computational. ``decide(inputs, state, policy)`` takes one tick's observations, the state
the previous call returned and the policy, and returns the decision and the next state. There is
no clock, no I/O and no randomness here: the autoscaler loop collects the inputs, stores the state
(persist it in the revision's status to survive restarts) and applies ``decision.desired``. The
same function runs on Kubernetes, locally and in the simulator.

The baseline is Knative's KPA (anchors/autoscaling.md §1.2); ``kpa_decide`` is that baseline
alone, for comparison. Everything below is in the metric's unit, summed over the revision.

1. Demand. Each tick records a sample: the served load (``inputs.value``) and, for
   concurrency, the router backlog (buffered requests). Averages are taken over the stable
   window (60 s) and the panic window (6 s). KPA averages the backlog like any load, since
   Knative's activator reports held requests as concurrency. Sluice treats a backlog as work
   to drain (3), whatever the metric: for rps the held requests were already counted as
   arrivals; for concurrency a waiting request is not one more in flight for as long as it
   waits but its service time of work, which sluice learns (Little's law: in flight over the
   requests the routers sent to replicas in the same second, weighted by requests). While
   requests wait, what is in flight understates the load, so the sample is at least the
   in-flight work the last second's arrivals make (service time each, at most a second: whether
   they keep coming is not yet known); requests that left the buffer since the last tick were
   in flight on top of the arrivals, and only the arrivals' share is load. Before any replica
   has served, what a request weighs is unknown (400 requests a second of 20 ms look like 40 of
   200 ms): until one has, sluice guesses the longest the rule above counts, each of the last
   second's arrivals in flight for the whole second (in the wait's first second, before its
   rate is measured, each waiting request), not averaged with the samples before it, so a surge
   is met within one cold start (Knative counts every waiting request, a count that grows with
   the wait). The first measurement, taken once nothing waits (Little's law over a period in
   which the first replicas just started reads low), if shorter than that, replaces the guess
   at once: the samples it made hold the load measured then, its panic and the counts it asked
   for are forgotten, and that tick neither the scale-down rate nor the rule that keeps
   starting replicas holds what it ordered. A light load pays for the guess once in the
   revision's life, during its first cold start. While no replica is ready (or none has been
   measured) and requests wait, a sample never falls below the previous one: a client waiting
   for its answer sends no other, so a lull in arrivals during a cold start is load held back,
   not load gone. Sluice also reads level shifts out of the history, each judged in standard
   errors of the difference of two means (the noise measured from successive differences of the
   previous ticks, and for rps at least a Poisson process's): a level ``SURGE_Z`` above the
   rest of the stable window is the load at once (and the history restarts at that step, unless
   the window is a ramp); a level ``SETTLE_Z`` below it for the last cold start (at least a
   panic window) is the load from then on, and any panic ends, instead of holding the peak for
   a whole stable window: holding longer than a cold start costs more than starting again.
2. Replicas. ``want = ceil(demand / max(0.01, target * utilization))`` for each window. Sluice
   also fits a line through two cold starts of history (at least a stable window) and, while
   its slope is ``TREND_Z`` standard errors above zero, asks for the demand the line predicts
   one learned cold start ahead (an EWMA of observed ready-minus-start times), so that new
   replicas are ready when the load arrives; when the last cold start's slope is clearly
   lower (a step, not a ramp) that slope is used. Of the replicas ready and starting, sluice
   keeps as many as the load plus ``KEEP_Z`` standard errors of its mean needs, so a level on
   a replica boundary does not release and restart a replica every few windows; only when a
   cold start is longer than the panic window: a replica that starts faster is back before a
   backlog builds, and keeping it would cost more than restarting it.
3. Backlog drain (sluice, rps and concurrency). A waiting request is work in the metric's
   unit times seconds: one arrival for rps, its service time (at most the drain time) in
   flight for concurrency. New replicas serve a cold start from now and are billed from now,
   so they are asked for only for what the ready and starting replicas (each from when it
   becomes ready) leave of the backlog after max(panic window, cold start), sized to drain it
   in that time: a replica started now helps only if the backlog would still be there when it
   is ready. Capacity already on the way is counted, so a backlog that grows while replicas
   start orders no more than it needs. For concurrency, while no replica is ready the load is
   what the waiting requests will keep in flight, so those are not counted again as backlog.
   The drain count takes part in the panic test.
4. Rate limits, on ``base = max(1, ready)``; sluice uses ready + starting, since starting replicas
   are capacity on the way: each want is clamped to ``[floor(base / maxScaleDownRate),
   ceil(base * maxScaleUpRate)]``, and raised to activationScale when positive.
5. Panic when ``panic want / base ≥ threshold / 100``. While panicking the count is the highest
   of max(stable, panic) seen (it never decreases); panic ends a full stable window after the
   last tick over the threshold. For sluice it ends a cold start after it (at least a panic
   window, at most the stable window), since holding a count longer than a cold start costs
   more than starting replicas again; also when the load has clearly dropped (1); and a panic
   that began with requests waiting and no replica ready, a cold start's backlog, ends as soon
   as nothing waits: the measured load decides from then on. Counting starting replicas in
   ``base`` means a burst that has already been answered does not keep panicking and ordering
   more.
6. Scale-down delay: the highest count over the last scaleDownDelay seconds. Sluice holds a
   count for at least a cold start in all (stable window plus delay) unless the load clearly
   falls (the trend test mirrored): a replica released for a dip costs a cold start to get
   back. The drain count of 3 is applied after the delay.
7. Bounds, in order: initialScale until reached once; sluice never cancels a starting replica
   (its cold start would be wasted and the next tick would launch it again), except at the
   first measurement of a service time, which may show the guess ordered too many; sluice
   caps at what free GPUs hold, ``ready + starting + floor(free / gpusPerReplica)``,
   reporting CapacityLimited; min/max replicas; at least 1 while anything is in flight or
   buffered, and activationScale at once when the first request waits at zero; zero only
   after no demand for the stable window plus the grace period (one replica is kept until
   then).

Worked example, concurrency with target 10 and utilization 0.7, so 7 in flight per replica; one
sample a second. A revision at zero has been idle for a minute; 100 requests arrive within a
second and wait in the router buffer, and their clients send nothing more until answered. KPA
sees a stable average of 100/60 ≈ 1.7 and a panic average of 100/6 ≈ 16.7 (this sample among
five idle ones): stable want 1, panic want ceil(16.7/7) = 3 ≥ 2 * 1, so it panics and asks for
3, then 5, 8, 10, 12 and 15 as the burst fills its panic window, and holds 15 for a minute
whatever the requests weigh. If no replica of the revision has served yet, sluice cannot know
that either: 100 requests of 10 ms are a seventh of one replica's second, 100 of a minute are
15 replicas for a minute. It guesses each of the second's 100 arrivals in flight for the whole
second, and at once (a level that far above the idle window is the load, 1): 15 on the first
tick, held while they start. Once one serves, the service time is measured and replaces the
guess: for 10 ms requests, one replica from that tick on. If the revision
has served before and learned that a request is in flight 0.5 s, the 100 arrivals make 50 in
flight: ceil(50/7) = 8 replicas on the first tick. The waiting requests are that load, not
also a backlog; the drain asks for what keeps 50 in flight through a panic window (the cold
start is not known yet) with nothing ready: 50 * 6 / (7 * 6) = 8 again. On the next ticks no
request arrives, but a lull while clients wait for a first answer is load held back: sluice
asks for 8 until the replicas serve, then for what they measure.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import itertools
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

SETTLE_Z = 5.0
"""Standard errors by which the last cold start's load must lie below the stable window's
before the decider forgets the higher level: noise around a level does not reach it."""

DRAIN_NOW_S = 1.0
"""Seconds: ready replicas are kept while the backlog keeps them busy for this long, the
metric's own period (rps is per second), so a backlog never releases a replica it occupies."""

METRIC_PERIOD_S = 1.0
"""Seconds the metric and the arrival rate are measured over (ScalingInputs.value): the
in-flight work of one period's arrivals is counted at most this long each, since whether they
keep arriving is not known yet."""

SERVICE_EWMA_REQUESTS = 100.0
"""Arrivals that weigh as much as the service time learned before them: a tick with a few
requests moves the estimate little, and a slower model is followed within a few hundred."""

KEEP_Z = 2.0
"""Standard errors of the stable window's mean above it that the current count is kept for:
a replica is released only when the load is about 95 % sure not to need it. At a level that
sits on a replica boundary the mean crosses it every few windows; releasing on each crossing
and starting the replica again costs a cold start each time, and a backlog while it starts."""

SURGE_Z = 5.0
"""Standard errors by which the latest samples' mean must lie above the rest of the stable
window's before it is the load at once: as for SETTLE_Z, noise around a level does not reach
it (one false alarm in millions of splits), a step of a replica or more does within seconds."""

TREND_Z = 3.0
"""Standard errors by which a line's slope must exceed zero before the decider scales ahead
along it: noise around a level does not reach it, a ramp that moves the load by a replica
per cold start does within two cold starts."""

TREND_COLD_STARTS = 2.0
"""Cold starts of history the trend is fitted over (at least a stable window): the slope that
predicts one cold start ahead is measured over more than that."""


@dataclass(frozen=True)
class ScalingInputs:
    """One tick's observations of one revision, collected by the autoscaler loop."""

    now: float
    """Seconds on a monotonic clock; never decreases from one call to the next."""
    value: float
    """The metric over the last second, revision total. rps: requests per second arriving at
    the routers (buffered ones included, as arrivals). concurrency: mean requests in flight at
    the replicas (buffered ones excluded: they are ``buffered``). streams: streamed responses
    in flight now. custom: the signal's revision total (``signals.Signal.demand``)."""
    buffered: int = 0
    """Requests held at the routers for this revision, summed over routers."""
    in_flight: int = 0
    """Requests being served by this revision's replicas now."""
    ready: int = 0
    """Replicas ready to serve."""
    starting: int = 0
    """Replicas asked for but not yet ready (Pending or starting up)."""
    arrivals: float | None = None
    """Requests per second arriving at the routers over the same period as ``value``, buffered
    ones included, whatever the metric (for rps it is ``value``); None when not measured. With
    concurrency it turns in-flight requests into the work one request makes (Little's law)."""
    admitted: float | None = None
    """Requests per second sent to replicas over the same period as ``value`` (the routers
    count them); None when not measured, and then the decider infers them from ``arrivals``
    and the buffer's change between ticks. With concurrency, in flight / admitted is the time
    a request spends at a replica (Little's law), both over the same period."""
    free_gpus: int | None = None
    """Free units of the policy's GPU resource that this revision's new replicas could use, net
    of what its Pending replicas already requested; None when unknown or unlimited."""
    cold_starts: tuple[float, ...] = ()
    """Seconds from start to ready of each replica that became ready since the last tick."""

    def __post_init__(self) -> None:
        counts = (self.value, self.buffered, self.in_flight, self.ready, self.starting,
                  self.arrivals or 0.0, self.admitted or 0.0)
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
    starting_since: tuple[float, ...] = ()
    """When each replica still starting was first seen starting, oldest first (sluice only)."""
    service_s: float | None = None
    """Learned seconds one request is in flight at a replica (concurrency, sluice only): mean
    in flight over the rate of requests going to replicas (Little's law), averaged with
    weights by requests; None until a replica has served."""
    panic_on_backlog: bool = False
    """Whether this panic began with requests waiting and no replica ready, a cold start's
    backlog: it ends as soon as nothing waits, and the measured load decides from then on."""
    buffered: int = 0
    """Requests waiting at the previous tick (concurrency, sluice only): those that left the
    buffer since were served on top of the arrivals, and their time in flight is the backlog's
    drain, not the load's."""
    waiting_since: float | None = None
    """When requests began to wait with no replica ready (sluice only); None while none wait
    so. Within a period of it, every waiting request arrived within the last period."""

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
    """Treat the router backlog as work to drain in a cold start (rps, and concurrency with a
    learned service time) rather than averaging it in as load; hold the load through a cold
    start's lull; end a panic a cold start's backlog began as soon as nothing waits; replace
    the guess made before any replica served by the first measurement at once."""
    startup_aware: bool = True
    """Count starting replicas as capacity, and never cancel one."""
    scale_ahead: bool = True
    """Extrapolate a rising trend by the learned cold-start time."""
    gpu_capacity: bool = True
    """Never ask for more replicas than free GPUs can hold."""
    settle: bool = True
    """Once the load has been clearly lower for a cold start, forget the higher level and end
    the panic, instead of holding it for the rest of the stable window; and end any panic a
    cold start after its last tick over the threshold."""


SLUICE = Features()
KPA = Features(
    instant_backlog=False, startup_aware=False, scale_ahead=False, gpu_capacity=False,
    settle=False,
)


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
    starting_since = _starting_since(state.starting_since, inputs) if features.startup_aware else ()
    service_s = state.service_s
    if features.instant_backlog and policy.counts_in_flight:
        service_s = _learned_service(service_s, inputs, state.buffered, state.history)
        if state.service_s is None and inputs.buffered > 0:
            # Little's law over the periods the first replicas begin to serve in reads low: a
            # request sent in one is in flight there only for the part of it that is left.
            # The first measurement is taken once nothing waits.
            service_s = None
    # The guess before any replica served counts a whole period a request (_sample); a first
    # measurement shorter than that shows it too high. One as long or longer says nothing
    # better over a one-period window (a released backlog reads as arrivals of one period).
    first_measured = (state.service_s is None and service_s is not None
                      and service_s < METRIC_PERIOD_S)
    guessing = (features.instant_backlog and policy.counts_in_flight and service_s is None
                and inputs.buffered > 0)
    # 1. demand
    kept_s = policy.stable_window_s
    if features.scale_ahead and cold_start_s is not None:
        kept_s = max(kept_s, TREND_COLD_STARTS * cold_start_s)
    elapsed = inputs.now - state.history[-1].at if state.history else 0.0
    waiting_since = None
    if features.instant_backlog and inputs.buffered > 0 and inputs.ready == 0:
        waiting_since = inputs.now if state.waiting_since is None else state.waiting_since
    sample = _sample(inputs, state.buffered, elapsed, policy, features, service_s,
                     waiting_since)
    if first_measured and service_s is not None:
        # The tick the backlog drained: what it served is mostly the drain (_sample), so the
        # load is also read as Little's law gives it, the arrivals times the service time.
        sample = dataclasses.replace(sample, served=max(
            sample.served, (inputs.arrivals or 0.0) * min(service_s, METRIC_PERIOD_S)))
        state = _weighed(state, sample)
    if (features.instant_backlog and policy.metric_kind is not scaling.MetricKind.CUSTOM
            and inputs.buffered > 0 and (inputs.ready == 0 or guessing) and state.history):
        # No replica serves yet (or none has been measured), and a client waiting for an answer
        # sends no other: a lull in arrivals meanwhile is load held back, not load gone.
        sample = dataclasses.replace(sample, served=max(sample.served, state.history[-1].served))
    history = _recorded(state.history, sample, kept_s)
    since_drop = None
    if features.settle:
        hold_s = max(policy.panic_window_s, cold_start_s or 0.0)
        since_drop = _settled_history(state.history, history, hold_s, policy)
    if since_drop is not None:
        history = since_drop
    stable_demand = _demand(history, inputs.now - policy.stable_window_s, features)
    panic_demand = _demand(history, inputs.now - policy.panic_window_s, features)
    if guessing:
        # (_sample) The guess is a bound on the load, held while requests wait, not a
        # measurement to average with the samples before it.
        stable_demand = panic_demand = max(stable_demand, history[-1].served)
    risen_load, since_rise = 0.0, None
    if features.settle and since_drop is None:
        risen_load, since_rise = _risen(state.history, history, policy)

    # 2. replicas
    load = max(stable_demand, risen_load)
    stable_want = scaling.replicas_for(load, policy)
    falling = False
    if features.scale_ahead and cold_start_s is not None:
        ahead = _trend_demand(state.history, history, cold_start_s, policy)
        ahead_want = scaling.replicas_for(ahead, policy)
        if ahead_want > stable_want:
            stable_want = ahead_want
            conditions.add(Condition.SCALING_AHEAD)
        falling = _falling(state.history, cold_start_s, policy)
    if features.startup_aware and state.history and _slow_to_start(cold_start_s, policy):
        stable_want = max(stable_want, _kept(inputs, state.history, history, load, policy))
    panic_want = scaling.replicas_for(panic_demand, policy)
    drain_want = 0
    request_work = _request_work(policy, service_s) if features.instant_backlog else None
    if request_work is not None:
        waiting = _waiting(inputs, load, request_work, policy)
        drain_want = _drain_want(inputs, waiting, request_work, starting_since, load,
                                 cold_start_s, policy)

    # 3. rate limits and 4. panic
    base = max(1, inputs.ready + (inputs.starting if features.startup_aware else 0))
    if since_drop is not None or (state.panic_on_backlog and inputs.buffered == 0):
        state = dataclasses.replace(state, panic_last_over=None, panic_peak=0,
                                    panic_on_backlog=False)
    panic_ratio = max(panic_want, drain_want) / base
    panic_hold_s = policy.stable_window_s
    if features.settle and cold_start_s is not None:
        panic_hold_s = min(panic_hold_s, max(policy.panic_window_s, cold_start_s))
    panic_last_over, panic_peak = _panic_mode(state, inputs.now, panic_ratio, panic_hold_s,
                                              policy)
    panic_on_backlog = False
    if panic_last_over is not None and features.instant_backlog:
        panic_on_backlog = state.panic_on_backlog if state.panicking else (
            inputs.buffered > 0 and inputs.ready == 0)
    stable_count = _rate_limited(stable_want, base, policy)
    if first_measured:
        # What was asked for before was the guess; the measurement replaces it at once.
        stable_count = min(stable_count, max(stable_want, policy.activation_scale))
    desired = stable_count
    if panic_last_over is not None:
        conditions.add(Condition.PANICKING)
        panic_peak = max(panic_peak, stable_count, _rate_limited(panic_want, base, policy))
        desired = panic_peak

    # 5. scale-down delay
    delay_s = policy.scale_down_delay_s
    if features.startup_aware and cold_start_s is not None and not falling:
        # With the stable window, a released replica was unneeded for a whole cold start.
        delay_s = max(delay_s, cold_start_s - policy.stable_window_s)
    recent = _delay_window(state.recent, Recommendation(inputs.now, desired), delay_s)
    delayed = max((r.replicas for r in recent), default=desired)
    if delayed > desired:
        conditions.add(Condition.SCALE_DOWN_DELAYED)
    if drain_want > delayed:
        # The rate limit may hold the drain below a panic peak kept from before: never less.
        delayed = max(delayed, _rate_limited(drain_want, base, policy))

    # 6. bounds
    reached_initial = state.reached_initial_scale or inputs.ready >= policy.initial_scale
    wanted, desired, capacity_limit = _capped(delayed, inputs, policy, features, reached_initial,
                                              keep_starting=not first_measured)
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
        history=history if since_rise is None else since_rise,
        panic_last_over=panic_last_over,
        panic_peak=panic_peak,
        recent=recent,
        last_demand_at=last_demand_at,
        cold_start_s=cold_start_s,
        reached_initial_scale=reached_initial,
        starting_since=starting_since,
        service_s=service_s,
        panic_on_backlog=panic_on_backlog,
        buffered=inputs.buffered if features.instant_backlog else 0,
        waiting_since=waiting_since,
    )
    return decision, next_state


def timeless(state: DeciderState) -> DeciderState:
    """``state`` with its samples' and recommendations' times set to 0: two states equal here
    say the same of the load and of the counts asked for, and differ only in when they were
    taken (an idle revision's state, tick after tick). A store may skip writing such a state."""
    return dataclasses.replace(
        state, history=tuple(dataclasses.replace(s, at=0.0) for s in state.history),
        recent=tuple(dataclasses.replace(r, at=0.0) for r in state.recent))


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


def _sample(inputs: ScalingInputs, was_buffered: int, elapsed: float,
            policy: scaling.ScalingPolicy, features: Features,
            service_s: float | None, waiting_since: float | None = None) -> Sample:
    if not policy.counts_in_flight:
        # rps: the held requests were counted as arrivals already; under sluice the backlog
        # is drained on top of the load (_drain_want). custom: a signal's unit says nothing
        # about requests.
        return Sample(inputs.now, inputs.value, 0.0)
    if not features.instant_backlog:
        # Knative's activator reports the requests it holds as concurrency.
        return Sample(inputs.now, inputs.value, float(inputs.buffered))
    served = inputs.value
    drained = max(0, was_buffered - inputs.buffered)
    if inputs.arrivals is not None and drained > 0 and elapsed > 0:
        # Requests that left the buffer were in flight on top of the arrivals: the load is the
        # arrivals' share of what was in flight (Little's law), the rest was the drain.
        served *= inputs.arrivals / (inputs.arrivals + drained / elapsed)
    if inputs.buffered == 0:
        return Sample(inputs.now, served, 0.0)
    if service_s is not None:
        # Requests wait, so what is in flight understates the load: the last period's
        # arrivals make service_s in flight each (at most a period: whether they keep
        # arriving is not known yet). The waiting ones are a backlog to drain (_drain_want).
        made = (inputs.arrivals or 0.0) * min(service_s, METRIC_PERIOD_S)
        return Sample(inputs.now, max(served, made), 0.0)
    # No service time learned yet: 400 requests/s of 20 ms look like 40 of 200 ms until a
    # replica has served. Guess the longest the rule above counts, a whole period each: the
    # last period's arrivals are in flight, so a surge is met within one cold start; unlike
    # Knative's count the guess does not grow with the wait. Without measured arrivals, each
    # waiting request is one more in flight, as Knative counts them. The first measurement
    # replaces the guess (_weighed).
    if inputs.arrivals is None:
        return Sample(inputs.now, served + inputs.buffered, 0.0)
    guess = inputs.arrivals * METRIC_PERIOD_S
    if waiting_since is not None and inputs.now - waiting_since <= METRIC_PERIOD_S:
        # The wait began within the period: the waiting requests all arrived in it, before
        # its rate is measured (rates are over whole periods).
        guess = max(guess, float(inputs.buffered))
    return Sample(inputs.now, max(served, guess), 0.0)


def _learned_service(
    learned: float | None, inputs: ScalingInputs, was_buffered: int,
    previous: tuple[Sample, ...],
) -> float | None:
    """The service time with this tick's Little's law: in flight over the requests that went
    to replicas per second; when replicas are ready and at least one request went to them.
    Weighted by those requests (SERVICE_EWMA_REQUESTS). The routers count what they sent
    (``admitted``) over the same second as what was in flight; without that count it is the
    arrivals less what the buffer kept of them (or plus what it released) since the previous
    tick, which misreads a drain when ticks are shorter than the period (the same second read
    twice, the buffer's change over half of it)."""
    if inputs.ready == 0 or not previous:
        return learned
    if inputs.admitted is not None:
        admitted = inputs.admitted
    else:
        if inputs.arrivals is None:
            return learned
        elapsed = inputs.now - previous[-1].at
        if elapsed <= 0:
            return learned
        admitted = inputs.arrivals - (inputs.buffered - was_buffered) / elapsed
    if admitted * METRIC_PERIOD_S < 1:
        return learned  # not one request to measure
    observed = inputs.value / admitted
    if observed <= 0:
        return learned  # a request went through and nothing was in flight: rounded away
    if learned is None:
        return observed
    return learned + (observed - learned) * admitted / (admitted + SERVICE_EWMA_REQUESTS)


def _weighed(state: DeciderState, sample: Sample) -> DeciderState:
    """The state once the service time is first measured: the guesses in the history (_sample)
    are at most the load measured now, and the panic and the counts they asked for are
    forgotten, so the measured load decides from this tick on."""
    history = tuple(Sample(s.at, min(s.served, sample.served), s.backlog)
                    for s in state.history)
    return dataclasses.replace(state, history=history, panic_last_over=None, panic_peak=0,
                               panic_on_backlog=False, recent=())


def _request_work(policy: scaling.ScalingPolicy, service_s: float | None) -> float | None:
    """What one waiting request adds to the metric, times seconds: rps counts it once,
    concurrency for as long as it is in flight; None for a custom signal, whose unit says
    nothing about requests, and for concurrency before a service time is learned."""
    match policy.metric_kind:
        case scaling.MetricKind.RPS:
            return 1.0
        case scaling.MetricKind.CONCURRENCY | scaling.MetricKind.STREAMS:
            # A waiting request will be in flight (and, to a streams policy, most likely a
            # stream: the model's answers are) once a replica takes it.
            return service_s
        case _:
            return None


def _starting_since(previous: tuple[float, ...], inputs: ScalingInputs) -> tuple[float, ...]:
    """Replicas become ready oldest first; the ones not seen before started by this tick."""
    kept = previous[max(0, len(previous) - inputs.starting):]
    return (*kept, *(inputs.now,) * (inputs.starting - len(kept)))


def _waiting(inputs: ScalingInputs, load: float, request_work: float,
             policy: scaling.ScalingPolicy) -> float:
    """The requests waiting that are a backlog on top of ``load``.

    rps: all of them; their arrivals were counted when they came. Concurrency: while no replica
    is ready, the load is what the waiting requests will keep in flight once served (the last
    arrivals', or the level they held, _sample): those are the load, not also a backlog.
    """
    per_request = min(request_work, METRIC_PERIOD_S)
    if not policy.counts_in_flight or inputs.ready or (
            per_request <= 0):
        return float(inputs.buffered)
    return max(0.0, inputs.buffered - load / per_request)


def _drain_want(
    inputs: ScalingInputs,
    waiting: float,
    request_work: float,
    starting_since: tuple[float, ...],
    load: float,
    cold_start_s: float | None,
    policy: scaling.ScalingPolicy,
) -> int:
    """Replicas that serve ``load``, the load to expect next, and drain the backlog in time.

    The backlog is work in the metric's unit times seconds: each of the ``waiting`` requests
    adds ``request_work`` (rps: 1; concurrency: its service time), at most the drain time, since
    a request longer than that occupies its replica for the whole drain however it is spread.
    New replicas serve one cold start from now and cost that cold start too: ask for them only
    for what the ready and starting replicas (each from when it becomes ready) leave of the
    backlog after max(panic window, cold start) more, and size them to drain it in that time.
    Capacity already on the way is counted, so a backlog that grows while replicas start
    orders no more than it needs. Ready replicas cost the same whether they drain the backlog
    sooner or later, so as many are kept as it keeps busy for the next second.
    """
    per_replica = policy.per_replica
    serving = scaling.replicas_for(load, policy)
    if inputs.buffered == 0 and load <= inputs.ready * per_replica:
        return serving
    lead = cold_start_s or 0.0
    drain_s = max(policy.panic_window_s, lead)
    backlog = waiting * min(request_work, drain_s)
    ages = [inputs.now - since for since in starting_since]
    backlog_later = backlog + load * (lead + drain_s) - per_replica * (
        inputs.ready * (lead + drain_s) + sum(min(lead + drain_s, drain_s + age) for age in ages))
    if backlog_later > EPSILON:
        new = math.ceil(backlog_later / (per_replica * drain_s) - EPSILON)
        return inputs.ready + inputs.starting + new
    backlog_soon = backlog + load * DRAIN_NOW_S - per_replica * sum(
        max(0.0, DRAIN_NOW_S - lead + age) for age in ages)
    keep = math.ceil(backlog_soon / (per_replica * DRAIN_NOW_S) - EPSILON)
    return max(serving, min(inputs.ready, max(0, keep)) + inputs.starting)


def _settled_history(
    previous: tuple[Sample, ...],
    history: tuple[Sample, ...],
    hold_s: float,
    policy: scaling.ScalingPolicy,
) -> tuple[Sample, ...] | None:
    """The history since the load dropped, when the load of the last ``hold_s`` (a cold start,
    at least a panic window) is clearly below the rest of the stable window and needs fewer
    replicas; None otherwise.

    Clearly: by SETTLE_Z standard errors of the difference of the two means. The noise is
    judged on the previous ticks' samples, so that more load now never makes a drop more
    likely, from their successive differences, so that the level shifts being tested do not
    count as noise; rps arrivals vary at least as a Poisson process's do. The drop is placed
    where it splits the last ``hold_s`` best (least squares), and the samples before it are
    forgotten: holding the higher level longer than a cold start costs more than starting
    replicas again would.
    """
    now = history[-1].at
    if hold_s >= policy.stable_window_s:
        return None
    window = _after(history, now - policy.stable_window_s)
    values = [s.total for s in window]
    cut = len(window) - len(_after(window, now - hold_s))
    older, recent = values[:cut], values[cut:]
    if len(older) < MIN_TREND_SAMPLES or len(recent) < MIN_TREND_SAMPLES:
        return None
    older_mean, recent_mean = _mean(older), _mean(recent)
    if scaling.replicas_for(recent_mean, policy) >= scaling.replicas_for(
            _mean(older + recent), policy):
        return None
    noise = _noise(previous)
    error = math.sqrt(_noise_at(noise, older_mean, policy) / len(older)
                      + _noise_at(noise, recent_mean, policy) / len(recent))
    if older_mean - recent_mean <= SETTLE_Z * error:
        return None
    return window[_change_point(values, len(older)):]


def _risen(
    previous: tuple[Sample, ...],
    history: tuple[Sample, ...],
    policy: scaling.ScalingPolicy,
) -> tuple[float, tuple[Sample, ...] | None]:
    """Whether the load clearly rose within the stable window: (the load since, the history
    since), or (0, None) when it did not.

    The stable window is split at every point (the last samples against the ones before
    them); where the later part's mean is SURGE_Z standard errors above the earlier part's,
    the load has risen and the later mean is the load now. The load is the highest such mean,
    so that more load never lowers it; the history restarts where the rise is clearest. A
    burst counts at its level on its first tick, not averaged over a window it has only begun
    to fill, and is not extrapolated like a ramp.
    """
    if len(previous) < MIN_TREND_SAMPLES:
        return 0.0, None  # too few samples to know the noise
    window = _after(history, history[-1].at - policy.stable_window_s)
    values = [s.total for s in window]
    if not any(values):
        # No load in the window (an idle revision, tick after tick): every split's difference
        # is exactly 0, which is no rise whatever the noise; the splits are skipped.
        return 0.0, None
    return _rise_by_splits(previous, window, values, policy)


def _rise_by_splits(
    previous: tuple[Sample, ...],
    window: tuple[Sample, ...],
    values: list[float],
    policy: scaling.ScalingPolicy,
) -> tuple[float, tuple[Sample, ...] | None]:
    """``_risen``'s test at every split of the stable window ``window`` (its totals
    ``values``)."""
    noise = _noise(previous)
    load, clearest, since = 0.0, 0.0, None
    after, count, before = 0.0, len(values), sum(values)
    for later in range(1, count):
        after += values[count - later]
        before -= values[count - later]
        after_mean, before_mean = after / later, before / (count - later)
        error = math.sqrt(_noise_at(noise, after_mean, policy) / later
                          + _noise_at(noise, before_mean, policy) / (count - later))
        z = _z_score(after_mean - before_mean, error)
        if z > SURGE_Z:
            load = max(load, after_mean)
            if z > clearest:
                clearest, since = z, count - later
    if since is None:
        return 0.0, None
    after_rise = window[since:]
    line, level = _fit(window, policy), _fit(after_rise, policy)
    if line.slope > TREND_Z * line.error and line.slope - level.slope <= TREND_Z * level.error:
        return load, None  # a ramp, not a step: its trend needs the history before the rise
    return load, after_rise


def _noise(previous: tuple[Sample, ...]) -> float:
    """The variance of one sample around the load's level, from the previous ticks' successive
    differences, which a level shift hardly moves."""
    totals = [s.served + s.backlog for s in previous]
    steps = [b - a for a, b in itertools.pairwise(totals)]
    return sum(d * d for d in steps) / (2 * len(steps)) if steps else 0.0


def _noise_at(noise: float, level: float, policy: scaling.ScalingPolicy) -> float:
    """``noise``, or more where rps arrivals at ``level`` vary more: at least as a Poisson
    process's do."""
    if policy.metric_kind is scaling.MetricKind.RPS:
        return max(noise, level)
    return noise


def _z_score(difference: float, error: float) -> float:
    """``difference`` in standard errors; a difference without noise is infinitely clear."""
    if error > 0:
        return difference / error
    return math.inf if difference > 0 else 0.0


def _slow_to_start(cold_start_s: float | None, policy: scaling.ScalingPolicy) -> bool:
    """Whether a replica released for noise costs more to start again than to keep: its
    learned cold start is longer than the panic window (unknown counts as slow)."""
    return cold_start_s is None or cold_start_s > policy.panic_window_s


def _kept(
    inputs: ScalingInputs,
    previous: tuple[Sample, ...],
    history: tuple[Sample, ...],
    load: float,
    policy: scaling.ScalingPolicy,
) -> int:
    """Of the replicas ready and starting, as many as ``load`` plus KEEP_Z standard errors of
    its stable-window mean needs (the noise judged on the previous ticks, as in
    ``_settled_history``)."""
    samples = len(_after(history, history[-1].at - policy.stable_window_s))
    error = math.sqrt(_noise_at(_noise(previous), load, policy) / samples)
    return min(inputs.ready + inputs.starting, scaling.replicas_for(load + KEEP_Z * error, policy))


def _change_point(values: Sequence[float], first: int) -> int:
    """The index from ``first`` on where a drop splits ``values`` best: the split maximising
    the between-groups sum of squares with the later group lower."""
    total, count = sum(values), len(values)
    best, best_score, before = first, -1.0, sum(values[:first])
    for index in range(first, count):
        after_mean = (total - before) / (count - index)
        drop = before / index - after_mean
        score = drop * abs(drop) * index * (count - index)
        if score > best_score:
            best, best_score = index, score
        before += values[index]
    return best


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _after(history: tuple[Sample, ...], since: float) -> tuple[Sample, ...]:
    """The samples taken after ``since``: a tail, as the history is oldest first
    (``ScalingInputs.now`` never decreases), found by bisection instead of a scan."""
    return history[bisect.bisect_right(history, since, key=_taken_at):]


def _taken_at(sample: Sample) -> float:
    return sample.at


def _recorded(history: tuple[Sample, ...], sample: Sample, window_s: float) -> tuple[Sample, ...]:
    """``history`` without the samples older than ``window_s`` (a slice, ``_after``), then
    ``sample``."""
    return (*_after(history, sample.at - window_s), sample)


def _demand(history: tuple[Sample, ...], since: float, features: Features) -> float:
    """Mean demand of the samples after ``since``; with instant_backlog, the backlog counts at
    its latest size when that is above its mean."""
    window = _after(history, since)
    served = sum(s.served for s in window) / len(window)
    backlog = sum(s.backlog for s in window) / len(window)
    if features.instant_backlog:
        backlog = max(backlog, history[-1].backlog)
    return served + backlog


def _trend_demand(
    previous: tuple[Sample, ...],
    history: tuple[Sample, ...],
    cold_start_s: float,
    policy: scaling.ScalingPolicy,
) -> float:
    """Demand one cold start from now on the line through the history (two cold starts, at
    least a stable window); 0 unless the load clearly rises.

    Clearly: the previous ticks' history spans half that and its slope is TREND_Z standard
    errors above zero, the noise judged around the line (rps arrivals vary at least as a
    Poisson process's do); judging the previous ticks keeps more load from ever switching the
    trend off. When the last cold start's slope is clearly below the line's, the rise has
    stopped (a step, not a ramp) and its slope is used instead, so that a step up is met by
    the ordinary windows and not extrapolated like a ramp.
    """
    span = max(policy.stable_window_s, TREND_COLD_STARTS * cold_start_s)
    if not previous or previous[-1].at - previous[0].at < span / 2:
        return 0.0
    judged = _fit(previous, policy)
    if judged.slope <= TREND_Z * judged.error:
        return 0.0
    now = history[-1].at
    recent_s = max(policy.panic_window_s, cold_start_s)
    line = _fit(history, policy)
    recent = _fit([s for s in history if s.at > now - recent_s], policy)
    recent_judged = _fit([s for s in previous if s.at > now - recent_s], policy)
    slope = line.slope
    if slope - recent.slope > TREND_Z * recent_judged.error:
        slope = recent.slope
    if slope <= 0:
        return 0.0
    return line.mean + slope * (now + cold_start_s - line.mean_at)


def _falling(
    previous: tuple[Sample, ...], cold_start_s: float, policy: scaling.ScalingPolicy
) -> bool:
    """Whether the load clearly falls: ``_trend_demand``'s test, mirrored. Then a released
    replica will not be needed again, so it is released without the cold-start delay."""
    span = max(policy.stable_window_s, TREND_COLD_STARTS * cold_start_s)
    if not previous or previous[-1].at - previous[0].at < span / 2:
        return False
    judged = _fit(previous, policy)
    return judged.slope < -TREND_Z * judged.error


@dataclass(frozen=True)
class _Line:
    slope: float
    """Demand per second."""
    error: float
    """The slope's standard error."""
    mean: float
    mean_at: float


def _fit(samples: Sequence[Sample], policy: scaling.ScalingPolicy) -> _Line:
    """Least-squares line of demand over time; flat, and infinitely uncertain, for too few
    points to make a trend."""
    if len(samples) < MIN_TREND_SAMPLES:
        return _Line(0.0, math.inf, 0.0, 0.0)
    mean_at = _mean([s.at for s in samples])
    mean = _mean([s.total for s in samples])
    spread_at = sum((s.at - mean_at) ** 2 for s in samples)
    if spread_at <= 0:
        return _Line(0.0, math.inf, mean, mean_at)
    slope = sum((s.at - mean_at) * (s.total - mean) for s in samples) / spread_at
    residual = sum((s.total - mean - slope * (s.at - mean_at)) ** 2 for s in samples)
    noise = residual / (len(samples) - 2)
    if policy.metric_kind is scaling.MetricKind.RPS:
        noise = max(noise, mean)
    return _Line(slope, math.sqrt(noise / spread_at), mean, mean_at)


def _rate_limited(want: int, base: int, policy: scaling.ScalingPolicy) -> int:
    """Clamp to what one decision may change; with rates above 1 this always allows ±1."""
    lowest = math.floor(base / policy.max_scale_down_rate + EPSILON)
    highest = math.ceil(base * policy.max_scale_up_rate - EPSILON)
    limited = min(max(want, lowest), highest)
    if want > 0:
        limited = max(limited, policy.activation_scale)
    return limited


def _panic_mode(
    state: DeciderState, now: float, panic_ratio: float, hold_s: float,
    policy: scaling.ScalingPolicy,
) -> tuple[float | None, int]:
    """The next (panic_last_over, panic_peak): enter or extend while over the threshold, leave
    ``hold_s`` after the last tick over it."""
    if panic_ratio >= policy.panic_threshold_percentage / 100:
        return now, state.panic_peak
    if state.panic_last_over is not None and now - state.panic_last_over < hold_s:
        return state.panic_last_over, state.panic_peak
    return None, 0


def _delay_window(
    recent: tuple[Recommendation, ...], latest: Recommendation, delay_s: float
) -> tuple[Recommendation, ...]:
    if delay_s <= 0:
        return ()
    since = latest.at - delay_s
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
    keep_starting: bool = True,
) -> tuple[int, int, int | None]:
    """The count within the revision's limits: (wanted, capped, capacity_limit).

    Min replicas is applied after the GPU cap: it is the user's explicit floor, and pods it
    leaves Pending are what a cluster autoscaler needs to see.
    """
    if not reached_initial:
        desired = max(desired, policy.initial_scale)
    if features.startup_aware and keep_starting and inputs.starting > 0:
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
