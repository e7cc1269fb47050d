"""GPU capacity for one revision's replica shape: how many more replicas the cluster can hold.

Purely computational. The Kubernetes driver turns Nodes and Pods into the plain data below
(``autoscaler.kube.inventory``); ``capacity(nodes, pods, shape, revision_pods)`` answers what
the scheduler would answer for the revision's next replicas, so the decider can cap its count
before pods pile up Pending (``ScalingInputs.free_gpus`` is ``Capacity.free_gpus``).

1. Eligible nodes: Ready, schedulable (not cordoned), every NoSchedule/NoExecute taint tolerated
   by the replica's tolerations, every nodeSelector label matched. Others hold no slot.
2. Free on a node: allocatable minus the requests of the pods bound to it that are not terminal
   (Succeeded/Failed). A pod being deleted still holds its GPUs until it is gone, as the
   scheduler counts it.
3. Slots: a replica needs k units on one node, so a node holds ``floor(free / k)`` replicas;
   slots are summed over eligible nodes. Units left in fragments smaller than k are not usable.
4. The revision's Pending pods that the scheduler has not yet judged (unbound, not marked
   Unschedulable, not being deleted) will take slots first: they are subtracted.
5. The revision's pods marked Unschedulable (PodScheduled=False, reason Unschedulable) make the
   result CapacityLimited with the scheduler's message. They are *not* subtracted: should room
   appear, the scheduler places them first, and the controller should count them out of
   ``ScalingInputs.starting`` so the decider's cap (ready + starting + free // k) leaves none of
   them standing.

The resource is a parameter, so a MIG slice (``nvidia.com/mig-1g.10gb``) is counted exactly as
``nvidia.com/gpu``. Not modelled: required node affinity, pod (anti-)affinity, topology spread,
the ``pods`` allocatable, preemption, other revisions' Pending pods (the scheduler's queue order
between workloads is not known).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
"""Phases whose pods no longer hold resources on their node."""

BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
"""Taint effects that keep a pod off a node; PreferNoSchedule only steers the scheduler."""

CAPACITY_LIMITED_REASON = "Unschedulable"
"""Condition reason when the scheduler could not place some of the revision's pods."""


class TolerationOperator(enum.StrEnum):
    EQUAL = "Equal"
    EXISTS = "Exists"


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True)
class Toleration:
    """A pod's toleration; empty key or effect matches any, as in the Kubernetes API."""

    key: str = ""
    operator: TolerationOperator = TolerationOperator.EQUAL
    value: str = ""
    effect: str = ""

    def tolerates(self, taint: Taint) -> bool:
        # Same rules as k8s.io/api/core/v1 Toleration.ToleratesTaint.
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        if self.operator is TolerationOperator.EXISTS:
            return True
        return self.value == taint.value


