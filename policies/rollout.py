"""The RolloutPolicy: how a canary revision takes over a service's traffic, or is sent back.

The model is the spec of the Rollout custom resource, written for the YAML a user types
(camelCase, every field described with unit, default and reason); its bounds end up in the
CRD's OpenAPI schema. Python code uses the snake_case names. Only the names are required::

    service: fraud-model
    stableRevision: v1
    canaryRevision: v2
    steps:                         # default 5 → 10 → 25 → 50 → 100, 30 s and 100 requests each
      - {weight: 10, minDurationSeconds: 30, minRequests: 100}
      - {weight: 50}
      - {weight: 100}
    analysis: {intervalSeconds: 5, judge: sequential, alpha: 0.01, failureLimit: 4}
    slo:
      successRate: {min: 99, marginPoints: 1}
      latency: {quantile: 0.99, maxMs: 500, tolerancePercent: 10}
      ttft: {quantile: 0.99, maxMs: 2000, tolerancePercent: 10}   # streamed responses only
      custom:
        - {name: gpu-memory, query: 'max(gpu_mem_used_ratio{revision="v2"})', max: 0.95}
    maxDurationSeconds: 3600
    stickiness: {header: X-User-Id}
    promotion: {oldStable: scaleToZero}
    rollback: {canary: keep}

Which judge reads what (policies/judges.py has the statistics):

- ``thresholds`` holds the canary alone to the SLO: success rate ≥ ``min`` and the latency
  quantile ≤ ``maxMs``, each an exact binomial test, so a breach must be significant.
- ``compare`` holds the canary to stable on the same window, as Kayenta does: Fisher's exact
  test on errors, Mann-Whitney U on latency with ``tolerancePercent`` of slack.
- ``sequential`` (the default) compares too, continuously, with always-valid bounds: it fails a
  canary shown to err more than stable, or to be slower by more than ``tolerancePercent``; it
  passes one shown within the tolerance on latency and close enough to stable's error rate
  that, at the weight it is about to get, the service errs at most ``marginPoints`` more.
  It also fails a canary shown to breach the SLO (``min``, ``maxMs``) whatever stable does.
  ``alpha`` bounds its false rollbacks over the whole rollout, however often it looks.
- ``ttft``, when given, is judged like ``latency`` by every judge, on the time to the first
  byte of each *streamed* response (``text/event-stream``, NDJSON: an LLM's first token) as
  the routers measure it: a canary whose prefill got slower fails on it even while its total
  latency, dominated by decoding, stays within ``latency``'s tolerance.
- every judge checks the custom metrics' bounds on the value their query returns.

The state machine that follows this policy is :mod:`policies.progression`.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping
from typing import Any, Self

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

from policies import routing, validation

FULL_WEIGHT = 100
"""The weight of the last step: the canary has all the traffic."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


HISTORY_LIMIT = 100
"""Verdicts a controller keeps for a rollout's status: at the default 5 s interval, the last
eight minutes."""


class Command(enum.StrEnum):
    """What a person can ask of a rollout (a field or annotation on the Rollout resource)."""

    PROMOTE = "promote"
    ABORT = "abort"
    PAUSE = "pause"
    RESUME = "resume"


RESTORE = "restore"
"""What a person can ask of a rollout that has ended: its service's revisions get the weights
they had before it, none parked. Not a Command: the state machine is over by then."""


class Judge(enum.StrEnum):
    """Which judge turns measurements into verdicts (policies/judges.py)."""

    THRESHOLDS = "thresholds"
    COMPARE = "compare"
    SEQUENTIAL = "sequential"

    @property
    def looks_continuously(self) -> bool:
        """Whether a verdict may be acted on at every analysis interval. The fixed-horizon
        judges are right at their confidence only when looked at once, at the end of a step."""
        return self is Judge.SEQUENTIAL


class AfterPromotion(enum.StrEnum):
    """What happens to the old stable revision once the canary has all the traffic."""

    SCALE_TO_ZERO = "scaleToZero"
    KEEP = "keep"


class AfterRollback(enum.StrEnum):
    """What happens to the canary once the traffic is back on stable."""

    SCALE_TO_ZERO = "scaleToZero"
    KEEP = "keep"


class Step(_Model):
    """One weight of the rollout and what it takes to leave it."""

    weight: int = Field(
        ge=1, le=FULL_WEIGHT,
        description=(
            "Percent of the service's traffic the canary gets in this step, 1..100. Steps "
            "increase and the last one is 100: the canary then has all the traffic."
        ),
    )
    min_duration_s: float = Field(
        30.0, alias="minDurationSeconds", gt=0, le=86_400,
        description=(
            "Seconds the step lasts at least, whatever the verdicts say. Default 30: time for "
            "what builds up slowly (caches, queues, memory) to show at this weight."
        ),
    )
    min_requests: int = Field(
        100, ge=0, le=1_000_000_000,
        description=(
            "Requests the canary serves in this step at least before it may end. Default 100: "
            "at low traffic the step waits for evidence instead of passing on none."
        ),
    )


