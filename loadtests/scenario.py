"""A load scenario: what load to send, what to wait for first, and what the system must show.

A scenario is a YAML file a platform team copies from loadtests/scenarios/ and edits; `sluice
loadtest` runs it headless and judges it, and ``SLUICE_SCENARIO=<file> locust -f
loadtests/locustfile.py`` runs the same load from Locust's web UI for exploring::

    name: step
    service: model              # the model name in request paths, the route table's service
    revision: v1                # whose replicas the replica expectations judge, by default
    users: {rpsPerUser: 2, mix: {v1: 1, v2: 1, stream: 0}}
    phases:                     # one after another; users reached at once or by a ramp
      - {name: idle, seconds: 10, users: 0}
      - {name: step, seconds: 60, users: 25}
    expectations:               # each judged after the run: observed value against its bound
      - readyReplicas: {phase: step, atLeast: policy, withinSeconds: 30}
      - latency: {phase: step, afterSeconds: 30, quantile: 0.99, maxMs: 250}
      - errors: {maxPercent: 0}

Every field is described below (unit, default, why). A file that is not a valid scenario is a
`ScenarioError` naming each field and its problem, before any load is sent.

Durations scale: `load(..., duration_scale=s)` multiplies every phase (and its ramp), every
``afterSeconds`` and the rollout's start by `s`, so tests run a short version of the very file
users run full length. What the system is held to is not scaled: ``withinSeconds`` bounds, the
rollout policy, the wait before the load. A bound that no longer fits in its scaled phase is an
error naming the scale.
"""

from __future__ import annotations

import enum
import math
from pathlib import Path
from typing import Any, Self

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from loadtests import shapes
from policies import rollout as rollout_
from policies import routing, scaling

BUNDLED_DIR = Path(__file__).resolve().parent / "scenarios"
MAX_USERS = 5000
"""Users one phase may run: a bound on what one Locust process is asked for (one core drives
roughly a few thousand requests per second with FastHttpUser)."""
MAX_RUN_SECONDS = 86_400.0
"""A run is at most a day, at any duration scale."""
MAX_FILE_BYTES = 1 << 20


