"""What `sluice loadtest` watches while the load runs, behind one seam for every target.

An `Observer` answers three questions about the service under load: which ScalingPolicy each
revision follows (`policies`), how things stand now (`sample`: replicas desired/starting/ready,
route weights, the router's counts, the rollout, and events since the last sample), and it does
one thing, because a canary scenario needs it: `start_rollout`. Implementations:

- `LocalObserver` (here): ``sluice up``'s controller over HTTP (``GET /status``, ``GET
  /rollouts/<service>``), the router's admin ``GET /stats``, the policies from the stack file;
  it starts a rollout with ``sluice rollout start``, which finds the controller's write token.
- `kube_observer.KubernetesObserver`: ScalingPolicy and Rollout status and events.k8s.io Events.

Observers depend on the controller only through its HTTP API or its resources, never on its
code. Every network call has a timeout; a call that fails makes the sample say so in
``problems`` instead of raising, so one slow answer costs a point on a plot, not the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pydantic
import yaml

from policies import rollout, scaling, validation

MAX_ANSWER_BYTES = 8 << 20
ROOT = Path(__file__).resolve().parents[1]
# Proxy settings from the environment must never apply to the loopback controller and router.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ObserverError(RuntimeError):
    """The observer cannot do what was asked (a rollout refused, a stack file invalid)."""


@dataclass(frozen=True)
class RevisionState:
    """One revision's replicas and weight as the controller reports them; None: not reported."""

    desired: int | None
    ready: int | None
    starting: int | None
    weight: int | None = None
    conditions: tuple[str, ...] = ()


@dataclass(frozen=True)
class RouterCounts:
    """One revision's cumulative counts at the router (summed over its routers)."""

    requests: int
    """Requests answered, any status."""
    errors: int
    """Answered 5xx."""
    buffered: int
    """Requests waiting for a replica now."""


@dataclass(frozen=True)
class RolloutState:
    phase: str
    step: int | None
    steps: int | None
    canary_weight: int | None
    reason: str


@dataclass(frozen=True)
class Event:
    """Something the system did, for the report's time axis."""

    at: float
    """Wall-clock seconds (time.time)."""
    kind: str
    """``rollout`` (a phase or step change), ``verdict``, or a Kubernetes Event's reason."""
    subject: str
    """The revision or rollout it is about."""
    text: str
    warning: bool = False


@dataclass(frozen=True)
class Sample:
    at: float
    """Wall-clock seconds when the sample was taken."""
    revisions: Mapping[str, RevisionState]
    router: Mapping[str, RouterCounts] | None
    """None when the router was not asked or did not answer."""
    rollout: RolloutState | None
    events: tuple[Event, ...] = ()
    """Events first seen in this sample."""
    problems: tuple[str, ...] = ()
    """What could not be read, and why."""


class Observer(Protocol):
    """The system under load, as `sluice loadtest` sees it (see the module docstring)."""

    def policies(self) -> dict[str, scaling.ScalingPolicy]:
        """The ScalingPolicy of each revision of the service that has one."""
        ...

    def sample(self) -> Sample:
        """How things stand now; never raises for an unreachable part (see Sample.problems)."""
        ...

    def start_rollout(self, policy: rollout.RolloutPolicy) -> float:
        """Start the rollout; return when it started (wall clock) as the system says. Raises
        ObserverError with the system's reason if it was refused."""
        ...

    def close(self) -> None: ...


def get_json(url: str, timeout_s: float) -> Any:
    """GET `url` and parse its JSON; raises OSError (timeouts, refusals, HTTP errors)."""
    with _OPENER.open(url, timeout=timeout_s) as response:
        return json.loads(response.read(MAX_ANSWER_BYTES))


def read_router(admin_url: str, service: str, timeout_s: float) -> dict[str, RouterCounts]:
    """The router's cumulative per-revision counts for `service` (GET /stats)."""
    stats = get_json(f"{admin_url.rstrip('/')}/stats", timeout_s)
    return {row["revision"]: RouterCounts(requests=row["requests"]["total"],
                                          errors=row["requests"]["5xx"],
                                          buffered=row["buffered"])
            for row in stats["revisions"] if row["service"] == service}


READ_FAILURES: tuple[type[Exception], ...] = (OSError, ValueError, KeyError, TypeError)
"""What a read can fail with: no answer, a timeout, an answer that is not what was expected."""


def guarded(problems: list[str], what: str, call: Callable[[], Any],
            failures: tuple[type[Exception], ...] = READ_FAILURES) -> Any:
    """call(), or None with a problem noted: one part not answering must not end the run."""
    try:
        return call()
    except failures as error:
        problems.append(f"{what}: {error}")
        return None


