"""The sluice custom resources: API identity, spec and status models, and `kubectl get` columns.

A custom resource's spec is a policy model plus what the policy applies to; its status is what
the controller reports. Both are pydantic models, so the controller parses specs and writes
statuses with the very checks the apiserver applies: :mod:`policies.crds` turns these models
into the CRDs' schemas, and ``sluice manifests crds`` writes them to ``manifests/crds/``.

Cross-field checks that pydantic runs in Python (a model validator) are declared here a second
time as CEL rules (``x-kubernetes-validations``), because the apiserver cannot run Python. The
messages are pydantic's, so a user sees the same words from ``kubectl apply`` and from
``sluice simulate``.

What a ScalingPolicy applies to is named twice over, on purpose::

    spec:
      service: fraud-model        # the route table's names (policies/routing.py): where the
      revision: v2                # routers report this revision's load
      scaleTargetRef:             # HPA's reference: what the controller scales through /scale
        apiVersion: apps/v1
        kind: Deployment
        name: fraud-model-v2

The controller needs both and cannot derive one from the other: its RBAC grants the Deployment's
``/scale`` subresource only, which carries no labels, and a naming convention would be a rule
nothing enforces. ``scaleTargetRef`` has the shape HPA and KEDA users already write.

A Rollout needs no such reference: its ``service``, ``stableRevision`` and ``canaryRevision``
already name what it moves, the weights go to the route table, and each revision's replicas
follow that revision's ScalingPolicy.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Annotated, Any, Literal, Self

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from policies import judges, progression, rollout, routing, scaling

GROUP = "sluice.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "sluice"
"""``kubectl get sluice`` lists every sluice resource."""

DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""Kubernetes object names (RFC 1123 subdomains), e.g. a Deployment's."""
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
"""metav1.Condition's type: CamelCase, optionally prefixed by a domain."""
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
"""metav1.Condition's reason: one CamelCase word a program can switch on."""
MAX_CONDITIONS = 16
MAX_VERDICTS = 32
"""Room for the errors, latency and custom metrics' verdicts (at most 20 custom metrics)."""


def cel_rule(rule: str, *, field: str, message: str) -> dict[str, Any]:
    """One ``x-kubernetes-validations`` entry whose error names `field`, as pydantic's does.

    A fixed message: a ``messageExpression`` showing the values would append ``string(int)``,
    whose length the apiserver's cost estimate cannot bound, and it refuses the CRD.
    """
    return {"rule": rule, "fieldPath": f".{field}", "message": message}


class _ResourceModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


COMMAND_ANNOTATION = "sluice.dev/command"
"""On a Rollout: promote, abort, pause, resume or restore. The controller applies it and takes
the annotation off (``kubectl annotate rollout.sluice.dev/NAME sluice.dev/command=promote``, or
``sluice rollout -n NS promote SERVICE``)."""

KSERVE_API_VERSION = "serving.kserve.io/v1beta1"
AUTOSCALER_CLASS_ANNOTATION = "serving.kserve.io/autoscalerClass"
EXTERNAL_AUTOSCALER = "external"
"""The InferenceService annotation and value that make KServe leave a predictor's replicas to
an external autoscaler (with "hpa" its HPA, with "none" its reconciler, would fight sluice)."""


