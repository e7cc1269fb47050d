"""Canary rollouts on the real control plane: a Rollout resource drives the same rollout driver as
the local stack, with revisions that are Deployments (KServe's predictor and a second predictor,
as ``spec.canary`` with ``trafficPercent: 0`` deploys it), under Locust load through a router
process behind a kwok pod; the setup and the policy (the local tests' short one) are in
rollouts.py, which ``make bench``'s kube_rollouts section shares.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import yaml
from kubernetes import client

from policies import resources
from tests.k8s import kserve, sluice, waiting
from tests.k8s.pods import is_ready
from tests.k8s.rollouts import (
    INTERVAL_S,
    SERVICE,
    TIMEOUT_S,
    USER_RPS,
    USERS,
    Load,
    drained,
    phase,
    rollout_policy,
    router_stats,
    seconds,
    serve_two_revisions,
)

pytestmark = pytest.mark.k8s


async def eventually(predicate: Any, what: str, timeout_s: float = TIMEOUT_S) -> None:
    await waiting.eventually(predicate, timeout_s=timeout_s, what=what)


ROUTERS = "app.kubernetes.io/name=sluice-router"


def weights(router: str) -> dict[str, int]:
    return {r: s["weight"] for r, s in router_stats(router).items()}


async def promoted_under_load(cluster: sluice.Cluster, router: str, tmp_path: Any) -> Any:
    """Locust on v1, then the short rollout to v2 until Promoted; the load's summary."""
    load = Load(router, tmp_path)
    try:
        await eventually(lambda: router_stats(router)["v1"]["requests"]["total"] > 100,
                         "load on v1")
        cluster.create_rollout(rollout_policy())
        await eventually(lambda: phase(cluster) == "Promoted", "the rollout promoted")
    finally:
        summary = await load.stop()
    return summary


async def kill_router_process(cluster: sluice.Cluster, kubelet: Any) -> None:
    """SIGKILL the router's process; the kubelet starts it again in the same pod (same IP),
    without a table: it is Ready again only once a controller has published one to it."""
    (pod,) = cluster.pods(ROUTERS)
    os.kill(kubelet.pids(cluster.namespace)[pod.metadata.name], signal.SIGKILL)
    await eventually(lambda: any(c.restart_count for c in cluster.pods(ROUTERS)[0]
                                 .status.container_statuses or []),
                     "the router's process restarted")


async def test_rollout_promotes_a_good_canary_through_every_step_under_load(
        cluster, controller, kubelet, make_gpu_node, tmp_path):
    make_gpu_node(f"{cluster.namespace}-node")
    router = serve_two_revisions(cluster)
    summary = await promoted_under_load(cluster, router, tmp_path)
    assert summary.failures == 0, summary.status_codes
    status = cluster.rollout("fraud-v2")["status"]
    assert (status["weight"], status["step"]) == (100, 2)
    promoted = next(c for c in status["conditions"] if c["type"] == "Promoted")
    assert (promoted["status"], promoted["reason"]) == ("True", "AllStepsPassed")
    notes = [e["note"] for e in sorted(cluster.events("Step"), key=lambda e: e["eventTime"])]
    assert [n.split(",")[0] for n in notes] == ["step 1/3", "step 2/3", "step 3/3"], notes
    assert cluster.events("Promoted")
    # The old stable is parked: scaled to zero through /scale, and its status says so once its
    # last pod has gone (until then it reads Serving: the pod still answers its probe).
    await eventually(lambda: cluster.replicas(kserve.predictor_name(SERVICE)) == 0,
                     "the old stable at zero replicas")
    await eventually(lambda: cluster.condition("fraud-v1", "Active").get("reason")
                     in ("ScaledToZero", None), "the old stable's status at ScaledToZero")


