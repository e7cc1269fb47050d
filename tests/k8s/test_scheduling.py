"""The test control plane behaves like a real cluster where sluice depends on it.

Covered:
- kube-scheduler fits pods by the `nvidia.com/gpu` extended resource across kwok GPU nodes;
  overflow stays Pending as Unschedulable rather than over-committing a node;
- kwok takes bound pods to Running+Ready with pod IPs from the loopback range 127.1.0.0/16;
- the apiserver authenticates bearer tokens and enforces RBAC.

Not covered: preemption, priorities, affinity, node failure.
"""

from __future__ import annotations

import collections
import ipaddress
import time
from collections.abc import Callable

from kubernetes import client
from kubernetes.client.rest import ApiException

POD_NETWORK = ipaddress.ip_network("127.1.0.0/16")
SETTLE_TIMEOUT_S = 60.0


def _is_running_and_ready(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    return pod.status.phase == "Running" and ready


def _is_unschedulable(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    return (
        pod.status.phase == "Pending"
        and pod.spec.node_name is None
        and any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions)
    )


def _poll_pods(
    core: client.CoreV1Api,
    namespace: str,
    settled: Callable[[list[client.V1Pod]], bool],
) -> list[client.V1Pod]:
    """Lists pods until `settled` holds or the deadline passes; returns the last listing."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        pods = core.list_namespaced_pod(namespace).items
        if settled(pods) or time.monotonic() > deadline:
            return pods
        time.sleep(0.2)


def _gpu_deployment(name: str, replicas: int) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"type": "kwok"},
                    # kwok nodes carry this taint (see make_gpu_node).
                    "tolerations": [
                        {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [
                        {
                            "name": "model",
                            "image": "sluice.invalid/fake-model:test",  # kwok never pulls it
                            # Extended resources go in limits; requests default to them.
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        },
    }


def test_gpu_pods_fill_nodes_and_overflow_stays_pending(k8s_cluster, k8s_namespace, make_gpu_node):
    nodes = [make_gpu_node(f"{k8s_namespace}-gpu-{index}", gpus=4) for index in range(2)]
    with k8s_cluster.api_client() as api:
        client.AppsV1Api(api).create_namespaced_deployment(
            k8s_namespace, _gpu_deployment("gpu-model", replicas=10)
        )
        pods = _poll_pods(
            client.CoreV1Api(api),
            k8s_namespace,
            lambda pods: (
                len(pods) == 10
                and sum(map(_is_running_and_ready, pods)) == 8
                and sum(map(_is_unschedulable, pods)) == 2
            ),
        )

    summary = [(p.metadata.name, p.status.phase, p.spec.node_name, p.status.pod_ip) for p in pods]
    running = [p for p in pods if _is_running_and_ready(p)]
    pending = [p for p in pods if _is_unschedulable(p)]
    assert (len(pods), len(running), len(pending)) == (10, 8, 2), summary
    assert collections.Counter(p.spec.node_name for p in running) == dict.fromkeys(nodes, 4)
    pod_ips = [ipaddress.ip_address(p.status.pod_ip) for p in running]
    assert all(ip in POD_NETWORK for ip in pod_ips), summary
    assert len(set(pod_ips)) == len(pod_ips), summary


def _status_of_listing_pods(cluster, token: str | None = None) -> int:
    with cluster.api_client(token=token) as api:
        try:
            client.CoreV1Api(api).list_namespaced_pod("default")
        except ApiException as error:
            return error.status
    return 200


def test_apiserver_enforces_rbac(k8s_cluster):
    assert _status_of_listing_pods(k8s_cluster) == 200  # the admin is in system:masters
    assert _status_of_listing_pods(k8s_cluster, k8s_cluster.unprivileged_token) == 403
    assert _status_of_listing_pods(k8s_cluster, "not-a-known-token") == 401
