"""What a ScalingPolicy's status and Events say, and writing them only when they change.

The status (policies/resources.py ``ScalingPolicyStatus``) holds desired and ready replicas, the
decider's reason in a sentence, and conditions in metav1.Condition's shape:

=================  =====================================================================
Ready              True while the policy is enforced; False with why not: InvalidSpec,
                   TargetNotFound, AutoscalerConflict (KServe's own autoscaler would fight),
                   DuplicateRevision
Active             True while replicas serve; False with ScaledToZero or Activating
CapacityLimited    True when GPUs cap the count, with the scheduler's words
SignalMissing      (policies with a custom signal) True while its value is missing, with why:
                   replicas are held, never scaled down on it
ReplicaFailed      True when a pod will not serve by itself (CrashLoopBackOff, …)
Panicking, …       the decider's own conditions, True while they hold
=================  =====================================================================

A condition keeps its lastTransitionTime while its status stays. ``StatusWriter`` merge-patches
a policy's status only when what it shows changed (the decider's memory about every
``state_interval_s``, and only when it says something new), so a steady cluster costs no
writes. ``EventRecorder`` writes events.k8s.io/v1 Events and counts a repeated one in its
``series`` instead of writing another.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from autoscaler.control import core, ports
from autoscaler.kube import client
from policies import decider, progression, resources, scaling

logger = logging.getLogger(__name__)

READY = "Ready"
ACTIVE = "Active"
CAPACITY_LIMITED = "CapacityLimited"
REPLICA_FAILED = "ReplicaFailed"
SIGNAL_MISSING = "SignalMissing"
DECIDER_CONDITIONS = (decider.Condition.PANICKING, decider.Condition.SCALING_AHEAD,
                      decider.Condition.SCALE_DOWN_DELAYED)
UNITS = {scaling.MetricKind.RPS: "requests/s", scaling.MetricKind.CONCURRENCY: "in flight",
         scaling.MetricKind.STREAMS: "streams"}


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""


def rfc3339(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def explain(decision: decider.ScalingDecision, policy: scaling.ScalingPolicy) -> str:
    """Why the count is what it is, in one sentence for ``kubectl describe``."""
    unit = UNITS.get(policy.metric_kind, policy.metric)
    text = (f"{decision.stable_demand:.3g} {unit} over the stable window, "
            f"{decision.panic_demand:.3g} over the last {policy.panic_window_s:g} s, at "
            f"{policy.per_replica:g} per replica: {decision.wanted} wanted")
    if decision.capacity_limit is not None and decision.wanted > decision.capacity_limit:
        text += f", free GPUs hold {decision.capacity_limit}"
    if decision.desired != decision.wanted:
        text += f", {decision.desired} asked for"
    return text


def conditions_for(decision: decider.ScalingDecision | None, *, ready: int,
                   failure: str | None, unschedulable: str | None,
                   problem: Condition | None) -> list[Condition]:
    """The policy's conditions now: ``problem`` (why it is not enforced), else what the decider
    and the replicas say."""
    if problem is not None:
        return [problem]
    wanted = [Condition(READY, True, "Enforced", "replicas follow the policy")]
    flags = decision.conditions if decision is not None else frozenset()
    if ready:
        wanted.append(Condition(ACTIVE, True, "Serving", f"{ready} replicas ready"))
    elif decider.Condition.ACTIVATING in flags:
        wanted.append(Condition(ACTIVE, False, "Activating", "requests wait for a replica"))
    else:
        wanted.append(Condition(ACTIVE, False, "ScaledToZero", "no replica runs"))
    if decider.Condition.CAPACITY_LIMITED in flags or unschedulable:
        assert decision is not None or unschedulable is not None
        message = unschedulable or (f"free GPUs hold {decision.capacity_limit} replicas of "
                                    f"the {decision.wanted} wanted" if decision else "")
        wanted.append(Condition(CAPACITY_LIMITED, True, "InsufficientGPUs", message))
    else:
        wanted.append(Condition(CAPACITY_LIMITED, False, "Enough", ""))
    if failure:
        wanted.append(Condition(REPLICA_FAILED, True, _reason_word(failure), failure))
    else:
        wanted.append(Condition(REPLICA_FAILED, False, "NoFailure", ""))
    wanted += [Condition(str(flag), flag in flags, str(flag) if flag in flags else "No" + flag,
                         "") for flag in DECIDER_CONDITIONS]
    return wanted


def signal_condition(policy: scaling.ScalingPolicy,
                     reading: ports.Reading | None) -> Condition | None:
    """SignalMissing for a policy that scales on a custom signal; None for one that does not."""
    if policy.signal is None:
        return None
    value, problem = core.signal_value(reading)
    if value is not None:
        # No value in the message: one that changes every tick would write the status every tick.
        return Condition(SIGNAL_MISSING, False, "SignalRead", "")
    return Condition(SIGNAL_MISSING, True, "SignalMissing",
                     f"{policy.custom_signal}: {problem}; replicas are held")


def _reason_word(failure: str) -> str:
    """A condition's reason is one CamelCase word: the pod's (CrashLoopBackOff, …)."""
    for word in failure.replace(":", " ").split():
        if word[:1].isupper() and word.isalnum():
            return word
    return "ReplicaFailed"


def rendered(conditions: list[Condition], previous: list[Mapping[str, Any]], now: float,
             generation: int | None) -> list[dict[str, Any]]:
    """Conditions as the status holds them, keeping each one's transition time while its
    status is unchanged."""
    before = {c.get("type"): c for c in previous}
    out = []
    for condition in conditions:
        status = "True" if condition.status else "False"
        old = before.get(condition.type)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else None
        out.append({
            "type": condition.type, "status": status, "reason": condition.reason,
            "message": condition.message[:32768],
            "lastTransitionTime": since or rfc3339(now), "observedGeneration": generation,
        })
    return out


def validated(status: dict[str, Any]) -> dict[str, Any]:
    """The status as the CRD accepts it (the models are the CRD's schema): a bug here is caught
    before the apiserver answers 422."""
    return resources.ScalingPolicyStatus.model_validate(status).model_dump(
        mode="json", by_alias=True, exclude_none=True)


class StatusWriter:
    """Merge-patches a custom resource's status when what it shows changed."""

    def __init__(self, api: client.KubeApi, kind: client.Kind) -> None:
        self.api = api
        self.kind = kind
        self._written: dict[tuple[str, str], dict[str, Any]] = {}
        self._writing: set[tuple[str, str]] = set()

    def forget(self, namespace: str, name: str) -> None:
        self._written.pop((namespace, name), None)

    def changed(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        return self._written.get((namespace, name)) != status

    async def write(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Patch ``status`` if it differs from what was last written; False if it failed."""
        key = (namespace, name)
        if self._written.get(key) == status or key in self._writing:
            return True
        self._writing.add(key)
        try:
            await self.api.patch_status(self.kind, namespace, name, status)
        except client.NotFound:
            self._written.pop(key, None)  # deleted meanwhile
            return True
        except client.KubeError as error:
            logger.warning("writing the status of %s %s/%s: %s", self.kind.kind, namespace,
                           name, error)
            return False
        finally:
            self._writing.discard(key)
        self._written[key] = status
        return True


@dataclass
class _Recorded:
    name: str
    count: int


class EventRecorder:
    """events.k8s.io/v1 Events about the controller's objects; a repeat is counted in its
    ``series`` (as client-go's recorder does), not written again."""

    def __init__(self, api: client.KubeApi, controller: str = "sluice.dev/controller",
                 instance: str = "sluice-controller",
                 wall: Callable[[], float] | None = None) -> None:
        self.api = api
        self.controller = controller
        self.instance = instance
        self._wall = wall
        self._recorded: dict[tuple[str, str, str, str], _Recorded] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def record(self, regarding: Mapping[str, Any], reason: str, note: str,
               kind: str = "Normal", action: str = "Scale") -> None:
        """Write (or count) an Event about ``regarding`` (an object's apiVersion, kind and
        metadata), in the background."""
        task = asyncio.get_running_loop().create_task(
            self._record(dict(regarding), reason, note[:1024], kind, action))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, regarding: dict[str, Any], reason: str, note: str, kind: str,
                      action: str) -> None:
        metadata = regarding.get("metadata", {})
        namespace = metadata.get("namespace", "default")
        key = (namespace, metadata.get("uid", ""), reason, note)
        now = datetime.datetime.now(datetime.UTC)
        try:
            seen = self._recorded.get(key)
            if seen is not None:
                seen.count += 1
                await self.api.patch_event(namespace, seen.name, {"series": {
                    "count": seen.count, "lastObservedTime": client.micro_time(now)}})
                return
            event = await self.api.create_event(namespace, {
                "metadata": {"generateName": f"{metadata.get('name', 'sluice')}-",
                             "namespace": namespace},
                "eventTime": client.micro_time(now), "reportingController": self.controller,
                "reportingInstance": self.instance, "action": action, "reason": reason,
                "note": note, "type": kind,
                "regarding": {"apiVersion": regarding.get("apiVersion"),
                              "kind": regarding.get("kind"), "name": metadata.get("name"),
                              "namespace": namespace, "uid": metadata.get("uid")},
            })
            self._recorded[key] = _Recorded(event.metadata.name, 1)
        except client.KubeError as error:
            logger.warning("writing an Event (%s: %s): %s", reason, note, error)

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- rollouts ---------------------------------------------------------------------------------

PROGRESSING = "Progressing"
PAUSED = "Paused"
PROMOTED = "Promoted"
ROLLED_BACK = "RolledBack"
FAILED = "Failed"


def rollout_conditions(state: progression.RolloutState,
                       action: progression.RolloutAction | None) -> list[Condition]:
    """One condition per phase a rollout can be in, True for the one it is in, with why."""
    phase, why = state.phase, state.reason
    waiting = action is not None and action.kind is progression.ActionKind.WAIT_FOR_CAPACITY
    running = phase in (progression.Phase.PENDING, progression.Phase.PROGRESSING)
    return [
        Condition(PROGRESSING, running, ("WaitingForCapacity" if waiting else
                                         "StepRunning" if running else "Ended"
                                         if phase.terminal else "Paused"),
                  why if running else ""),
        Condition(PAUSED, phase is progression.Phase.PAUSED,
                  ("MetricsMissing" if state.source_paused else "PausedByPerson")
                  if phase is progression.Phase.PAUSED else "NotPaused",
                  why if phase is progression.Phase.PAUSED else ""),
        Condition(PROMOTED, phase is progression.Phase.PROMOTED,
                  ("PromotedByPerson" if state.promoting else "AllStepsPassed")
                  if phase is progression.Phase.PROMOTED else "NotPromoted",
                  why if phase is progression.Phase.PROMOTED else ""),
        Condition(ROLLED_BACK, phase is progression.Phase.ROLLED_BACK,
                  ("AbortedByPerson" if why.startswith("aborted") else "CanaryFailed")
                  if phase is progression.Phase.ROLLED_BACK else "NotRolledBack",
                  why if phase is progression.Phase.ROLLED_BACK else ""),
        Condition(FAILED, phase is progression.Phase.FAILED,
                  "TimedOut" if phase is progression.Phase.FAILED else "NotFailed",
                  why if phase is progression.Phase.FAILED else ""),
    ]


def last_verdicts(verdict: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The findings of the last verdict, one per metric, as the status lists them."""
    if not verdict:
        return []
    at = rfc3339(float(verdict["at"]))
    return [{"metric": f["metric"], "outcome": f["outcome"], "reason": f["reason"][:4096],
             "time": at} for f in verdict.get("findings", [])][:resources.MAX_VERDICTS]


def validated_rollout(status: dict[str, Any]) -> dict[str, Any]:
    return resources.RolloutStatus.model_validate(status).model_dump(
        mode="json", by_alias=True, exclude_none=True)
