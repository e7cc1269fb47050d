"""``sluice controller``: the control core with Kubernetes drivers.

It watches ScalingPolicies, the pods of their targets, nodes and InferenceServices (informers:
list, then watch with bookmarks, re-list on 410), and per namespace runs one control core whose

- Replicas are the targets' Deployments, scaled through ``/scale`` only, their pods sorted to
  revisions by the selector ``/scale`` returns and probed by sluice itself (kube/replicas.py);
- Capacity is the nodes' free GPUs for each revision's pod shape (policies/capacity.py);
- LoadSource and RoutePublisher are the namespace's router pods (label
  ``app.kubernetes.io/name: sluice-router``), each sent its own service's part of the table with
  the token in Secret ``sluice-router-admin``; a router is published to as soon as it runs,
  before it is Ready (a router is not Ready until it holds a table);
- StateStore is each ScalingPolicy's status: the decider's memory is written there about every
  ``state_interval_s`` (spread over policies, and not while it says what it said last) and a
  restarted controller resumes from it. Nor does it publish before it has reconciled every
  policy and Rollout it found once (``first_pass_s`` at most): routers keep their table until
  each revision they serve is known again, at the weights its Rollout's status records.

A ScalingPolicy's route-table name is ``spec.service``/``spec.revision``: the namespace's
routers serve the revisions of their service. Its status says what was decided and why
(kube/status.py); a policy that cannot be enforced (invalid, its target missing, KServe's own
autoscaler in charge) says why in its Ready condition and changes nothing. Deleting a policy
leaves its Deployment's replicas as they are.

If the apiserver is unreachable the controller keeps its last view and decisions: nothing is
scaled down and routers keep serving their last table; it resumes when the apiserver returns.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import signal
import sys
import time
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pydantic
from aiohttp import web

from autoscaler.control import core, ports
from autoscaler.kube import (
    client,
    informer,
    inventory,
    leader,
    pods,
    replicas,
    router_manifests,
    status,
    workqueue,
)
from autoscaler.rollouts import driver
from autoscaler.sources import prometheus, routers
from policies import capacity, codec, decider, progression, resources, rollout, validation

logger = logging.getLogger(__name__)

# How router pods are found and reached: what `sluice manifests router` writes.
ROUTER_NAME_LABEL = router_manifests.ROUTER_NAME_LABEL
ROUTER_NAME = router_manifests.ROUTER_NAME
SERVICE_LABEL = router_manifests.SERVICE_LABEL
ADMIN_PORT_NAME = router_manifests.ADMIN_PORT_NAME
DEFAULT_ADMIN_PORT = router_manifests.ADMIN_PORT
ROUTER_TOKEN_SECRET = router_manifests.TOKEN_SECRET
ROUTER_TOKEN_KEY = router_manifests.TOKEN_KEY
COMMAND_ANNOTATION = resources.COMMAND_ANNOTATION
ROLLOUT_RUN_FIELDS = ("phase", "step", "weight", "verdict", "message", "lastVerdicts", "memory")
"""A Rollout's status fields that describe its run (the rest: observedGeneration, conditions)."""


@dataclass(frozen=True)
class ControllerSettings:
    namespace: str | None = None
    """The one namespace to manage; None: every namespace (needs the ClusterRole)."""
    tick_s: float = 1.0
    """Seconds between scaling decisions; routers' pokes decide at once in between."""
    status_interval_s: float = 1.0
    """Seconds between status evaluations; a status is written only when it changed, and
    evaluated only when something it shows changed (``Policy.shown``)."""
    state_interval_s: float = 60.0
    """Seconds between writes of a decider's memory to its policy's status, each policy's
    spread by up to a quarter either way so they do not all fall due together; a memory that
    says what the last one written said (an idle revision's: only its samples' times moved)
    is not written. A failed-over controller resumes from at most this old a memory of a
    changing load, and its decisions hold one stable window (60 s) of history. Default 60:
    at 1,000 policies ~17 PATCHes a second under changing load, none when idle."""
    status_writes: int = 16
    """Status PATCHes in flight at most. Default 16: below the client's connection pool (32,
    of which the watches hold six), so a write never waits for a pooled connection inside its
    own timeout, and scale patches and reconciles find one free."""
    reconcile_workers: int = 4
    """ScalingPolicies and Rollouts reconciled at once (two GETs each). Default 4: 1,000 new
    policies are resolved in seconds without crowding the pool; one key is never worked by
    two workers at once."""
    health_listen: str | None = "0.0.0.0:8080"
    """Where /healthz and /readyz (informers synced) answer, for the kubelet's probes; they
    reveal nothing but ok. None: no health endpoint."""
    probe: replicas.ProbeSettings = field(default_factory=replicas.ProbeSettings)
    prometheus_url: str | None = None
    """Prometheus base URL custom signals and rollouts' custom metrics are queried at. None: a
    Rollout with custom metrics is refused, and a custom signal is missing, saying so."""
    prometheus_timeout_s: float = 2.0
    """Seconds one PromQL query may take; a slower answer counts as no answer."""
    first_pass_s: float = 30.0
    """Seconds a starting (or newly elected) controller waits at most for its first reconcile
    of every policy and Rollout it found before it publishes route tables anyway (one whose
    reconcile keeps failing is then left out of them until it succeeds). Routers serve their
    last table meanwhile; a router that has none (new, or restarted) waits with them. Default
    30: a few retries of a failed GET, well inside a buffered request's timeout."""


@dataclass
class Policy:
    """One ScalingPolicy as the controller tracks it."""

    namespace: str
    name: str
    obj: dict[str, Any]
    spec: resources.ScalingPolicySpec | None = None
    problem: status.Condition | None = None
    replicas: replicas.KubeReplicas | None = None
    shape: capacity.ReplicaShape | None = None
    state_due: float = 0.0
    """When the decider's memory is next written (wall clock); 0: with the first status."""
    state_written: object = None
    """What the last memory written said, without its samples' times (decider.timeless)."""
    shown: tuple[object, ...] | None = None
    """What the status last written (or found unchanged) was made from: while it stays the
    same, the status is not built again."""
    last_desired: int | None = None
    last_failure: str | None = None

    @property
    def key(self) -> ports.Key | None:
        return (self.spec.service, self.spec.revision) if self.spec is not None else None

    @property
    def generation(self) -> int | None:
        value = self.obj.get("metadata", {}).get("generation")
        return int(value) if value is not None else None

    @property
    def service_named(self) -> str | None:
        """The service its spec names, before the spec is validated."""
        service = (self.obj.get("spec") or {}).get("service")
        return service if isinstance(service, str) else None

    def created(self) -> tuple[str, str]:
        """Creation time (RFC 3339, which sorts as text), then name: the older comes first."""
        return (str(self.obj.get("metadata", {}).get("creationTimestamp") or ""), self.name)


