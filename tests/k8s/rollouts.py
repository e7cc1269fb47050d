"""A canary rollout on the test cluster as tests/k8s and ``make bench`` set it up: an
InferenceService's predictor (v1) and its canary predictor (v2, what KServe deploys for
``spec.canary`` with ``trafficPercent: 0``), a router process behind a kwok pod, their
ScalingPolicies, the short Rollout policy of the local tests, and Locust through the router.

The policy: weights 20 → 50 → 100, each step at least 5 s and 50 canary requests, a verdict
every second, latency tolerance 50 % (tests/integration/test_rollouts.py says why).
"""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

from loadtests import run, shapes
from tests.k8s import kserve, sluice, waiting
from tests.k8s.pods import get_json, is_ready

TIMEOUT_S = 120.0
SERVICE = "fraud"
ROLLOUT = f"{SERVICE}-v2"
USERS, USER_RPS = 20, 4
INTERVAL_S = 1


def rollout_policy(**overrides: Any) -> dict[str, Any]:
    spec = {
        "service": SERVICE, "stableRevision": "v1", "canaryRevision": "v2",
        "steps": [{"weight": w, "minDurationSeconds": 5, "minRequests": 50}
                  for w in (20, 50, 100)],
        "analysis": {"intervalSeconds": INTERVAL_S, "failureLimit": 3},
        "slo": {"successRate": {"min": 99, "marginPoints": 2},
                "latency": {"tolerancePercent": 50}},
        "maxDurationSeconds": 300, **overrides,
    }
    return {"apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": ROLLOUT}, "spec": spec}


def canary_deployment(isvc: dict[str, Any], command: list[str]) -> dict[str, Any]:
    """The predictor KServe deploys for ``spec.canary: [{trafficPercent: 0, predictor: {name:
    v2}}]``: <isvc>-v2-predictor, its own pods, no traffic of KServe's."""
    deployment = kserve.predictor_deployment(isvc, replicas=0, command=command)
    name = f"{SERVICE}-v2-predictor"
    deployment["metadata"]["name"] = name
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    labels["app"] = f"isvc.{name}"
    deployment["spec"]["selector"] = {"matchLabels": {"app": labels["app"]}}
    return deployment


def serve_two_revisions(cluster: sluice.Cluster, canary_args: tuple[str, ...] = ()) -> str:
    """v1 (the InferenceService's predictor) serving on one replica, v2 (its canary predictor)
    at zero replicas and weight 0; their router; returns its URL."""
    isvc = cluster.create_isvc(kserve.inference_service(SERVICE))
    cluster.apps.create_namespaced_deployment(
        cluster.namespace, kserve.predictor_deployment(isvc, replicas=1, command=(
            kserve.model_server_command(SERVICE, "--revision", "v1", "--latency", "0.01"))))
    cluster.apps.create_namespaced_deployment(cluster.namespace, canary_deployment(
        isvc, kserve.model_server_command(SERVICE, "--revision", "v2", "--latency", "0.01",
                                          *canary_args)))
    cluster.core.create_namespaced_secret(cluster.namespace, sluice.router_secret())
    cluster.apps.create_namespaced_deployment(cluster.namespace,
                                              sluice.router_deployment(SERVICE))
    scaling = {"metric": "rps", "target": 100, "maxReplicas": 4}
    cluster.create_policy(sluice.scaling_policy(
        "fraud-v1", SERVICE, "v1", {"apiVersion": "serving.kserve.io/v1beta1",
                                    "kind": "InferenceService", "name": SERVICE},
        minReplicas=1, **scaling))
    cluster.create_policy(sluice.scaling_policy(
        "fraud-v2", SERVICE, "v2", {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": f"{SERVICE}-v2-predictor"}, **scaling))
    routers = "app.kubernetes.io/name=sluice-router"
    waiting.until(lambda: any(is_ready(p) for p in cluster.pods(routers)),
                  timeout_s=TIMEOUT_S, what="the router pod Ready")
    waiting.until(lambda: cluster.policy_status("fraud-v1").get("ready") == 1,
                  timeout_s=TIMEOUT_S, what="v1 serving")
    (router,) = cluster.pods(routers)
    return f"http://{router.status.pod_ip}:8080"


class Load:
    """Locust at USERS x USER_RPS on ``model`` through ``router`` in a thread until stop()."""

    def __init__(self, router: str, work_dir: Path, model: str = SERVICE) -> None:
        self.stop_file = work_dir / "stop-load"
        self._run = asyncio.create_task(asyncio.to_thread(
            run.run_locust, router, shapes.Constant(users=USERS), 240,
            env={"SLUICE_USER_RPS": str(USER_RPS), "SLUICE_STOP_FILE": str(self.stop_file),
                 "SLUICE_MODEL": model}))

    async def stop(self) -> run.Summary:
        self.stop_file.touch()
        return await self._run


def router_stats(router: str) -> dict[str, dict[str, Any]]:
    _, body = get_json(f"{router.replace(':8080', ':8081')}/stats")
    return {r["revision"]: r for r in body["revisions"]}


def drained(revision: dict[str, Any]) -> bool:
    """The router gives the revision no traffic and has none of its requests left."""
    return revision["weight"] == 0 and revision["inflight"] == revision["buffered"] == 0


def phase(cluster: sluice.Cluster) -> str | None:
    return (cluster.rollout(ROLLOUT).get("status") or {}).get("phase")


def seconds(stamp: str) -> float:
    """An RFC 3339 time of the apiserver's (a Time or a MicroTime) as Unix seconds."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