class ScaleTargetRef(_ResourceModel):
    """The workload whose replicas the controller sets, through its Deployment's /scale."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel_rule(
                    "(self.kind == 'Deployment') == (self.apiVersion == 'apps/v1')",
                    field="apiVersion",
                    message="apps/v1 with kind Deployment, serving.kserve.io/v1beta1 with kind "
                            "InferenceService",
                ),
            ]
        }
    )

    api_version: Literal["apps/v1", "serving.kserve.io/v1beta1"] = Field(
        "apps/v1", description="API version of the workload: apps/v1 or serving.kserve.io/v1beta1."
    )
    kind: Literal["Deployment", "InferenceService"] = Field(
        "Deployment",
        description=(
            "Kind of the workload: a Deployment, or a KServe InferenceService (Standard mode, "
            "annotated serving.kserve.io/autoscalerClass: external), whose predictor "
            "Deployment <name>-predictor is scaled. Either way replicas are set through the "
            "Deployment's /scale only."
        ),
    )
    name: str = Field(
        pattern=DNS_SUBDOMAIN_PATTERN, min_length=1, max_length=253,
        description="Name of the workload, in the ScalingPolicy's namespace.",
    )

    @pydantic.model_validator(mode="after")
    def _api_version_fits_kind(self) -> Self:
        if (self.kind == "Deployment") != (self.api_version == "apps/v1"):
            raise ValueError("apiVersion: apps/v1 with kind Deployment, "
                             f"{KSERVE_API_VERSION} with kind InferenceService")
        return self

    @property
    def deployment(self) -> str:
        """The Deployment whose /scale is set: KServe names a predictor <isvc>-predictor."""
        return self.name if self.kind == "Deployment" else f"{self.name}-predictor"


def _within_max_replicas(field: str) -> dict[str, Any]:
    return cel_rule(
        f"self.maxReplicas == 0 || self.{field} <= self.maxReplicas",
        field=field,
        message="must not exceed maxReplicas",
    )


class ScalingPolicySpec(scaling.ScalingPolicy):
    """How one revision's replicas follow its load, and which revision and Deployment that is.

    Every field but service, revision and scaleTargetRef is the ScalingPolicy of
    policies/scaling.py, which `sluice up` and `sluice simulate` read as well.
    """

    model_config = ConfigDict(
        json_schema_extra={
            # The checks of scaling._cross_field_errors, with its messages. Defaults are applied
            # before validation, so metric and maxReplicas are always there.
            "x-kubernetes-validations": [
                cel_rule(
                    "!self.metric.startsWith('custom:') || has(self.target)",
                    field="target",
                    message="required for a custom metric",
                ),
                cel_rule(
                    "!self.metric.startsWith('custom:') || has(self.signal)",
                    field="signal",
                    message="required for a custom metric: its query",
                ),
                cel_rule(
                    "self.metric.startsWith('custom:') || !has(self.signal)",
                    field="signal",
                    message="only a custom metric (custom:<name>) has a signal",
                ),
                _within_max_replicas("minReplicas"),
                _within_max_replicas("initialScale"),
                _within_max_replicas("activationScale"),
            ]
        }
    )

    service: str = Field(
        pattern=routing.NAME_PATTERN, max_length=63,
        description="Service in the route table that the revision belongs to.",
    )
    revision: str = Field(
        pattern=routing.NAME_PATTERN, max_length=63,
        description="Revision in the route table whose load the replica count follows.",
    )
    scale_target_ref: ScaleTargetRef = Field(
        description=(
            "The Deployment, or the InferenceService, that runs the revision; its replicas "
            "are set through the Deployment's /scale."
        ),
    )


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class StatusCondition(_ResourceModel):
    """One aspect of the resource's state, in metav1.Condition's shape so tools can read it."""

    type: str = Field(
        pattern=CONDITION_TYPE_PATTERN, max_length=316,
        description="What aspect this is, e.g. Ready, CapacityLimited or Panicking.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        pattern=CONDITION_REASON_PATTERN, min_length=1, max_length=1024,
        description="Why, as one CamelCase word a program can switch on.",
    )
    message: str = Field("", max_length=32768, description="Why, for a human.")
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"},
        description=(
            "When status last changed (RFC 3339). A string: policies/ reads no clocks, the "
            "controller formats the time."
        ),
    )
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation of the spec this condition was set from.",
    )


Conditions = Annotated[
    list[StatusCondition],
    Field(
        max_length=MAX_CONDITIONS,
        # A map keyed by type: one condition per type, and server-side apply merges by type.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


class ScalingPolicyStatus(_ResourceModel):
    """What the controller last decided and saw; written through the status subresource."""

    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation of the spec the controller last acted on.",
    )
    desired: int | None = Field(
        None, ge=0, description="Replicas the controller last asked the Deployment for.",
    )
    ready: int | None = Field(None, ge=0, description="Replicas ready to serve at the last tick.")
    weight: int | None = Field(
        None, ge=0, le=100,
        description=(
            "The share of the service's traffic, in percent, the routers give this revision. "
            "A restarted controller starts from it where no Rollout records the weights."
        ),
    )
    reason: str | None = Field(
        None, max_length=1024,
        description="Why the count is what it is, in a sentence: the demand and what it needs.",
    )
    conditions: Conditions = Field(
        default_factory=list, description="The current conditions, at most one per type."
    )
    decider: dict[str, Any] | None = Field(
        None,
        description=(
            "The decider's memory (load history, learned cold start, panic), so that a "
            "restarted or failed-over controller resumes instead of starting blind. Written "
            "every few seconds; not meant for people."
        ),
    )


class RolloutSpec(rollout.RolloutPolicy):
    """A canary rollout: a service's traffic moves to the canary step by step, or back.

    Every field is the RolloutPolicy of policies/rollout.py; the canary is judged against the
    SLO at every step (policies/judges.py) and the state machine is policies/progression.py.
    """

    model_config = ConfigDict(
        json_schema_extra={
            # The checks of rollout._cross_field_errors and of the nested models' validators
            # (Sticky, CustomMetric, Slo), with their messages. Steps, slo and its list are
            # defaulted before validation; a null stickiness is absent to has().
            "x-kubernetes-validations": [
                cel_rule(
                    "self.canaryRevision != self.stableRevision",
                    field="canaryRevision",
                    message="must differ from stableRevision",
                ),
                cel_rule(
                    "self.steps.map(s, s.weight).isSorted()"
                    " && self.steps.all(a, self.steps.exists_one(b, b.weight == a.weight))",
                    field="steps",
                    message="each step's weight must exceed the previous step's weight",
                ),
                cel_rule(
                    f"self.steps[size(self.steps) - 1].weight == {rollout.FULL_WEIGHT}",
                    field="steps",
                    message=f"the last step must have weight {rollout.FULL_WEIGHT}",
                ),
                cel_rule(
                    "self.steps.map(s, s.minDurationSeconds).sum() < self.maxDurationSeconds",
                    field="maxDurationSeconds",
                    message="must exceed the steps' minimum durations together",
                ),
                cel_rule(
                    "!has(self.stickiness)"
                    " || has(self.stickiness.header) || has(self.stickiness.cookie)",
                    field="stickiness",
                    message="give a header or a cookie",
                ),
                cel_rule(
                    "self.slo.custom.all(m, has(m.min) || has(m.max))",
                    field="slo.custom",
                    message="give min, max or both",
                ),
                cel_rule(
                    "self.slo.custom.all(m, !has(m.min) || !has(m.max) || m.min <= m.max)",
                    field="slo.custom",
                    message="min must not exceed max",
                ),
                cel_rule(
                    "self.slo.custom.all(a, self.slo.custom.exists_one(b, b.name == a.name))",
                    field="slo.custom",
                    message="custom metric names must be unique",
                ),
            ]
        }
    )


class VerdictSummary(_ResourceModel):
    """The judge's latest ruling on one metric: a judges.Finding, shortened for the status."""

    metric: str = Field(
        pattern=routing.NAME_PATTERN, max_length=63,
        description="'errors', 'latency' or the name of a custom metric.",
    )
    outcome: judges.Outcome = Field(
        description="pass, fail or inconclusive (too little evidence, never a failure).",
    )
    reason: str = Field(
        "", max_length=4096,
        description="A sentence naming the values, the bounds and the statistic.",
    )
    time: str = Field(
        json_schema_extra={"format": "date-time"}, description="When it was given (RFC 3339).",
    )


