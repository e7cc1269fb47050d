"""The scalers sluice is measured against, besides Knative's KPA (``decider.kpa_decide``).

Pure, like the decider, and in its shape, so the simulator runs them all through one engine:

- ``hpa_decide``: the Kubernetes HorizontalPodAutoscaler with its default behaviour, scaling on
  the same metric through an external metric with an AverageValue target (what KEDA sets up
  for HTTP traffic). On a request rate it sees only the rate, not the router buffer; on
  concurrency it counts the waiting requests too, as KEDA's HTTP add-on reports its
  interceptor's pending requests. It never goes to zero.
- ``oracle_replicas``: perfect foresight with instant start, the lower bound on cost for a
  scaler that never queues a request. It is a plan over the whole trace rather than a tick
  function, since foresight means reading the future, which no decider is given.

The HPA algorithm (kubernetes/pkg/controller/podautoscaler, defaults from the API docs):

1. Every sync period (15 s) it reads the metric. With ``current`` = the scale's replicas
   (starting ones included) and ``ratio = metric / (target * current)``, the recommendation is
   ``current`` when ``|ratio - 1| ≤ tolerance`` (0.1), else ``ceil(metric / target)``.
2. Stabilization: scaling down goes only to the highest recommendation of the last 300 s.
   Scaling up has no window by default.
3. Rate limits over a 15 s period, from the count at the period's start: up to
   ``max(start + 4, start * 2)``; down by up to 100 %, i.e. unlimited.
4. Bounds: minReplicas (at least 1: an HPA cannot scale to zero) and maxReplicas.

The target per replica is the policy's ``target * targetUtilization``, the same load per replica
that the KPA and sluice aim for, so the three differ only in how they get there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from policies import decider, scaling


@dataclass(frozen=True)
class HpaBehavior:
    """The HPA's knobs; the defaults are Kubernetes' (autoscaling/v2 HorizontalPodAutoscaler)."""

    sync_period_s: float = 15.0
    """--horizontal-pod-autoscaler-sync-period: how often the controller acts."""
    tolerance: float = 0.1
    """--horizontal-pod-autoscaler-tolerance: a metric within 10 % of target changes nothing."""
    scale_down_stabilization_s: float = 300.0
    """behavior.scaleDown.stabilizationWindowSeconds."""
    scale_up_pods: int = 4
    """behavior.scaleUp policy Pods: 4 per period."""
    scale_up_percent: float = 100.0
    """behavior.scaleUp policy Percent: 100 per period; the larger of the two wins."""
    scale_down_percent: float = 100.0
    """behavior.scaleDown policy Percent: 100 per period."""
    rate_period_s: float = 15.0
    """periodSeconds of all default rate policies."""


HPA_DEFAULTS = HpaBehavior()


@dataclass(frozen=True)
class ScaleChange:
    """A change the HPA made, kept for the rate limits' period."""

    at: float
    delta: int


@dataclass(frozen=True)
class HpaState:
    """What the HPA remembers between calls; start with ``HpaState()``."""

    last_sync_at: float | None = None
    recommendations: tuple[decider.Recommendation, ...] = ()
    """Unstabilized recommendations within the scale-down stabilization window."""
    changes: tuple[ScaleChange, ...] = ()
    """Changes made within the rate limits' period."""


def hpa_decide(
    inputs: decider.ScalingInputs,
    state: HpaState,
    policy: scaling.ScalingPolicy,
    behavior: HpaBehavior = HPA_DEFAULTS,
) -> tuple[decider.ScalingDecision, HpaState]:
    """One call of the HPA-like scaler; it acts only once per sync period of ``inputs.now``.

    ``inputs.value`` is the metric (the revision's total); on concurrency the requests waiting
    in the buffer count too, as KEDA's HTTP add-on reports every request its interceptor holds.
    The in-flight count, cold starts and GPUs are not HPA inputs and are ignored. ``current`` is
    ready + starting.
    """
    metric = inputs.value
    if policy.counts_in_flight:
        metric += inputs.buffered
    current = inputs.ready + inputs.starting
    due = state.last_sync_at is None or inputs.now - state.last_sync_at >= behavior.sync_period_s
    if not due:
        return _decision(current, metric, current, held=False), state

    recommended = _recommendation(metric, policy.per_replica, current, behavior.tolerance)
    recent = (
        *(r for r in state.recommendations
          if r.at > inputs.now - behavior.scale_down_stabilization_s),
        decider.Recommendation(inputs.now, recommended),
    )
    stabilized = recommended if recommended >= current else min(
        current, max(r.replicas for r in recent)
    )
    changes = tuple(c for c in state.changes if c.at > inputs.now - behavior.rate_period_s)
    desired = _bounded(_rate_limited(stabilized, current, changes, behavior), policy)
    if desired != current:
        changes = (*changes, ScaleChange(inputs.now, desired - current))
    decision = _decision(desired, metric, recommended, held=stabilized > recommended)
    return decision, HpaState(inputs.now, recent, changes)


def oracle_replicas(
    rates: Iterable[float],
    capacity_per_replica: float,
    policy: scaling.ScalingPolicy,
    replica_limit: int | None = None,
) -> tuple[int, ...]:
    """Replicas ready in each second with perfect foresight and instant start: exactly enough
    for that second's requests, within the policy's bounds and ``replica_limit`` (what the GPU
    inventory holds), so no request waits unless the bounds forbid enough replicas."""
    ceiling = min(policy.replica_ceiling or math.inf, replica_limit or math.inf)
    return tuple(
        int(min(ceiling, max(policy.min_replicas, _ceil(rate / capacity_per_replica))))
        for rate in rates
    )


def _ceil(ratio: float) -> int:
    return max(0, math.ceil(ratio - decider.EPSILON))


def _recommendation(metric: float, per_replica: float, current: int, tolerance: float) -> int:
    """The HPA's replica count for an external metric with an AverageValue target."""
    if current > 0 and abs(metric / (per_replica * current) - 1) <= tolerance:
        return current
    return _ceil(metric / per_replica)


def _rate_limited(
    desired: int, current: int, changes: tuple[ScaleChange, ...], behavior: HpaBehavior
) -> int:
    """Clamp to the default policies, measured from the count at the start of the period."""
    period_start = current - sum(c.delta for c in changes)
    if desired > current:
        highest = max(
            period_start + behavior.scale_up_pods,
            math.ceil(period_start * (1 + behavior.scale_up_percent / 100) - decider.EPSILON),
        )
        return min(desired, max(highest, current))
    lowest = math.floor(period_start * (1 - behavior.scale_down_percent / 100) + decider.EPSILON)
    return max(desired, min(lowest, current))


def _bounded(desired: int, policy: scaling.ScalingPolicy) -> int:
    desired = max(desired, policy.min_replicas, 1)
    ceiling = policy.replica_ceiling
    return desired if ceiling is None else min(desired, ceiling)


def _decision(
    desired: int, metric: float, recommended: int, *, held: bool
) -> decider.ScalingDecision:
    return decider.ScalingDecision(
        desired=desired,
        conditions=frozenset({decider.Condition.SCALE_DOWN_DELAYED} if held else ()),
        stable_demand=metric,
        panic_demand=metric,
        wanted=recommended,
        capacity_limit=None,
        cold_start_s=None,
    )
