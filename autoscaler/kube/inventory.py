"""Nodes, Pods and pod templates as the plain data ``policies.capacity`` reads.

Thin and total: every field the capacity function needs is read here, from the models the
informers cache (kubernetes V1Node, V1Pod, V1PodSpec), and nothing is decided.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Mapping
from typing import Any

from policies import capacity

_SUFFIXES = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def whole_units(quantity: str) -> int | None:
    """A resource quantity as a whole number ("4", "1k", "2Ki"), or None if it is not one
    ("500m", "1.5", "1e3" is 1000). Extended resources such as GPUs are always whole."""
    text = quantity.strip()
    number = text.rstrip("kMGTPEi")
    suffix = text[len(number):]
    if suffix not in _SUFFIXES:
        return None
    try:
        value = decimal.Decimal(number) * _SUFFIXES[suffix]
    except decimal.InvalidOperation:
        return None
    return int(value) if value == value.to_integral_value() else None


def resources_in_units(quantities: Mapping[str, str] | None) -> dict[str, int]:
    """The whole-numbered entries of a ResourceList; the rest (cpu "500m") are left out."""
    result = {}
    for name, quantity in (quantities or {}).items():
        units = whole_units(str(quantity))
        if units is not None:
            result[name] = units
    return result


def node(v1_node: Any) -> capacity.Node:
    status, spec = v1_node.status, v1_node.spec
    conditions = (status.conditions if status else None) or []
    return capacity.Node(
        name=v1_node.metadata.name,
        ready=any(c.type == "Ready" and c.status == "True" for c in conditions),
        unschedulable=bool(spec and spec.unschedulable),
        labels=dict(v1_node.metadata.labels or {}),
        taints=tuple(
            capacity.Taint(key=t.key, value=t.value or "", effect=t.effect)
            for t in ((spec.taints if spec else None) or [])
        ),
        allocatable=resources_in_units(status.allocatable if status else None),
    )


def pod(v1_pod: Any) -> capacity.Pod:
    status, spec = v1_pod.status, v1_pod.spec
    unschedulable = next(
        (
            c.message or ""
            for c in (status.conditions if status else None) or []
            if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
        ),
        None,
    )
    return capacity.Pod(
        namespace=v1_pod.metadata.namespace,
        name=v1_pod.metadata.name,
        phase=(status.phase if status else None) or "Pending",
        node_name=spec.node_name,
        requests=pod_requests(spec),
        deleting=v1_pod.metadata.deletion_timestamp is not None,
        unschedulable_message=unschedulable,
    )


def pod_requests(spec: Any) -> dict[str, int]:
    """The pod's effective request of each whole-numbered resource, as the scheduler counts it."""
    containers = [resources_in_units(_requests(c)) for c in spec.containers or []]
    init_containers = [
        (resources_in_units(_requests(c)), c.restart_policy == "Always")
        for c in spec.init_containers or []
    ]
    overhead = resources_in_units(spec.overhead)
    names = set(overhead).union(*containers, *(units for units, _ in init_containers))
    return {
        name: capacity.effective_request(
            [units.get(name, 0) for units in containers],
            [capacity.ContainerRequest(units.get(name, 0), restartable)
             for units, restartable in init_containers],
            overhead.get(name, 0),
        )
        for name in names
    }


def replica_shape(spec: Any, resource: str, units: int) -> capacity.ReplicaShape:
    """The shape of the replicas a pod template (V1PodSpec) creates, for ``units`` of
    ``resource`` each (the policy's gpusPerReplica and gpuResource)."""
    return capacity.ReplicaShape(
        units=units,
        resource=resource,
        tolerations=tuple(
            capacity.Toleration(
                key=t.key or "",
                operator=capacity.TolerationOperator(t.operator or "Equal"),
                value=t.value or "",
                effect=t.effect or "",
            )
            for t in spec.tolerations or []
        ),
        node_selector=dict(spec.node_selector or {}),
    )


def _requests(container: Any) -> Mapping[str, str]:
    resources = container.resources
    if resources is None:
        return {}
    # The apiserver defaults a missing request to its limit; a template not yet defaulted (or
    # one that sets a cpu request and only a GPU limit) needs the same here.
    return {**(resources.limits or {}), **(resources.requests or {})}


def revision_keys(pods: Iterable[Any]) -> list[tuple[str, str]]:
    """(namespace, name) of each pod, for ``capacity.capacity``'s ``revision_pods``."""
    return [(p.metadata.namespace, p.metadata.name) for p in pods]
