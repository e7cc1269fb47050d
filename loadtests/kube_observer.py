"""The Observer of a service on Kubernetes: what sluice's controller writes, read back.

- Replicas: each ScalingPolicy of the service (``spec.service``), keyed by ``spec.revision``:
  ``status.desired`` and ``status.ready``; starting is desired minus ready, the replicas asked
  for and not yet serving. Its conditions that are True, as ``Type: Reason``.
- The rollout: the service's Rollout (the one this observer created, else the newest):
  ``status.phase``, ``step`` (from 0 in the resource, shown from 1 as ``sluice rollout`` does),
  ``weight``, and for a reason the latest condition's message or the last verdicts.
- Events: events.k8s.io/v1 Events about those ScalingPolicies and Rollouts since the observer
  was made, each once (a repeated Event again when its count grows).
- The router's counts when ``router_admin`` is given (its admin GET /stats), as locally.

Starting a rollout creates a Rollout (``generateName: <service>-loadtest-``) whose spec is the
scenario's policy; the controller acts on it. Every call has a timeout (``_request_timeout``).
The policies come from the ScalingPolicy specs, parsed by the same model the CRD is made from.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import pydantic
import urllib3
from kubernetes import client, config

from loadtests import observe
from policies import resources, rollout, scaling

GROUP, VERSION = resources.GROUP, resources.VERSION
FAILURES: tuple[type[Exception], ...] = (*observe.READ_FAILURES, client.ApiException,
                                         urllib3.exceptions.HTTPError)
"""The client raises urllib3's errors (not OSErrors) when the apiserver does not answer."""


class KubernetesObserver:
    def __init__(self, api: client.ApiClient, namespace: str, service: str, *,
                 router_admin: str | None = None, timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.api = api
        self.namespace = namespace
        self.service = service
        self.router_admin = router_admin
        self.timeout_s = timeout_s
        self.clock = clock
        self.since = clock()
        self.rollout_name: str | None = None
        self._objects = client.CustomObjectsApi(api)
        self._events = client.EventsV1Api(api)
        self._seen: dict[str, int] = {}
        """Event uid -> the count it was last reported at."""

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path | None, context: str | None, namespace: str,
                        service: str, **kwargs: Any) -> KubernetesObserver:
        configuration = client.Configuration()
        try:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig) if kubeconfig else None, context=context,
                client_configuration=configuration)
        except (config.ConfigException, OSError) as error:
            raise observe.ObserverError(f"cannot load the kubeconfig: {error}") from None
        configuration.retries = 1  # a sample is retried by the next one anyway
        return cls(client.ApiClient(configuration), namespace, service, **kwargs)

    def _list(self, plural: str) -> list[dict[str, Any]]:
        answer = cast(dict[str, Any], self._objects.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, _request_timeout=self.timeout_s))
        return [item for item in answer.get("items", [])
                if item.get("spec", {}).get("service") == self.service]

    def policies(self) -> dict[str, scaling.ScalingPolicy]:
        found: dict[str, scaling.ScalingPolicy] = {}
        try:
            items = self._list(resources.SCALING_POLICY.plural)
        except FAILURES as error:
            raise observe.ObserverError(f"cannot list ScalingPolicies in {self.namespace}: "
                                        f"{error}") from None
        for item in items:
            try:
                found[item["spec"]["revision"]] = resources.ScalingPolicySpec.model_validate(
                    item["spec"])
            except pydantic.ValidationError as error:
                name = item["metadata"]["name"]
                raise observe.ObserverError(f"ScalingPolicy {name}: {error}") from None
        return found

    def sample(self) -> observe.Sample:
        problems: list[str] = []
        at = self.clock()
        policies = observe.guarded(problems, "ScalingPolicies", lambda: self._list(
            resources.SCALING_POLICY.plural), FAILURES) or []
        rollouts = observe.guarded(problems, "Rollouts", lambda: self._list(
            resources.ROLLOUT.plural), FAILURES) or []
        current = self._current(rollouts)
        revisions = {item["spec"]["revision"]: _revision_state(item, current)
                     for item in policies}
        router = None
        if self.router_admin is not None:
            router = observe.guarded(problems, "router /stats", lambda: observe.read_router(
                self.router_admin or "", self.service, self.timeout_s))
        names = {("ScalingPolicy", item["metadata"]["name"]) for item in policies} | {
            ("Rollout", item["metadata"]["name"]) for item in rollouts}
        events = observe.guarded(problems, "Events", lambda: self._new_events(names),
                                 FAILURES) or []
        return observe.Sample(at=at, revisions=revisions, router=router,
                              rollout=_rollout_state(current) if current else None,
                              events=tuple(events), problems=tuple(problems))

    def _current(self, rollouts: list[dict[str, Any]]) -> dict[str, Any] | None:
        mine = [r for r in rollouts if r["metadata"]["name"] == self.rollout_name]
        if mine or not rollouts:
            return mine[0] if mine else None
        return max(rollouts, key=lambda r: r["metadata"].get("creationTimestamp", ""))

    def _new_events(self, names: set[tuple[str, str]]) -> list[observe.Event]:
        answer = self._events.list_namespaced_event(self.namespace,
                                                    _request_timeout=self.timeout_s)
        new = []
        for event in answer.items:
            regarding = event.regarding
            if regarding is None or (regarding.kind, regarding.name) not in names:
                continue
            at = _event_time(event)
            count = event.series.count if event.series else (event.deprecated_count or 1)
            uid = event.metadata.uid if event.metadata else None
            if uid is None or at is None or at < self.since or self._seen.get(uid, 0) >= count:
                continue
            self._seen[uid] = count
            repeated = f" (x{count})" if count > 1 else ""
            new.append(observe.Event(at=at, kind=event.reason or "Event",
                                     subject=f"{regarding.kind}/{regarding.name}",
                                     text=f"{event.note or ''}{repeated}",
                                     warning=event.type == "Warning"))
        return new

    def start_rollout(self, policy: rollout.RolloutPolicy) -> float:
        """Create the Rollout; it started when it was created (creationTimestamp has whole
        seconds only, so the time just before the call stands for it)."""
        asked_at = self.clock()
        body = {"apiVersion": resources.API_VERSION, "kind": resources.ROLLOUT.kind,
                "metadata": {"generateName": f"{self.service}-loadtest-"},
                "spec": policy.model_dump(mode="json", by_alias=True)}
        try:
            created = cast(dict[str, Any], self._objects.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, resources.ROLLOUT.plural, body,
                _request_timeout=self.timeout_s))
        except client.ApiException as error:
            raise observe.ObserverError(f"the apiserver refused the Rollout ({error.status}): "
                                        f"{error.body or error.reason}") from None
        except FAILURES as error:
            raise observe.ObserverError(f"cannot reach the apiserver: {error}") from None
        self.rollout_name = created["metadata"]["name"]
        return asked_at

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]


