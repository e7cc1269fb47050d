"""Leader election on a coordination.k8s.io/v1 Lease, and the fence that keeps a non-leader
from writing.

Two controller replicas run; both keep their informers warm, only the holder of the Lease in the
controller's own namespace acts. The semantics and defaults are client-go's
(tools/leaderelection): lease 15 s, renew deadline 10 s, retry 2 s.

- **Campaign.** A candidate reads the Lease every retry period (jittered, 2 to 4.4 s). It creates
  the Lease if there is none; it takes it over when its holder is empty (released) or when the
  Lease's record has not changed for ``leaseDurationSeconds`` *as seen on this process's
  monotonic clock* since it first saw that record. The holder's renewTime is never compared
  with our clock: only a change of the record counts, so clock skew between nodes does not
  matter (client-go's observedTime rule). Every write carries the resourceVersion read, so of
  two candidates at most one wins (the other gets 409 Conflict, and waits); each new holder
  adds one to ``leaseTransitions``.
- **Hold.** The leader renews every retry period. It is leader only while its last successful
  renewal was sent less than the renew deadline ago (10 s), measured on its monotonic clock from
  the moment the request left, so it stops before any other process can see the lease expire
  (15 s after *it* observed that renewal, which was later). After a pause (SIGSTOP, a stalled
  VM) the leader is deposed the moment it resumes, before it renews or writes anything.
- **Release.** On a graceful stop the leader closes its fence, then writes the Lease with no
  holder and ``leaseDurationSeconds: 1`` (client-go's ReleaseOnCancel), so the standby takes
  over at its next read, within a retry period, instead of after the lease expires.

``Elector.is_leader()`` is the fence, and ``check`` raises ``NotLeader`` when it is shut.
``FencedApi`` (a ``client.KubeApi``) and ``FencedPublisher`` (a ``ports.RoutePublisher``)
check it before every write, so a controller wraps its apiserver client and its route
publishers once and every writer behind them is fenced.

What a local fence cannot do: a process paused after the check and before its request left
the process sends that one request when it resumes. The apiserver has no way to tie a write
to a Lease; a writer that must be safe even then needs the receiver to check a fencing token
(``Term.transitions`` increases with every new leader, e.g. carried in a route table).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random as random_module
import re
import socket
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes_asyncio import client as k8s

from autoscaler.control import ports
from autoscaler.kube import client
from policies import routing

logger = logging.getLogger(__name__)

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def default_identity() -> str:
    """The host name (a pod's name in Kubernetes) and a random suffix, as controller-runtime
    does: unique per process, so a restarted process never mistakes its predecessor's lease
    for its own, and ``kubectl get lease`` still says which pod leads."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class LeaderSettings:
    namespace: str
    """Namespace of the Lease: the controller's own (its ServiceAccount's), which is where the
    RBAC of manifests/rbac/leader-election.yaml lets it read and write Leases."""
    lease_name: str = "sluice-controller"
    """Name of the Lease. Default sluice-controller: the one name the RBAC allows."""
    identity: str = field(default_factory=default_identity)
    """This candidate's holderIdentity. Default: host name and a random suffix, unique per
    process. Two candidates must never share one."""
    lease_duration_s: int = 15
    """Seconds a candidate waits, on its own clock, without seeing the Lease's record change
    before it takes the Lease over. Default 15 (client-go's): the time to failover after a
    leader dies without releasing. An integer: the Lease stores whole seconds."""
    renew_deadline_s: float = 10.0
    """Seconds after the last successful renewal was sent at which the leader stops being leader
    unless it renewed again. Default 10 (client-go's). Must be below the lease duration: the gap
    (5 s by default) is the margin for clock rate differences and request latency."""
    retry_period_s: float = 2.0
    """Seconds between a leader's renewals, and the base of the jittered wait between a
    candidate's attempts. Default 2 (client-go's): several renewals fit in a renew deadline."""
    jitter: float = 1.2
    """A candidate waits retry_period_s * (1 + jitter * a random fraction) between attempts.
    Default 1.2 (client-go's JitterFactor): candidates started together spread out."""
    release_on_stop: bool = True
    """On stop, hand the Lease back (no holder, duration 1 s) so the standby takes over within a
    retry period. Default True (client-go's ReleaseOnCancel): a rolling update or a drained
    node costs seconds of leaderlessness, not a lease duration."""

    def __post_init__(self) -> None:
        if not _DNS_SUBDOMAIN.match(self.lease_name):
            raise ValueError(f"lease_name: must be a DNS subdomain, got {self.lease_name!r}")
        if not self.namespace:
            raise ValueError("namespace: required (the controller's own namespace)")
        if not self.identity:
            raise ValueError("identity: must not be empty")
        if self.lease_duration_s < 1:
            raise ValueError(f"lease_duration_s: must be at least 1, got {self.lease_duration_s}")
        if not self.lease_duration_s > self.renew_deadline_s:
            raise ValueError(f"renew_deadline_s: must be below lease_duration_s "
                             f"({self.lease_duration_s}), got {self.renew_deadline_s:g}")
        if self.retry_period_s <= 0 or self.jitter < 0:
            raise ValueError("retry_period_s must be positive and jitter not negative")
        if not self.renew_deadline_s > self.retry_period_s * self.jitter:
            raise ValueError(f"renew_deadline_s: must exceed retry_period_s * jitter "
                             f"({self.retry_period_s * self.jitter:g}), "
                             f"got {self.renew_deadline_s:g}")

    @property
    def max_retry_interval_s(self) -> float:
        """The longest a candidate waits between two attempts."""
        return self.retry_period_s * (1 + self.jitter)


class LeaseApi(Protocol):
    """The part of ``client.KubeApi`` an elector uses."""

    async def get_lease(self, namespace: str, name: str) -> k8s.V1Lease: ...

    async def create_lease(self, namespace: str, lease: k8s.V1Lease) -> k8s.V1Lease: ...

    async def update_lease(self, namespace: str, lease: k8s.V1Lease) -> k8s.V1Lease: ...


# -- the decision, pure ------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """A Lease's election record: what changes when anyone renews, takes or releases it."""

    holder: str
    """holderIdentity; "" when released or never held."""
    duration_s: int
    """leaseDurationSeconds; 0 when absent (then expired at once, as in client-go)."""
    acquire_time: datetime.datetime | None
    renew_time: datetime.datetime | None
    transitions: int

    @classmethod
    def of(cls, lease: k8s.V1Lease) -> Record:
        spec = lease.spec if lease.spec is not None else k8s.V1LeaseSpec()
        return cls(spec.holder_identity or "", spec.lease_duration_seconds or 0,
                   spec.acquire_time, spec.renew_time, spec.lease_transitions or 0)


@dataclass(frozen=True)
class Observation:
    record: Record
    since: float
    """When this process first saw ``record``, on its own monotonic clock."""


def observe(previous: Observation | None, record: Record, now: float) -> Observation:
    """The record as now seen: ``since`` moves only when the record changed."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def claim(observation: Observation, now: float, identity: str) -> str | None:
    """Why ``identity`` may write itself into the Lease now, or None while another holds it:
    "ours" (renew), "released" (no holder), "expired" (unchanged for its duration)."""
    holder = observation.record.holder
    if holder == identity:
        return "ours"
    if not holder:
        return "released"
    if observation.since + observation.record.duration_s <= now:
        return "expired"
    return None


# -- the elector -------------------------------------------------------------------------------


class NotLeader(client.KubeError):
    """A write was refused because this process does not lead. A ``KubeError``, so writers
    that log and retry a failed call do so for this one too."""


@dataclass(frozen=True)
class Term:
    """How this process became leader."""

    how: str
    """created (no Lease existed), released (its holder gave it up), expired (its holder had
    not renewed for the lease duration) or ours (it named this process already)."""
    previous_holder: str
    transitions: int
    """leaseTransitions after taking it: larger for every new leader, a fencing token."""
    unchanged_for_s: float | None
    """For a takeover: how long the record taken had been unchanged on this process's clock.
    At least the lease duration for "expired"; None when the Lease was created."""


class Elector:
    """Campaigns for the Lease, holds it, and fences. ``start()`` it, ``await stop()`` it.

    ``elected`` is set when leadership starts; ``lost`` when it ends, for whatever reason
    (renewals failed past the deadline, another process holds the Lease, stop). A term ends
    for good: a deposed controller exits and starts again as a standby (crash-only), rather
    than resuming with state from before it lost the lease.
    """

    def __init__(self, api: LeaseApi, settings: LeaderSettings, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(
                     datetime.UTC),
                 random: Callable[[], float] = random_module.random,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._api = api
        self.settings = settings
        self._clock = clock
        self._wall = wall
        self._random = random
        self._sleep = sleep
        self.elected = asyncio.Event()
        self.lost = asyncio.Event()
        self.term: Term | None = None
        self.observation: Observation | None = None
        """The Lease's record as last read or written, and since when it is unchanged."""
        self._lease: k8s.V1Lease | None = None
        """The Lease as we last wrote it: a renewal updates from its resourceVersion."""
        self._renewed_at: float | None = None
        """When the last successful renewal (or acquisition) was sent; None: not leading."""
        self._task: asyncio.Task[None] | None = None
        self._ended = ""
        """Why its term ended, for refusals."""

    @property
    def identity(self) -> str:
        return self.settings.identity

    @property
    def holder(self) -> str:
        """Who holds the Lease as last seen ("" if nobody)."""
        return self.observation.record.holder if self.observation is not None else ""

    @property
    def where(self) -> str:
        return f"Lease {self.settings.namespace}/{self.settings.lease_name}"

    # the fence

    def is_leader(self) -> bool:
        """True only while the last successful renewal was sent less than the renew deadline
        ago, on this process's monotonic clock: a process resumed after a long pause answers
        False at once, before anything else runs."""
        renewed_at = self._renewed_at
        return renewed_at is not None and \
            self._clock() - renewed_at < self.settings.renew_deadline_s

    def check(self, action: str) -> None:
        """Raises ``NotLeader`` naming ``action`` unless this process leads now."""
        if not self.is_leader():
            raise NotLeader(f"refused to {action}: {self.identity} does not hold the "
                            f"{self.where} ({self._why_not()})")

    def _why_not(self) -> str:
        if self.holder not in ("", self.identity):
            return f"{self.holder} does"
        if self._renewed_at is not None:
            return (f"last renewed {self._clock() - self._renewed_at:.1f} s ago, past the "
                    f"{self.settings.renew_deadline_s:g} s renew deadline")
        return self._ended or "not elected"

    # running

    def start(self) -> asyncio.Task[None]:
        """Campaign and then hold the Lease in a task of its own, until the term ends."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(),
                                                                name="leader-election")
        return self._task

    async def stop(self) -> bool:
        """Stop campaigning or renewing, then release the Lease if held; True if released.
        Stop every writer first: a write sent after the release may cross the new leader's."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        released = self.settings.release_on_stop and await self.release()
        self._end_term("stopped", logging.INFO)
        return released

    async def run(self) -> None:
        """Campaign until elected, then renew until leadership is lost; returns then."""
        if self.lost.is_set():
            raise RuntimeError(f"{self.identity}: its term is over; start a new Elector")
        logger.info("%s: campaigning for the %s", self.identity, self.where)
        while not await self._attempt(self.settings.renew_deadline_s):
            await self._sleep(self.settings.retry_period_s
                              * (1 + self.settings.jitter * self._random()))
        assert self.term is not None
        logger.info("%s: leading (%s, leaseTransitions %d)", self.identity, self.term.how,
                    self.term.transitions)
        self.elected.set()
        await self._hold()

    async def _hold(self) -> None:
        while True:
            renewed_at = self._renewed_at
            if renewed_at is None or not self.is_leader():
                break
            deadline = renewed_at + self.settings.renew_deadline_s
            # Wake at the deadline at the latest, so that loss is told promptly.
            await self._sleep(min(self.settings.retry_period_s, deadline - self._clock()))
            if not self.is_leader():
                break
            await self._attempt(deadline - self._clock())
        why = (f"{self.holder} holds it now" if self.holder not in ("", self.identity)
               else f"not renewed within {self.settings.renew_deadline_s:g} s")
        self._end_term(why)

    def _end_term(self, why: str, level: int = logging.WARNING) -> None:
        self._renewed_at = None
        if self.elected.is_set() and not self._ended:
            self._ended = f"its leadership ended: {why}"
        if self.elected.is_set() and not self.lost.is_set():
            logger.log(level, "%s: no longer leading the %s: %s", self.identity, self.where, why)
        self.lost.set()

    async def _attempt(self, timeout_s: float) -> bool:
        """One try to acquire or renew (client-go's tryAcquireOrRenew); False if not leading
        after it. Never raises for the apiserver's sake."""
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                return await self._acquire_or_renew()
        except (client.KubeError, TimeoutError) as error:
            # A standby says so too: a 403 here (RBAC) would otherwise never elect anyone.
            logger.warning("%s: %s the %s: %s", self.identity,
                           "renewing" if self._renewed_at is not None else "reading",
                           self.where, str(error) or "timed out")
            return False

    async def _acquire_or_renew(self) -> bool:
        namespace, name = self.settings.namespace, self.settings.lease_name
        if self._lease is not None and self.is_leader():
            # The fast path: our last write is probably still the current version.
            renewal = self._written(self._lease, self._lease.spec, renew=True)
            sent = self._clock()
            try:
                self._won(await self._api.update_lease(namespace, renewal), sent)
                return True
            except client.Conflict:
                pass  # someone else wrote it: read it and see
        try:
            current = await self._api.get_lease(namespace, name)
        except client.NotFound:
            return await self._create()
        now = self._clock()
        self.observation = observe(self.observation, Record.of(current), now)
        how = claim(self.observation, now, self.identity)
        if how is None:
            self._renewed_at = None  # another holds it, whatever our clock said
            return False
        taken = self.observation
        sent = self._clock()
        try:
            written = await self._api.update_lease(
                namespace, self._written(current, current.spec, renew=how == "ours"))
        except client.Conflict:
            return False  # another candidate wrote first
        if how != "ours" or self.term is None:
            self.term = Term(how, taken.record.holder, Record.of(written).transitions,
                             now - taken.since)
        self._won(written, sent)
        return True

    async def _create(self) -> bool:
        lease = self._written(k8s.V1Lease(metadata=k8s.V1ObjectMeta(
            name=self.settings.lease_name, namespace=self.settings.namespace,
            labels={"app.kubernetes.io/name": "sluice",
                    "app.kubernetes.io/component": "controller"})), None, renew=False)
        sent = self._clock()
        try:
            created = await self._api.create_lease(self.settings.namespace, lease)
        except client.Conflict:
            return False  # another candidate created it first
        self.term = Term("created", "", Record.of(created).transitions, None)
        self._won(created, sent)
        return True

    def _written(self, lease: k8s.V1Lease, spec: k8s.V1LeaseSpec | None, *,
                 renew: bool) -> k8s.V1Lease:
        """``lease`` naming us holder: ``renew`` keeps its acquireTime and transitions; else
        a new term (transitions + 1, except on the Lease's creation)."""
        now = self._wall()
        spec = spec or k8s.V1LeaseSpec()
        transitions = spec.lease_transitions or 0
        if not renew and lease.metadata.resource_version:
            transitions += 1
        return k8s.V1Lease(
            api_version="coordination.k8s.io/v1", kind="Lease", metadata=lease.metadata,
            spec=k8s.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=self.settings.lease_duration_s,
                acquire_time=spec.acquire_time if renew and spec.acquire_time is not None
                else now,
                renew_time=now, lease_transitions=transitions))

    def _won(self, written: k8s.V1Lease, sent: float) -> None:
        """``written`` is ours: leader until ``sent`` + the renew deadline."""
        self._lease = written
        self._renewed_at = sent
        self.observation = Observation(Record.of(written), self._clock())

    async def release(self) -> bool:
        """Close the fence, then give the Lease up if we hold it: no holder, 1 s duration, so
        a standby takes it at its next read. True if released."""
        self._renewed_at = None
        if self.term is None:
            return False  # never led
        namespace, name = self.settings.namespace, self.settings.lease_name
        try:
            async with asyncio.timeout(self.settings.renew_deadline_s):
                while True:
                    current = await self._api.get_lease(namespace, name)
                    spec = current.spec if current.spec is not None else k8s.V1LeaseSpec()
                    if spec.holder_identity != self.identity:
                        return False  # lost it already: not ours to release
                    now = self._wall()
                    released = k8s.V1Lease(
                        api_version="coordination.k8s.io/v1", kind="Lease",
                        metadata=current.metadata, spec=k8s.V1LeaseSpec(
                            holder_identity="", lease_duration_seconds=1, acquire_time=now,
                            renew_time=now, lease_transitions=spec.lease_transitions or 0))
                    try:
                        written = await self._api.update_lease(namespace, released)
                    except client.Conflict:
                        continue  # a renewal of ours in flight landed meanwhile
                    self.observation = Observation(Record.of(written), self._clock())
                    logger.info("%s: released the %s", self.identity, self.where)
                    return True
        except (client.KubeError, TimeoutError) as error:
            logger.warning("%s: releasing the %s: %s; the standby takes over once it expires",
                           self.identity, self.where, str(error) or "timed out")
            return False