class StatusStore:
    """The StateStore of one namespace's core: a decider's memory lives in its ScalingPolicy's
    status, a rollout's in its Rollout's (for the generation it was made for)."""

    def __init__(self, controller: Controller, namespace: str) -> None:
        self._controller = controller
        self._namespace = namespace
        self.latest: dict[ports.StateKey, object] = {}

    def load(self, key: ports.StateKey, kind: type[ports.T]) -> ports.T | None:
        if key in self.latest:
            state = self.latest[key]
            return state if isinstance(state, kind) else None
        saved, where = self._saved(key)
        if saved is None:
            return None
        try:
            return codec.load(kind, saved)
        except pydantic.ValidationError:
            logger.warning("%s: its saved state is not readable; starting afresh", where)
            return None

    def _saved(self, key: ports.StateKey) -> tuple[Any, str]:
        if key.kind == "rollout":
            obj = self._controller.rollout_for(self._namespace, key.service)
            status = (obj or {}).get("status") or {}
            current = status.get("observedGeneration") == (obj or {}).get(
                "metadata", {}).get("generation")
            name = (obj or {}).get("metadata", {}).get("name")
            return (status.get("memory") if current else None), f"Rollout {name}"
        policy = self._controller.policy_for(self._namespace, key)
        saved = policy.obj.get("status", {}).get("decider") if policy is not None else None
        return saved, f"ScalingPolicy {policy.name if policy else '?'}"

    def save(self, key: ports.StateKey, state: object) -> None:
        self.latest[key] = state

    def drop(self, key: ports.StateKey) -> None:
        self.latest.pop(key, None)


class Capacity:
    """The Capacity of one namespace's core: free GPUs for a revision's pod shape."""

    def __init__(self, controller: Controller, namespace: str) -> None:
        self._controller = controller
        self._namespace = namespace

    def free_gpus(self, target: ports.RevisionTarget) -> int | None:
        policy = target.policy
        if not policy.gpus_per_replica:
            return None
        owner = self._controller.policy_for(self._namespace,
                                            ports.StateKey.scaling(target.key))
        nodes = self._controller.nodes()
        if owner is None or owner.replicas is None or nodes is None:
            return None
        shape = owner.shape or capacity.ReplicaShape(policy.gpus_per_replica, policy.gpu_resource)
        return capacity.capacity(
            nodes, self._controller.index.capacity_pods.values(), shape,
            [pod.key for pod in owner.replicas.members()]).free_gpus


@dataclass
class NamespaceControl:
    core: core.Core
    router_client: routers.RouterClient
    store: StatusStore
    rollouts: driver.Rollouts
    task: asyncio.Task[None] | None = None
    token: str | None = None
    fetching_token: bool = False
    router_set: tuple[routers.Router, ...] = ()