class ScenarioError(ValueError):
    """The file is not a valid scenario; `problems` are (field, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("\n".join(f"{field}: {reason}" for field, reason in problems))
        self.problems = problems


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              frozen=True)


class Mix(_Model):
    """Which requests a user sends, as task weights (0 leaves one out)."""

    v1: int = Field(1, ge=0, le=100, description=(
        "Weight of KServe V1 ``POST /v1/models/<service>:predict``. Default 1."))
    v2: int = Field(1, ge=0, le=100, description=(
        "Weight of Open Inference Protocol V2 ``POST /v2/models/<service>/infer``. Default 1."))
    stream: int = Field(0, ge=0, le=100, description=(
        "Weight of streamed ``POST /v2/models/<service>/generate_stream`` (SSE, one event per "
        "token; its latency is to the last token). Default 0: not every model generates."))

    @pydantic.model_validator(mode="after")
    def _some(self) -> Self:
        if self.v1 + self.v2 + self.stream == 0:
            raise ValueError("at least one weight must be above 0")
        return self


class Users(_Model):
    """What each simulated user does. The offered rate is users x ``rpsPerUser``."""

    rps_per_user: float = Field(1.0, gt=0, le=1000, description=(
        "Requests per second one user sends at most (Locust's constant_throughput). Closed "
        "loop: a user waits for each answer, so answers slower than 1/rpsPerUser lower the "
        "rate. Default 1."))
    mix: Mix = Mix()
    sticky: bool = Field(False, description=(
        "Send ``X-User-Id: user-<n>``, one key per user, for sticky routes and rollouts. "
        "Default false."))
    stream_tokens: int = Field(16, ge=1, le=100_000, description=(
        "Tokens asked of each streamed request (``max_tokens``). Default 16."))
    timeout_seconds: float = Field(60.0, gt=0, le=3600, description=(
        "Seconds one request may take before it counts as failed; also how long stopping "
        "users wait for their request in flight, so every request sent is answered or failed. "
        "Default 60."))


class Phase(_Model):
    name: str = Field(pattern=routing.NAME_PATTERN, max_length=63, description=(
        "What expectations call this phase, e.g. idle, step, soak."))
    seconds: float = Field(gt=0, le=MAX_RUN_SECONDS, description="How long it lasts.")
    users: int = Field(ge=0, le=MAX_USERS, description="Users during the phase.")
    ramp_seconds: float = Field(0.0, ge=0, le=MAX_RUN_SECONDS, description=(
        "Seconds at the start of the phase to move linearly from the previous phase's users "
        "to these; 0 (default) changes at once, a step."))

    @pydantic.model_validator(mode="after")
    def _ramp_fits(self) -> Self:
        if self.ramp_seconds > self.seconds:
            raise ValueError(f"rampSeconds ({self.ramp_seconds:g}) must not exceed seconds "
                             f"({self.seconds:g})")
        return self


class WaitBefore(_Model):
    """A state the system must be in before the load starts, waited for up to a timeout."""

    revision: str | None = Field(None, pattern=routing.NAME_PATTERN, description=(
        "Whose replicas; default the scenario's revision."))
    ready_replicas: int = Field(ge=0, le=10_000, description=(
        "Ready replicas to wait for, e.g. 0 for a scale-from-zero scenario."))
    timeout_seconds: float = Field(300.0, gt=0, le=3600, description=(
        "Seconds to wait before giving up without sending load. Default 300; scaling to zero "
        "takes the stable window plus scaleToZeroGraceSeconds."))


class Rollout(_Model):
    """A canary rollout started through the system under test while the load runs."""

    start_at_seconds: float = Field(ge=0, le=MAX_RUN_SECONDS, description=(
        "Seconds into the load when the rollout is started (scaled)."))
    end_load_after_seconds: float | None = Field(None, ge=0, le=3600, description=(
        "End the load this many seconds after the rollout reaches Promoted, RolledBack or "
        "Failed, instead of running every phase to its end. Default: run every phase."))
    policy: rollout_.RolloutPolicy = Field(description=(
        "The RolloutPolicy (policies/rollout.py, the Rollout resource's spec): its service must "
        "be the scenario's."))


class Window(_Model):
    """Which part of the run an expectation looks at: a phase, or the whole run."""

    phase: str | None = Field(None, pattern=routing.NAME_PATTERN, description=(
        "The phase; default the whole run."))
    after_seconds: float = Field(0.0, ge=0, le=MAX_RUN_SECONDS, description=(
        "Seconds at the start of the phase (or run) left out, e.g. to let replicas settle "
        "(scaled). Default 0."))


class Errors(Window):
    """Failed requests (non-2xx or no answer) in the window, as a percentage, a count or both."""

    max_percent: float | None = Field(None, ge=0, le=100, description="Percent of requests.")
    max_count: int | None = Field(None, ge=0, description="Requests.")

    @pydantic.model_validator(mode="after")
    def _bounded(self) -> Self:
        if self.max_percent is None and self.max_count is None:
            raise ValueError("give maxPercent, maxCount or both")
        return self


class Latency(Window):
    """A latency quantile of the requests answered in the window, as the client measured it."""

    quantile: float = Field(0.99, gt=0, lt=1, description="E.g. 0.99 for p99. Default 0.99.")
    max_ms: float = Field(gt=0, description="Milliseconds.")


class Answered(_Model):
    """Every request sent got exactly one answer, a 2xx, and the router counted each once."""


class FirstResponse(_Model):
    """The first answer came within the revision's cold start plus a margin: the cold start is
    observed (first request to the first ready replica), the margin is what sluice may add."""

    revision: str | None = Field(None, pattern=routing.NAME_PATTERN)
    within_cold_start_plus_seconds: float = Field(ge=0, le=3600, description=(
        "Seconds the first answer may come after the first replica was seen ready."))


class ReadyReplicas(_Model):
    """Ready replicas reach a count within a time of a phase's start."""

    revision: str | None = Field(None, pattern=routing.NAME_PATTERN)
    phase: str = Field(pattern=routing.NAME_PATTERN)
    at_least: int | str = Field(description=(
        "Replicas; or ``policy``: what the revision's ScalingPolicy asks for the phase's offered "
        "rate, without its maxReplicas: ceil(rate / (target x targetUtilization)) for rps, and "
        "for concurrency the same with the rate times the answers' mean latency (Little's "
        "law), at least minReplicas."))
    within_seconds: float = Field(gt=0, le=MAX_RUN_SECONDS, description=(
        "Seconds from the phase's start (not scaled: it is the system's reaction time)."))

    @pydantic.field_validator("at_least", mode="before")
    @classmethod
    def _count_or_policy(cls, value: Any) -> int | str:
        # One message for both forms, not one per member of a union.
        if value == "policy" or (isinstance(value, int) and not isinstance(value, bool)
                                 and 0 <= value <= 10_000):
            return value  # type: ignore[no-any-return]
        raise ValueError(f"{value!r} is neither a count (0-10000) nor 'policy'")


