"""What ``sluice manifests router`` writes and manifests/controller/ holds, on a real apiserver.

- every generated object is created with strict field validation (an unknown or misplaced field
  is an error, not silently dropped): the Deployment, PodDisruptionBudget, Service,
  NetworkPolicy, and the Ingress or the HTTPRoute. The Gateway API's CRDs are not installed
  here, so the HTTPRoute is checked against a minimal HTTPRoute CRD written below from the
  Gateway API's v1 field names (the fields sluice writes, typed, nothing else);
- the controller's Deployment is accepted (a server-side dry run: its pods would need the
  image);
- a router made from the generated objects (its pods run by the process kubelet) is found by
  the controller, gets its route table and answers a request at zero replicas;
- manifests/rbac/namespaced/role.yaml, applied in the models' namespace as the README says,
  lets a controller whose account lives elsewhere scale there, without access to nodes.

How each object is built is tests/unit/test_kube_manifests.py.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes import client

from autoscaler.kube import router_manifests as rm
from policies import resources
from tests.k8s import kserve, sluice, waiting
from tests.k8s.pods import get_json, is_ready

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[2]
CONTROLLER_DEPLOYMENT = ROOT / "manifests" / "controller" / "deployment.yaml"
TIMEOUT_S = 90.0
STRICT = {"field_validation": "Strict"}

_PARENT_REF = {"type": "object", "required": ["name"], "properties": {
    "group": {"type": "string"}, "kind": {"type": "string"}, "namespace": {"type": "string"},
    "name": {"type": "string"}, "sectionName": {"type": "string"},
    "port": {"type": "integer", "format": "int32"}}}
_BACKEND_REF = {"type": "object", "required": ["name"], "properties": {
    "group": {"type": "string"}, "kind": {"type": "string"}, "namespace": {"type": "string"},
    "name": {"type": "string"}, "port": {"type": "integer", "format": "int32"},
    "weight": {"type": "integer", "format": "int32"}}}
_MATCH = {"type": "object", "properties": {"path": {"type": "object", "properties": {
    "type": {"type": "string", "enum": ["Exact", "PathPrefix", "RegularExpression"]},
    "value": {"type": "string"}}}}}
HTTPROUTE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "httproutes.gateway.networking.k8s.io",
                 # *.k8s.io groups need it; the Gateway API's own CRDs carry their approval.
                 "annotations": {"api-approved.kubernetes.io":
                                 "https://github.com/kubernetes-sigs/gateway-api"}},
    "spec": {
        "group": "gateway.networking.k8s.io", "scope": "Namespaced",
        "names": {"plural": "httproutes", "singular": "httproute", "kind": "HTTPRoute",
                  "listKind": "HTTPRouteList"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
            "openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "properties": {
                    "parentRefs": {"type": "array", "items": _PARENT_REF},
                    "hostnames": {"type": "array", "items": {"type": "string"}},
                    "rules": {"type": "array", "items": {"type": "object", "properties": {
                        "matches": {"type": "array", "items": _MATCH},
                        "backendRefs": {"type": "array", "items": _BACKEND_REF},
                        "timeouts": {"type": "object", "properties": {
                            "request": {"type": "string"},
                            "backendRequest": {"type": "string"}}}}}}}},
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}],
    },
}
"""A minimal HTTPRoute CRD: the Gateway API's v1 names for the fields sluice writes."""