class Controller:
    """Every namespace's control core, fed by informers; see the module docstring."""

    def __init__(self, api: client.KubeApi, session: aiohttp.ClientSession,
                 settings: ControllerSettings = ControllerSettings(),
                 wall: Callable[[], float] = time.time,
                 elector: leader.Elector | None = None) -> None:
        self.elector = elector
        if elector is not None:  # every writer below writes through the fence
            api = leader.FencedApi(api, elector)
        self.api = api
        self.session = session
        self.settings = settings
        self.wall = wall
        namespace = settings.namespace
        self.policies_informer = informer.Informer(api, client.SCALING_POLICIES,
                                                   namespace=namespace)
        self.pods_informer = informer.Informer(api, client.PODS, namespace=namespace)
        self.nodes_informer: informer.Informer | None = informer.Informer(api, client.NODES)
        self.isvc_informer: informer.Informer | None = informer.Informer(
            api, client.INFERENCE_SERVICES, namespace=namespace)
        self.rollouts_informer = informer.Informer(api, client.ROLLOUTS, namespace=namespace)
        self.index = replicas.PodIndex()
        self.prober = replicas.Prober(session, self._probed, settings.probe, wall,
                                      cold_start=self._pod_cold_start)
        self.writer = status.StatusWriter(api, client.SCALING_POLICIES)
        self.rollout_writer = status.StatusWriter(api, client.ROLLOUTS)
        self.rollout_generations: dict[tuple[str, str], int | None] = {}
        """(namespace, service) → the generation of the Rollout its driver runs."""
        self.rollout_problems: dict[tuple[str, str], status.Condition] = {}
        """(namespace, name) → why a Rollout is not running."""
        self.events = status.EventRecorder(api)
        self.namespaces: dict[str, NamespaceControl] = {}
        self.policies: dict[tuple[str, str], Policy] = {}
        self.metrics = (prometheus.PrometheusSource(settings.prometheus_url,
                                                    settings.prometheus_timeout_s)
                        if settings.prometheus_url else None)
        self._dirty: workqueue.WorkQueue[tuple[str, str, str]] = workqueue.WorkQueue()
        """(kind, namespace, name) of objects to reconcile: "policy" or "rollout"."""
        self._enforced: dict[tuple[str, str, str], Policy] = {}
        """(namespace, service, revision) → the policy enforced for it."""
        self._status_slots = asyncio.Semaphore(settings.status_writes)
        self._rollouts_lock = asyncio.Lock()
        self._nodes_cache: tuple[str, list[capacity.Node]] = ("", [])
        self._tasks: list[asyncio.Task[None]] = []
        self._first_pass: set[tuple[str, str, str]] | None = None
        """Keys of the objects found when this controller began to act, not yet reconciled
        once (or deleted since); None before it acts (a standby's deletes count for nothing)."""
        self._first_pass_timer: asyncio.TimerHandle | None = None
        self._whole = asyncio.Event()
        """Set once ``_first_pass`` is empty: the cores publish from then on, so routers
        keep their table until every revision they serve is known again."""

    # running

    async def run(self) -> None:
        """Watch, decide and act until cancelled."""
        if not await self._has_inference_services():
            self.isvc_informer = None
        if not await self._may_watch_nodes():
            self.nodes_informer = None
        informers = self._informers()
        if self.isvc_informer is not None:
            self.isvc_informer.add_handler(self._on_isvc)
        self.pods_informer.add_handler(self._on_pod)
        self.policies_informer.add_handler(self._on_policy)
        self.rollouts_informer.add_handler(self._on_rollout)
        try:
            self._tasks = [asyncio.create_task(i.run(), name=f"informer-{i.kind.plural}")
                           for i in informers]
            await asyncio.gather(*(i.synced.wait() for i in informers))
            logger.info("watching %s: %d ScalingPolicies, %d pods, %d nodes",
                        self.settings.namespace or "all namespaces", len(self.policies_informer),
                        len(self.pods_informer), len(self.nodes_informer or ()))
            if self.elector is not None:  # a standby keeps its caches warm, acts once elected
                await self.elector.elected.wait()
                logger.info("leading: %s", self.elector.term)
            self._first_pass = {("policy", *key) for key in self.policies} | {
                ("rollout", r["metadata"].get("namespace", ""), r["metadata"].get("name", ""))
                for r in self.rollouts_informer}
            self._passed()
            self._first_pass_timer = asyncio.get_running_loop().call_later(
                self.settings.first_pass_s, self._first_pass_due)
            self._tasks += [asyncio.create_task(self._reconcile_forever(), name=f"reconcile-{i}")
                            for i in range(self.settings.reconcile_workers)]
            self._tasks.append(asyncio.create_task(self._status_forever(), name="status"))
            await asyncio.gather(*self._tasks)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._first_pass_timer is not None:
            self._first_pass_timer.cancel()
        tasks = self._tasks + [n.task for n in self.namespaces.values() if n.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._dirty.close()
        for control in self.namespaces.values():
            await control.rollouts.stop()
            await control.core.close()
        await self.prober.close()
        await self.events.close()

    def _informers(self) -> list[informer.Informer]:
        return [self.pods_informer, self.policies_informer, self.rollouts_informer,
                *([self.nodes_informer] if self.nodes_informer is not None else []),
                *([self.isvc_informer] if self.isvc_informer is not None else [])]

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self._informers())

    def healthy(self) -> bool:
        """The caches are current: the last list or watch of every informer succeeded."""
        return all(i.last_error is None for i in self._informers())

    async def _has_inference_services(self) -> bool:
        try:
            await self.api.list(client.INFERENCE_SERVICES, namespace=self.settings.namespace)
        except client.NotFound:
            logger.info("no InferenceService CRD: only Deployments can be targets")
            return False
        except client.KubeError:
            return True  # the informer retries; the CRD is probably there
        return True

    async def _may_watch_nodes(self) -> bool:
        """Whether the RBAC lets it watch nodes (in namespaced mode it may not): without, GPU
        capacity is unknown and nothing else changes."""
        try:
            allowed = all([await self.api.allowed(verb, client.NODES)
                           for verb in ("list", "watch")])
        except client.KubeError:
            return True  # the informer retries; the grant is probably there
        if not allowed:
            logger.warning("may not watch nodes (manifests/rbac/namespaced/nodes.yaml grants it):"
                           " GPU capacity is unknown, so a policy with gpusPerReplica may ask for"
                           " replicas that no node can hold")
        return allowed

    # reading the caches

    def nodes(self) -> list[capacity.Node] | None:
        """The nodes' GPU inventory; None when the controller may not see nodes."""
        if self.nodes_informer is None:
            return None
        version = self.nodes_informer.resource_version or ""
        if self._nodes_cache[0] != version:
            self._nodes_cache = (version, [inventory.node(n) for n in self.nodes_informer])
        return self._nodes_cache[1]

    def rollout_for(self, namespace: str, service: str) -> dict[str, Any] | None:
        """The Rollout of ``service`` in ``namespace`` (the newest, if several)."""
        found = [obj for obj in self.rollouts_informer
                 if obj.get("metadata", {}).get("namespace") == namespace
                 and (obj.get("spec") or {}).get("service") == service]
        return max(found, key=lambda o: o["metadata"].get("creationTimestamp", ""),
                   default=None)

    def policy_for(self, namespace: str, key: ports.StateKey) -> Policy | None:
        """The policy enforced for ``key``'s revision in ``namespace``."""
        return self._enforced.get((namespace, key.service, key.revision))

    def _pod_cold_start(self, pod: pods.PodView) -> float | None:
        """The learned cold start of the revision ``pod`` belongs to, None when unknown."""
        for (namespace, *key), policy in self._enforced.items():
            if namespace != pod.namespace or policy.replicas is None \
                    or not policy.replicas.owns(pod):
                continue
            control = self.namespaces.get(namespace)
            revision = control.core.revisions.get((key[0], key[1])) if control else None
            decision = revision.decision if revision is not None else None
            return decision.cold_start_s if decision is not None else None
        return None

    def _index(self, policy: Policy) -> None:
        """Enforced: ``policy_for`` finds it."""
        if policy.key is not None:
            self._enforced[(policy.namespace, *policy.key)] = policy

    def _unindex(self, policy: Policy) -> None:
        if policy.key is not None and self._enforced.get(
                (policy.namespace, *policy.key)) is policy:
            del self._enforced[(policy.namespace, *policy.key)]

    # informer handlers: cheap, no I/O; the work goes to a queue or a task

    def _on_policy(self, change: informer.Change) -> None:
        metadata = change.object.get("metadata", {})
        key = (metadata.get("namespace", ""), metadata.get("name", ""))
        if change.type is informer.ChangeType.DELETED:
            self._forget(key)
            return
        policy = self.policies.get(key)
        if policy is None:
            policy = self.policies[key] = Policy(*key, change.object)
        else:
            old_generation = policy.generation
            policy.obj = change.object
            if policy.generation == old_generation and policy.spec is not None:
                return  # a status write of ours, or metadata: nothing to do
        self._dirty.add(("policy", *key))

    def _on_isvc(self, change: informer.Change) -> None:
        metadata = change.object.get("metadata", {})
        for key, policy in self.policies.items():
            ref = policy.spec.scale_target_ref if policy.spec else None
            if policy.namespace == metadata.get("namespace") and (
                    policy.problem is not None or (ref is not None and ref.kind ==
                                                   "InferenceService")):
                self._dirty.add(("policy", *key))

    def _on_rollout(self, change: informer.Change) -> None:
        metadata = change.object.get("metadata", {})
        key = (metadata.get("namespace", ""), metadata.get("name", ""))
        if change.type is informer.ChangeType.DELETED:
            self._passed(("rollout", *key))
            self._forget_rollout(change.object)
            return
        annotations = metadata.get("annotations") or {}
        old = change.old.get("metadata", {}) if change.old else {}
        if (change.type is informer.ChangeType.MODIFIED and COMMAND_ANNOTATION not in annotations
                and old.get("generation") == metadata.get("generation")
                and key not in self.rollout_problems):
            return  # a status write of ours: nothing to do
        self._dirty.add(("rollout", *key))

    def _on_pod(self, change: informer.Change) -> None:
        pod = change.object
        key = (pod.metadata.namespace or "", pod.metadata.name)
        if change.type is informer.ChangeType.DELETED:
            gone = self.index.drop(key)
            self.index.capacity_pods.pop(key, None)
            if gone is not None:
                self.prober.forget(gone)
        else:
            view = pods.view(pod)
            self.index.put(view)
            self.index.capacity_pods[key] = inventory.pod(pod)
            self.prober.update(view)
        control = self.namespaces.get(key[0])
        if control is None:
            return
        if (pod.metadata.labels or {}).get(ROUTER_NAME_LABEL) == ROUTER_NAME:
            self._routers_changed(key[0], control)
            if change.type is not informer.ChangeType.DELETED and not pods.view(pod).kubelet_ready:
                # A router is Ready only once it holds a table: one that runs and is not (new,
                # or its process restarted and lost its table) is sent the table again.
                control.core.republish()
        control.core.endpoints_changed()

    def _probed(self, pod: pods.PodView) -> None:
        control = self.namespaces.get(pod.namespace)
        if control is not None:
            control.core.endpoints_changed()

    # reconciling policies

    async def _reconcile_forever(self) -> None:
        """One worker of the reconcile queue; a failed key is retried after its own back-off
        while the workers go on with the others."""
        while True:
            item = await self._dirty.get()
            kind, namespace, name = item
            try:
                if kind == "rollout":
                    await self._reconcile_rollout(namespace, name)
                else:
                    policy = self.policies.get((namespace, name))
                    if policy is not None:
                        await self._reconcile(policy)
            except Exception as error:
                delay = self._dirty.retry(item)
                if isinstance(error, client.KubeError):
                    logger.warning("reconciling %s %s/%s: %s; again in %.1f s", kind, namespace,
                                   name, error, delay)
                else:
                    logger.exception("reconciling %s %s/%s failed; again in %.1f s", kind,
                                     namespace, name, delay)
            else:
                self._dirty.done(item)
                self._passed(item)

    async def _reconcile(self, policy: Policy) -> None:
        try:
            spec = resources.ScalingPolicySpec.model_validate(policy.obj.get("spec") or {})
        except pydantic.ValidationError as error:
            self._unmanage(policy, status.Condition(status.READY, False, "InvalidSpec",
                                                    validation.describe(error)))
            return
        problem = self._conflict(policy, spec)
        if problem is None and spec.scale_target_ref.kind == "InferenceService":
            problem = self._kserve_problem(policy.namespace, spec.scale_target_ref.name)
        if problem is not None:
            self._unmanage(policy, problem, spec)
            return
        deployment = spec.scale_target_ref.deployment
        try:
            scale = await self.api.get_scale(policy.namespace, deployment)
            workload = await self.api.get(client.DEPLOYMENTS, policy.namespace, deployment)
        except client.NotFound:
            self._unmanage(policy, status.Condition(
                status.READY, False, "TargetNotFound",
                f"Deployment {deployment} not found in {policy.namespace}"), spec)
            return
        owner = (workload.metadata.labels or {}).get("serving.kserve.io/inferenceservice")
        if owner and spec.scale_target_ref.kind == "Deployment":
            problem = self._kserve_problem(policy.namespace, owner)
        # Again after the GETs: another worker may have enforced a policy for the same
        # revision meanwhile (from here to _index nothing awaits).
        problem = problem or self._conflict(policy, spec)
        if problem is not None:
            self._unmanage(policy, problem, spec)
            return
        selector = (scale.status.selector if scale.status is not None else None) or ""
        target = replicas.ScaleTarget(policy.namespace, deployment, selector)
        template = workload.spec.template.spec if workload.spec and workload.spec.template \
            else None
        shape = (inventory.replica_shape(template, spec.gpu_resource, spec.gpus_per_replica)
                 if template is not None and spec.gpus_per_replica else None)
        control = self._namespace(policy.namespace)
        revision = ports.RevisionTarget(service=spec.service, revision=spec.revision,
                                        policy=spec, weight=self._weight(policy, spec),
                                        namespace=policy.namespace)
        old_key, old_target = policy.key, (policy.replicas.target if policy.replicas else None)
        if old_key is not None and (old_key != (spec.service, spec.revision)
                                    or old_target != target):
            control.core.remove(old_key, keep_replicas=True)
            policy.replicas = None
        self._unindex(policy)
        policy.spec, policy.problem, policy.shape = spec, None, shape
        self._index(policy)
        if policy.replicas is None:
            spec_replicas = (scale.spec.replicas if scale.spec is not None else 0) or 0
            policy.replicas = replicas.KubeReplicas(self.api, target, spec_replicas, self.index,
                                                    self.prober, healthy=self.healthy)
            control.core.upsert(revision, policy.replicas)
            logger.info("ScalingPolicy %s/%s: %s/%s scales Deployment %s (selector %s)",
                        policy.namespace, policy.name, spec.service, spec.revision, deployment,
                        selector)
        else:
            control.core.upsert(revision)

    def _conflict(self, policy: Policy, spec: resources.ScalingPolicySpec) -> \
            status.Condition | None:
        other = self._enforced.get((policy.namespace, spec.service, spec.revision))
        if other is not None and other is not policy:
            return status.Condition(
                status.READY, False, "DuplicateRevision",
                f"ScalingPolicy {other.name} already scales {spec.service}/{spec.revision}")
        return None

    def _kserve_problem(self, namespace: str, name: str) -> status.Condition | None:
        """Why an InferenceService's predictor cannot be scaled by sluice, or None."""
        isvc = self.isvc_informer.get(namespace, name) if self.isvc_informer is not None else None
        if isvc is None:
            where = "" if self.isvc_informer is not None else " (KServe's CRD is not installed)"
            return status.Condition(status.READY, False, "TargetNotFound",
                                    f"InferenceService {name} not found in {namespace}{where}")
        annotations = isvc.get("metadata", {}).get("annotations") or {}
        autoscaler = annotations.get(resources.AUTOSCALER_CLASS_ANNOTATION, "hpa")
        if autoscaler != resources.EXTERNAL_AUTOSCALER:
            return status.Condition(
                status.READY, False, "AutoscalerConflict",
                f"InferenceService {name} has {resources.AUTOSCALER_CLASS_ANNOTATION}: "
                f"{autoscaler!r}: KServe's own {'HPA' if autoscaler == 'hpa' else 'reconciler'} "
                f"would fight sluice over its replicas; set it to "
                f"{resources.EXTERNAL_AUTOSCALER!r}")
        return None

    def _weight(self, policy: Policy, spec: resources.ScalingPolicySpec) -> int:
        """A revision's weight until a rollout sets one: what its Rollout's status says, else
        what its own status says (a Rollout may be deleted once it is done), so a restarted
        controller publishes the weights the routers already serve; else the revision of the
        service's oldest policy takes the traffic unless another has it, and later ones (a
        canary) get none."""
        namespace = policy.namespace
        control = self.namespaces.get(namespace)
        if control is not None and control.core.has((spec.service, spec.revision)):
            return control.core.weight((spec.service, spec.revision))
        recorded = _rollout_weights(self.rollout_for(namespace, spec.service))
        if spec.revision in recorded:
            return recorded[spec.revision]
        recorded_own = policy.obj.get("status") or {}
        own = recorded_own.get("weight")
        if (isinstance(own, int) and 0 <= own <= rollout.FULL_WEIGHT
                and recorded_own.get("observedGeneration") == policy.generation):
            return own  # written for this spec: an edited one may name another revision
        # The service's first policy takes the traffic, decided by creation (then name), not
        # by which reconcile ran first: two applied at once would otherwise race for it.
        first = min((p for p in self.policies.values() if p is policy or (
                        p.namespace == namespace and p.problem is None
                        and p.service_named == spec.service)),
                    key=Policy.created, default=policy)
        taken = control is not None and any(
            control.core.weight((spec.service, r)) for r in control.core.revisions_of(spec.service))
        return 100 if first is policy and not taken else 0

    def _unmanage(self, policy: Policy, problem: status.Condition,
                  spec: resources.ScalingPolicySpec | None = None) -> None:
        """The policy cannot be enforced: stop managing its revision, say why."""
        if policy.key is not None and policy.namespace in self.namespaces:
            self.namespaces[policy.namespace].core.remove(policy.key, keep_replicas=True)
        self._unindex(policy)
        policy.spec, policy.replicas, policy.problem = spec, None, problem
        logger.info("ScalingPolicy %s/%s not enforced: %s", policy.namespace, policy.name,
                    problem.message)

    def _passed(self, *items: tuple[str, str, str]) -> None:
        if self._first_pass is None:
            return
        self._first_pass.difference_update(items)
        if not self._first_pass:
            self._whole.set()

    def _first_pass_due(self) -> None:
        if self._first_pass and not self._whole.is_set():
            logger.warning("publishing route tables without %s: not reconciled within %g s",
                           ", ".join(f"{kind} {ns}/{name}" for kind, ns, name in
                                     sorted(self._first_pass)), self.settings.first_pass_s)
            self._first_pass.clear()
            self._whole.set()

    def _forget(self, key: tuple[str, str]) -> None:
        self._passed(("policy", *key))
        policy = self.policies.pop(key, None)
        self.writer.forget(*key)
        if policy is not None:
            self._unindex(policy)
        if policy is not None and policy.key is not None and policy.problem is None:
            control = self.namespaces.get(policy.namespace)
            if control is not None:
                control.core.remove(policy.key, keep_replicas=True)

    # rollouts

    async def _reconcile_rollout(self, namespace: str, name: str) -> None:
        """One Rollout at a time: two of one service must not both start a driver."""
        async with self._rollouts_lock:
            await self._reconcile_one_rollout(namespace, name)

    async def _reconcile_one_rollout(self, namespace: str, name: str) -> None:
        obj = self.rollouts_informer.get(namespace, name)
        if obj is None:
            return
        key = (namespace, name)
        generation = obj["metadata"].get("generation")
        try:
            policy = rollout.parse_document(obj)
        except validation.Invalid as error:
            self.rollout_problems[key] = status.Condition(status.PROGRESSING, False,
                                                          "InvalidSpec", str(error))
            return
        control = self._namespace(namespace)
        service = policy.service
        running = control.rollouts.drivers.get(service)
        if running is not None and self.rollout_generations.get((namespace, service)) \
                == generation:
            await self._command(obj, control, service)
            return
        missing = [r for r in (policy.stable_revision, policy.canary_revision)
                   if not control.core.has((service, r))]
        if missing:  # its ScalingPolicies are not enforced (yet): try again shortly
            self.rollout_problems[key] = status.Condition(
                status.PROGRESSING, False, "RevisionsNotReady",
                f"no enforced ScalingPolicy for {service}/{', '.join(missing)} yet")
            self._dirty.add_after(("rollout", namespace, name), 2.0)
            return
        if running is not None:  # the spec changed: the rollout starts over
            control.rollouts.forget(service)
        # Its memory from its status, if that was written for this generation: a new Rollout,
        # or a changed spec, starts afresh.
        control.store.drop(ports.StateKey.rollout(service))
        memory = control.store.load(ports.StateKey.rollout(service), driver.Memory)
        try:
            if memory is not None and memory.state.phase.terminal:
                control.rollouts.adopt(obj, memory)
            else:
                await control.rollouts.start(obj, resume=memory is not None, wait=False)
        except driver.RolloutError as error:
            self.rollout_problems[key] = status.Condition(
                status.PROGRESSING, False, "Refused", str(error))
            self._dirty.add_after(("rollout", namespace, name), 5.0)
            return
        self.rollout_problems.pop(key, None)
        self.rollout_generations[(namespace, service)] = generation
        logger.info("Rollout %s/%s: %s %s → %s%s", namespace, name,
                    "resumed" if memory is not None else "started", policy.stable_revision,
                    policy.canary_revision,
                    f" at step {memory.state.step + 1}, {memory.state.canary_weight} %"
                    if memory is not None else "")
        if memory is not None:
            leading = f" by {self.elector.settings.identity}" if self.elector else ""
            self.events.record(obj, "Resumed", f"resumed{leading} where it was: step "
                               f"{memory.state.step + 1}/{len(policy.steps)}, "
                               f"{policy.canary_revision} at {memory.state.canary_weight} %, "
                               f"{memory.state.phase}", action="Rollout")
        await self._command(obj, control, service)

    async def _command(self, obj: dict[str, Any], control: NamespaceControl,
                       service: str) -> None:
        """Apply the command a person left on the Rollout, then take it off."""
        metadata = obj["metadata"]
        command = (metadata.get("annotations") or {}).get(COMMAND_ANNOTATION)
        if command is None:
            return
        # Reconciled but for the command, which waits for its weights to be published: a
        # first pass that waited for it in turn would hold both for the pass's whole timeout.
        self._passed(("rollout", metadata["namespace"], metadata["name"]))
        try:
            if command == rollout.RESTORE:
                await control.rollouts.restore(service)
            else:
                await control.rollouts.get(service).command(rollout.Command(command))
            note = f"{command} applied"
        except ValueError:
            note = (f"{command!r} is not a command: use one of "
                    f"{', '.join([*(c.value for c in rollout.Command), rollout.RESTORE])}")
        except driver.RolloutError as error:
            note = f"{command} refused: {error}"
        self.events.record(obj, "Command", note, action="Command")
        with contextlib.suppress(client.KubeError):
            await self.api.patch(client.ROLLOUTS, metadata["namespace"], metadata["name"],
                                 {"metadata": {"annotations": {COMMAND_ANNOTATION: None}}})

    def _forget_rollout(self, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata", {})
        namespace, service = metadata.get("namespace", ""), (obj.get("spec") or {}).get("service")
        self.rollout_problems.pop((namespace, metadata.get("name", "")), None)
        self.rollout_writer.forget(namespace, metadata.get("name", ""))
        control = self.namespaces.get(namespace)
        if control is not None and service and self.rollout_for(namespace, service) is None:
            control.rollouts.forget(service)
            self.rollout_generations.pop((namespace, service), None)

    def _rollout_event(self, namespace: str, service: str, reason: str, note: str,
                       kind: str) -> None:
        obj = self.rollout_for(namespace, service)
        if obj is not None:
            self.events.record(obj, reason, note, kind=kind, action="Rollout")

    async def _write_rollout_status(self, obj: dict[str, Any]) -> None:
        metadata = obj["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        previous = (obj.get("status") or {}).get("conditions") or []
        problem = self.rollout_problems.get((namespace, name))
        control = self.namespaces.get(namespace)
        service = (obj.get("spec") or {}).get("service", "")
        running = control.rollouts.drivers.get(service) if control else None
        if self.rollout_generations.get((namespace, service)) != metadata.get("generation"):
            running = None  # the driver runs an older spec (the edit is not reconciled yet)
        body: dict[str, Any] = {"observedGeneration": metadata.get("generation")}
        if problem is not None or running is None:
            conditions = [problem or status.Condition(status.PROGRESSING, False, "Pending",
                                                      "waiting for the controller")]
        else:
            state = running.state
            last = running.verdicts[-1] if running.verdicts else None
            body.update(phase=str(state.phase), step=state.step, weight=state.canary_weight,
                        verdict=last["outcome"] if last else None,
                        message=(state.reason or (running.action.reason if running.action
                                                  else ""))[:4096],
                        lastVerdicts=status.last_verdicts(last),
                        memory=codec.dump(running.memory))
            conditions = status.rollout_conditions(state, running.action)
        body["conditions"] = status.rendered(conditions, previous, self.wall(),
                                             metadata.get("generation"))
        written = status.validated_rollout(body)
        if (problem is not None or running is None) and not _current(obj):
            # What it says of a run is of an older spec: taken off (a merge patch's nulls), so
            # no one resumes that run, or serves its weights, for this spec.
            written.update(dict.fromkeys(ROLLOUT_RUN_FIELDS))
        await self.rollout_writer.write(namespace, name, written)

    # namespaces and their routers

    def _namespace(self, namespace: str) -> NamespaceControl:
        control = self.namespaces.get(namespace)
        if control is None:
            client_ = routers.RouterClient([], self.session)
            publisher: ports.RoutePublisher = client_ if self.elector is None else \
                leader.FencedPublisher(client_, self.elector)
            store = StatusStore(self, namespace)
            control_core = core.Core(capacity=Capacity(self, namespace), publisher=publisher,
                                     load=client_, store=store, tick_s=self.settings.tick_s,
                                     signals_=self.metrics, whole=self._whole)
            control = NamespaceControl(control_core, client_, store, driver.Rollouts(
                control_core, client_, self.metrics, metrics_missing=(
                    "custom metrics need a Prometheus: start the controller with "
                    "--prometheus-url"),
                on_event=lambda service, reason, note, kind: self._rollout_event(
                    namespace, service, reason, note, kind)))
            self.namespaces[namespace] = control
            control.task = asyncio.create_task(control.core.run(), name=f"core-{namespace}")
            self._routers_changed(namespace, control)
        return control

    def _routers_changed(self, namespace: str, control: NamespaceControl) -> None:
        found = []
        for pod in self.pods_informer:
            metadata = pod.metadata
            labels = metadata.labels or {}
            if metadata.namespace != namespace or labels.get(ROUTER_NAME_LABEL) != ROUTER_NAME:
                continue
            ip = pod.status.pod_ip if pod.status else None
            if ip is None or metadata.deletion_timestamp is not None or (
                    pod.status.phase != "Running"):
                continue
            service = labels.get(SERVICE_LABEL)
            found.append((pods.url(ip, _admin_port(pod)),
                          frozenset({service}) if service else None))
        if not found:
            self._set_routers(control, ())
            return
        if control.token is None:
            if not control.fetching_token:
                control.fetching_token = True
                self._tasks.append(asyncio.get_running_loop().create_task(
                    self._fetch_token(namespace, control)))
            return
        token = control.token
        self._set_routers(control, tuple(routers.Router(url, token, services)
                                         for url, services in sorted(found, key=str)))

    def _set_routers(self, control: NamespaceControl, found: tuple[routers.Router, ...]) -> None:
        if found != control.router_set:
            control.router_set = found
            control.router_client.set_routers(list(found))
            control.core.republish()

    async def _fetch_token(self, namespace: str, control: NamespaceControl) -> None:
        """The routers' admin token, from their Secret; retried until it can be read."""
        while control.token is None:
            try:
                secret = await self.api.get(client.SECRETS, namespace, ROUTER_TOKEN_SECRET)
                encoded = (secret.data or {}).get(ROUTER_TOKEN_KEY)
                if encoded:
                    control.token = base64.b64decode(encoded).decode().strip()
                    break
                logger.warning("Secret %s/%s has no %r", namespace, ROUTER_TOKEN_SECRET,
                               ROUTER_TOKEN_KEY)
            except client.KubeError as error:
                logger.warning("reading the routers' token in %s: %s", namespace, error)
            await asyncio.sleep(2.0)
        self._routers_changed(namespace, control)

    # status

    async def _status_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.status_interval_s)
            now = self.wall()
            writes = []
            for policy in list(self.policies.values()):
                try:
                    write = self._status_write(policy, now)
                except Exception:  # one policy's failure must not starve the others
                    logger.exception("the status of %s/%s failed", policy.namespace, policy.name)
                    continue
                if write is not None:
                    writes.append(write)
            writes += [self._write_rollout_status(obj) for obj in self.rollouts_informer]
            for outcome in await asyncio.gather(*writes, return_exceptions=True):
                if isinstance(outcome, Exception):
                    logger.error("writing a status failed: %r", outcome)

    def _status_write(self, policy: Policy, now: float) -> Coroutine[Any, Any, None] | None:
        """The write of the policy's status, None when there is nothing to write: built only
        when something it shows changed (``Policy.shown``), sent only when it differs from what
        was written, or with the decider's memory when that is due (``_state``)."""
        revision = None
        if policy.problem is None and policy.key is not None and policy.replicas is not None:
            control = self.namespaces.get(policy.namespace)
            revision = control.core.revisions.get(policy.key) if control else None
        if revision is None:
            shown: tuple[object, ...] = (policy.problem, policy.generation,
                                         policy.obj.get("metadata", {}).get("resourceVersion"))
        else:
            assert policy.replicas is not None
            shown = (revision.decision, revision.weight, policy.replicas.counts(),
                     policy.replicas.failure, policy.replicas.unschedulable,
                     policy.replicas.desired, revision.signal,
                     policy.generation, policy.obj.get("metadata", {}).get("resourceVersion"))
        state = self._state(policy, now)
        if shown == policy.shown and state is None:
            return None
        body = self._status_body(policy, revision, now)
        if not self.writer.changed(policy.namespace, policy.name, body) and state is None:
            policy.shown = shown
            return None
        return self._write_status(policy, body, state, shown, now)

    def _status_body(self, policy: Policy, revision: core.Revision | None,
                     now: float) -> dict[str, Any]:
        previous = (policy.obj.get("status") or {}).get("conditions") or []
        body: dict[str, Any] = {"observedGeneration": policy.generation}
        if revision is None:
            conditions = status.conditions_for(None, ready=0, failure=None, unschedulable=None,
                                               problem=policy.problem or status.Condition(
                                                   status.READY, False, "Pending",
                                                   "resolving the target"))
        else:
            assert policy.replicas is not None and policy.spec is not None
            decision = revision.decision
            counts = policy.replicas.counts()
            failure = policy.replicas.failure
            conditions = status.conditions_for(
                decision, ready=counts.ready, failure=failure,
                unschedulable=policy.replicas.unschedulable, problem=None)
            signal = status.signal_condition(policy.spec, revision.signal)
            if signal is not None:
                conditions.append(signal)
            body.update(desired=policy.replicas.desired, ready=counts.ready,
                        weight=revision.weight,
                        reason=status.explain(decision, policy.spec) if decision else "")
            self._events(policy, decision, failure)
        body["conditions"] = status.rendered(conditions, previous, now, policy.generation)
        return status.validated(body)

    async def _write_status(self, policy: Policy, shown: dict[str, Any],
                            state: tuple[dict[str, Any], object] | None,
                            made_from: tuple[object, ...], now: float) -> None:
        body = shown if state is None else {**shown, "decider": state[0]}
        async with self._status_slots:  # never more than the pool can carry at once
            written = await self.writer.write(policy.namespace, policy.name, body)
        if not written:
            return  # evaluated and tried again next time
        policy.shown = made_from
        if state is not None:
            policy.state_written = state[1]
            policy.state_due = now + self.settings.state_interval_s * _spread(policy)

    def _state(self, policy: Policy, now: float) -> tuple[dict[str, Any], object] | None:
        """The decider's memory and what it says without its samples' times, when it is due
        to be written and says something the last one written did not."""
        if policy.key is None or now < policy.state_due:
            return None
        control = self.namespaces.get(policy.namespace)
        state = control.store.latest.get(ports.StateKey.scaling(policy.key)) if control else None
        if state is None:
            return None
        said = decider.timeless(state) if isinstance(state, decider.DeciderState) else state
        if said == policy.state_written:
            policy.state_due = now + self.settings.state_interval_s * _spread(policy)
            return None
        return codec.dump(state), said

    def _events(self, policy: Policy, decision: decider.ScalingDecision | None,
                failure: str | None) -> None:
        assert policy.replicas is not None and policy.spec is not None
        desired = policy.replicas.desired
        if policy.last_desired is not None and desired != policy.last_desired:
            reason = "ScaledUp" if desired > policy.last_desired else "ScaledDown"
            why = status.explain(decision, policy.spec) if decision is not None else ""
            self.events.record(policy.obj, reason, f"{policy.replicas.target.deployment}: "
                               f"{policy.last_desired} → {desired} replicas; {why}")
        policy.last_desired = desired
        if failure and failure != policy.last_failure:
            self.events.record(policy.obj, "ReplicaFailed", failure, kind="Warning",
                               action="Observe")
        policy.last_failure = failure


def _spread(policy: Policy) -> float:
    """A factor between 0.75 and 1.25, fixed per policy: spreads the memories' writes."""
    return 0.75 + 0.5 * (zlib.crc32(f"{policy.namespace}/{policy.name}".encode()) / 2**32)


def _current(obj: dict[str, Any]) -> bool:
    """Whether a Rollout's status was written for its spec as it is now."""
    observed = (obj.get("status") or {}).get("observedGeneration")
    return bool(observed == obj.get("metadata", {}).get("generation"))


def _rollout_weights(obj: dict[str, Any] | None) -> dict[str, int]:
    """The weights a Rollout's status says its revisions have; empty before it has any, or
    while they are of an older spec."""
    if obj is None or not _current(obj):
        return {}
    spec, recorded = obj.get("spec") or {}, obj.get("status") or {}
    stable, canary = spec.get("stableRevision"), spec.get("canaryRevision")
    phase = recorded.get("phase")
    if not stable or not canary or phase is None:
        return {}
    if phase == str(progression.Phase.PROMOTED):
        return {canary: rollout.FULL_WEIGHT, stable: 0}
    if phase in (str(progression.Phase.ROLLED_BACK), str(progression.Phase.FAILED)):
        return {stable: rollout.FULL_WEIGHT, canary: 0}
    weight = int(recorded.get("weight") or 0)
    return {canary: weight, stable: rollout.FULL_WEIGHT - weight}


def _admin_port(pod: Any) -> int:
    for container in (pod.spec.containers if pod.spec else None) or []:
        for port in container.ports or []:
            if port.name == ADMIN_PORT_NAME:
                return int(port.container_port)
    return DEFAULT_ADMIN_PORT


async def _serve_health(synced: Callable[[], bool], listen: str) -> web.AppRunner:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready = synced()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host or "0.0.0.0", int(port)).start()
    return runner