async def test_rollout_rolls_back_a_canary_with_5_percent_errors_in_its_first_step(
        cluster, controller, kubelet, make_gpu_node, tmp_path):
    make_gpu_node(f"{cluster.namespace}-node")
    router = serve_two_revisions(cluster, canary_args=("--error-rate", "0.05"))
    load = Load(router, tmp_path)
    try:
        await eventually(lambda: router_stats(router)["v1"]["requests"]["total"] > 100,
                         "load on v1")
        cluster.create_rollout(rollout_policy())
        await eventually(lambda: phase(cluster) == "RolledBack", "the rollout rolled back")
        # The router serves the rollback's table and what v2 had in flight is answered (its
        # own record says so): from here its count must not move.
        await eventually(lambda: drained(router_stats(router)["v2"]), "v2 out of the table")
        at_rollback = router_stats(router)
        await eventually(lambda: router_stats(router)["v1"]["requests"]["total"]
                         >= at_rollback["v1"]["requests"]["total"] + 200,
                         "200 more requests after the rollback")
        after = router_stats(router)
    finally:
        summary = await load.stop()
    status = cluster.rollout("fraud-v2")["status"]
    assert (status["weight"], status["step"]) == (0, 0), "rolled back in its first step"
    assert after["v2"]["requests"]["total"] == at_rollback["v2"]["requests"]["total"], \
        "no request reached the canary after the rollback"
    back = next(c for c in status["conditions"] if c["type"] == "RolledBack")
    assert (back["status"], back["reason"]) == ("True", "CanaryFailed")
    assert cluster.events("RolledBack") and cluster.events("Verdict")
    # Errors clients saw, within the local stack's bound: weight x RPS x (detection +
    # interval) x rate x 3, detection from the rollout's own record (its first step's Event
    # to its RolledBack condition).
    (first_step,) = [e for e in cluster.events("Step") if "step 1/3" in e["note"]]
    detection_s = seconds(back["lastTransitionTime"]) - seconds(first_step["eventTime"])
    bound = 0.2 * USERS * USER_RPS * (detection_s + 1 + INTERVAL_S) * 0.05 * 3
    assert summary.failures <= bound, (summary.failures, bound, detection_s)


async def test_rollout_commands_on_the_resource_and_through_sluice_rollout(
        k8s_cluster, cluster, controller, kubelet, make_gpu_node, tmp_path):
    """kubectl's way (the annotation) and ``sluice rollout -n NS``, which sets it."""
    make_gpu_node(f"{cluster.namespace}-node")
    router = serve_two_revisions(cluster)

    def sluice_rollout(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "autoscaler.cli", "rollout", "--kubeconfig",
             str(k8s_cluster.kubeconfig), "-n", cluster.namespace, *args],
            capture_output=True, text=True, cwd=sluice.ROOT, timeout=60)

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(rollout_policy(canaryRevision="v1")))
    refused = sluice_rollout("start", "-f", str(bad))
    assert refused.returncode == 2 and "canaryRevision" in refused.stderr
    good = tmp_path / "rollout.yaml"
    good.write_text(yaml.safe_dump(rollout_policy(steps=[
        {"weight": 20, "minDurationSeconds": 200, "minRequests": 50}, {"weight": 100}])))
    assert sluice_rollout("start", "-f", str(good)).returncode == 0
    await eventually(lambda: phase(cluster) == "Progressing", "progressing")

    cluster.annotate_rollout("fraud-v2", "pause")  # kubectl annotate
    await eventually(lambda: phase(cluster) == "Paused", "paused by the annotation")
    await eventually(lambda: "sluice.dev/command" not in (
        cluster.rollout("fraud-v2")["metadata"].get("annotations") or {}),
        "the command taken off once applied")
    resumed = sluice_rollout("resume", SERVICE)  # waits until the controller applied it
    assert resumed.returncode == 0, resumed.stderr
    await eventually(lambda: phase(cluster) == "Progressing", "resumed by sluice rollout")
    shown = sluice_rollout("status", SERVICE)
    assert shown.returncode == 0 and "Progressing" in shown.stdout and "20 %" in shown.stdout
    aborted = sluice_rollout("abort", SERVICE)
    assert aborted.returncode == 0, aborted.stderr
    await eventually(lambda: phase(cluster) == "RolledBack", "aborted")
    back = next(c for c in cluster.rollout("fraud-v2")["status"]["conditions"]
                if c["type"] == "RolledBack")
    assert back["reason"] == "AbortedByPerson"
    assert router_stats(router)["v2"]["weight"] == 0
    assert {e["note"] for e in cluster.events("Command")} >= {
        "pause applied", "resume applied", "abort applied"}