class RolloutStatus(_ResourceModel):
    """Where the rollout is and why; written through the status subresource."""

    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation of the spec the controller last acted on.",
    )
    phase: progression.Phase | None = Field(
        None, description="Where the rollout stands; the state machine of policies/progression.py.",
    )
    step: int | None = Field(
        None, ge=0, description="Index of the current step in spec.steps, from 0.",
    )
    weight: int | None = Field(
        None, ge=0, le=rollout.FULL_WEIGHT,
        description="Percent of the service's traffic the canary gets now.",
    )
    verdict: str | None = Field(
        None, max_length=32,
        description="The last analysis' outcome: pass, fail, inconclusive, or missing (no data).",
    )
    message: str | None = Field(
        None, max_length=4096, description="Why the rollout is where it is, in a sentence.",
    )
    conditions: Conditions = Field(
        default_factory=list, description="The current conditions, at most one per type."
    )
    last_verdicts: Annotated[
        list[VerdictSummary],
        Field(
            max_length=MAX_VERDICTS,
            json_schema_extra={
                "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["metric"],
            },
        ),
    ] = Field(default_factory=list, description="The latest verdict on each metric.")
    memory: dict[str, Any] | None = Field(
        None,
        description=(
            "The rollout's memory (state machine, the sequential judge's evidence, the counter "
            "windows), so that a restarted or failed-over controller resumes it at the same "
            "step and weights without judging from scratch. Not meant for people."
        ),
    )


