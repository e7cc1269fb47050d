"""The ScalingPolicy: how one revision's replicas follow its load.

The model is the spec of the ScalingPolicy custom resource, so it is written for the YAML a user
types (camelCase, every field described with unit, default and reason) and its bounds end up in
the CRD's OpenAPI schema. Python code uses the snake_case names. Defaults are Knative KPA's
(anchors/autoscaling.md §1.1), so a policy with only a metric behaves like Knative::

    metric: concurrency          # or rps, streams, or custom:<signal name>
    target: 10                   # in-flight requests per replica
    minReplicas: 0
    maxReplicas: 8
    gpusPerReplica: 1
    gpuResource: nvidia.com/mig-3g.40gb

``metric`` is a plain string rather than an object: it reads as one line of YAML, like Knative's
``autoscaling.knative.dev/metric: rps``, and a string with a pattern is a simple structural
schema (no oneOf). A custom signal is named there and defined beside it, in ``signal`` (its
PromQL query and how its value maps to replicas: :mod:`policies.signals`); ``target`` is then
the signal's, and ``targetUtilization`` does not apply, as in HPA and KEDA.

The decider that reads this policy is :mod:`policies.decider`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any, Self

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

from policies import signals

CUSTOM_PREFIX = "custom:"
METRIC_PATTERN = r"^(rps|concurrency|streams|custom:[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?)$"
GPU_RESOURCE_PATTERN = r"^nvidia\.com/(gpu|mig-[1-7]g\.[1-9][0-9]*gb(\+me)?)$"

EPSILON = 1e-9
"""Slack for ceil: 14.000000000000002 requests over an aim of 7 is 2 replicas, not 3."""

DEFAULT_TARGETS = {"concurrency": 100.0, "rps": 200.0, "streams": 100.0}
"""Knative's per-replica targets when none is given (before target utilization); streams are
requests in flight too, so they take concurrency's."""


class MetricKind(enum.StrEnum):
    """What ``metric`` names, without the custom signal's name."""

    RPS = "rps"
    CONCURRENCY = "concurrency"
    STREAMS = "streams"
    CUSTOM = "custom"


_BUILTIN_KINDS = {kind.value: kind for kind in MetricKind if kind is not MetricKind.CUSTOM}
_IN_FLIGHT_KINDS = frozenset({MetricKind.CONCURRENCY, MetricKind.STREAMS})


