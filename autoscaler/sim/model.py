"""The simulator's model: a revision's replicas and its router queue, second by second, driven by
the control core itself (control/core.py) on a simulated clock.

Why: a policy's cost and its queueing under a burst can be seen in seconds, before it meets a
cluster, and sluice's decider can be compared with the scalers people run today on the very
same trace. Four scalers run on the same replica model:

- sluice: the control core with ``policies.decider.decide`` and the given policy, ticking every
  ``--tick`` seconds: the same core, inputs and decisions as ``sluice up`` and the Kubernetes
  controller, over a simulated replica set (``Fleet``) and clock;
- KPA: the core with ``decider.kpa_decide`` and Knative's defaults (``kpa_policy``), every 2 s;
- HPA: the core with ``policies.baselines.hpa_decide`` (15 s sync, 300 s scale-down stabilization);
- oracle: the core with ``baselines.oracle_replicas``' plan, perfect foresight and instant start.

The model, one second per step:

1. Replicas. Each is Pending until its GPUs are free (FIFO, ``gpusPerReplica`` out of the
   inventory), then starting for the cold start, then ready. A ready replica serves
   ``capacity`` requests per second (default ``target * targetUtilization``: exactly the load
   the scalers aim for per replica, so a scaler that holds its aim costs what the oracle costs,
   and headroom comes only from rounding up; on concurrency the in-flight aim over the service
   time). A replica whose cold start ends within a second serves the rest of it. Scaling down
   removes Pending replicas first, then starting ones (newest first), then ready ones, as a
   ReplicaSet does.
2. Requests. The second's arrivals join a FIFO fluid queue at the router; ready capacity serves
   it; the rest waits for later seconds (the buffer is unbounded here, so nothing is lost).
   (sluice's router releases a wave at the policy's in-flight aim per replica and lets each
   take more while its answers do not slow: within a few round trips a replica serves what it
   can, so the one-second model gives it its whole capacity.)
3. Decisions. On a tick the scaler sees the mean arrival rate since its last tick (the rps
   metric, and ``arrivals`` whatever the metric; on concurrency the metric is the requests
   served in the second times the service time), the queue (``buffered``), the requests served
   in the second (``in_flight``: a replica serves a request within the second it takes it),
   ready, starting (Pending included), free GPUs and the cold starts completed since its last
   tick. The desired count
   applies from the next second: new replicas are Pending (or start at once) then.

Before the trace the revision has served the trace's starting rate (the median of its first
``WARMUP_RATE_S`` seconds) for ``WARMUP_S`` with the replicas it needs, so no scaler starts from
an empty history; only the trace is measured. A trace marked ``from_zero`` instead has
``WARMUP_S`` of no load before it and starts at zero replicas (a scaler whose policy starts a new
revision at initialScale has scaled it back to zero by then); at zero replicas the first
request's arrival decides at once, as the router's poke does (``poke``), not at the next tick.

Measures:

- replica-seconds: ready + starting replicas (both hold a node or GPUs; Pending ones hold none).
- SLO-violation seconds: seconds in which demand exceeds ready capacity by more than the
  second's own arrivals, i.e. the requests already waiting are more than the ready replicas
  serve in it, so requests wait over a second. Seconds that merely end with some requests
  queued are reported too (``queued_s``), but they are not the SLO: bundled traces have
  Poisson arrivals, and replicas run at exactly their aim, so a draw a few percent over
  capacity spills a few milliseconds of queueing into the next second for every scaler alike
  (the oracle, which sees the draw coming, excepted). Counting those would measure the noise,
  not the scaler.
- queueing delay, mean and p99 over requests: in the FIFO fluid model a request's delay is the
  horizontal distance between the cumulative arrivals and cumulative served curves.
- scale events: changes of the desired count.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoscaler.control import core, ports
from autoscaler.sim import traces
from policies import baselines, decider, scaling, signals

WARMUP_S = 120
"""Two stable windows: every decider's history is full and a restart's panic is over."""
WARMUP_RATE_S = 30
"""The warm-up's rate is the median of the trace's first this many seconds, not its first
second: one second of a Poisson trace is a draw that can sit 5 % off the rate (948 for 1000),
and a warm start one replica short of the load made every scaler move on the steady trace."""
KPA_TICK_S = 2
"""Knative's decider tick (multiscaler.go: tickInterval)."""
WHOLE_REQUEST = 0.5
"""Less than half a request in the queue is the fluid model's rounding, not a waiting request."""
DELAY_QUANTILES = 100_000
"""Requests sampled (evenly, in arrival order) for the delay statistics."""
KEY: ports.Key = ("sim", "sim")
"""The one revision a simulation runs."""