DEFAULT_STEPS = [Step(weight=w) for w in (5, 10, 25, 50, FULL_WEIGHT)]


class Analysis(_Model):
    """How often and how the canary is judged."""

    interval_s: float = Field(
        5.0, alias="intervalSeconds", ge=1, le=600,
        description=(
            "Seconds between verdicts. Default 5: the sequential judge may look as often as it "
            "likes at no cost in false alarms, so it looks often and stops a bad canary within "
            "seconds (Flagger: 60 s, and never below 10 s)."
        ),
    )
    judge: Judge = Field(
        Judge.SEQUENTIAL,
        description=(
            "'thresholds' (the canary against the SLO), 'compare' (canary against stable, "
            "Kayenta-style, once per step) or 'sequential' (canary against stable, always-valid, "
            "every interval). Default 'sequential'."
        ),
    )
    alpha: float = Field(
        0.01, gt=0, lt=0.5,
        description=(
            "Error probability allowed, split evenly across the statistical metrics (errors and "
            "latency). Sequential: the chance of ever rolling back a canary as good as stable, "
            "over the whole rollout, and of passing one outside the margins early. Thresholds "
            "and compare: per look. Default 0.01: at most one false rollback in a hundred."
        ),
    )
    min_sample_size: int = Field(
        50, ge=1, le=1_000_000,
        description=(
            "Requests an arm needs in a window before the thresholds and compare judges rule "
            "on it; fewer is inconclusive, never a failure. Default 50 (Kayenta asks for 50 "
            "points per metric)."
        ),
    )
    failure_limit: int = Field(
        4, ge=1, le=1000,
        description=(
            "Analyses in a row the metric source may fail to answer before the rollout pauses "
            "with the reason; it is never rolled back for missing data. Default 4, Argo's "
            "consecutiveErrorLimit."
        ),
    )


class SuccessRate(_Model):
    """The errors SLO: a request answered 5xx is an error, the router's own 502/503/504 included
    (a canary that crashes or times out shows); a client that gave up first (499) is not."""

    minimum: float = Field(
        99.0, alias="min", gt=0, lt=100,
        description=(
            "Percent of the canary's requests that must succeed: the thresholds judge tests "
            "it per step, the sequential judge fails a canary shown below it. Default 99, "
            "Flagger's documented example."
        ),
    )
    margin_points: float = Field(
        1.0, gt=0, le=100,
        description=(
            "Percentage points the canary may add to the whole service's error rate at the "
            "weight it is about to get (sequential judge): it moves to weight w once its error "
            "rate is shown within marginPoints * 100 / w points of stable's, so within 10 points "
            "to go to 10 % and within marginPoints to take all the traffic. Default 1. Any "
            "proven increase over stable fails; the margin decides when the evidence suffices."
        ),
    )


class Latency(_Model):
    """A latency SLO: on each request's time from arrival to last byte (latency), or to the
    first byte of a streamed response (ttft)."""

    quantile: float = Field(
        0.99, gt=0, lt=1,
        description="Quantile held to maxMs, in (0, 1). Default 0.99.",
    )
    max_ms: float = Field(
        500.0, gt=0, le=3_600_000,
        description=(
            "Milliseconds the quantile may reach: the thresholds judge tests it per step, the "
            "sequential judge fails a canary shown above it. Default 500, Flagger's "
            "documented example for request-duration."
        ),
    )
    tolerance_percent: float = Field(
        10.0, gt=0, le=1000,
        description=(
            "Percent slower than stable the canary may be (compare and sequential judges): "
            "slower by more fails, shown within passes. Default 10. With histograms, whose "
            "buckets are ~5 % wide, keep it above 5."
        ),
    )


class CustomMetric(_Model):
    """A user's signal (PromQL), judged by a bound on the one value its query returns."""

    name: str = Field(
        pattern=routing.NAME_PATTERN, max_length=63,
        description="Name in verdicts and events, a DNS label such as gpu-memory.",
    )
    query: str = Field(
        min_length=1, max_length=4096,
        description="PromQL returning one value for the canary over the analysis window.",
    )
    minimum: float | None = Field(
        None, alias="min", description="The value fails below this; at least one bound is set."
    )
    maximum: float | None = Field(
        None, alias="max", description="The value fails above this; at least one bound is set."
    )

    @pydantic.model_validator(mode="after")
    def _bounded(self) -> Self:
        if self.minimum is None and self.maximum is None:
            raise ValueError("give min, max or both")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"min ({self.minimum:g}) must not exceed max ({self.maximum:g})")
        return self


