"""KServe's real InferenceService CRD on the test apiserver, and a predictor as KServe would
create it in Standard mode, served by a real model server behind a kwok pod.

Covered:
- an InferenceService written as users write it for sluice (Standard mode, autoscalerClass
  external, cluster-local) is accepted by KServe's real schema and kept as written; a value the
  schema forbids is rejected naming the field;
- the predictor Deployment ``<isvc>-predictor`` with KServe's labels, owned by the
  InferenceService: its pod is scheduled, the model server answers V1 and V2 inference on the
  pod IP, and the pod is Ready; deleting the InferenceService garbage-collects the Deployment,
  its pod and the process.

Not covered: KServe's own controller (not buildable here), its Service, ingress or HPA.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.k8s import kserve, waiting
from tests.k8s.pods import get_json, is_ready, is_running, post_json

TIMEOUT_S = 60.0


@pytest.fixture
def api(k8s_cluster) -> Iterator[client.ApiClient]:
    with k8s_cluster.api_client() as api:
        yield api


def create_isvc(api: client.ApiClient, namespace: str, document: dict, **kwargs) -> dict:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        kserve.GROUP, kserve.VERSION, namespace, kserve.PLURAL, document, **kwargs
    )


def test_inference_service_as_users_write_it_is_accepted_by_the_real_schema(
    api, kserve_crd, k8s_namespace
):
    written = kserve.inference_service("fraud-model", gpus=1)
    created = create_isvc(api, k8s_namespace, written)
    assert created["spec"] == written["spec"]
    assert created["metadata"]["annotations"] == {
        "serving.kserve.io/deploymentMode": "Standard",
        "serving.kserve.io/autoscalerClass": "external",
    }
    assert created["metadata"]["labels"] == {"networking.kserve.io/visibility": "cluster-local"}

    invalid = kserve.inference_service("bad-model")
    invalid["spec"]["predictor"]["scaleMetric"] = "latency"
    with pytest.raises(ApiException) as rejected:
        create_isvc(api, k8s_namespace, invalid, dry_run="All")
    assert rejected.value.status == 422
    causes = {cause["field"] for cause in json.loads(rejected.value.body)["details"]["causes"]}
    assert "spec.predictor.scaleMetric" in causes


def test_predictor_created_as_kserve_would_serves_on_its_pod_ip(
    api, kserve_crd, kubelet, make_gpu_node, k8s_namespace
):
    make_gpu_node(f"{k8s_namespace}-gpu", gpus=4)
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    isvc = create_isvc(api, k8s_namespace, kserve.inference_service("fraud-model", gpus=1))
    apps.create_namespaced_deployment(
        k8s_namespace, kserve.predictor_deployment(isvc, replicas=1, gpus=1)
    )
    selector = "serving.kserve.io/inferenceservice=fraud-model,component=predictor"

    def predictor_pods() -> list[client.V1Pod]:
        return core.list_namespaced_pod(k8s_namespace, label_selector=selector).items

    waiting.until(lambda: any(map(is_ready, predictor_pods())), timeout_s=TIMEOUT_S,
                  what="the predictor pod Ready")
    (pod,) = predictor_pods()
    assert pod.metadata.labels["app"] == "isvc.fraud-model-predictor"
    assert pod.spec.containers[0].name == "kserve-container"
    assert pod.spec.containers[0].resources.requests == {"nvidia.com/gpu": "1"}
    base = f"http://{pod.status.pod_ip}:{kserve.PORT}"
    assert get_json(f"{base}/v2/models/fraud-model/ready")[0] == 200
    code, answer = post_json(f"{base}/v2/models/fraud-model/infer", {"inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]},
    ]})
    assert code == 200 and answer["model_name"] == "fraud-model"
    (pid,) = kubelet.pids(k8s_namespace).values()

    # Owned by the InferenceService, as KServe's are: deleting it takes the predictor along.
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        kserve.GROUP, kserve.VERSION, k8s_namespace, kserve.PLURAL, "fraud-model"
    )
    waiting.until(lambda: not predictor_pods() and not apps.list_namespaced_deployment(
        k8s_namespace).items, timeout_s=TIMEOUT_S, what="garbage collection of the predictor")
    assert not is_running(pid)
