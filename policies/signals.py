"""Custom scaling signals: a PromQL query per revision, and what its value asks of replicas.

A ScalingPolicy on ``metric: custom:<name>`` defines its signal beside it (the policy's
``target`` is the signal's target)::

    metric: custom:kv-cache
    target: 0.6
    signal:
      query: avg(vllm:gpu_cache_usage_perc{revision="$revision"})
      type: AverageValue           # or Value
      activationThreshold: 0.05
      timeoutSeconds: 2

**Identity.** A query names its revision with placeholders, ``$service``, ``$revision`` and
``$namespace`` (empty outside Kubernetes), inside its label matchers' string literals; the
controller puts the revision's own names there. The query is parsed *with* its placeholders
when the policy is applied: PromQL has no ``$`` outside string literals and comments, so a
placeholder anywhere else is a syntax error, and a query that parses has them only inside
strings. Those names are DNS labels (``[a-z0-9-]``; a namespace may have dots), which contain
no quote and no backslash and so cannot end a literal or start an escape: the substitution
cannot change the query's structure. Nothing else is ever pasted into a query, and a query is
never pasted into another (a range vector or a string at the top is refused instead of wrapped).
Use ``${1}`` for label_replace's group references; any other ``$word`` is refused.

**Validation** is a parse with ``promql-parser`` (the Rust parser of GreptimeDB, Prometheus
2.45's grammar, no server needed): it runs in the pydantic model, so ``sluice up`` refuses the
stack file and the Kubernetes controller marks the policy InvalidSpec, with the field and the
parser's reason, once, when the policy is applied; a policy that parses is never refused by a
tick. Why not ask the configured Prometheus (``/api/v1/format_query``)? The check would then
depend on a server being up at the moment a policy is applied (and on its version), and it could
not run in ``sluice simulate`` or in unit tests; a server's grammar can differ from the parser's
only at the edges (experimental functions), where the query's first tick says so in status.

**Semantics**, HPA's two target types, for a query that returns one number:

- ``AverageValue``: the value is one replica's share, e.g. ``avg()`` over the replicas' series
  (HPA's Pods metrics, vLLM's ``gpu_cache_usage_perc``); the revision needs
  ``ceil(ready * value / target)`` replicas. With no replica ready there is no share: 0. A new
  replica's series reaches the average a scrape after it is ready (and a gone one's leaves it);
  for ``lagSeconds`` after the ready count changed the decision is held, as for a missing
  value (HPA counts only pods with metrics for the same reason): a count that includes
  replicas not in the average would overstate the load, order replicas, and overstate it
  again.
- ``Value``: the value is the revision's total, e.g. ``sum()`` of requests waiting, divided
  among replicas at ``target`` each: ``ceil(value / target)`` (HPA's External metric with an
  AverageValue target, which divides the value by the replica count before comparing).

Both become one revision total for the decider (``demand``), which sizes it at ``target`` per
replica; ``targetUtilization`` does not apply, as in HPA and KEDA the target is the aim itself.
A value at or below ``activationThreshold`` counts as 0 (KEDA's activation): an idle model's
background value neither holds replicas nor wakes them. At zero replicas a pod metric does not
exist; activation then comes from the requests the routers buffer.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import promql_parser
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

PLACEHOLDERS = ("service", "revision", "namespace")
"""The identity a query may name: ``$service``, ``$revision``, ``$namespace``."""
_PLACEHOLDER = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
IDENTITY_PATTERN = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$")
"""What a revision's names are (DNS labels and subdomains), checked again before each render:
no quote, no backslash, so a name cannot leave the string literal it is put in."""
_SAMPLE_IDENTITY = {"service": "service", "revision": "revision", "namespace": "namespace"}


class SignalType(enum.StrEnum):
    """What the query's value is: one replica's share, or the revision's total."""

    AVERAGE_VALUE = "AverageValue"
    VALUE = "Value"


@dataclass(frozen=True)
class Identity:
    """The names a query's placeholders stand for."""

    service: str
    revision: str
    namespace: str = ""

    def values(self) -> Mapping[str, str]:
        return {"service": self.service, "revision": self.revision,
                "namespace": self.namespace}


