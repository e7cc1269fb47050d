"""KServe on the test cluster: its real InferenceService CRD, InferenceServices as users write
them, and the predictor Deployment KServe would create for one in Standard mode.

KServe's controller cannot be built here (../shared/kserve/README.md), so
``predictor_deployment`` writes what it would: ``<isvc>-predictor`` with KServe's labels
(``serving.kserve.io/inferenceservice``, ``component: predictor``, and
``app: isvc.<isvc>-predictor`` on the selector and pods), owned by the InferenceService, its
container named ``kserve-container`` on port 8080. Its pods are process pods
(process_kubelet.py): the real scheduler places them on kwok GPU nodes and a real model server
(examples/model_server.py) answers on each pod IP.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.k8s import process_kubelet

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT.parent / "shared" / "kserve" / "inferenceservices.crd.yaml"
CRD_NAME = "inferenceservices.serving.kserve.io"
GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
FIELD_MANAGER = "sluice-tests"
CONTAINER = "kserve-container"  # KServe's constants.InferenceServiceContainerName
PORT = 8080
MODEL_SERVER = "examples/model_server.py"


def install_crd(api: client.ApiClient, *, timeout_s: float = 60.0) -> dict[str, Any]:
    """Applies KServe's full CRD server-side and waits until it is Established.

    Server-side apply: the 1.9 MB YAML (640 kB as JSON) is too big for the
    last-applied-configuration annotation a client-side apply would add (256 kB limit), and
    applying again (a rerun against the same cluster) is a no-op instead of a 409.
    """
    document = yaml.load(CRD_PATH.read_text(), Loader=yaml.CSafeLoader)
    extensions = client.ApiextensionsV1Api(api)
    extensions.patch_custom_resource_definition(
        CRD_NAME, document, field_manager=FIELD_MANAGER, force=True,
        _content_type="application/apply-patch+yaml",
    )
    deadline = time.monotonic() + timeout_s
    while True:
        crd = extensions.read_custom_resource_definition(CRD_NAME)
        conditions = {c.type: c.status for c in crd.status.conditions or []}
        if conditions.get("Established") == "True":
            return document
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {CRD_NAME} not Established after {timeout_s:g}s: {conditions}")
        time.sleep(0.1)


def inference_service(name: str, *, autoscaler_class: str = "external", min_replicas: int = 0,
                      max_replicas: int = 4, gpus: int = 0) -> dict[str, Any]:
    """An InferenceService as a user writes it for sluice: Standard mode, an external
    autoscaler (KServe then leaves ``replicas`` alone), no ingress of KServe's own."""
    model: dict[str, Any] = {
        "modelFormat": {"name": "sklearn"},
        "storageUri": "gs://kfserving-examples/models/sklearn/1.0/model",
    }
    if gpus:
        model["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "annotations": {
                "serving.kserve.io/deploymentMode": "Standard",
                "serving.kserve.io/autoscalerClass": autoscaler_class,
            },
            # A router in front takes the traffic; KServe makes no Ingress/HTTPRoute.
            "labels": {"networking.kserve.io/visibility": "cluster-local"},
        },
        "spec": {
            "predictor": {
                "minReplicas": min_replicas,
                "maxReplicas": max_replicas,
                "model": model,
            }
        },
    }


def predictor_name(isvc_name: str) -> str:
    return f"{isvc_name}-predictor"


def predictor_labels(isvc_name: str) -> dict[str, str]:
    """The labels KServe puts on the predictor Deployment's selector and pods."""
    return {
        "serving.kserve.io/inferenceservice": isvc_name,
        "component": "predictor",
        "app": f"isvc.{predictor_name(isvc_name)}",
    }


def model_server_command(model_name: str, *args: str) -> list[str]:
    """The process kubelet's command for examples/model_server.py on the pod's IP and port. It
    keeps serving for a second after SIGTERM, as a preStop sleep would: the kubelet signals a
    deleted pod at the moment the controller sees it deleted, and the routers need that moment
    to drop it from their tables (the README says: give predictors a preStop sleep)."""
    return ["{python}", MODEL_SERVER, "--host", "{ip}", "--port", "{port}",
            "--model-name", model_name, "--drain-timeout", "1", "--shutdown-delay", "1", *args]


def predictor_deployment(isvc: dict[str, Any], *, replicas: int = 1, gpus: int = 0,
                         command: list[str] | None = None,
                         readiness_path: str | None = None,
                         restart_backoff_s: float | None = None) -> dict[str, Any]:
    """The predictor Deployment KServe would create for the (created) InferenceService
    ``isvc``, its pods run by the process kubelet (by default the model server, probed on its
    model's V2 ready path every second)."""
    name = isvc["metadata"]["name"]
    labels = predictor_labels(name)
    annotations = {
        process_kubelet.COMMAND_ANNOTATION: json.dumps(command or model_server_command(name)),
    }
    if restart_backoff_s is not None:
        annotations[process_kubelet.RESTART_BACKOFF_ANNOTATION] = str(restart_backoff_s)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": "kserve/sklearnserver:latest",  # kwok never pulls it
        "ports": [{"name": "http1", "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": readiness_path or f"/v2/models/{name}/ready", "port": PORT},
            "periodSeconds": 1,
            "failureThreshold": 3,
        },
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": predictor_name(name),
            "labels": {
                "serving.kserve.io/inferenceservice": name,
                "component": "predictor",
            },
            "ownerReferences": [{
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "InferenceService",
                "name": name,
                "uid": isvc["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": labels["app"]}},
            "template": {
                "metadata": {
                    "labels": {**labels, process_kubelet.PROCESS_LABEL: "true"},
                    "annotations": annotations,
                },
                "spec": {
                    "nodeSelector": {"type": "kwok"},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists",
                                     "effect": "NoSchedule"}],
                    "terminationGracePeriodSeconds": 10,
                    "containers": [container],
                },
            },
        },
    }