@dataclass(frozen=True)
class ReplicaModel:
    capacity_rps: float
    """Requests per second one ready replica serves (a request-rate trace)."""
    cold_start_s: float
    """Seconds from a replica's start (GPUs granted) to ready."""
    gpus_per_replica: int = 0
    gpu_inventory: int | None = None
    """GPUs the revision may use; None when not GPU-bound."""
    service_s: float | None = None
    """Seconds a request is in flight at a replica, for a policy on concurrency or a
    custom-signal trace: the scalers then see the requests served in a second times this
    (Little's law) instead of the arrival rate. None for rps (one second: in flight = served)."""

    def capacity_at(self, signal: float | None) -> float:
        """Requests per second a ready replica serves when each one in flight adds ``signal``
        to it (a custom-signal trace): it holds signal up to 1 (a full KV cache)."""
        if signal is None:
            return self.capacity_rps
        return 1.0 / (signal * (self.service_s or 1.0))

    @property
    def replica_limit(self) -> int | None:
        """Replicas the GPU inventory holds at once; None when unlimited."""
        if self.gpu_inventory is None or self.gpus_per_replica == 0:
            return None
        return self.gpu_inventory // self.gpus_per_replica


@dataclass(frozen=True)
class Metrics:
    replica_seconds: float
    """Replicas ready or starting, summed over the seconds."""
    slo_violation_s: int
    """Seconds in which the requests already waiting exceed what the ready replicas serve in
    the second: demand has outrun ready capacity, and requests wait more than a second."""
    queued_s: int
    """Seconds that end with any request waiting, a Poisson draw over capacity included."""
    mean_delay_s: float
    p99_delay_s: float
    scale_events: int
    """Changes of the desired count."""
    peak_replicas: int
    arrived: float
    served: float
    queued_at_end: float


@dataclass(frozen=True)
class Series:
    """Per-second values over the measured trace, for plots and tests."""

    ready: list[int]
    billed: list[int]
    """Ready + starting."""
    desired: list[int]
    """The count asked for, Pending replicas included."""
    queue: list[float]
    """Requests waiting at the end of the second."""
    violated: list[bool]
    """Whether the second counts in slo_violation_s."""


@dataclass(frozen=True)
class Run:
    metrics: Metrics
    series: Series


Rates = traces.Rates


class Fleet:
    """The replicas of one revision: Pending ones (a count), starting ones (their ready times,
    oldest first), ready ones (a count). The Replicas and Capacity of control/ports.py for the
    simulated revision."""

    def __init__(self, model: ReplicaModel, ready: int) -> None:
        self.model = model
        self.pending = 0
        self.starting: collections.deque[float] = collections.deque()
        self.ready = ready
        self.cold_starts: list[float] = [model.cold_start_s] * ready
        """Cold starts completed since the scaler last looked."""
        self.desired = ready

    @property
    def total(self) -> int:
        return self.pending + len(self.starting) + self.ready

    @property
    def free(self) -> int | None:
        if self.model.gpu_inventory is None:
            return None
        return max(0, self.model.gpu_inventory - self.model.gpus_per_replica * self.total)

    # the Replicas interface

    failure = None
    restarts = 0

    def counts(self) -> ports.ReplicaCounts:
        return ports.ReplicaCounts(ready=self.ready, starting=self.pending + len(self.starting))

    def endpoints(self) -> list[str]:
        return []

    def take_cold_starts(self) -> tuple[float, ...]:
        taken, self.cold_starts = tuple(self.cold_starts), []
        return taken

    def released(self, listed: frozenset[str]) -> None:
        pass

    async def close(self) -> None:
        pass

    def free_gpus(self, target: ports.RevisionTarget) -> int | None:
        return self.free

    # the model

    def advance(self, now: float) -> None:
        """Start the Pending replicas that GPUs allow, and make ready the ones due by ``now``."""
        limit = self.model.replica_limit
        while self.pending and (limit is None or len(self.starting) + self.ready < limit):
            self.pending -= 1
            self.starting.append(now + self.model.cold_start_s)
        while self.starting and self.starting[0] <= now:
            self.starting.popleft()
            self.ready += 1
            self.cold_starts.append(self.model.cold_start_s)

    def ready_within(self, now: float) -> float:
        """Replicas that become ready within the second from ``now``, each counted for the part
        of it left: a measured cold start is no whole number of seconds."""
        return sum(now + 1 - at for at in self.starting if at < now + 1)

    def serving_from(self, now: float) -> float:
        """The part of the second from ``now`` before any replica serves: 0 with one ready,
        else until the first that becomes ready within it (1 when none does)."""
        if self.ready:
            return 0.0
        return min((at - now for at in self.starting if at < now + 1), default=1.0)

    def ready_before(self, end: float) -> None:
        """Make ready the replicas due before ``end``: the ones that served part of the second
        are ready when the scaler looks at its end."""
        while self.starting and self.starting[0] < end:
            self.starting.popleft()
            self.ready += 1
            self.cold_starts.append(self.model.cold_start_s)

    def scale(self, desired: int) -> None:
        self.desired = desired
        if desired > self.total:
            self.pending += desired - self.total
            return
        excess = self.total - desired
        cancelled = min(excess, self.pending)
        self.pending -= cancelled
        excess -= cancelled
        while excess and self.starting:
            self.starting.pop()
            excess -= 1
        self.ready -= excess


