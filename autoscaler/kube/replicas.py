"""A revision's replicas on Kubernetes: a Deployment scaled through ``/scale``, its pods watched.

``KubeReplicas`` is the Replicas of control/ports.py for one ScalingPolicy's target:

- counts, endpoints and cold starts come from the namespace's pods (one informer for all of
  them, ``PodIndex``), sorted to the revision by the selector its ``/scale`` returns;
- a pod is an endpoint once *sluice* has seen its readiness path answer (``Prober``, as
  Knative's activator probes new pods: the kubelet's Ready lags by its probe period, a second or
  more), or once the kubelet says Ready; after the kubelet has said Ready once, it decides. A
  pod with a deletionTimestamp, or whose container is crash-looping, is none at once;
- ``scale`` patches ``/scale`` from a task of its own, at once (a poke reaches the apiserver
  within milliseconds) and coalesced (one request in flight, always for the latest count);
- while the apiserver is unreachable nothing is scaled down: missing data is never a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp

from autoscaler.control import ports
from autoscaler.kube import client, pods, selectors
from policies import capacity

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeSettings:
    first_interval_s: float = 0.02
    """Seconds between the first probes of a new pod. Default 0.02: a model server that has just
    started listening joins within a few tens of milliseconds."""
    fast_interval_s: float = 0.05
    """Seconds between probes at most while the pod is expected to come up (``fast_for``).
    Default 0.05: a model server that starts listening is found within 50 ms, at a cost of 20
    refused connects a second (~50 us each) per pod starting."""
    fast_floor_s: float = 10.0
    """Seconds from the pod's creation it is probed fast at least, whatever its revision's
    learned cold start (unknown before its first replica was ready). Default 10: most model
    servers of a few GB listen within it."""
    fast_cold_starts: float = 2.0
    """The pod is probed fast until it is this many of its revision's learned cold starts old
    (created → ready). Default 2: a start twice as slow as usual is still met within 50 ms;
    past that the pod is stuck or slow for a reason, and the probe backs off."""
    max_interval_s: float = 1.0
    """Past the fast stretch the interval grows by half each miss up to this; a pod loading a
    model for minutes costs a probe a second, and the kubelet's own Ready arrives meanwhile."""
    timeout_s: float = 1.0
    """Seconds one probe may take."""


def probe_interval(previous_s: float, age_s: float, cold_start_s: float | None,
                   settings: ProbeSettings) -> float:
    """Seconds to wait after a probe that found no answer, before the next one.

    ``previous_s`` is the last wait (``settings.first_interval_s`` before any), ``age_s`` how
    long ago the pod was created, ``cold_start_s`` its revision's learned created → ready time
    (None: unknown). While the pod is expected to come up (``fast_for``) the wait grows by half
    each miss up to ``fast_interval_s``; after that up to ``max_interval_s``.
    """
    grown = previous_s * 1.5
    if age_s < fast_for(cold_start_s, settings):
        return min(grown, max(settings.fast_interval_s, settings.first_interval_s))
    return min(grown, settings.max_interval_s)


def fast_for(cold_start_s: float | None, settings: ProbeSettings) -> float:
    """Seconds from a pod's creation it is probed at most ``fast_interval_s`` apart."""
    if cold_start_s is None:
        return settings.fast_floor_s
    return max(settings.fast_floor_s, settings.fast_cold_starts * cold_start_s)