@dataclass(frozen=True)
class Node:
    name: str
    ready: bool
    """The Ready condition is True."""
    unschedulable: bool = False
    """``spec.unschedulable``: cordoned."""
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    allocatable: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """Whole units of each extended resource the node offers to pods (``status.allocatable``)."""


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    phase: str
    """``status.phase``: Pending, Running, Succeeded, Failed or Unknown."""
    node_name: str | None = None
    """``spec.nodeName``: None until the scheduler binds the pod."""
    requests: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """The pod's effective requests per extended resource (see ``effective_request``)."""
    deleting: bool = False
    """``metadata.deletionTimestamp`` is set."""
    unschedulable_message: str | None = None
    """The scheduler's message when PodScheduled is False with reason Unschedulable."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @property
    def awaiting_scheduler(self) -> bool:
        """Unbound, alive and not yet judged unschedulable: it will take a slot first."""
        return (
            self.node_name is None
            and not self.terminal
            and not self.deleting
            and self.unschedulable_message is None
        )


@dataclass(frozen=True)
class ReplicaShape:
    """What one replica of the revision asks the scheduler for."""

    units: int
    """Units of ``resource`` per replica (the policy's gpusPerReplica); at least 1."""
    resource: str = "nvidia.com/gpu"
    tolerations: tuple[Toleration, ...] = ()
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.units < 1:
            raise ValueError(f"units: a replica shape needs at least 1 unit, got {self.units}")


@dataclass(frozen=True)
class CapacityLimit:
    """Why some of the revision's pods cannot be placed; published as CapacityLimited."""

    reason: str
    message: str
    pods: tuple[str, ...]
    """Names of the revision's pods the scheduler marked Unschedulable, sorted."""


@dataclass(frozen=True)
class Capacity:
    free_gpus: int
    """Units new replicas of this revision can use now: ``max(0, slots - pending) * units``.
    Feeds ``ScalingInputs.free_gpus``."""
    slots: int
    """Replicas of this shape that fit on eligible nodes now, before Pending pods."""
    pending: int
    """The revision's pods still waiting for the scheduler's first verdict."""
    eligible_nodes: tuple[str, ...]
    """Names of the nodes the shape may run on, sorted."""
    limited: CapacityLimit | None
    """Set when the scheduler has marked some of the revision's pods Unschedulable."""

    @property
    def unschedulable(self) -> int:
        return len(self.limited.pods) if self.limited else 0


def capacity(
    nodes: Iterable[Node],
    pods: Iterable[Pod],
    shape: ReplicaShape,
    revision_pods: Iterable[tuple[str, str]],
) -> Capacity:
    """Capacity for ``shape`` given every node and every pod bound or waiting in the cluster.

    ``revision_pods`` are the (namespace, name) keys of the revision's own pods (the ones its
    ``/scale`` selector matches); it may name pods absent from ``pods``.
    """
    own = set(revision_pods)
    eligible = {node.name: node for node in nodes if is_eligible(node, shape)}
    used: dict[str, int] = dict.fromkeys(eligible, 0)
    pending = 0
    stuck: list[Pod] = []
    for pod in pods:
        if pod.node_name in used and not pod.terminal:
            used[pod.node_name] += pod.requests.get(shape.resource, 0)
        if pod.key not in own:
            continue
        if pod.awaiting_scheduler:
            pending += 1
        elif pod.node_name is None and not pod.terminal and pod.unschedulable_message is not None:
            stuck.append(pod)
    slots = sum(
        max(0, node.allocatable.get(shape.resource, 0) - used[name]) // shape.units
        for name, node in eligible.items()
    )
    return Capacity(
        free_gpus=max(0, slots - pending) * shape.units,
        slots=slots,
        pending=pending,
        eligible_nodes=tuple(sorted(eligible)),
        limited=_limit(stuck),
    )


def is_eligible(node: Node, shape: ReplicaShape) -> bool:
    """Whether the scheduler may place a replica of ``shape`` on ``node`` at all."""
    if not node.ready or node.unschedulable:
        return False
    if any(node.labels.get(key) != value for key, value in shape.node_selector.items()):
        return False
    return all(
        any(toleration.tolerates(taint) for toleration in shape.tolerations)
        for taint in node.taints
        if taint.effect in BLOCKING_EFFECTS
    )


@dataclass(frozen=True)
class ContainerRequest:
    """One container's request of one resource, as ``effective_request`` needs it."""

    units: int
    restartable: bool = False
    """An init container with ``restartPolicy: Always`` (a sidecar): it runs for the pod's
    lifetime, so its request adds to the regular containers'."""


def effective_request(
    containers: Sequence[int],
    init_containers: Sequence[ContainerRequest] = (),
    overhead: int = 0,
) -> int:
    """A pod's request of one resource, as the scheduler computes it (k8s resourcehelper
    PodRequests): the larger of the running containers (regular plus sidecars) and the peak
    of the init sequence, plus the pod overhead."""
    running = sum(containers)
    sidecars = 0
    init_peak = 0
    for init in init_containers:
        if init.restartable:
            running += init.units
            sidecars += init.units
            init_peak = max(init_peak, sidecars)
        else:
            init_peak = max(init_peak, init.units + sidecars)
    return max(running, init_peak) + overhead


def _limit(stuck: Sequence[Pod]) -> CapacityLimit | None:
    if not stuck:
        return None
    names = tuple(sorted(pod.name for pod in stuck))
    # Every pod of one shape gets the same verdict; the first one's message speaks for all.
    verdict = min(stuck, key=lambda pod: pod.name).unschedulable_message or "no message given"
    count = f"{len(names)} pod" + ("s" if len(names) > 1 else "")
    return CapacityLimit(
        reason=CAPACITY_LIMITED_REASON,
        message=f"{count} of this revision cannot be scheduled: {verdict}",
        pods=names,
    )