def _revision_state(item: Mapping[str, Any], current: Mapping[str, Any] | None
                    ) -> observe.RevisionState:
    status = item.get("status") or {}
    desired, ready = status.get("desired"), status.get("ready")
    starting = max(0, desired - ready) if desired is not None and ready is not None else None
    conditions = tuple(f"{c['type']}: {c['reason']}" for c in status.get("conditions", [])
                       if c.get("status") == "True")
    weight = None
    if current is not None and (current.get("status") or {}).get("weight") is not None:
        canary_weight = current["status"]["weight"]
        spec = current["spec"]
        revision = item["spec"]["revision"]
        if revision == spec.get("canaryRevision"):
            weight = canary_weight
        elif revision == spec.get("stableRevision"):
            weight = rollout.FULL_WEIGHT - canary_weight
    return observe.RevisionState(desired=desired, ready=ready, starting=starting, weight=weight,
                                 conditions=conditions)


def _rollout_state(item: Mapping[str, Any]) -> observe.RolloutState:
    status = item.get("status") or {}
    conditions = sorted(status.get("conditions", []),
                        key=lambda c: c.get("lastTransitionTime", ""))
    verdicts = status.get("lastVerdicts", [])
    if conditions and conditions[-1].get("message"):
        reason = conditions[-1]["message"]
    else:
        reason = "; ".join(f"{v['metric']}: {v['outcome']} {v.get('reason', '')}".strip()
                           for v in verdicts)
    step = status.get("step")
    return observe.RolloutState(phase=status.get("phase") or "Pending",
                                step=None if step is None else step + 1,
                                steps=len(item.get("spec", {}).get("steps", [])) or None,
                                canary_weight=status.get("weight"), reason=reason)


def _event_time(event: Any) -> float | None:
    """The latest time the Event says it happened (a repeated one: its last occurrence)."""
    times = [t for t in (event.event_time,
                         event.series.last_observed_time if event.series else None,
                         event.deprecated_last_timestamp) if t is not None]
    if not times:
        return None
    latest: datetime.datetime = max(times)
    return latest.timestamp()