def creator(api: client.ApiClient, kind: str) -> Callable[..., Any]:
    """The typed create call for ``kind``: (namespace, body, **options)."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    networking, custom = client.NetworkingV1Api(api), client.CustomObjectsApi(api)
    return {
        "PodDisruptionBudget": client.PolicyV1Api(api).create_namespaced_pod_disruption_budget,
        "ConfigMap": core.create_namespaced_config_map,
        "Service": core.create_namespaced_service,
        "Deployment": apps.create_namespaced_deployment,
        "NetworkPolicy": networking.create_namespaced_network_policy,
        "Ingress": networking.create_namespaced_ingress,
        "HTTPRoute": lambda namespace, body, **options:
            custom.create_namespaced_custom_object("gateway.networking.k8s.io", "v1",
                                                   namespace, "httproutes", body, **options),
    }[kind]


def create_all(api: client.ApiClient, made: list[dict[str, Any]], **options: Any) -> None:
    for obj in made:
        creator(api, obj["kind"])(obj["metadata"]["namespace"], obj, **STRICT, **options)


@pytest.fixture(scope="module")
def httproute_crd(k8s_cluster) -> Iterator[None]:
    with k8s_cluster.api_client() as api:
        extensions = client.ApiextensionsV1Api(api)
        name = HTTPROUTE_CRD["metadata"]["name"]
        extensions.create_custom_resource_definition(HTTPROUTE_CRD)
        try:
            waiting.until(lambda: sluice.condition(sluice.read_crd(extensions, name),
                                                   "Established") == "True",
                          timeout_s=30, what="the HTTPRoute CRD Established")
            yield
        finally:
            extensions.delete_custom_resource_definition(name)


@pytest.mark.parametrize("route", ["ingress", "httproute"])
def test_generated_router_objects_pass_strict_validation(k8s_cluster, k8s_namespace,
                                                         httproute_crd, route):
    routed = ({"ingress_class": "nginx"} if route == "ingress" else
              {"gateway": rm.GatewayRef("public", "infra"), "request_timeout_s": 600})
    settings = rm.RouterSettings("fraud", k8s_namespace, host="fraud.example.com", **routed)
    made = rm.objects(settings)
    with k8s_cluster.api_client() as api:
        create_all(api, made)
        apps, custom = client.AppsV1Api(api), client.CustomObjectsApi(api)
        stored = apps.read_namespaced_deployment("fraud-router", k8s_namespace)
        pod = api.sanitize_for_serialization(stored.spec.template.spec)
        expected = next(o for o in made if o["kind"] == "Deployment")["spec"]["template"]["spec"]
        # Nothing sluice wrote was dropped on the way in (defaults are added, not compared).
        assert pod["containers"][0]["lifecycle"] == expected["containers"][0]["lifecycle"]
        assert pod["containers"][0]["securityContext"] == \
            expected["containers"][0]["securityContext"]
        assert pod["securityContext"] == expected["securityContext"]
        if route == "httproute":
            stored_route = custom.get_namespaced_custom_object(
                "gateway.networking.k8s.io", "v1", k8s_namespace, "httproutes", "fraud-router")
            assert stored_route["spec"] == made[-1]["spec"]


def test_controller_deployment_is_accepted(k8s_cluster, k8s_namespace):
    deployment = yaml.safe_load(CONTROLLER_DEPLOYMENT.read_text())
    deployment["metadata"]["namespace"] = k8s_namespace
    with k8s_cluster.api_client() as api:
        accepted = client.AppsV1Api(api).create_namespaced_deployment(
            k8s_namespace, deployment, dry_run="All", **STRICT)
    assert accepted.spec.template.spec.service_account_name == "sluice-controller"
    assert accepted.spec.template.spec.containers[0].args == deployment["spec"]["template"][
        "spec"]["containers"][0]["args"]


async def test_router_from_the_generated_manifests_serves_a_request_from_zero(
        k8s_cluster, k8s_namespace, installed_crds, kserve_crd, kubelet, make_gpu_node,
        tmp_path):
    namespace = k8s_namespace
    make_gpu_node(f"{namespace}-node")
    settings = rm.RouterSettings("fraud", namespace)  # two router pods, the default
    made = {obj["kind"]: obj for obj in rm.objects(settings)}
    with k8s_cluster.api_client() as api:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        custom = client.CustomObjectsApi(api)
        isvc = custom.create_namespaced_custom_object(
            kserve.GROUP, kserve.VERSION, namespace, kserve.PLURAL,
            kserve.inference_service("fraud"))
        apps.create_namespaced_deployment(namespace,
                                          kserve.predictor_deployment(isvc, replicas=0))
        core.create_namespaced_secret(namespace, sluice.router_secret())
        routers = copy.deepcopy(made)
        routers["Deployment"] = sluice.process_router(made["Deployment"])
        create_all(api, list(routers.values()))
        custom.create_namespaced_custom_object(
            resources.GROUP, resources.VERSION, namespace, resources.SCALING_POLICY.plural,
            sluice.scaling_policy("fraud-v1", "fraud", "v1", {
                "apiVersion": kserve.GROUP + "/" + kserve.VERSION, "kind": "InferenceService",
                "name": "fraud"}, metric="concurrency", target=1, minReplicas=0,
                maxReplicas=2, initialScale=0))
        controller = sluice.ControllerProcess(k8s_cluster, namespace, tmp_path, "--tick", "0.5")
        try:
            selector = ",".join(f"{k}={v}" for k, v in rm.selector(settings).items())

            def ready_routers() -> list[client.V1Pod]:
                pods = core.list_namespaced_pod(namespace, label_selector=selector).items
                return [p for p in pods if is_ready(p)]

            waiting.until(lambda: len(ready_routers()) == 2, timeout_s=TIMEOUT_S,
                          what="both router pods Ready")
            ips = sorted(p.status.pod_ip for p in ready_routers())
            timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                for ip in ips:  # the first at zero replicas; both hold the controller's table
                    async with session.post(f"http://{ip}:{rm.HTTP_PORT}/v2/models/fraud/infer",
                                            json={"inputs": [{
                                                "name": "input-0", "shape": [1, 4],
                                                "datatype": "FP32", "data": [1, 2, 3, 4]}]},
                                            ) as response:
                        await response.read()
                        assert (response.status, response.headers.get("X-Sluice-Revision")) \
                            == (200, "v1")
            for ip in ips:
                _, table = get_json(f"http://{ip}:{rm.ADMIN_PORT}/routes")
                (revision,) = table["services"]["fraud"]["revisions"]
                assert revision["endpoints"], f"router {ip} has the predictor's pod"
            assert apps.read_namespaced_deployment_scale(
                kserve.predictor_name("fraud"), namespace).spec.replicas >= 1
        finally:
            controller.close()


def test_namespaced_rbac_as_the_readme_applies_it_lets_the_controller_scale_without_nodes(
        k8s_cluster, k8s_namespace, models_namespace, installed_crds, kserve_crd, tmp_path):
    """The account in the controller's namespace, namespaced/role.yaml applied in the models'
    and nothing cluster-wide (no nodes.yaml): the controller with ``-n`` gets Ready, says that
    GPU capacity is unknown to it, and scales a Deployment there."""
    account = sluice.ControllerAccount(k8s_cluster, k8s_namespace, tmp_path,
                                       models_namespace=models_namespace)
    with k8s_cluster.api_client() as api:
        cluster = sluice.Cluster(api, models_namespace)
        labels = {"app": "model"}
        cluster.apps.create_namespaced_deployment(models_namespace, {
            "metadata": {"name": "model"},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels}, "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "model", "image": "model:1"}],
                         **sluice.KWOK_SCHEDULING}}}})
        cluster.create_policy(sluice.scaling_policy(
            "model-v1", "model", "v1", {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": "model"}, minReplicas=2))
        controller = sluice.ControllerProcess(k8s_cluster, k8s_namespace, tmp_path, "--tick",
                                              "0.5", account=account, manages=models_namespace)
        try:
            waiting.until(lambda: cluster.condition("model-v1", "Ready").get("reason")
                          == "Enforced", timeout_s=TIMEOUT_S, what="the policy Enforced")
            waiting.until(lambda: cluster.replicas("model") == 2, timeout_s=TIMEOUT_S,
                          what="the Deployment scaled to minReplicas")
            assert "may not watch nodes" in controller.proc.output()
        finally:
            controller.close()
            account.close()