async def at_step_2(cluster: sluice.Cluster, router: str, hold_s: float) -> None:
    """Under load, a three-step rollout (20, 50, 100 %) that holds its second step ``hold_s``;
    returns once it is at 50 %."""
    await eventually(lambda: router_stats(router)["v1"]["requests"]["total"] > 100,
                     "load on v1")
    cluster.create_rollout(rollout_policy(steps=[
        {"weight": 20, "minDurationSeconds": 5, "minRequests": 50},
        {"weight": 50, "minDurationSeconds": hold_s, "minRequests": 50},
        {"weight": 100, "minDurationSeconds": 5, "minRequests": 50}]))
    await eventually(lambda: (cluster.rollout("fraud-v2").get("status") or {}).get(
        "weight") == 50, "step 2 at 50 %")


async def test_rollout_resumes_at_its_step_and_weights_after_a_controller_restart(
        cluster, controller, kubelet, make_gpu_node, tmp_path):
    make_gpu_node(f"{cluster.namespace}-node")
    router = serve_two_revisions(cluster)
    load = Load(router, tmp_path)
    weights_seen = set()
    try:
        await at_step_2(cluster, router, hold_s=20)
        before = cluster.rollout("fraud-v2")["status"]
        controller.stop()  # the controller goes; the routers keep serving their table
        restarted_at = time.time()
        controller.start()

        def promoted() -> bool:
            weights_seen.add(router_stats(router)["v2"]["weight"])
            return phase(cluster) == "Promoted"

        await eventually(promoted, "promoted after the restart")
    finally:
        summary = await load.stop()
    assert summary.failures == 0, summary.status_codes
    assert before["step"] == 1
    assert weights_seen <= {50, 100}, "no weight jump: the new controller kept step 2's weights"
    later = [e["note"] for e in cluster.events("Step") + cluster.events("Promoted")
             if seconds(e["eventTime"]) > restarted_at]
    assert later and not any("step 1/3" in note for note in later), later


