"""A pod as the controller reads it: the few facts of a V1Pod that scaling and routing need.

Read once per change from the informer's model, so that deciding and building route tables
never walk the model's nested optionals again.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_PORT = 8080
"""The serving port when a pod declares none: KServe's and most model servers' default."""
DEFAULT_READINESS_PATH = "/v2/health/ready"
"""The Open Inference Protocol's server readiness, which KServe model servers answer."""
FAILING_REASONS = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
})
"""Container waiting reasons that mean the pod is not going to serve by itself."""


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    phase: str
    ip: str | None
    created_at: float
    """Wall-clock seconds."""
    deleting: bool
    kubelet_ready: bool
    """The pod's Ready condition is True: the kubelet's own probes pass."""
    unschedulable: str | None
    """The scheduler's message when it could not place the pod."""
    failing: str | None
    """Why a container is not going to serve (CrashLoopBackOff and the like), for people."""
    restarts: int
    port: int
    """Where the model server serves: the first container port."""
    readiness_port: int
    readiness_path: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def live(self) -> bool:
        """Not terminal and not on its way out."""
        return not self.deleting and self.phase not in ("Succeeded", "Failed")

    @property
    def endpoint(self) -> str | None:
        return url(self.ip, self.port) if self.ip else None


def url(ip: str, port: int, path: str = "") -> str:
    """http://IP:PORT/PATH, an IPv6 pod IP in brackets (an IPv6-only or dual-stack cluster's
    pod IPs may be IPv6)."""
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}{path}"


def view(pod: Any) -> PodView:
    metadata, spec, status = pod.metadata, pod.spec, pod.status
    containers = (spec.containers if spec else None) or []
    first = containers[0] if containers else None
    port = _first_port(first)
    probe_port, probe_path = _readiness(first, port)
    conditions = {c.type: c for c in ((status.conditions if status else None) or [])}
    scheduled = conditions.get("PodScheduled")
    unschedulable = None
    if scheduled is not None and scheduled.status == "False" and (
            scheduled.reason == "Unschedulable"):
        unschedulable = scheduled.message or "the scheduler found no node for it"
    ready = conditions.get("Ready")
    container_statuses = (status.container_statuses if status else None) or []
    return PodView(
        namespace=metadata.namespace or "", name=metadata.name, uid=metadata.uid or "",
        labels=dict(metadata.labels or {}), phase=(status.phase if status else None) or "Pending",
        ip=(status.pod_ip if status else None) or None,
        created_at=_seconds(metadata.creation_timestamp),
        deleting=metadata.deletion_timestamp is not None,
        kubelet_ready=ready is not None and ready.status == "True",
        unschedulable=unschedulable, failing=_failing(container_statuses),
        restarts=sum(c.restart_count or 0 for c in container_statuses),
        port=port, readiness_port=probe_port, readiness_path=probe_path)


def _first_port(container: Any) -> int:
    ports = (container.ports if container is not None else None) or []
    return int(ports[0].container_port) if ports else DEFAULT_PORT


def _readiness(container: Any, port: int) -> tuple[int, str]:
    """The container's readinessProbe.httpGet (a named port resolved), else the OIP default."""
    probe = container.readiness_probe if container is not None else None
    get = probe.http_get if probe is not None else None
    if get is None:
        return port, DEFAULT_READINESS_PATH
    target = get.port
    if isinstance(target, str) and not target.isdigit():
        named = {p.name: p.container_port for p in (container.ports or []) if p.name}
        target = named.get(target, port)
    return int(target), get.path or "/"


def _failing(container_statuses: list[Any]) -> str | None:
    for container in container_statuses:
        waiting = container.state.waiting if container.state else None
        if waiting is None or waiting.reason not in FAILING_REASONS:
            continue
        reason = waiting.reason
        terminated = container.last_state.terminated if container.last_state else None
        if terminated is not None and terminated.exit_code is not None:
            reason += f": exited with code {terminated.exit_code}"
            if terminated.reason and terminated.reason not in ("Error", "Completed"):
                reason += f" ({terminated.reason})"
        elif waiting.message:
            reason += f": {waiting.message[:200]}"
        return f"{reason}, restarted {container.restart_count or 0} times"
    return None


def _seconds(moment: datetime.datetime | str | None) -> float:
    if moment is None:
        return 0.0
    if isinstance(moment, str):
        moment = datetime.datetime.fromisoformat(moment.replace("Z", "+00:00"))
    return moment.timestamp()


def matching(pods: Mapping[tuple[str, str], PodView], namespace: str,
             labels: Mapping[str, str]) -> list[PodView]:
    """The pods of ``namespace`` carrying every one of ``labels``."""
    return [p for p in pods.values() if p.namespace == namespace
            and all(p.labels.get(k) == v for k, v in labels.items())]
