"""The kubelet for processes (process_kubelet.py): pods the real scheduler places on kwok nodes,
with a real process behind each pod IP.

Covered:
- a Deployment of two process pods: placed by the scheduler, a model server started on each
  pod IP, the pods marked Ready once it answers, inference answered on the pod IPs; scaled to
  zero, the processes are gone and so are the pods;
- a command that exits is reported as a kubelet reports it: CrashLoopBackOff with the exit
  code in lastState and a growing restartCount, and the pod not Ready;
- a process that ignores SIGTERM is killed after the pod's grace period, then the pod removed;
- a pod whose command annotation is malformed shows CreateContainerConfigError;
- pods without the label keep kwok's own fast path (test_scheduling.py).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.k8s import kserve, process_kubelet, waiting
from tests.k8s.pods import get_json, is_ready, is_running, post_json

POD_NETWORK = ipaddress.ip_network("127.1.0.0/16")
TIMEOUT_S = 60.0


@pytest.fixture
def api(k8s_cluster) -> Iterator[client.ApiClient]:
    with k8s_cluster.api_client() as api:
        yield api


def process_deployment(name: str, command: list[str], *, replicas: int,
                       grace_s: int = 10, annotations: dict[str, str] | None = None,
                       readiness_path: str | None = "/v2/health/ready") -> dict:
    container: dict = {
        "name": "server",
        "image": "sluice.invalid/model:test",
        "ports": [{"containerPort": 8080}],
    }
    if readiness_path:
        container["readinessProbe"] = {"httpGet": {"path": readiness_path, "port": 8080},
                                       "periodSeconds": 1}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {
                    "labels": {"app": name, process_kubelet.PROCESS_LABEL: "true"},
                    "annotations": {
                        process_kubelet.COMMAND_ANNOTATION: json.dumps(command),
                        process_kubelet.RESTART_BACKOFF_ANNOTATION: "0.5",
                        **(annotations or {}),
                    },
                },
                "spec": {
                    "nodeSelector": {"type": "kwok"},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists",
                                     "effect": "NoSchedule"}],
                    "terminationGracePeriodSeconds": grace_s,
                    "containers": [container],
                },
            },
        },
    }


def pods(core: client.CoreV1Api, namespace: str, app: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector=f"app={app}").items


def test_deployment_of_process_pods_serves_on_pod_ips_and_scales_to_zero(
    api, kubelet, make_gpu_node, k8s_namespace
):
    nodes = {make_gpu_node(f"{k8s_namespace}-n{index}") for index in range(2)}
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    apps.create_namespaced_deployment(k8s_namespace, process_deployment(
        "model", kserve.model_server_command("model"), replicas=2,
    ))
    waiting.until(lambda: sum(map(is_ready, pods(core, k8s_namespace, "model"))) == 2,
                  timeout_s=TIMEOUT_S, what="two process pods Ready")

    running = pods(core, k8s_namespace, "model")
    assert {pod.spec.node_name for pod in running} <= nodes
    for pod in running:
        assert ipaddress.ip_address(pod.status.pod_ip) in POD_NETWORK
        status = pod.status.container_statuses[0]
        assert (status.ready, status.restart_count, status.state.running is not None) == (
            True, 0, True,
        )
        base = f"http://{pod.status.pod_ip}:8080"
        assert get_json(f"{base}/v2/health/ready")[0] == 200
        code, answer = post_json(f"{base}/v1/models/model:predict",
                                 {"instances": [[1.0, 2.0, 3.0, 4.0]]})
        assert code == 200 and len(answer["predictions"]) == 1
    pids = kubelet.pids(k8s_namespace)
    assert set(pids) == {pod.metadata.name for pod in running}
    assert all(map(is_running, pids.values()))

    apps.patch_namespaced_deployment_scale("model", k8s_namespace, {"spec": {"replicas": 0}})
    waiting.until(lambda: not pods(core, k8s_namespace, "model"), timeout_s=TIMEOUT_S,
                  what="the pods to be gone")
    assert kubelet.pids(k8s_namespace) == {}
    assert not any(map(is_running, pids.values()))


def test_exiting_command_shows_crash_loop_back_off(api, kubelet, make_gpu_node, k8s_namespace):
    make_gpu_node(f"{k8s_namespace}-n0")
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    apps.create_namespaced_deployment(k8s_namespace, process_deployment(
        "crasher", ["{python}", "-c", "import sys; sys.exit(3)"], replicas=1,
    ))

    def restarted_twice() -> client.V1ContainerStatus | None:
        found = pods(core, k8s_namespace, "crasher")
        statuses = (found[0].status.container_statuses or []) if found else []
        status = statuses[0] if statuses else None
        crashing = status and status.state.waiting and status.restart_count >= 2
        return status if crashing else None

    waiting.until(restarted_twice, timeout_s=TIMEOUT_S, what="two restarts in CrashLoopBackOff")
    status = restarted_twice()
    assert status is not None
    assert status.state.waiting.reason == "CrashLoopBackOff"
    assert "back-off" in status.state.waiting.message
    assert (status.last_state.terminated.exit_code, status.last_state.terminated.reason) == (
        3, "Error",
    )
    assert status.ready is False
    assert not is_ready(pods(core, k8s_namespace, "crasher")[0])


def test_process_ignoring_sigterm_is_killed_after_the_grace_period(
    api, kubelet, make_gpu_node, k8s_namespace
):
    make_gpu_node(f"{k8s_namespace}-n0")
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "time.sleep(3600)")
    apps.create_namespaced_deployment(k8s_namespace, process_deployment(
        "stubborn", ["{python}", "-c", stubborn], replicas=1, grace_s=1, readiness_path=None,
    ))
    waiting.until(lambda: kubelet.pids(k8s_namespace), timeout_s=TIMEOUT_S,
                  what="the process to start")
    waiting.until(lambda: all(map(is_ready, pods(core, k8s_namespace, "stubborn"))),
                  timeout_s=TIMEOUT_S, what="a probe-less pod Ready once its process runs")
    (pid,) = kubelet.pids(k8s_namespace).values()
    (pod,) = pods(core, k8s_namespace, "stubborn")

    apps.delete_namespaced_deployment("stubborn", k8s_namespace)
    waiting.until(lambda: not is_running(pid), timeout_s=TIMEOUT_S, what="SIGKILL after grace")
    waiting.until(lambda: not pods(core, k8s_namespace, "stubborn"), timeout_s=TIMEOUT_S,
                  what="the pod to be removed")
    assert pod.metadata.name not in kubelet.pids(k8s_namespace)


def test_malformed_command_annotation_is_a_config_error(
    api, kubelet, make_gpu_node, k8s_namespace
):
    make_gpu_node(f"{k8s_namespace}-n0")
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    deployment = process_deployment("broken", [], replicas=1)
    deployment["spec"]["template"]["metadata"]["annotations"][
        process_kubelet.COMMAND_ANNOTATION] = "python3 server.py"  # not a JSON list
    apps.create_namespaced_deployment(k8s_namespace, deployment)

    def waiting_reason() -> str | None:
        found = pods(core, k8s_namespace, "broken")
        statuses = (found[0].status.container_statuses or []) if found else []
        waiting_state = statuses[0].state.waiting if statuses else None
        return waiting_state.reason if waiting_state else None

    waiting.until(lambda: waiting_reason() == "CreateContainerConfigError",
                  timeout_s=TIMEOUT_S, what="CreateContainerConfigError")
    reported = [problem for problem in kubelet.errors if "broken" in problem]
    assert len(reported) == 1 and process_kubelet.COMMAND_ANNOTATION in reported[0]
    kubelet.errors.remove(reported[0])  # expected here: not a problem of the test