@dataclass(frozen=True)
class Invocation:
    """What ``sluice controller``'s arguments ask for."""

    client: client.ClientSettings
    settings: ControllerSettings
    leader_elect: bool = True
    lease_namespace: str | None = None


def parse(argv: list[str]) -> Invocation:
    parser = argparse.ArgumentParser(
        prog="sluice controller",
        description="Run the sluice controller against a cluster: ScalingPolicies in, replica "
                    "counts (through /scale), route tables, status and Events out.")
    parser.add_argument("--kubeconfig", type=Path,
                        help="kubeconfig (default: in-cluster ServiceAccount, else $KUBECONFIG "
                             "or ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: its current one)")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="manage this namespace only")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="manage every namespace (the default)")
    parser.add_argument("--tick", type=float, default=1.0, help="seconds between decisions")
    parser.add_argument("--no-leader-elect", dest="leader_elect", action="store_false",
                        help="act without a Lease (one replica only; default: elect a leader)")
    parser.add_argument("--lease-namespace", help="where the leader election's Lease lives "
                        "(default: the controller's own namespace)")
    parser.add_argument("--prometheus-url", help="Prometheus base URL for ScalingPolicies' "
                        "custom signals and rollouts' custom metrics, e.g. "
                        "http://prometheus.monitoring:9090")
    parser.add_argument("--health-listen", default="0.0.0.0:8080",
                        help="HOST:PORT for /healthz and /readyz, or 'off' (default %(default)s)")
    args = parser.parse_args(argv)
    if not 0.1 <= args.tick <= 10:
        parser.error(f"--tick: between 0.1 and 10 seconds, got {args.tick:g}")
    settings = ControllerSettings(
        namespace=args.namespace, tick_s=args.tick, prometheus_url=args.prometheus_url,
        health_listen=None if args.health_listen == "off" else args.health_listen)
    return Invocation(client.ClientSettings(kubeconfig=args.kubeconfig, context=args.context),
                      settings, args.leader_elect, args.lease_namespace)