class SimClock:
    """The simulated time the core reads."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(arrivals: Rates, policy: scaling.ScalingPolicy, decides: core.Decider[Any],
        tick_s: int, model: ReplicaModel, initial: int, signal: Rates | None = None) -> Run:
    """Replay ``arrivals`` (WARMUP_S seconds of warm-up first, then the measured trace) with the
    control core deciding every ``tick_s`` seconds; ``signal`` is a custom-signal trace's
    signal per request in flight, each second (the trace's SignalSource)."""
    fleet = Fleet(model, initial)
    clock = SimClock()
    control = core.Core(capacity=fleet, clock=clock, decider_=decides)
    control.upsert(ports.RevisionTarget(*KEY, policy=policy), fleet)
    queue, desired, events = 0.0, initial, 0
    arrived_since_tick, seconds_since_tick = 0.0, 0
    served_per_s: list[float] = []
    serving_from: list[float] = []
    series = Series([], [], [], [], [])
    per_request = signal.tolist() if signal is not None else None
    for second, arriving in enumerate(arrivals.tolist()):
        now = float(second - WARMUP_S)
        if fleet.total == 0 and arriving > 0:
            # The router's poke: at zero replicas the first request decides at once, on the
            # rate since the last tick and one buffered request, half a second after the tick.
            clock.now = now - 1 + POKE_AFTER_S
            rate = arrived_since_tick / max(1, seconds_since_tick)
            control.step({KEY: _load(model, rate, queue=1.0, served=0.0)})
            if now >= 0 and fleet.desired != desired:
                events += 1
            desired = fleet.desired
        clock.now = now
        fleet.advance(now)
        held_per_request = per_request[second] if per_request is not None else None
        capacity = (fleet.ready + fleet.ready_within(now)) * model.capacity_at(held_per_request)
        waiting = queue
        served = min(waiting + arriving, capacity)
        queue = waiting + arriving - served
        served_per_s.append(served)
        serving_from.append(fleet.serving_from(now))
        arrived_since_tick += arriving
        seconds_since_tick += 1
        if now >= 0:
            series.ready.append(fleet.ready)
            series.billed.append(fleet.ready + len(fleet.starting))
            series.desired.append(fleet.total)
            series.queue.append(queue)
            series.violated.append(waiting - capacity >= WHOLE_REQUEST)
        fleet.ready_before(now + 1)
        if second % tick_s == 0:
            rate = arrived_since_tick / seconds_since_tick
            arrived_since_tick, seconds_since_tick = 0.0, 0
            load = _load(model, rate, queue, served)
            readings = None
            if policy.signal is not None and held_per_request is not None:
                readings = {KEY: _signal_reading(policy.signal,
                                                 load.concurrency * held_per_request,
                                                 fleet.ready)}
            control.step({KEY: load}, readings)
            if now >= 0 and fleet.desired != desired:
                events += 1
            desired = fleet.desired
    arrived = float(np.sum(arrivals[WARMUP_S:]))
    mean_delay, p99_delay = _delays(arrivals, np.asarray(served_per_s), WARMUP_S,
                                    np.asarray(serving_from))
    metrics = Metrics(
        replica_seconds=float(sum(series.billed)),
        slo_violation_s=sum(series.violated),
        queued_s=sum(q >= WHOLE_REQUEST for q in series.queue),
        mean_delay_s=mean_delay,
        p99_delay_s=p99_delay,
        scale_events=events,
        peak_replicas=max(series.desired, default=initial),
        arrived=arrived,
        served=float(sum(served_per_s[WARMUP_S:])),
        queued_at_end=queue,
    )
    return Run(metrics, series)


POKE_AFTER_S = 0.5
"""Where the poke falls on the decider's clock, after the previous tick: a tick labelled t
decides at the end of second t, so the first request of second t + 1 is half a second later."""


def _load(model: ReplicaModel, rate: float, queue: float, served: float) -> ports.RevisionLoad:
    """What the routers would report for the second: the arrival rate, the queue, and (a
    replica serves a request within the second it takes it) the requests served as in flight;
    on concurrency the metric is those times the service time."""
    concurrency = served if model.service_s is None else served * model.service_s
    return ports.RevisionLoad(rps=rate, rps_6s=rate, concurrency=concurrency,
                              inflight=round(served), buffered=round(queue))


def _signal_reading(signal: signals.Signal, held: float, ready: int) -> ports.Reading:
    """What the query would return: the signal the ready replicas hold, as one replica's
    average (AverageValue; none without a replica, as no series exists) or in total."""
    if signal.type is signals.SignalType.VALUE:
        return ports.Reading(held)
    return ports.Reading(held / ready) if ready else ports.Reading(None, "no data")


def _delays(arrivals: Rates, served: Rates, skip_s: int,
            serving_from: Rates | None = None) -> tuple[float, float]:
    """Mean and p99 queueing delay of the requests served that arrived after ``skip_s``.

    Both cumulative curves are linear within a second (arrivals spread evenly over it; service
    from ``serving_from``, the part of each second before the first replica was ready, on);
    the n-th request arrives when the arrivals curve reaches n and leaves when the served curve
    does, so its delay is the horizontal distance between the curves at height n.
    """
    arrived_by = np.concatenate([[0.0], np.cumsum(arrivals)])
    served_by = np.concatenate([[0.0], np.cumsum(served)])
    first, last = arrived_by[skip_s], served_by[-1]
    if last - first < WHOLE_REQUEST:
        return 0.0, 0.0
    count = DELAY_QUANTILES
    heights = first + (np.arange(count) + 0.5) * (last - first) / count
    leaves = _time_at(served_by, heights, serving_from)
    delays = np.maximum(0.0, leaves - _time_at(arrived_by, heights))
    return float(delays.mean()), float(np.quantile(delays, 0.99))


def _time_at(cumulative: Rates, heights: Rates, rising_from: Rates | None = None) -> Rates:
    """When a nondecreasing piecewise-linear curve first reaches each height (heights > 0); in
    second i it rises from ``rising_from[i]`` (default 0) to the second's end."""
    after = np.searchsorted(cumulative, heights, side="left")
    before = after - 1
    rise = cumulative[after] - cumulative[before]
    part = (heights - cumulative[before]) / rise
    if rising_from is not None:
        part = rising_from[before] + part * (1 - rising_from[before])
    times: Rates = before + part
    return times


def kpa_policy(policy: scaling.ScalingPolicy) -> scaling.ScalingPolicy:
    """Knative's KPA with its defaults, serving the same workload: the user's metric, target,
    utilization, bounds and GPU shape; every algorithm knob (windows, panic, rates, delays) at
    Knative's default."""
    keep = ("metric", "target", "target_utilization", "min_replicas", "max_replicas",
            "initial_scale", "gpus_per_replica", "gpu_resource")
    return scaling.ScalingPolicy(**{name: getattr(policy, name) for name in keep})


def simulate(trace: traces.Trace, policy: scaling.ScalingPolicy, model: ReplicaModel,
             tick_s: int = 1) -> dict[str, Run]:
    """Run the four scalers on the trace; results by name: sluice, kpa, hpa, oracle.

    On a custom-signal trace sluice and the HPA follow the policy's signal; the KPA follows
    requests in flight (concurrency), with the target a replica holds at the trace's typical
    signal per request and the policy's aim (``kpa_on_concurrency``): the scaler people run
    today on an LLM, tuned for its usual requests. A replica holds signal up to 1 (a full
    cache) and the oracle keeps each at the policy's aim, as the scalers try to."""
    start = 0.0 if trace.from_zero else float(np.median(trace.rps[:WARMUP_RATE_S]))
    arrivals = np.concatenate([np.full(WARMUP_S, start), trace.rps])
    signal = None
    if trace.signal is not None:
        signal = np.concatenate([np.full(WARMUP_S, float(np.median(
            trace.signal[:WARMUP_RATE_S]))), trace.signal])
        # Replicas' worth of signal each second, at the policy's aim: a fuller KV cache means
        # preempted requests, so the oracle holds the aim as the others try to.
        load = arrivals * signal * (model.service_s or 1.0)
        plan = baselines.oracle_replicas(load, min(1.0, policy.target_per_replica), policy,
                                         model.replica_limit)
        kpa = kpa_on_concurrency(policy, float(np.median(trace.signal)), model)
    else:
        plan = baselines.oracle_replicas(arrivals, model.capacity_rps, policy,
                                         model.replica_limit)
        kpa = kpa_policy(policy)
    instant = dataclasses.replace(model, cold_start_s=0.0)
    # The oracle follows its plan; a signal it would wait for does not concern it.
    planned = policy.model_copy(update={"metric": "rps", "signal": None})
    scalers: dict[str, tuple[scaling.ScalingPolicy, core.Decider[Any], int, ReplicaModel]] = {
        "sluice": (policy, core.SLUICE, tick_s, model),
        "kpa": (kpa, KPA, KPA_TICK_S, model),
        "hpa": (policy, HPA, 1, model),
        "oracle": (planned, _following(plan), 1, instant),
    }
    return {name: run(arrivals, scaler_policy, decides, tick, replicas, plan[0], signal)
            for name, (scaler_policy, decides, tick, replicas) in scalers.items()}


def kpa_on_concurrency(policy: scaling.ScalingPolicy, typical_signal: float,
                       model: ReplicaModel) -> scaling.ScalingPolicy:
    """Knative's KPA on requests in flight for a custom-signal policy's workload: a replica
    holds 1 / typical_signal requests (a full cache of typical ones), aimed at the fraction of
    it the signal's target aims at; bounds and GPU shape as the policy's."""
    keep = ("min_replicas", "max_replicas", "gpus_per_replica", "gpu_resource")
    aim = min(1.0, policy.target_per_replica)
    return scaling.ScalingPolicy(metric="concurrency", target=1.0 / typical_signal,
                                 target_utilization=aim,
                                 **{name: getattr(policy, name) for name in keep})


KPA: core.Decider[decider.DeciderState] = core.Decider(
    decider.kpa_decide, decider.DeciderState, decider.DeciderState)
HPA: core.Decider[baselines.HpaState] = core.Decider(
    baselines.hpa_decide, baselines.HpaState, baselines.HpaState)


def _following(plan: tuple[int, ...]) -> core.Decider[None]:
    """The oracle as a decider: the count its plan has for the next second."""
    def decide(inputs: decider.ScalingInputs, state: None, policy: scaling.ScalingPolicy) -> (
            tuple[decider.ScalingDecision, None]):
        desired = plan[min(int(inputs.now) + WARMUP_S + 1, len(plan) - 1)]
        return decider.ScalingDecision(desired, frozenset(), inputs.value, inputs.value,
                                       desired, None, None), None

    return core.Decider(decide, lambda: None, type(None))


def replica_model(trace: traces.Trace, policy: scaling.ScalingPolicy,
                  capacity: float | None = None, cold_start_s: float | None = None,
                  gpus: int | None = None, service_s: float | None = None) -> ReplicaModel:
    """The trace's replica model, the policy's capacity and GPU shape, and any overrides. On
    concurrency a replica serves the in-flight requests it aims for over the service time per
    second; UsageError when neither the trace nor the override gives a service time. On a
    custom-signal trace a replica's capacity follows the signal (``capacity_at``); the rps
    figure is then what it serves at the trace's typical signal."""
    per_replica = policy.per_replica
    service = None
    if trace.signal is not None:
        service = traces.REQUEST_S
        capacity = capacity or 1.0 / (float(np.median(trace.signal)) * service)
    elif policy.counts_in_flight:
        service = trace.service_s if service_s is None else service_s
        if service is None:
            raise UsageError(f"invalid policy for the simulator\nmetric: {policy.metric} needs "
                             "the requests' service time: --service-time SECONDS")
        per_replica /= service
    return ReplicaModel(
        capacity_rps=capacity or per_replica,
        cold_start_s=trace.cold_start_s if cold_start_s is None else cold_start_s,
        gpus_per_replica=policy.gpus_per_replica,
        gpu_inventory=trace.gpu_inventory if gpus is None else gpus,
        service_s=service,
    )




class UsageError(Exception):
    """A bad policy, trace or option: printed, exit status 2."""
