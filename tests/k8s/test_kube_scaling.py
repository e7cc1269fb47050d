"""``sluice controller`` on the real control plane: InferenceServices scaled from zero and back.

Every part is real but the kubelet: the apiserver, scheduler and controller-manager (which makes
the predictor's ReplicaSet and pods), the controller as a subprocess with the ServiceAccount
token manifests/rbac binds, and behind kwok pods real processes (tests/k8s/process_kubelet.py):
the router (python -m router.main) and the reference model server.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client

from loadtests import run, shapes
from tests.integration.prometheus import Prometheus
from tests.k8s import kserve, sluice, waiting
from tests.k8s.pods import get_json, is_ready

pytestmark = pytest.mark.k8s

TIMEOUT_S = 90.0
SERVICE = "fraud"
PAYLOAD = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32",
                       "data": [0.1, 0.2, 0.3, 0.4]}]}


def serve_isvc(cluster: sluice.Cluster, tmp_path: Path, *, revision: str = "v1", gpus: int = 0,
               command: list[str] | None = None, **policy: Any) -> tuple[str, str]:
    """An InferenceService at zero replicas, its router and its ScalingPolicy; returns the
    router's URL and the predictor pods' label selector."""
    isvc = cluster.create_isvc(kserve.inference_service(SERVICE, gpus=gpus))
    cluster.apps.create_namespaced_deployment(cluster.namespace, kserve.predictor_deployment(
        isvc, replicas=0, gpus=gpus, command=command, restart_backoff_s=0.5))
    cluster.core.create_namespaced_secret(cluster.namespace, sluice.router_secret())
    cluster.apps.create_namespaced_deployment(cluster.namespace,
                                              sluice.router_deployment(SERVICE))
    cluster.create_policy(sluice.scaling_policy(
        "fraud-v1", SERVICE, revision,
        {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
         "name": SERVICE},
        **{"metric": "concurrency", "target": 1, "targetUtilization": 1.0, "minReplicas": 0,
           "maxReplicas": 3, "initialScale": 0, **policy}))
    routers = "app.kubernetes.io/name=sluice-router"
    waiting.until(lambda: any(is_ready(p) for p in cluster.pods(routers)),
                  timeout_s=TIMEOUT_S, what="the router pod Ready")
    (router,) = cluster.pods(routers)
    return f"http://{router.status.pod_ip}:8080", f"app=isvc.{SERVICE}-predictor"


async def infer(session: aiohttp.ClientSession, router: str) -> tuple[int, str | None]:
    async with session.post(f"{router}/v2/models/{SERVICE}/infer", json=PAYLOAD,
                            headers={"Content-Type": "application/json"}) as response:
        await response.read()
        return response.status, response.headers.get("X-Sluice-Revision")


async def test_scale_from_zero_serves_the_first_request_then_returns_to_zero(
        cluster, controller, kubelet, make_gpu_node, tmp_path):
    make_gpu_node(f"{cluster.namespace}-node")
    router, predictors = serve_isvc(cluster, tmp_path, stableWindowSeconds=6,
                                    scaleToZeroGraceSeconds=0)
    deployment = kserve.predictor_name(SERVICE)
    assert cluster.replicas(deployment) == 0

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
        assert await infer(session, router) == (200, "v1")
    waiting.until(lambda: cluster.policy_status("fraud-v1").get("ready") == 1,
                  timeout_s=TIMEOUT_S, what="status ready = 1")
    assert cluster.condition("fraud-v1", "Active")["status"] == "True"
    assert cluster.condition("fraud-v1", "Ready")["reason"] == "Enforced"
    waiting.until(lambda: cluster.events("ScaledUp"), timeout_s=TIMEOUT_S,
                  what="a ScaledUp event")
    (scaled,) = cluster.events("ScaledUp")
    assert scaled["regarding"]["name"] == "fraud-v1" and "0 → 1" in scaled["note"]

    # Idle: back to zero, the model server's process gone with its pod.
    waiting.until(lambda: not cluster.pods(predictors), timeout_s=TIMEOUT_S,
                  what="the predictor's pods gone")
    assert cluster.replicas(deployment) == 0
    waiting.until(lambda: cluster.condition("fraud-v1", "Active").get("reason")
                  == "ScaledToZero", timeout_s=TIMEOUT_S, what="ScaledToZero")
    assert cluster.policy_status("fraud-v1")["desired"] == 0


async def test_scale_from_zero_answers_300_concurrent_requests_exactly_once(
        cluster, controller, kubelet, make_gpu_node, tmp_path):
    make_gpu_node(f"{cluster.namespace}-node")
    router, predictors = serve_isvc(cluster, tmp_path)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        answers = await asyncio.gather(*(infer(session, router) for _ in range(300)))
    assert collections.Counter(answers) == {(200, "v1"): 300}
    served: collections.Counter[str] = collections.Counter()
    for pod in cluster.pods(predictors):  # none is stopped: the stable window is a minute
        try:  # sluice's probe, not the kubelet's Ready, says which ones serve
            _, seen = get_json(f"http://{pod.status.pod_ip}:{kserve.PORT}/debug/requests")
        except OSError:
            continue  # not listening yet: it has served nothing
        served.update(seen["ids"])
    assert len(served) == 300 and set(served.values()) == {1}, "each request reached a replica once"


async def test_gpu_capacity_caps_desired_leaves_nothing_pending_and_a_new_node_scales_on(
        cluster, controller, kubelet, make_gpu_node, tmp_path):
    """Two nodes of 4 GPUs, 2 GPUs a replica: demand for 8 replicas gets the 4 that fit,
    CapacityLimited says so, no pod of sluice's waits Pending; a third node lets 2 more run.
    The 8 requests outlast every wait (they are cancelled at the end), so the demand is there
    however slowly the machine gets through the steps before the third node."""
    make_gpu_node(f"{cluster.namespace}-a", gpus=4)
    make_gpu_node(f"{cluster.namespace}-b", gpus=4)
    held_s = 5 * TIMEOUT_S
    slow = kserve.model_server_command(SERVICE, "--latency", f"{held_s:g}")
    router, predictors = serve_isvc(cluster, tmp_path, gpus=2, command=slow, maxReplicas=8,
                                    gpusPerReplica=2)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=held_s),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        demand = [asyncio.create_task(infer(session, router)) for _ in range(8)]
        try:
            await waiting.eventually(lambda: cluster.condition("fraud-v1", "CapacityLimited").get(
                "status") == "True", timeout_s=TIMEOUT_S, what="CapacityLimited")
            status = cluster.policy_status("fraud-v1")
            assert status["desired"] == 4, status
            assert "free GPUs hold 4 replicas" in cluster.condition(
                "fraud-v1", "CapacityLimited")["message"]
            await waiting.eventually(lambda: sum(map(running, cluster.pods(predictors))) == 4,
                          timeout_s=TIMEOUT_S, what="4 predictor pods running")
            assert cluster.replicas(kserve.predictor_name(SERVICE)) == 4
            assert not [p.metadata.name for p in cluster.pods(predictors)
                        if p.status.phase == "Pending"], "sluice left pods Pending"

            make_gpu_node(f"{cluster.namespace}-c", gpus=4)
            await waiting.eventually(
                lambda: cluster.policy_status("fraud-v1").get("desired") == 6, timeout_s=TIMEOUT_S,
                what="desired 6 once the third node is in",
                seen=lambda: cluster.policy_status("fraud-v1"))
            await waiting.eventually(lambda: sum(map(running, cluster.pods(predictors))) == 6,
                          timeout_s=TIMEOUT_S, what="6 predictor pods running")
        finally:
            for request in demand:
                request.cancel()
            await asyncio.gather(*demand, return_exceptions=True)


async def test_a_crash_looping_predictor_is_replica_failed_and_requests_get_503_at_once(
        cluster, controller, kubelet, make_gpu_node, tmp_path):
    make_gpu_node(f"{cluster.namespace}-node")
    crash = ["{python}", "-c", "import sys; print('model weights not found'); sys.exit(3)"]
    router, _ = serve_isvc(cluster, tmp_path, command=crash, bufferTimeoutSeconds=600)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
        async with session.post(f"{router}/v2/models/{SERVICE}/infer", json=PAYLOAD) as first:
            reason = (await first.json())["error"]
            assert first.status == 503  # well before bufferTimeoutSeconds
        assert "CrashLoopBackOff: exited with code 3" in reason
        waiting.until(lambda: cluster.condition("fraud-v1", "ReplicaFailed").get("status")
                      == "True", timeout_s=TIMEOUT_S, what="ReplicaFailed in the status")
        failed = cluster.condition("fraud-v1", "ReplicaFailed")
        assert failed["reason"] == "CrashLoopBackOff" and "code 3" in failed["message"]
        async with session.post(f"{router}/v2/models/{SERVICE}/infer", json=PAYLOAD) as again:
            assert again.status == 503 and "Retry-After" in again.headers
    waiting.until(lambda: cluster.events("ReplicaFailed"), timeout_s=TIMEOUT_S,
                  what="a ReplicaFailed event")


async def test_apiserver_down_for_30_s_scales_nothing_down_and_routers_keep_serving(
        k8s_cluster, cluster, controller, kubelet, make_gpu_node, tmp_path):
    make_gpu_node(f"{cluster.namespace}-node")
    router, predictors = serve_isvc(cluster, tmp_path, stableWindowSeconds=6,
                                    scaleToZeroGraceSeconds=0)
    deployment = kserve.predictor_name(SERVICE)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
        assert await infer(session, router) == (200, "v1")
        waiting.until(lambda: cluster.policy_status("fraud-v1").get("ready") == 1,
                      timeout_s=TIMEOUT_S, what="one replica ready")
        answers = []
        with k8s_cluster.apiserver.stopped():
            for _ in range(30):  # a request a second for the 30 s the apiserver is away
                answers.append(await infer(session, router))
                await asyncio.sleep(1)
        assert answers == [(200, "v1")] * 30, "the router kept serving its last table"
        assert cluster.replicas(deployment) == 1, "nothing scaled down"
        assert sum(map(running, cluster.pods(predictors))) == 1
        # Back: the controller acts on the cluster again. Idle from here, so to zero it goes,
        # and the status it writes follows.
        waiting.until(lambda: cluster.replicas(deployment) == 0, timeout_s=TIMEOUT_S,
                      what="scaled to zero once idle with the apiserver back")
        waiting.until(lambda: cluster.condition("fraud-v1", "Active").get("reason")
                      == "ScaledToZero", timeout_s=TIMEOUT_S, what="status written again")


def running(pod: client.V1Pod) -> bool:
    return pod.status.phase == "Running" and pod.metadata.deletion_timestamp is None


async def test_a_locust_step_ends_at_the_count_the_local_stack_reaches_for_the_same_policy(
        cluster, controller, kubelet, make_gpu_node, tmp_path):
    """The local stack's step test (tests/integration/test_autoscaling_load.py), same policy
    and load: idle → 40 requests/s on an rps policy with target 10 per replica, so
    ceil(40 / 10) = 4 replicas, ±1 as there. Judged on the controller's own record: every
    status it wrote over the hold's last 10 s, not one sample."""
    make_gpu_node(f"{cluster.namespace}-node")
    router, _ = serve_isvc(cluster, tmp_path, metric="rps", target=10, maxReplicas=10,
                           stableWindowSeconds=10, command=kserve.model_server_command(
                               SERVICE, "--latency", "0.02"))
    seen: list[tuple[float, int, int]] = []
    reasons: list[str] = []
    stop = asyncio.Event()

    async def record() -> None:
        while not stop.is_set():
            status = cluster.policy_status("fraud-v1")
            seen.append((time.monotonic(), status.get("desired", 0), status.get("ready", 0)))
            reasons.append(f"{seen[-1][0] - began:.1f}s: {status.get('reason')}")
            await asyncio.sleep(0.5)

    recorder = asyncio.create_task(record())
    began = time.monotonic()
    try:
        summary = await asyncio.to_thread(
            run.run_locust, router, shapes.Step(idle_seconds=2, users=20, hold_seconds=38), 40,
            env={"SLUICE_USER_RPS": "2", "SLUICE_MODEL": SERVICE})
    finally:
        stop.set()
        await recorder
    assert summary.failures == 0, summary.status_codes
    assert seen[0][2] == 0, "it started from zero"
    last = [(desired, ready) for at, desired, ready in seen if began + 30 < at < began + 39]
    assert last and all(3 <= desired <= 5 for desired, _ in last), "\n".join(reasons)
    assert any(3 <= ready <= 5 for _, ready in last), last