class Signal(BaseModel):
    """A PromQL query whose value the replica count follows; see the module docstring."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    query: str = Field(
        min_length=1, max_length=4096,
        description=(
            "PromQL returning one number (aggregate it, e.g. avg(...) or sum(...)). $service, "
            "$revision and $namespace inside its label matchers' strings are replaced by the "
            "revision's names, e.g. avg(vllm:gpu_cache_usage_perc{revision=\"$revision\"}). "
            "Parsed when the policy is applied; an invalid query is refused then."
        ),
    )
    type: SignalType = Field(
        SignalType.AVERAGE_VALUE,
        description=(
            "'AverageValue': the value is one replica's share (avg over replicas); replicas = "
            "ceil(ready * value / target). 'Value': the value is the revision's total; "
            "replicas = ceil(value / target). Default 'AverageValue', as HPA's Pods metrics."
        ),
    )
    activation_threshold: float = Field(
        0.0, ge=0, le=1e12,
        description=(
            "A value at or below this counts as 0: an idle model's background value neither "
            "holds replicas nor wakes them (KEDA's activationThreshold). Default 0."
        ),
    )
    lag_s: float = Field(
        2.0, alias="lagSeconds", ge=0, le=600,
        description=(
            "Seconds a replica's series takes to reach the query's result, or to leave it (a "
            "scrape interval, and a recording rule's if the query reads one). For this long "
            "after the ready count changed an AverageValue may be over other replicas than "
            "those ready, so the count is held: a replica not yet in the average must not "
            "multiply it (that would order more replicas, and again). Default 2, for a 1 s "
            "scrape; set it to your scrape interval or above."
        ),
    )
    timeout_s: float = Field(
        2.0, alias="timeoutSeconds", gt=0, le=60,
        description=(
            "Seconds the query may take, at Prometheus and on the way; a slower answer is no "
            "answer (SignalMissing: replicas are held). Default 2: a tick is 1 s."
        ),
    )

    @field_validator("query")
    @classmethod
    def _parses(cls, query: str) -> str:
        problem = query_problem(query)
        if problem is not None:
            raise PydanticCustomError("promql", problem)
        return query

    def render(self, identity: Identity) -> str:
        return render(self.query, identity)

    def demand(self, value: float, ready: int) -> float:
        """The revision total the decider sizes at ``target`` per replica."""
        if value <= self.activation_threshold:
            return 0.0
        return value * ready if self.type is SignalType.AVERAGE_VALUE else value


def query_problem(query: str) -> str | None:
    """Why ``query`` is not a usable signal query, or None: it must parse as PromQL with its
    placeholders where they are (so they are inside strings), name only known placeholders and
    return an instant vector or a scalar."""
    unknown = sorted({name for name in _PLACEHOLDER.findall(query) if name not in PLACEHOLDERS})
    if unknown:
        return (f"unknown placeholder {', '.join('$' + name for name in unknown)}: use "
                f"{', '.join('$' + name for name in PLACEHOLDERS)} (and ${{1}} for "
                "label_replace groups)")
    try:
        parsed = promql_parser.parse(query)
    except ValueError as error:
        return f"not valid PromQL: {error}"
    if isinstance(parsed, promql_parser.MatrixSelector | promql_parser.SubqueryExpr):
        return "returns a range vector; a signal needs one number (wrap it, e.g. in rate())"
    if isinstance(parsed, promql_parser.StringLiteral):
        return "returns a string; a signal needs one number"
    try:
        promql_parser.parse(render(query, Identity(**_SAMPLE_IDENTITY)))
    except ValueError as error:  # a placeholder in a place only a parser of its own would see
        return f"not valid PromQL once $service/$revision/$namespace are replaced: {error}"
    return None


def render(query: str, identity: Identity) -> str:
    """``query`` with the placeholders replaced by ``identity``'s names; raises ValueError for
    a name that is not a DNS name (it could leave its string literal)."""
    values = identity.values()
    for name, value in values.items():
        if not IDENTITY_PATTERN.match(value):
            raise ValueError(f"{name} {value!r} is not a DNS name; it is not put in a query")
    return _PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), query)


def usable(value: float) -> str | None:
    """Why a value a query returned is no signal (it is then missing, never 0), or None."""
    if math.isnan(value):
        return "NaN (no traffic in the query's window?)"
    if math.isinf(value):
        return f"{value} (a division by zero in the query?)"
    if value < 0:
        return f"{value:g} is negative; a scaling signal is a load, at least 0"
    return None