class Prober:
    """Probes the readiness path of pods that run but that the kubelet has not called Ready."""

    def __init__(self, session: aiohttp.ClientSession, on_ready: Callable[[pods.PodView], None],
                 settings: ProbeSettings = ProbeSettings(),
                 wall: Callable[[], float] = time.time,
                 cold_start: Callable[[pods.PodView], float | None] = lambda _: None) -> None:
        self._session = session
        self._on_ready = on_ready
        self._settings = settings
        self._wall = wall
        self._cold_start = cold_start
        """A pod's revision's learned cold start (created → ready), None when unknown."""
        self._probing: dict[str, asyncio.Task[None]] = {}
        self._ready_at: dict[str, tuple[float, int]] = {}
        """uid → (when its probe first answered, its restarts then)."""
        self._kubelet_spoke: set[str] = set()
        """Pods the kubelet has called Ready: from then on its word decides."""

    def ready(self, pod: pods.PodView) -> bool:
        """Whether the pod may take requests."""
        if not pod.live or pod.phase != "Running" or pod.ip is None or pod.failing:
            return False
        if pod.kubelet_ready or pod.uid in self._kubelet_spoke:
            return pod.kubelet_ready
        probed = self._ready_at.get(pod.uid)
        return probed is not None and probed[1] == pod.restarts

    def ready_since(self, pod: pods.PodView) -> float | None:
        probed = self._ready_at.get(pod.uid)
        return probed[0] if probed is not None else None

    def update(self, pod: pods.PodView) -> None:
        """A pod appeared or changed: start or stop probing it."""
        if pod.kubelet_ready:
            self._kubelet_spoke.add(pod.uid)
        probed = self._ready_at.get(pod.uid)
        if probed is not None and probed[1] != pod.restarts:
            del self._ready_at[pod.uid]  # restarted since: probe it again
        wanted = (pod.live and pod.phase == "Running" and pod.ip is not None
                  and pod.uid not in self._kubelet_spoke and pod.uid not in self._ready_at)
        running = self._probing.get(pod.uid)
        if wanted and running is None:
            task = asyncio.get_running_loop().create_task(self._probe(pod))
            self._probing[pod.uid] = task
            task.add_done_callback(lambda _: self._probing.pop(pod.uid, None))
        elif not wanted and running is not None:
            running.cancel()

    def forget(self, pod: pods.PodView) -> None:
        self._ready_at.pop(pod.uid, None)
        self._kubelet_spoke.discard(pod.uid)
        task = self._probing.pop(pod.uid, None)
        if task is not None:
            task.cancel()

    async def _probe(self, pod: pods.PodView) -> None:
        assert pod.ip is not None  # only pods with an IP are probed
        url = pods.url(pod.ip, pod.readiness_port, pod.readiness_path)
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_s)
        interval = self._settings.first_interval_s
        cold_start_s = self._cold_start(pod)
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with self._session.get(url, timeout=timeout,
                                             allow_redirects=False) as response:
                    if 200 <= response.status < 400:
                        self._ready_at[pod.uid] = (self._wall(), pod.restarts)
                        self._on_ready(pod)
                        return
            await asyncio.sleep(interval)
            interval = probe_interval(interval, self._wall() - pod.created_at, cold_start_s,
                                      self._settings)

    async def close(self) -> None:
        tasks = list(self._probing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class PodIndex:
    """Every watched pod as a PodView, with a change count per namespace so that revisions
    recompute their members only when their namespace's pods changed."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], pods.PodView] = {}
        self.capacity_pods: dict[tuple[str, str], capacity.Pod] = {}
        """The same pods as the GPU capacity function reads them."""
        self.changes: dict[str, int] = {}

    def put(self, pod: pods.PodView) -> None:
        self.pods[pod.key] = pod
        self.changes[pod.namespace] = self.changes.get(pod.namespace, 0) + 1

    def drop(self, key: tuple[str, str]) -> pods.PodView | None:
        pod = self.pods.pop(key, None)
        if pod is not None:
            self.changes[pod.namespace] = self.changes.get(pod.namespace, 0) + 1
        return pod

    def in_namespace(self, namespace: str) -> Iterable[pods.PodView]:
        return (p for p in self.pods.values() if p.namespace == namespace)


@dataclass(frozen=True)
class ScaleTarget:
    namespace: str
    deployment: str
    selector: str
    """The pods' selector, from ``/scale``'s status."""


class KubeReplicas:
    """One revision's Deployment and pods; see the module docstring."""

    def __init__(self, api: client.KubeApi, target: ScaleTarget, spec_replicas: int,
                 index: PodIndex, prober: Prober, *, healthy: Callable[[], bool],
                 retry_s: float = 1.0) -> None:
        self.api = api
        self.target = target
        self._matches = selectors.parse(target.selector)
        self.index = index
        self.prober = prober
        self._healthy = healthy
        self._retry_s = retry_s
        self.desired = spec_replicas
        self.applied = spec_replicas
        """The replicas ``/scale`` last said the Deployment has (spec.replicas)."""
        self._members: list[pods.PodView] = []
        self._members_at = -1
        self._counted_ready: set[str] = set()
        self._cold_starts: list[float] = []
        self._patching: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        """Why the last ``/scale`` patch failed, until one succeeds."""

    # reading

    def owns(self, pod: pods.PodView) -> bool:
        """Whether the Deployment's selector picks ``pod``."""
        return pod.namespace == self.target.namespace and self._matches(pod.labels)

    def members(self) -> list[pods.PodView]:
        """The live and dying pods the Deployment's selector picks, recomputed on change."""
        changes = self.index.changes.get(self.target.namespace, 0)
        if changes != self._members_at:
            self._members = [p for p in self.index.in_namespace(self.target.namespace)
                             if self._matches(p.labels)]
            self._members_at = changes
        return self._members

    def counts(self) -> ports.ReplicaCounts:
        members = self.members()
        ready = [p for p in members if self.prober.ready(p)]
        self._learn_cold_starts(ready)
        waiting = [p for p in members if p.live and not self.prober.ready(p)]
        placeable = sum(1 for p in waiting if p.unschedulable is None)
        unschedulable = len(waiting) - placeable
        # Asked for and not yet a pod (the Deployment controller is about to make it) counts
        # as starting; pods the scheduler cannot place do not: they wait for capacity.
        starting = max(placeable, self.desired - len(ready) - unschedulable)
        return ports.ReplicaCounts(ready=len(ready), starting=max(0, starting))

    def endpoints(self) -> list[str]:
        return sorted(p.endpoint for p in self.members()
                      if self.prober.ready(p) and p.endpoint is not None)

    @property
    def failure(self) -> str | None:
        for pod in self.members():
            if pod.live and pod.failing:
                return f"pod {pod.name}: {pod.failing}"
        return None

    @property
    def unschedulable(self) -> str | None:
        for pod in self.members():
            if pod.live and pod.unschedulable:
                return pod.unschedulable
        return None

    @property
    def restarts(self) -> int:
        return sum(p.restarts for p in self.members() if p.live)

    def take_cold_starts(self) -> tuple[float, ...]:
        self._learn_cold_starts([p for p in self.members() if self.prober.ready(p)])
        taken, self._cold_starts = tuple(self._cold_starts), []
        return taken

    def _learn_cold_starts(self, ready: list[pods.PodView]) -> None:
        """Created → ready (sluice's probe, else the first time it was seen ready)."""
        for pod in ready:
            if pod.uid not in self._counted_ready:
                self._counted_ready.add(pod.uid)
                since = self.prober.ready_since(pod) or time.time()
                self._cold_starts.append(max(0.0, since - pod.created_at))

    # acting

    def scale(self, desired: int) -> None:
        if desired < self.desired and not self._healthy():
            desired = self.desired  # the apiserver is away: hold, never scale down blind
        self.desired = desired
        if desired != self.applied and self._patching is None:
            self._patching = asyncio.get_running_loop().create_task(self._apply())

    async def _apply(self) -> None:
        try:
            while self.desired != self.applied:
                wanted = self.desired
                try:
                    scale = await self.api.patch_scale(self.target.namespace,
                                                       self.target.deployment, wanted)
                except client.KubeError as error:
                    self.last_error = f"setting {self.target.deployment}'s replicas: {error}"
                    logger.warning("%s/%s: %s", self.target.namespace, self.target.deployment,
                                   self.last_error)
                    await asyncio.sleep(self._retry_s)
                    continue
                self.applied = scale.spec.replicas if scale.spec is not None else wanted
                self.last_error = None
        finally:
            self._patching = None

    def released(self, listed: frozenset[str]) -> None:
        """Nothing to do: the ReplicaSet deletes pods; a dying pod leaves the table at once."""

    async def close(self) -> None:
        """The policy is gone: stop patching, leave the Deployment's replicas as they are."""
        task = self._patching
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