class ScalingPolicy(BaseModel):
    """Scaling knobs for one revision; see the module docstring for the YAML form."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    metric: str = Field(
        "concurrency", pattern=METRIC_PATTERN,
        description=(
            "Signal the replica count follows: 'rps' (requests per second arriving at the "
            "routers), 'concurrency' (requests in flight), 'streams' (streamed responses in "
            "flight, e.g. LLM generations, as the routers measure them) or 'custom:<name>' (a "
            "PromQL signal such as KV-cache usage or queue depth, defined in 'signal'). Default "
            "'concurrency', as in Knative."
        ),
    )
    target: float | None = Field(
        None, gt=0,
        description=(
            "Metric value one replica should carry, in the metric's unit (requests/s, in-flight "
            "requests or the signal's unit). Default: 100 for concurrency and streams, 200 for "
            "rps (Knative's); required for custom signals, whose unit only the user knows."
        ),
    )
    target_utilization: float = Field(
        0.7, gt=0, le=1,
        description=(
            "Fraction of the target to aim for, in (0, 1]; the rest is headroom for bursts while "
            "new replicas start. Default 0.7, Knative's. Not applied to a custom signal, whose "
            "target is the aim itself (HPA's and KEDA's rule)."
        ),
    )
    min_replicas: int = Field(
        0, ge=0, le=10_000,
        description="Replicas kept even without load. Default 0: the revision may scale to zero.",
    )
    max_replicas: int = Field(
        0, ge=0, le=10_000,
        description=(
            "Replicas never exceeded. Default 0 means unbounded, as Knative's max-scale; GPU "
            "capacity still caps the count."
        ),
    )
    initial_scale: int = Field(
        1, ge=0, le=10_000,
        description=(
            "Replicas a new revision starts with, held until that many have been ready once "
            "(minReplicas wins if higher). Default 1, Knative's, so a new revision proves it "
            "can start."
        ),
    )
    activation_scale: int = Field(
        1, ge=1, le=10_000,
        description=(
            "Replicas at least, whenever there is demand; the count a cold revision wakes to. "
            "Default 1. Raise it for a model whose first replica would be swamped at once."
        ),
    )
    stable_window_s: float = Field(
        60.0, alias="stableWindowSeconds", ge=6, le=3600,
        description=(
            "Seconds of history averaged for ordinary decisions. Default 60, Knative's: long "
            "enough to ignore noise, short enough to follow a changing load within a minute."
        ),
    )
    panic_window_percentage: float = Field(
        10.0, ge=1, le=100,
        description=(
            "Panic window as a percentage of the stable window (rounded, at least 1 s). "
            "Default 10, so 6 s: the short average that detects a burst."
        ),
    )
    panic_threshold_percentage: float = Field(
        200.0, ge=110, le=1000,
        description=(
            "Panic when the panic window asks for this percentage of the current replicas. "
            "Default 200, Knative's: a doubling of load is a burst, not noise."
        ),
    )
    max_scale_up_rate: float = Field(
        1000.0, gt=1, le=10_000,
        description=(
            "Replicas may grow to at most this multiple of the current count per decision "
            "(always by at least one). Default 1000, Knative's: effectively unlimited."
        ),
    )
    max_scale_down_rate: float = Field(
        2.0, gt=1, le=10_000,
        description=(
            "Replicas may shrink to no less than the current count divided by this per decision. "
            "Default 2, Knative's: halve at most, so a dip does not drop all capacity."
        ),
    )
    scale_down_delay_s: float = Field(
        0.0, alias="scaleDownDelaySeconds", ge=0, le=3600,
        description=(
            "Seconds a lower count must persist before scaling down (the highest count asked for "
            "in this window wins). Default 0, Knative's; raise it for models that are slow to "
            "start."
        ),
    )
    scale_to_zero_grace_s: float = Field(
        30.0, alias="scaleToZeroGraceSeconds", ge=0, le=3600,
        description=(
            "Seconds the revision stays at one replica after the stable window has seen no "
            "demand, before going to zero. Default 30, Knative's grace period."
        ),
    )
    buffer_depth: int = Field(
        1000, ge=0, le=1_000_000,
        description=(
            "Requests the routers hold per revision while it has no free replica; the next gets "
            "503 with Retry-After at once. 0 disables buffering. Default 1000: bounded, unlike "
            "KEDA and Ray."
        ),
    )
    buffer_timeout_s: float = Field(
        300.0, alias="bufferTimeoutSeconds", gt=0, le=3600,
        description=(
            "Seconds a held request may wait before it gets 504. Default 300, Knative's revision "
            "timeout; up to an hour for models that take minutes to load."
        ),
    )
    gpus_per_replica: int = Field(
        0, ge=0, le=64,
        description=(
            "GPUs (or MIG slices) one replica requests. Default 0: a CPU replica, not capped by "
            "GPU capacity."
        ),
    )
    signal: signals.Signal | None = Field(
        None,
        description=(
            "The custom signal 'metric: custom:<name>' follows: a PromQL query, whether its "
            "value is per replica (AverageValue) or the revision's total (Value), an "
            "activation threshold and the query's timeout. Required with a custom metric, "
            "refused with any other."
        ),
    )
    gpu_resource: str = Field(
        "nvidia.com/gpu", pattern=GPU_RESOURCE_PATTERN,
        description=(
            "Extended resource a replica's GPUs are counted in: 'nvidia.com/gpu' or a MIG slice "
            "such as 'nvidia.com/mig-1g.10gb'. Default 'nvidia.com/gpu'."
        ),
    )

    @property
    def metric_kind(self) -> MetricKind:
        # A dict lookup: the decider asks this many times a tick for every revision.
        return _BUILTIN_KINDS.get(self.metric, MetricKind.CUSTOM)

    @property
    def counts_in_flight(self) -> bool:
        """Whether the metric counts requests in flight (concurrency, streams): a waiting
        request adds to it for as long as a replica serves it, not once as to rps."""
        return self.metric_kind in _IN_FLIGHT_KINDS

    @property
    def custom_signal(self) -> str | None:
        """Name of the custom signal, or None for rps and concurrency."""
        if self.metric_kind is MetricKind.CUSTOM:
            return self.metric.removeprefix(CUSTOM_PREFIX)
        return None

    @property
    def target_per_replica(self) -> float:
        """The target, with Knative's default for rps and concurrency filled in."""
        if self.target is not None:
            return self.target
        return DEFAULT_TARGETS[self.metric]

    @property
    def per_replica(self) -> float:
        """The metric value one replica is sized for: target * utilization (at least 0.01, so
        a tiny target never divides by zero); a custom signal's target as it is. The one place
        this rule is written."""
        if self.metric_kind is MetricKind.CUSTOM:
            return self.target_per_replica
        return max(0.01, self.target_per_replica * self.target_utilization)

    @property
    def replica_ceiling(self) -> int | None:
        """max_replicas, or None when unbounded."""
        return self.max_replicas or None

    @property
    def release_concurrency(self) -> int:
        """The route table's ``release_concurrency`` for this revision: the requests in flight
        per replica the policy aims for, ceil(target x targetUtilization), so a wave buffered
        at zero is released to each replica at the load it was sized for (then more, while
        its answers do not slow) and the replicas that become ready next share it. 0 (unpaced)
        for rps and custom metrics, whose target is not a number of requests in flight."""
        if self.metric_kind is not MetricKind.CONCURRENCY:
            return 0
        # - 1e-9: 10 x 0.7 is 7.000000000000001 in floats, and 7 is meant.
        return max(1, math.ceil(self.target_per_replica * self.target_utilization - 1e-9))

    @property
    def panic_window_s(self) -> float:
        """The panic window in seconds: Knative rounds it to whole seconds, at least one."""
        return float(max(1, round(self.stable_window_s * self.panic_window_percentage / 100)))

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> Self:
        errors = _cross_field_errors(self)
        if errors:
            raise pydantic.ValidationError.from_exception_data(type(self).__name__, errors)
        return self


