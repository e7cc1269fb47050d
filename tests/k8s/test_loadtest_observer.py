"""The loadtest's Kubernetes observer (loadtests/kube_observer.py) on the real apiserver.

The in-cluster controller is not here yet, so each test writes what it would (ScalingPolicy and
Rollout status through the status subresource, events.k8s.io Events) and checks the observer
reads it back: replicas and conditions of the service's policies only, the rollout's phase, step,
weight and reason, each Event once (again when its count grows, never one from before the
observer started), a rollout started as a Rollout resource, refusals as errors with the reason,
and an unreachable apiserver as a problem in the sample rather than an exception. Last, `sluice
loadtest --kubeconfig` runs a small scenario against a model server on loopback while it
observes the namespace.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from loadtests import kube_observer, observe
from policies import resources, rollout
from tests import procs

ROOT = Path(__file__).resolve().parents[2]
PLURAL = resources.SCALING_POLICY.plural
AT = (resources.GROUP, resources.VERSION)


@pytest.fixture
def crds(installed_crds) -> None:
    """sluice's CRDs, installed once for the session (conftest.py)."""


def _until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


@pytest.fixture
def kube(k8s_cluster, crds, k8s_namespace) -> Iterator[tuple[client.ApiClient, str]]:
    with k8s_cluster.api_client() as api:
        yield api, k8s_namespace


def scaling_policy(namespace: str, service: str, revision: str) -> dict[str, Any]:
    return {"apiVersion": resources.API_VERSION, "kind": "ScalingPolicy",
            "metadata": {"name": f"{service}-{revision}", "namespace": namespace},
            "spec": {"service": service, "revision": revision, "metric": "rps", "target": 10,
                     "maxReplicas": 6,
                     "scaleTargetRef": {"name": f"{service}-{revision}"}}}