def main(argv: list[str]) -> int:
    invocation = parse(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s sluice-controller: %(message)s")
    import uvloop
    return uvloop.run(_run(invocation.client, invocation.settings, invocation.leader_elect,
                           invocation.lease_namespace))


async def _run(client_settings: client.ClientSettings, settings: ControllerSettings,
               leader_elect: bool = True, lease_namespace: str | None = None) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        api = await client.connect(client_settings)
    except client.ConfigError as error:
        print(f"sluice controller: {error}", file=sys.stderr)
        return 2
    async with contextlib.AsyncExitStack() as resources_:
        resources_.push_async_callback(api.close)
        session = await resources_.enter_async_context(aiohttp.ClientSession())
        current: list[Controller] = []
        if settings.health_listen:
            health = await _serve_health(lambda: bool(current) and current[-1].synced(),
                                         settings.health_listen)
            resources_.push_async_callback(health.cleanup)
        while True:  # one term per turn: a leader that loses its Lease starts again as standby
            elector = leader.Elector(api, leader.LeaderSettings(
                namespace=lease_namespace or api.namespace)) if leader_elect else None
            controller = Controller(api, session, settings, elector=elector)
            current[:] = [controller]
            if elector is not None:
                elector.start()
            running = asyncio.create_task(controller.run())
            waits = [running, asyncio.create_task(stopping.wait())]
            if elector is not None:
                waits.append(asyncio.create_task(elector.lost.wait()))
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            deposed = elector is not None and elector.lost.is_set() and not stopping.is_set()
            for task in waits:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            if elector is not None:  # every writer has stopped: release the Lease
                await elector.stop()
            if deposed:
                # Every writer of this term is stopped (and fenced before that); what it knew
                # is in the resources' status, so a fresh standby picks up from there.
                logger.warning("no longer leading (%s); starting again as a standby",
                               elector.term if elector else "")
                continue
            if running.done() and not running.cancelled() and running.exception():
                logger.error("the controller stopped: %r", running.exception())
                return 1
            return 0