def _cross_field_errors(policy: ScalingPolicy) -> list[InitErrorDetails]:
    def error(field: str, message: str) -> InitErrorDetails:
        return InitErrorDetails(
            type=PydanticCustomError("inconsistent_policy", message),
            loc=(ScalingPolicy.model_fields[field].alias or field,),
            input=getattr(policy, field),
        )

    errors = []
    if policy.metric_kind is MetricKind.CUSTOM and policy.target is None:
        errors.append(error("target", "required for a custom metric"))
    if policy.metric_kind is MetricKind.CUSTOM and policy.signal is None:
        errors.append(error("signal", "required for a custom metric: its query"))
    if policy.metric_kind is not MetricKind.CUSTOM and policy.signal is not None:
        errors.append(error("signal", "only a custom metric (custom:<name>) has a signal"))
    ceiling = policy.replica_ceiling
    if ceiling is not None:
        errors.extend(
            error(field, f"must not exceed maxReplicas ({ceiling})")
            for field in ("min_replicas", "initial_scale", "activation_scale")
            if getattr(policy, field) > ceiling
        )
    return errors


def replicas_for(demand: float, policy: ScalingPolicy) -> int:
    """Replicas that carry ``demand`` (in the policy's metric) at the policy's aim."""
    return max(0, math.ceil(demand / policy.per_replica - EPSILON))


def load_policy(data: Mapping[str, Any]) -> ScalingPolicy:
    """Parse a policy from its YAML/JSON form (camelCase or snake_case keys).

    Raises pydantic.ValidationError; show it with ``validation.describe``.
    """
    return ScalingPolicy.model_validate(dict(data))