def event(namespace: str, kind: str, name: str, reason: str, note: str,
          at: datetime.datetime) -> client.EventsV1Event:
    """What the controller writes for a scale decision or a verdict."""
    return client.EventsV1Event(
        metadata=client.V1ObjectMeta(name=f"{name}.{uuid.uuid4().hex[:8]}"),
        event_time=at, reporting_controller="sluice.dev/controller",
        reporting_instance="sluice-controller-0", action="Scale", reason=reason, note=note,
        type="Normal", regarding=client.V1ObjectReference(
            api_version=resources.API_VERSION, kind=kind, name=name, namespace=namespace))


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def test_replicas_conditions_and_events_of_the_services_policies(kube):
    api, namespace = kube
    objects, events = client.CustomObjectsApi(api), client.EventsV1Api(api)
    for service, revision in (("model", "v1"), ("model", "v2"), ("other", "v1")):
        objects.create_namespaced_custom_object(*AT, namespace, PLURAL,
                                                scaling_policy(namespace, service, revision))
    events.create_namespaced_event(namespace, event(
        namespace, "ScalingPolicy", "model-v1", "ScaledUp", "before the run",
        now() - datetime.timedelta(minutes=5)))
    observer = kube_observer.KubernetesObserver(api, namespace, "model")

    policies = observer.policies()
    assert set(policies) == {"v1", "v2"}
    assert (policies["v1"].metric, policies["v1"].target, policies["v1"].max_replicas) == (
        "rps", 10, 6)
    first = observer.sample()
    assert first.problems == ()
    assert first.revisions["v1"] == observe.RevisionState(None, None, None)
    assert first.events == ()  # the Event from before the observer started is not this run's

    status = {"desired": 3, "ready": 1, "conditions": [
        {"type": "Ready", "status": "True", "reason": "Serving",
         "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "CapacityLimited", "status": "False", "reason": "Enough",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    objects.patch_namespaced_custom_object_status(*AT, namespace, PLURAL, "model-v1",
                                                  {"status": status})
    written = now()
    scaled = events.create_namespaced_event(namespace, event(
        namespace, "ScalingPolicy", "model-v1", "ScaledUp", "desired 1 -> 3: panic", written))
    events.create_namespaced_event(namespace, event(
        namespace, "ScalingPolicy", "other-v1", "ScaledUp", "another service", now()))

    second = observer.sample()
    assert second.revisions["v1"] == observe.RevisionState(
        desired=3, ready=1, starting=2, weight=None, conditions=("Ready: Serving",))
    assert [(e.kind, e.subject, e.text) for e in second.events] == [
        ("ScaledUp", "ScalingPolicy/model-v1", "desired 1 -> 3: panic")]
    assert second.events[0].at == pytest.approx(written.timestamp(), abs=1e-3)  # eventTime
    assert observer.sample().events == ()  # once

    scaled.series = client.EventsV1EventSeries(count=2, last_observed_time=now())
    events.replace_namespaced_event(scaled.metadata.name, namespace, scaled)
    assert [e.text for e in observer.sample().events] == ["desired 1 -> 3: panic (x2)"]


POLICY = rollout.load_rollout({"service": "model", "stableRevision": "v1",
                               "canaryRevision": "v2",
                               "steps": [{"weight": 20}, {"weight": 50}, {"weight": 100}]})


def test_a_rollout_started_as_a_resource_and_its_status_read_back(kube):
    api, namespace = kube
    objects = client.CustomObjectsApi(api)
    for revision in ("v1", "v2"):
        objects.create_namespaced_custom_object(*AT, namespace, PLURAL,
                                                scaling_policy(namespace, "model", revision))
    observer = kube_observer.KubernetesObserver(api, namespace, "model")

    asked = time.time()
    started = observer.start_rollout(POLICY)
    assert asked <= started <= time.time()  # the moment it was asked for, on this clock
    created = objects.get_namespaced_custom_object(*AT, namespace, "rollouts",
                                                   observer.rollout_name)
    assert observer.rollout_name.startswith("model-loadtest-")
    assert rollout.load_rollout(created["spec"]) == POLICY
    assert observer.sample().rollout == observe.RolloutState("Pending", None, 3, None, "")

    verdicts = [{"metric": "errors", "outcome": "pass", "reason": "0.1 % vs 0.1 %",
                 "time": "2026-01-01T00:00:00Z"}]
    objects.patch_namespaced_custom_object_status(*AT, namespace, "rollouts",
                                                  observer.rollout_name, {"status": {
                                                      "phase": "Progressing", "step": 0,
                                                      "weight": 20, "lastVerdicts": verdicts}})
    progressing = observer.sample()
    assert progressing.rollout == observe.RolloutState(
        "Progressing", 1, 3, 20, "errors: pass 0.1 % vs 0.1 %")
    assert (progressing.revisions["v1"].weight, progressing.revisions["v2"].weight) == (80, 20)

    objects.patch_namespaced_custom_object_status(*AT, namespace, "rollouts",
                                                  observer.rollout_name, {"status": {
                                                      "phase": "RolledBack", "weight": 0,
                                                      "conditions": [{
                                                          "type": "Ready", "status": "False",
                                                          "reason": "RolledBack",
                                                          "message": "errors: 5 % vs 0.1 %",
                                                          "lastTransitionTime":
                                                              "2026-01-01T00:00:05Z"}]}})
    assert observer.sample().rollout.reason == "errors: 5 % vs 0.1 %"


def test_a_refused_rollout_is_an_error_with_the_apiservers_reason(k8s_cluster, crds):
    # A user without RBAC bindings: refused before the namespace matters.
    with k8s_cluster.api_client(token=k8s_cluster.unprivileged_token) as api:
        observer = kube_observer.KubernetesObserver(api, "default", "model")
        with pytest.raises(observe.ObserverError, match=r"refused the Rollout \(403\)"):
            observer.start_rollout(POLICY)
        with pytest.raises(observe.ObserverError, match="cannot list ScalingPolicies"):
            observer.policies()


def test_an_unreachable_apiserver_is_a_problem_in_the_sample_not_an_error():
    configuration = client.Configuration()
    configuration.host = f"https://127.0.0.1:{procs.free_port()}"
    with client.ApiClient(configuration) as api:
        sample = kube_observer.KubernetesObserver(api, "default", "model",
                                                  timeout_s=2).sample()
    assert sample.revisions == {} and sample.rollout is None
    assert [p.split(":")[0] for p in sample.problems] == ["ScalingPolicies", "Rollouts",
                                                          "Events"]


def test_sluice_loadtest_observes_a_namespace(k8s_cluster, crds, k8s_namespace, tmp_path):
    with k8s_cluster.api_client() as api:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            *AT, k8s_namespace, PLURAL, scaling_policy(k8s_namespace, "model", "v1"))
    server = procs.Proc.start([sys.executable, str(ROOT / "examples" / "model_server.py"),
                               "--port", str(port := procs.free_port())],
                              ready_url=f"http://127.0.0.1:{port}/v2/health/ready")
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "tiny", "phases": [{"name": "load", "seconds": 3, "users": 2}],
        "expectations": [{"errors": {"maxCount": 0}}, {"desiredReplicas": {"atMost": 6}}]}))
    report = tmp_path / "tiny.html"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "autoscaler.cli", "loadtest", str(scenario), "--host",
             f"http://127.0.0.1:{port}", "--kubeconfig", str(k8s_cluster.kubeconfig), "-n",
             k8s_namespace, "--sample-seconds", "0.5", "--report", str(report)],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    # The load was answered; the replicas were never written by a controller, so that
    # expectation could not be judged, and the run fails saying so.
    assert done.returncode == 1, done.stderr
    results = {r["expectation"]: r for r in json.loads(
        report.with_suffix(".json").read_text())["results"]}
    assert results["errors (the whole run)"]["outcome"] == "pass"
    assert results["desiredReplicas (v1, the whole run)"] == {
        "expectation": "desiredReplicas (v1, the whole run)", "outcome": "unknown",
        "observed": None, "bound": "<= 6", "unit": "replicas",
        "reason": "desiredReplicas of v1: never observed in the whole run"}
    assert f"observed in namespace {k8s_namespace}" in report.read_text()