class Slo(_Model):
    """What a good canary looks like."""

    success_rate: SuccessRate = SuccessRate()
    latency: Latency = Latency()
    ttft: Latency | None = Field(
        None,
        description=(
            "Time to first byte of streamed responses (an LLM's first token), judged like "
            "latency: quantile against maxMs, and against stable within tolerancePercent. "
            "Default none: not judged."
        ),
    )
    custom: list[CustomMetric] = Field(
        [], max_length=20,
        description="Custom PromQL metrics with bounds; names are unique.",
    )

    @pydantic.field_validator("custom")
    @classmethod
    def _unique_names(cls, custom: list[CustomMetric]) -> list[CustomMetric]:
        routing.require_unique([metric.name for metric in custom], "custom metric names")
        return custom


class Promotion(_Model):
    old_stable: AfterPromotion = Field(
        AfterPromotion.SCALE_TO_ZERO,
        description=(
            "'scaleToZero' frees the old stable's replicas once the canary holds all the "
            "traffic on ready replicas; 'keep' leaves them to its scaling policy for a fast way "
            "back. Default 'scaleToZero'."
        ),
    )


class Rollback(_Model):
    canary: AfterRollback = Field(
        AfterRollback.SCALE_TO_ZERO,
        description=(
            "'scaleToZero' frees the canary's replicas once its traffic is back on stable; "
            "'keep' leaves them up for debugging. Default 'scaleToZero', as Flagger and Argo."
        ),
    )


class RolloutPolicy(_Model):
    """One canary rollout; see the module docstring for the YAML form."""

    service: str = Field(
        pattern=routing.NAME_PATTERN, max_length=63,
        description="The service (route table entry) whose traffic is split.",
    )
    stable_revision: str = Field(
        pattern=routing.NAME_PATTERN, max_length=63,
        description="The revision serving the traffic now.",
    )
    canary_revision: str = Field(
        pattern=routing.NAME_PATTERN, max_length=63,
        description="The revision taking over, step by step.",
    )
    steps: list[Step] = Field(
        DEFAULT_STEPS, min_length=1, max_length=20,
        description=(
            "Canary weights in increasing order, ending at 100. Default 5, 10, 25, 50, 100 with "
            "each step's defaults."
        ),
    )
    analysis: Analysis = Analysis()
    slo: Slo = Slo()
    max_duration_s: float = Field(
        3600.0, alias="maxDurationSeconds", gt=0, le=7 * 86_400,
        description=(
            "Seconds the rollout may progress before it fails and the traffic returns to "
            "stable; time paused does not count, since a paused rollout waits for a person. "
            "Default 3600. It must leave room for every step's minimum duration."
        ),
    )
    stickiness: routing.Sticky | None = Field(
        None,
        description=(
            "Where the key that keeps a user on one revision comes from (a header or cookie); "
            "as weights grow, only users whose share changes hands move to the canary. Default "
            "none: each request is assigned afresh."
        ),
    )
    promotion: Promotion = Promotion()
    rollback: Rollback = Rollback()

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> Self:
        errors = _cross_field_errors(self)
        if errors:
            raise pydantic.ValidationError.from_exception_data(type(self).__name__, errors)
        return self


def _cross_field_errors(policy: RolloutPolicy) -> list[InitErrorDetails]:
    def error(loc: tuple[str | int, ...], value: Any, message: str) -> InitErrorDetails:
        return InitErrorDetails(
            type=PydanticCustomError("inconsistent_rollout", message), loc=loc, input=value
        )

    errors = []
    if policy.canary_revision == policy.stable_revision:
        errors.append(error(("canaryRevision",), policy.canary_revision,
                            "must differ from stableRevision"))
    for index, (before, step) in enumerate(itertools.pairwise(policy.steps), start=1):
        if step.weight <= before.weight:
            errors.append(error(("steps", index, "weight"), step.weight,
                                f"must exceed the previous step's weight ({before.weight})"))
    last = policy.steps[-1]
    if last.weight != FULL_WEIGHT:
        errors.append(error(("steps", len(policy.steps) - 1, "weight"), last.weight,
                            f"the last step must have weight {FULL_WEIGHT}"))
    least = sum(step.min_duration_s for step in policy.steps)
    if least >= policy.max_duration_s:
        errors.append(error(("maxDurationSeconds",), policy.max_duration_s,
                            f"must exceed the steps' minimum durations together ({least:g} s)"))
    return errors


def load_rollout(data: Mapping[str, Any]) -> RolloutPolicy:
    """Parse a rollout from its YAML/JSON form (camelCase or snake_case keys).

    Raises pydantic.ValidationError; show it with ``validation.describe``.
    """
    return RolloutPolicy.model_validate(dict(data))


def parse_document(data: Any) -> RolloutPolicy:
    """A RolloutPolicy from a JSON/YAML document: the policy itself or a Rollout resource (its
    ``spec``). Raises validation.Invalid naming each field and its problem."""
    if isinstance(data, Mapping) and data.get("kind") == "Rollout":
        data = data.get("spec")
    if not isinstance(data, Mapping):
        raise validation.Invalid.field(validation.WHOLE, "expected a mapping: a RolloutPolicy "
                                       "or a Rollout resource with a spec")
    try:
        return load_rollout(data)
    except pydantic.ValidationError as error:
        raise validation.Invalid.of("rollout", error) from None