# -- fenced writers ------------------------------------------------------------------------------


class Fence(Protocol):
    def check(self, action: str) -> None:
        """Raise (``NotLeader``) unless writing is allowed now."""


class FencedApi:
    """A ``client.KubeApi`` that writes only while ``fence`` allows: every write is checked
    first and refused with ``NotLeader``; reads pass through (a standby keeps its informers
    warm). Lease writes are refused too: the elector alone writes the Lease, on the bare
    client."""

    def __init__(self, api: client.KubeApi, fence: Fence) -> None:
        self._api = api
        self._fence = fence

    # reads

    async def list(self, kind: client.Kind, *, namespace: str | None = None,
                   label_selector: str | None = None,
                   field_selector: str | None = None) -> client.Listing:
        return await self._api.list(kind, namespace=namespace, label_selector=label_selector,
                                    field_selector=field_selector)

    def watch(self, kind: client.Kind, *, resource_version: str, namespace: str | None = None,
              label_selector: str | None = None, field_selector: str | None = None,
              timeout_s: int = 300) -> AsyncGenerator[client.WatchEvent, None]:
        return self._api.watch(kind, resource_version=resource_version, namespace=namespace,
                               label_selector=label_selector, field_selector=field_selector,
                               timeout_s=timeout_s)

    async def get(self, kind: client.Kind, namespace: str | None, name: str) -> Any:
        return await self._api.get(kind, namespace, name)

    async def allowed(self, verb: str, kind: client.Kind, namespace: str | None = None) -> bool:
        return await self._api.allowed(verb, kind, namespace)  # a question, not a write

    async def get_scale(self, namespace: str, name: str) -> k8s.V1Scale:
        return await self._api.get_scale(namespace, name)

    async def get_lease(self, namespace: str, name: str) -> k8s.V1Lease:
        return await self._api.get_lease(namespace, name)

    # writes

    async def create(self, kind: client.Kind, namespace: str, body: Mapping[str, Any]) -> Any:
        self._fence.check(f"create a {kind.kind} in {namespace}")
        return await self._api.create(kind, namespace, body)

    async def patch(self, kind: client.Kind, namespace: str, name: str,
                    body: Mapping[str, Any]) -> Any:
        self._fence.check(f"patch {kind.kind} {namespace}/{name}")
        return await self._api.patch(kind, namespace, name, body)

    async def patch_scale(self, namespace: str, name: str, replicas: int) -> k8s.V1Scale:
        self._fence.check(f"scale Deployment {namespace}/{name} to {replicas}")
        return await self._api.patch_scale(namespace, name, replicas)

    async def patch_status(self, kind: client.Kind, namespace: str, name: str,
                           status: Mapping[str, Any]) -> Any:
        self._fence.check(f"patch the status of {kind.kind} {namespace}/{name}")
        return await self._api.patch_status(kind, namespace, name, status)

    async def create_event(self, namespace: str,
                           event: k8s.EventsV1Event | Mapping[str, Any]) -> k8s.EventsV1Event:
        self._fence.check(f"create an Event in {namespace}")
        return await self._api.create_event(namespace, event)

    async def patch_event(self, namespace: str, name: str,
                          patch: Mapping[str, Any]) -> k8s.EventsV1Event:
        self._fence.check(f"patch Event {namespace}/{name}")
        return await self._api.patch_event(namespace, name, patch)

    async def create_lease(self, namespace: str, lease: k8s.V1Lease) -> k8s.V1Lease:
        raise NotLeader("refused to create a Lease through the fenced client: only the "
                        "elector writes Leases")

    async def update_lease(self, namespace: str, lease: k8s.V1Lease) -> k8s.V1Lease:
        raise NotLeader("refused to update a Lease through the fenced client: only the "
                        "elector writes Leases")

    async def close(self) -> None:
        await self._api.close()


class FencedPublisher:
    """A ``ports.RoutePublisher`` that publishes only while ``fence`` allows."""

    def __init__(self, publisher: ports.RoutePublisher, fence: Fence) -> None:
        self._publisher = publisher
        self._fence = fence

    async def publish(self, table: routing.RouteTable) -> None:
        self._fence.check("publish a route table")
        await self._publisher.publish(table)
