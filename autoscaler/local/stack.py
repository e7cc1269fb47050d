"""The local stack's one file: router, controller, GPUs, and each revision's command and policy.

``sluice up -f examples/local.yaml`` reads it. A revision's ``scaling`` block is a
ScalingPolicy (policies/scaling.py), the same spec the Kubernetes CRD carries, so a policy tuned
locally or in simulation moves to the cluster unchanged::

    services:
      model:
        revisions:
          - name: v1
            weight: 100
            command: ["{python}", "examples/model_server.py", "--port", "{port}"]
            scaling: {metric: concurrency, target: 4, minReplicas: 0, maxReplicas: 4}
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import InitErrorDetails, PydanticCustomError

from autoscaler.rollouts import locate
from policies import routing, validation
from policies import scaling as scaling_  # `scaling` is also a field name below


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Readiness(_Model):
    """How a replica is probed until it is ready (HTTP GET; 2xx = ready)."""

    path: str = Field("/v2/health/ready", pattern=r"^/", description=(
        "Readiness path. Default: the Open Inference Protocol's, which KServe servers answer."))
    period_s: float = Field(0.2, gt=0, le=60, description=(
        "Most seconds between probes while a replica starts and its server answers, not ready "
        "yet; 0.2 as Knative's activator probes. Probes come faster around the time this "
        "revision's replicas usually become ready (autoscaler/local/replicas.py)."))
    fast_period_s: float = Field(0.01, ge=0, le=60, description=(
        "Seconds between probes while nothing listens on a starting replica's port yet (a "
        "refused connection costs microseconds), and the shortest pause otherwise: a server "
        "that listens once its model is loaded, as KServe's does, joins within 10 ms of "
        "listening. 0: probe every period_s only. No probe runs while no replica starts."))
    timeout_s: float = Field(1.0, gt=0, le=60, description="Seconds one probe may take.")
    start_timeout_s: float = Field(600.0, gt=0, le=7200, description=(
        "Seconds a replica may take to become ready before it is restarted; long for model "
        "loading (Knative's progress deadline is 600 s)."))


class RevisionSpec(_Model):
    name: str = Field(pattern=routing.NAME_PATTERN, max_length=63)
    weight: int = Field(100, ge=0, le=routing.MAX_WEIGHT)
    command: list[str] = Field(min_length=1, description=(
        "The model server command. {port} becomes the replica's port, {python} this Python; "
        "the environment also gets PORT, and CUDA_VISIBLE_DEVICES when it needs GPUs."))
    env: dict[str, str] = Field(default_factory=dict)
    concurrency: int = Field(0, ge=0, description=(
        "Most in-flight requests per replica (router-enforced); 0 = no limit."))
    readiness: Readiness = Readiness()
    scaling: scaling_.ScalingPolicy = Field(default_factory=scaling_.ScalingPolicy)
    drain_timeout_s: float = Field(30.0, gt=0, le=3600, description=(
        "Seconds a replica has after SIGTERM to finish its requests before SIGKILL."))

    @pydantic.field_validator("scaling", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Any:
        return scaling_.load_policy(value) if isinstance(value, Mapping) else value


class ServiceSpec(_Model):
    revisions: list[RevisionSpec] = Field(min_length=1, max_length=64)
    sticky: routing.Sticky | None = None

    @pydantic.field_validator("revisions")
    @classmethod
    def _unique(cls, revisions: list[RevisionSpec]) -> list[RevisionSpec]:
        routing.require_unique([r.name for r in revisions], "revision names")
        return revisions


class RouterSpec(_Model):
    listen: str = Field("127.0.0.1:8080", pattern=r"^[^:]+:\d+$")
    admin: str = Field("127.0.0.1:8081", pattern=r"^[^:]+:\d+$")
    workers: int = Field(1, ge=1, le=64)


class ControllerSpec(_Model):
    listen: str = Field(locate.DEFAULT_CONTROLLER, pattern=r"^[^:]+:\d+$", description=(
        "The controller's API: status (read by `sluice status`) and rollouts (`sluice "
        "rollout`). Loopback only: it can move traffic, so it is never exposed, and its writes "
        "also need the token `sluice up` writes for the CLI."))
    tick_s: float = Field(1.0, ge=0.1, le=10, description=(
        "Seconds between scaling decisions; pokes from the routers decide at once in between."))
    prometheus_url: str | None = Field(None, pattern=r"^https?://", description=(
        "Prometheus base URL the custom signals of scaling policies and the rollouts' custom "
        "metrics are queried at, e.g. http://127.0.0.1:9090. Unset: a policy on a custom "
        "signal, or a rollout with custom metrics, is refused."))
    prometheus_timeout_s: float = Field(2.0, gt=0, le=60, description=(
        "Seconds one rollout PromQL query may take; a slower answer counts as no answer (the "
        "rollout holds its step, and pauses after its failureLimit). A signal has its own "
        "timeoutSeconds."))
    prometheus_targets_file: Path | None = Field(None, description=(
        "A Prometheus file_sd file (JSON) kept current with every ready replica, labelled "
        "service and revision, so a Prometheus scrapes the replicas' own metrics for custom "
        "signals (autoscaler/local/scrape.py). Unset: none is written."))

    @pydantic.field_validator("listen")
    @classmethod
    def _loopback(cls, listen: str) -> str:
        host = listen.rpartition(":")[0].strip("[]")
        if host != "localhost":
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise ValueError(f"{host!r} is not a loopback address (127.0.0.1, ::1)")
        return listen


class LocalStack(_Model):
    router: RouterSpec = RouterSpec()
    controller: ControllerSpec = ControllerSpec()
    gpus: list[int] | Literal["auto"] = Field(default_factory=list, description=(
        "GPU indices replicas may use (CUDA_VISIBLE_DEVICES), or 'auto' to ask nvidia-smi. "
        "Empty: no GPUs, and a policy with gpusPerReplica > 0 cannot scale up."))
    services: dict[str, ServiceSpec] = Field(min_length=1)

    @pydantic.field_validator("services")
    @classmethod
    def _names(cls, services: dict[str, ServiceSpec]) -> dict[str, ServiceSpec]:
        for name in services:
            if not re.match(routing.NAME_PATTERN, name):
                raise ValueError(f"service name {name!r} is not a DNS label")
        return services

    @pydantic.model_validator(mode="after")
    def _signals_have_a_source(self) -> Self:
        if self.controller.prometheus_url is not None:
            return self
        errors = [
            InitErrorDetails(
                type=PydanticCustomError("no_prometheus", "a custom signal is queried at a "
                                         "Prometheus: set controller.prometheus_url"),
                loc=("services", name, "revisions", index, "scaling", "signal"),
                input=revision.scaling.signal.query)
            for name, service in self.services.items()
            for index, revision in enumerate(service.revisions)
            if revision.scaling.signal is not None]
        if errors:
            raise pydantic.ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    @pydantic.model_validator(mode="after")
    def _distinct_ports(self) -> Self:
        ports = [listen.rpartition(":")[2] for listen in self.listens().values()]
        routing.require_unique(ports, "router.listen, router.admin and controller.listen ports")
        return self

    def listens(self) -> dict[str, str]:
        """Every address the stack listens on, by the field that sets it."""
        return {"router.listen": self.router.listen, "router.admin": self.router.admin,
                "controller.listen": self.controller.listen}


def load(path: Path) -> LocalStack:
    """The stack from YAML; raises ValueError with one ``field: reason`` line per problem."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not YAML: {error}") from None
    try:
        return LocalStack.model_validate(data if isinstance(data, dict) else {})
    except pydantic.ValidationError as error:
        raise ValueError(validation.describe(error)) from None