async def test_a_promoted_canary_keeps_the_traffic_when_its_rollout_is_edited_deleted_and_restarted(
        cluster, controller, kubelet, make_gpu_node, tmp_path):
    """A Rollout's run belongs to its spec: edited (a canary with no policy yet), the old run
    is taken off its status, so nothing resumes it. Deleted, only the policies' status
    records the weights: a restarted controller (and a router that lost its table with it)
    serve v2 still, not the first revision reconciled."""
    make_gpu_node(f"{cluster.namespace}-node")
    router = serve_two_revisions(cluster)
    await promoted_under_load(cluster, router, tmp_path)
    await eventually(lambda: [cluster.policy_status(p).get("weight") for p in
                              ("fraud-v1", "fraud-v2")] == [0, 100], "the weights in status")
    edited = cluster.custom.patch_namespaced_custom_object(
        resources.GROUP, resources.VERSION, cluster.namespace, resources.ROLLOUT.plural,
        "fraud-v2", {"spec": {"canaryRevision": "v3"}})["metadata"]["generation"]
    await eventually(lambda: cluster.rollout("fraud-v2")["status"].get("observedGeneration")
                     == edited, "the edit observed")
    left = cluster.rollout("fraud-v2")["status"]
    assert not {"phase", "weight", "memory"} & set(left), left
    progressing = next(c for c in left["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "RevisionsNotReady", progressing
    assert weights(router) == {"v1": 0, "v2": 100}
    cluster.delete_rollout("fraud-v2")
    controller.stop()
    await kill_router_process(cluster, kubelet)
    controller.start()  # the router's only table now comes from the new controller
    await eventually(lambda: all(map(is_ready, cluster.pods(ROUTERS))), "the router Ready again")
    assert weights(router) == {"v1": 0, "v2": 100}


async def test_a_router_restarted_mid_rollout_gets_the_current_table_and_its_reset_is_not_judged(
        cluster, controller, kubelet, make_gpu_node, tmp_path):
    make_gpu_node(f"{cluster.namespace}-node")
    router = serve_two_revisions(cluster)
    load = Load(router, tmp_path)
    try:
        await eventually(lambda: router_stats(router)["v1"]["requests"]["total"] > 100,
                         "load on v1")
        cluster.create_rollout(rollout_policy(steps=[
            {"weight": 20, "minDurationSeconds": 200, "minRequests": 50}, {"weight": 100}]))
        await eventually(lambda: router_stats(router)["v2"]["requests"]["total"] > 50,
                         "the canary serving its share")
        await kill_router_process(cluster, kubelet)
        await eventually(lambda: all(map(is_ready, cluster.pods(ROUTERS))),
                         "the router Ready again")
        assert weights(router) == {"v1": 80, "v2": 20}
        await eventually(lambda: any("restarted" in e["note"] for e in cluster.events("Verdict")),
                         "the interval across the restart not judged")
        # Intervals without a verdict may pause it (failureLimit); verdicts resume it.
        await eventually(lambda: phase(cluster) == "Progressing", "progressing again")
    finally:
        await load.stop()
    assert not cluster.events("RolledBack"), "the reset was not read as a verdict"


def lease_holder(cluster: sluice.Cluster) -> str | None:
    lease = client.CoordinationV1Api(cluster.api).read_namespaced_lease(
        "sluice-controller", cluster.namespace)
    return lease.spec.holder_identity


async def test_leader_failover_mid_rollout_finishes_from_the_same_step_and_weights(
        k8s_cluster, cluster, installed_crds, kserve_crd, kubelet, make_gpu_node, tmp_path):
    """Two controllers; the leader is SIGKILLed at step 2; the standby takes the Lease once it
    has expired and carries the rollout on from step 2 at 50 %."""
    make_gpu_node(f"{cluster.namespace}-node")
    account = sluice.ControllerAccount(k8s_cluster, cluster.namespace, tmp_path)
    first = sluice.ControllerProcess(k8s_cluster, cluster.namespace, tmp_path, "--tick", "0.5",
                                     account=account)
    await eventually(lambda: lease_holder(cluster), "a leader")
    second = sluice.ControllerProcess(k8s_cluster, cluster.namespace, tmp_path, "--tick", "0.5",
                                      account=account)
    leader = lease_holder(cluster)
    try:
        router = serve_two_revisions(cluster)
        load = Load(router, tmp_path)
        weights_seen = set()
        try:
            await at_step_2(cluster, router, hold_s=40)
            first.proc.signal(signal.SIGKILL)
            killed_at = time.time()
            await eventually(lambda: lease_holder(cluster) not in (None, leader),
                             "the standby leading", timeout_s=40)

            def promoted() -> bool:
                weights_seen.add(router_stats(router)["v2"]["weight"])
                return phase(cluster) == "Promoted"

            await eventually(promoted, "promoted by the new leader")
        finally:
            summary = await load.stop()
    finally:
        first.close()
        second.close()
        account.close()
    assert summary.failures == 0, summary.status_codes
    assert weights_seen <= {50, 100}, "no weight jump across the failover"
    later = [e["note"] for e in cluster.events("Step") + cluster.events("Promoted")
             if seconds(e["eventTime"]) > killed_at]
    assert later and not any("step 1/3" in note for note in later), later
    (resumed,) = cluster.events("Resumed")
    assert "step 2/3, v2 at 50 %" in resumed["note"] and lease_holder(cluster) in resumed["note"]