ColumnType = Literal["integer", "number", "string", "boolean", "date"]


@dataclasses.dataclass(frozen=True)
class PrinterColumn:
    """A `kubectl get` column: a JSONPath into the resource, shown with `-o wide` if priority."""

    name: str
    type: ColumnType
    json_path: str
    description: str
    priority: int = 0


AGE_COLUMN = PrinterColumn(
    "Age", "date", ".metadata.creationTimestamp", "Time since the resource was created."
)
"""kubectl shows Age by default only for resources without printer columns of their own."""


@dataclasses.dataclass(frozen=True)
class Resource:
    """One custom resource kind: its names, its models and its `kubectl get` columns."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[PrinterColumn, ...]

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


SCALING_POLICY = Resource(
    kind="ScalingPolicy",
    plural="scalingpolicies",
    short_names=("sp",),
    description="Scales one revision's Deployment on its load, as Knative's KPA does.",
    spec=ScalingPolicySpec,
    status=ScalingPolicyStatus,
    columns=(
        PrinterColumn("Service", "string", ".spec.service", "Service in the route table."),
        PrinterColumn("Revision", "string", ".spec.revision", "Revision in the route table."),
        PrinterColumn("Metric", "string", ".spec.metric", "Signal the replica count follows."),
        PrinterColumn("Target", "number", ".spec.target", "Metric value per replica."),
        PrinterColumn("Min", "integer", ".spec.minReplicas", "Replicas kept without load."),
        PrinterColumn("Max", "integer", ".spec.maxReplicas", "Replica ceiling; 0: none."),
        PrinterColumn("Desired", "integer", ".status.desired", "Replicas asked for."),
        PrinterColumn("Ready", "integer", ".status.ready", "Replicas ready to serve."),
        PrinterColumn("Weight", "integer", ".status.weight", "Percent of the traffic."),
        AGE_COLUMN,
        PrinterColumn(
            "Deployment", "string", ".spec.scaleTargetRef.name", "The scaled Deployment.",
            priority=1,
        ),
    ),
)

ROLLOUT = Resource(
    kind="Rollout",
    plural="rollouts",
    short_names=("ro",),
    description=(
        "Moves a service's traffic from its stable revision to a canary step by step, judged "
        "against an SLO, or back."
    ),
    spec=RolloutSpec,
    status=RolloutStatus,
    columns=(
        PrinterColumn("Service", "string", ".spec.service", "Service in the route table."),
        PrinterColumn("Stable", "string", ".spec.stableRevision", "Revision serving now."),
        PrinterColumn("Canary", "string", ".spec.canaryRevision", "Revision taking over."),
        PrinterColumn("Weight", "integer", ".status.weight", "Canary's percent of traffic."),
        PrinterColumn("Step", "integer", ".status.step", "Current step, from 0."),
        PrinterColumn("Phase", "string", ".status.phase", "Where the rollout stands."),
        PrinterColumn("Verdict", "string", ".status.verdict", "The last analysis' outcome."),
        AGE_COLUMN,
        PrinterColumn(
            "Judge", "string", ".spec.analysis.judge", "What decides the verdicts.", priority=1
        ),
    ),
)

RESOURCES = (SCALING_POLICY, ROLLOUT)
"""Every sluice custom resource, in the order their CRDs are generated."""