class DesiredReplicas(Window):
    """The replicas asked for never exceed a count in the window: no runaway."""

    revision: str | None = Field(None, pattern=routing.NAME_PATTERN)
    at_most: int = Field(ge=0, le=10_000)


class ScaleEvents(Window):
    """Changes of the replicas asked for in the window, e.g. none while a soak holds steady."""

    revision: str | None = Field(None, pattern=routing.NAME_PATTERN)
    max: int = Field(0, ge=0, description="Changes allowed. Default 0.")


class RolloutVerdict(enum.StrEnum):
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"


class RolloutOutcome(_Model):
    """The rollout ended as expected within a time of its start."""

    phase: RolloutVerdict = Field(description="Promoted or RolledBack.")
    within_seconds: float = Field(gt=0, le=MAX_RUN_SECONDS, description=(
        "Seconds from the rollout's start (not scaled)."))
    max_errors: int | None = Field(None, ge=0, description=(
        "Failed requests allowed from the rollout's start to the end of the run; what a bad "
        "canary may cost before it is rolled back. Default: not judged."))


KINDS = ("errors", "latency", "answered", "first_response", "ready_replicas",
         "desired_replicas", "scale_events", "rollout")


class Expectation(_Model):
    """One of the kinds, as a one-key mapping: ``- latency: {maxMs: 250}``."""

    errors: Errors | None = None
    latency: Latency | None = None
    answered: Answered | None = None
    first_response: FirstResponse | None = None
    ready_replicas: ReadyReplicas | None = None
    desired_replicas: DesiredReplicas | None = None
    scale_events: ScaleEvents | None = None
    rollout: RolloutOutcome | None = None

    @pydantic.model_validator(mode="after")
    def _one(self) -> Self:
        given = [kind for kind in KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            names = ", ".join(to_camel(kind) for kind in KINDS)
            raise ValueError(f"give exactly one of {names}")
        return self

    @property
    def kind(self) -> str:
        """The camelCase name, as in the file."""
        return to_camel(next(kind for kind in KINDS if getattr(self, kind) is not None))

    @property
    def spec(self) -> BaseModel:
        spec: BaseModel = next(getattr(self, kind) for kind in KINDS
                               if getattr(self, kind) is not None)
        return spec


class Scenario(_Model):
    name: str = Field(pattern=routing.NAME_PATTERN, max_length=63)
    description: str = Field("", max_length=4096, description="What it shows, for the report.")
    service: str = Field("model", pattern=routing.NAME_PATTERN, max_length=63, description=(
        "The model name in request paths, which is the router's service. Default model."))
    revision: str = Field("v1", pattern=routing.NAME_PATTERN, max_length=63, description=(
        "The revision replica expectations judge when they name none. Default v1."))
    users: Users = Users()
    phases: list[Phase] = Field(min_length=1, max_length=100)
    wait_before: WaitBefore | None = None
    rollout: Rollout | None = None
    expectations: list[Expectation] = Field(min_length=1, max_length=50)

    @pydantic.field_validator("phases")
    @classmethod
    def _unique(cls, phases: list[Phase]) -> list[Phase]:
        routing.require_unique([phase.name for phase in phases], "phase names")
        return phases

    @pydantic.model_validator(mode="after")
    def _consistent(self, info: pydantic.ValidationInfo) -> Self:
        scale = (info.context or {}).get("duration_scale", 1.0)
        at = f" at --duration-scale {scale:g}" if scale != 1.0 else ""
        names = [phase.name for phase in self.phases]
        if self.seconds > MAX_RUN_SECONDS:
            raise ValueError(f"phases: together {self.seconds:g} s{at}, over the limit of "
                             f"{MAX_RUN_SECONDS:g} s")
        for index, expectation in enumerate(self.expectations):
            where = f"expectations.{index}.{expectation.kind}"
            spec = expectation.spec
            # A rollout expectation's phase is the Rollout's (Promoted), not a load phase.
            phase = spec.phase if isinstance(spec, Window | ReadyReplicas) else None
            if phase is not None and phase not in names:
                raise ValueError(f"{where}.phase: no phase {phase!r} (phases: "
                                 f"{', '.join(names)})")
            start, end = self.window(phase)
            length = end - start
            after = getattr(spec, "after_seconds", 0.0)
            if after >= length:
                raise ValueError(f"{where}.afterSeconds: {after:g} s leaves nothing of "
                                 f"{phase or 'the run'} ({length:g} s{at})")
            if isinstance(spec, ReadyReplicas) and spec.within_seconds > length:
                raise ValueError(f"{where}.withinSeconds: {spec.within_seconds:g} s is longer "
                                 f"than phase {phase!r} ({length:g} s{at})")
            if isinstance(spec, RolloutOutcome) and self.rollout is None:
                raise ValueError(f"{where}: the scenario starts no rollout")
        if self.rollout is not None:
            if self.rollout.policy.service != self.service:
                raise ValueError(f"rollout.policy.service: {self.rollout.policy.service!r} is not "
                                 f"the scenario's service {self.service!r}")
            if self.rollout.start_at_seconds >= self.seconds:
                raise ValueError(f"rollout.startAtSeconds: {self.rollout.start_at_seconds:g} s "
                                 f"is not before the end of the load ({self.seconds:g} s{at})")
        return self

    @property
    def seconds(self) -> float:
        return sum(phase.seconds for phase in self.phases)

    def window(self, phase: str | None) -> tuple[float, float]:
        """Start and end of a phase in seconds into the load; the whole run for None."""
        start = 0.0
        for candidate in self.phases:
            if candidate.name == phase:
                return start, start + candidate.seconds
            start += candidate.seconds
        return 0.0, start

    def schedule(self) -> shapes.Phases:
        return shapes.Phases(tuple(shapes.Phase(p.seconds, p.users, p.ramp_seconds)
                                   for p in self.phases))

    def offered_rps(self, run_time: float) -> float:
        """The rate the schedule offers at `run_time`: users x rpsPerUser (0 after the end)."""
        users = self.schedule().users_at(run_time)
        return (users or 0.0) * self.users.rps_per_user

    def locust_env(self) -> dict[str, str]:
        """The environment loadtests/locustfile.py reads: the schedule and what users send."""
        mix = self.users.mix
        return {**self.schedule().to_env(), "SLUICE_MODEL": self.service,
                "SLUICE_USER_RPS": repr(self.users.rps_per_user),
                "SLUICE_V1_WEIGHT": str(mix.v1), "SLUICE_V2_WEIGHT": str(mix.v2),
                "SLUICE_STREAM_WEIGHT": str(mix.stream),
                "SLUICE_STREAM_TOKENS": str(self.users.stream_tokens),
                "SLUICE_REQUEST_TIMEOUT": repr(self.users.timeout_seconds),
                "SLUICE_STICKY_USERS": "1" if self.users.sticky else "",
                "SLUICE_RUN_SECONDS": repr(self.seconds)}


def policy_replicas(policy: scaling.ScalingPolicy, rps: float,
                    mean_latency_s: float | None) -> int | None:
    """Replicas `policy` asks for at `rps` without its ceiling (see ReadyReplicas.at_least);
    None for a custom metric, or concurrency without a latency to apply Little's law to."""
    if policy.metric_kind is scaling.MetricKind.RPS:
        demand = rps
    elif policy.metric_kind is scaling.MetricKind.CONCURRENCY and mean_latency_s is not None:
        demand = rps * mean_latency_s
    else:
        return None
    aim = policy.target_per_replica * policy.target_utilization
    return max(policy.min_replicas, math.ceil(demand / aim - 1e-9))


def bundled() -> list[str]:
    """Names of the scenarios shipped in loadtests/scenarios/."""
    return sorted(path.stem for path in BUNDLED_DIR.glob("*.yaml"))


def resolve(source: str | Path) -> Path:
    """A scenario file: `source` if it is a file, else the bundled scenario of that name."""
    path = Path(source)
    if path.is_file():
        return path
    bundled_path = BUNDLED_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and bundled_path.is_file():
        return bundled_path
    raise ScenarioError([("(file)", f"{source}: no such file, and no bundled scenario of that "
                                    f"name (bundled: {', '.join(bundled())})")])


def load(source: str | Path, duration_scale: float = 1.0) -> Scenario:
    """The scenario in `source` (a file, or a bundled scenario's name), with its durations
    scaled; raises ScenarioError naming each field and its problem."""
    if not 0 < duration_scale <= 100:
        raise ScenarioError([("--duration-scale", f"{duration_scale:g} is not in (0, 100]")])
    path = resolve(source)
    try:
        with path.open("rb") as file:
            data = yaml.safe_load(file.read(MAX_FILE_BYTES))
    except OSError as error:
        raise ScenarioError([("(file)", f"cannot read {path}: {error}")]) from None
    except yaml.YAMLError as error:
        raise ScenarioError([("(file)", f"{path} is not YAML: {error}")]) from None
    if not isinstance(data, dict):
        raise ScenarioError([("(file)", f"{path} is not a mapping of scenario fields")])
    return parse(_scaled(data, duration_scale), duration_scale)


def parse(data: dict[str, Any], duration_scale: float = 1.0) -> Scenario:
    try:
        return Scenario.model_validate(data, context={"duration_scale": duration_scale})
    except pydantic.ValidationError as error:
        raise ScenarioError([_problem(e) for e in error.errors()]) from None


def _problem(error: Any) -> tuple[str, str]:
    field = ".".join(to_camel(part) if isinstance(part, str) else str(part)
                     for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    # Cross-field checks name their own field first ("expectations.2.latency.phase: ...").
    head, _, rest = message.partition(": ")
    if not field and rest and " " not in head:
        return head, rest
    return field or "(scenario)", message


def _scaled(data: dict[str, Any], factor: float) -> dict[str, Any]:
    """The raw document with its load durations multiplied by `factor` (see the module doc).
    Values that are not numbers are left for validation to report."""
    if factor == 1.0:
        return data

    def times(mapping: Any, *keys: str) -> Any:
        if not isinstance(mapping, dict):
            return mapping
        return {key: value * factor if key in keys and isinstance(value, int | float)
                and not isinstance(value, bool) else value for key, value in mapping.items()}

    scaled = dict(data)
    if isinstance(data.get("phases"), list):
        scaled["phases"] = [times(phase, "seconds", "rampSeconds", "ramp_seconds")
                            for phase in data["phases"]]
    if isinstance(data.get("expectations"), list):
        scaled["expectations"] = [
            {kind: times(spec, "afterSeconds", "after_seconds") for kind, spec in item.items()}
            if isinstance(item, dict) else item for item in data["expectations"]]
    if isinstance(data.get("rollout"), dict):
        scaled["rollout"] = times(data["rollout"], "startAtSeconds", "start_at_seconds")
    return scaled