@dataclass(frozen=True)
class LocalStack:
    """What a loadtest needs of a `sluice up` stack file: addresses and the policies."""

    router: str
    """The router's listen address, host:port."""
    router_admin: str
    controller: str
    policies: dict[str, dict[str, scaling.ScalingPolicy]] = field(default_factory=dict)
    """Service -> revision -> policy."""

    @classmethod
    def load(cls, path: Path) -> LocalStack:
        """Read the stack file (the format of `sluice up`, autoscaler/config.py); raises
        ObserverError naming the field that is wrong."""
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ObserverError(f"cannot read the stack file {path}: {error}") from None
        if not isinstance(data, dict):
            raise ObserverError(f"{path}: not a stack file (a mapping)")
        router, controller = data.get("router") or {}, data.get("controller") or {}
        if not isinstance(data.get("services") or {}, dict):
            raise ObserverError(f"{path}: services must be a mapping of service names")
        policies: dict[str, dict[str, scaling.ScalingPolicy]] = {}
        for service, spec in (data.get("services") or {}).items():
            for index, revision in enumerate((spec or {}).get("revisions") or []):
                where = f"{path}: services.{service}.revisions.{index}"
                if not isinstance(revision, dict) or not isinstance(revision.get("name"), str):
                    raise ObserverError(f"{where}: a revision needs a name")
                try:
                    policy = scaling.load_policy(revision.get("scaling") or {})
                except pydantic.ValidationError as error:
                    first = validation.describe(error).splitlines()[0]
                    raise ObserverError(f"{where}.scaling.{first}") from None
                policies.setdefault(service, {})[revision["name"]] = policy
        # The defaults of autoscaler/local/stack.py's RouterSpec and ControllerSpec.
        return cls(router=router.get("listen", "127.0.0.1:8080"),
                   router_admin=router.get("admin", "127.0.0.1:8081"),
                   controller=controller.get("listen", "127.0.0.1:8082"), policies=policies)


class LocalObserver:
    """A `sluice up` stack: controller API and router admin API over HTTP (see module doc)."""

    def __init__(self, service: str, controller: str, router_admin: str | None,
                 policies: Mapping[str, scaling.ScalingPolicy] | None = None, *,
                 token_file: Path | None = None, timeout_s: float = 2.0,
                 env: Mapping[str, str] | None = None) -> None:
        self.service = service
        self.controller = controller
        self.router_admin = router_admin
        self.timeout_s = timeout_s
        self.token_file = token_file
        self.env = env
        self._policies = dict(policies or {})
        self._seen: set[tuple[str, float, str]] = set()

    def policies(self) -> dict[str, scaling.ScalingPolicy]:
        return dict(self._policies)

    def sample(self) -> Sample:
        problems: list[str] = []
        at = time.time()
        base = f"http://{self.controller}"
        status = guarded(problems, "controller /status",
                         lambda: get_json(f"{base}/status", self.timeout_s))
        router = None
        if self.router_admin is not None:
            router = guarded(problems, "router /stats",
                             lambda: read_router(_url(self.router_admin or ""), self.service,
                                                 self.timeout_s))
        revisions: dict[str, RevisionState] = {}
        rollout_state, events = None, []
        if status is not None:
            revisions = {row["name"]: RevisionState(
                desired=row["desired"], ready=row["ready"], starting=row.get("starting"),
                weight=row.get("weight"), conditions=tuple(row.get("conditions", ())))
                for row in status["revisions"] if row["service"] == self.service}
            if any(r["service"] == self.service for r in status.get("rollouts", [])):
                detail = guarded(problems, "controller /rollouts", lambda: get_json(
                    f"{base}/rollouts/{self.service}?verdicts=50", self.timeout_s))
                if detail is not None:
                    rollout_state = RolloutState(
                        phase=detail["phase"], step=detail["step"], steps=detail["steps"],
                        canary_weight=detail["canary_weight"], reason=detail["reason"])
                    events = self._new_events(detail)
        return Sample(at=at, revisions=revisions, router=router, rollout=rollout_state,
                      events=tuple(events), problems=tuple(problems))

    def _new_events(self, detail: Mapping[str, Any]) -> list[Event]:
        found = []
        for transition in detail.get("transitions", []):
            text = (f"{transition['phase']}, step {transition['step']}, canary at "
                    f"{transition['canary_weight']} %: {transition['reason']}")
            found.append(Event(transition["at"], "rollout", detail["canary_revision"], text,
                               warning=transition["phase"] in ("RolledBack", "Failed")))
        for verdict in detail.get("verdicts", []):
            text = (f"{verdict['outcome']} at {verdict['canary_weight']} %: "
                    f"{verdict['reason']}")
            found.append(Event(verdict["at"], "verdict", detail["canary_revision"], text,
                               warning=verdict["outcome"] == "fail"))
        new = [e for e in found if (e.kind, e.at, e.text) not in self._seen]
        self._seen.update((e.kind, e.at, e.text) for e in new)
        return new

    def start_rollout(self, policy: rollout.RolloutPolicy) -> float:
        """Through ``sluice rollout start``: the CLI knows where ``sluice up`` keeps the write
        token, and checks the policy as the controller will. The start time is the
        controller's (``created_at``), not when the CLI, which takes a while to import, ended."""
        asked_at = time.time()
        document = policy.model_dump(mode="json", by_alias=True)
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="sluice-rollout-") as file:
            json.dump(document, file)
            file.flush()
            argv = [sys.executable, "-m", "autoscaler.cli", "rollout",
                    "--controller", self.controller]
            if self.token_file is not None:
                argv += ["--token-file", str(self.token_file)]
            try:
                done = subprocess.run([*argv, "start", "-f", file.name], capture_output=True,
                                      text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
                                      env={**os.environ, **(self.env or {})})
            except subprocess.TimeoutExpired:
                raise ObserverError("sluice rollout start did not finish in 60 s") from None
        if done.returncode != 0:
            raise ObserverError(f"the controller did not start the rollout:\n"
                                f"{(done.stderr or done.stdout).strip()}")
        try:
            started = get_json(f"http://{self.controller}/rollouts/{policy.service}?verdicts=0",
                               self.timeout_s)
            return float(started["created_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return asked_at

    def close(self) -> None:
        pass


def _url(address: str) -> str:
    return address if "://" in address else f"http://{address}"