async def test_a_custom_signal_scales_the_predictor_through_prometheus(
        k8s_cluster, k8s_namespace, cluster, installed_crds, kserve_crd, kubelet, make_gpu_node,
        tmp_path):
    """vLLM's KV-cache gauge as a platform scales on it: a real Prometheus scrapes the model
    servers behind the predictor pods, labelled with namespace and InferenceService as a
    platform's relabelling does, and the controller queries it. Each request holds a quarter of
    a replica's cache (4) for 0.4 s; 6 kept in flight at a target of half a cache each need
    ceil(6 / 4 / 0.5) = 3 replicas, and with the load gone the count returns to minReplicas."""
    make_gpu_node(f"{cluster.namespace}-node")
    targets = tmp_path / "targets.json"
    targets.write_text("[]")
    prometheus = Prometheus(tmp_path / "prometheus", [], file_sd=targets)
    controller = sluice.ControllerProcess(k8s_cluster, k8s_namespace, tmp_path, "--tick", "0.5",
                                          "--prometheus-url", prometheus.url)
    stop = asyncio.Event()

    async def discover(predictors: str) -> None:
        # What kubernetes_sd does in a platform's Prometheus; Debian's build leaves it out.
        while not stop.is_set():
            found = [{"targets": [f"{pod.status.pod_ip}:{kserve.PORT}"],
                      "labels": {"namespace": k8s_namespace, "pod": pod.metadata.name,
                                 "inferenceservice": SERVICE}}
                     for pod in cluster.pods(predictors) if pod.status.pod_ip]
            written = targets.with_suffix(".new")
            written.write_text(json.dumps(found))
            written.replace(targets)  # whole, never half-written
            await asyncio.sleep(0.5)

    discovery = None
    try:
        router, predictors = serve_isvc(
            cluster, tmp_path, metric="custom:kv-cache", target=0.5, minReplicas=1,
            initialScale=1, maxReplicas=4, stableWindowSeconds=6, panicWindowPercentage=50,
            command=kserve.model_server_command(SERVICE, "--latency", "0.4",
                                                "--kv-cache-capacity", "4"),
            signal={"query": "avg(avg_over_time(vllm:gpu_cache_usage_perc{"
                             'namespace="$namespace", inferenceservice="$service"}[3s]))',
                    "type": "AverageValue", "lagSeconds": 4, "timeoutSeconds": 1})
        discovery = asyncio.create_task(discover(predictors))
        deployment = kserve.predictor_name(SERVICE)
        await waiting.eventually(lambda: cluster.policy_status("fraud-v1").get("ready") == 1,
                                 timeout_s=TIMEOUT_S, what="the initial replica ready",
                                 seen=lambda: cluster.policy_status("fraud-v1"))
        await waiting.eventually(
            lambda: cluster.condition("fraud-v1", "SignalMissing").get("reason") == "SignalRead",
            timeout_s=TIMEOUT_S, what="the signal read from Prometheus",
            seen=lambda: cluster.condition("fraud-v1", "SignalMissing"))
        loaded = asyncio.Event()
        answers: collections.Counter[int] = collections.Counter()

        async def keep_one_in_flight(session: aiohttp.ClientSession) -> None:
            while not loaded.is_set():
                answers[(await infer(session, router))[0]] += 1

        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
            load = [asyncio.create_task(keep_one_in_flight(session)) for _ in range(6)]
            try:
                await waiting.eventually(
                    lambda: cluster.replicas(deployment) >= 3, timeout_s=TIMEOUT_S,
                    what="3 replicas for 6 requests in flight",
                    seen=lambda: cluster.policy_status("fraud-v1"))
            finally:
                loaded.set()
                await asyncio.gather(*load)
        assert set(answers) == {200}, answers
        assert cluster.replicas(deployment) <= 4
        assert any(": 1 → " in e["note"] or ": 2 → " in e["note"]
                   for e in cluster.events("ScaledUp")), "scaled up from the initial replica"
        await waiting.eventually(lambda: cluster.replicas(deployment) == 1, timeout_s=TIMEOUT_S,
                                 what="back to minReplicas once the cache empties",
                                 seen=lambda: cluster.policy_status("fraud-v1"))
    finally:
        stop.set()
        if discovery is not None:
            await discovery
        controller.close()
        prometheus.close()
