"""sluice on the test cluster: its CRDs, its controller as a process with the ServiceAccount
token of manifests/rbac, routers as process pods, and the objects a user writes."""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from policies import resources
from tests.k8s import kserve

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "manifests" / "crds"
RBAC_DIR = ROOT / "manifests" / "rbac"
ESTABLISH_TIMEOUT_S = 30.0


def read_crd(extensions: client.ApiextensionsV1Api, name: str) -> dict[str, Any]:
    """The CRD as raw JSON, to compare with the committed YAML as it is."""
    response = extensions.read_custom_resource_definition(name, _preload_content=False)
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def condition(crd: dict[str, Any], type_: str) -> str | None:
    conditions = crd.get("status", {}).get("conditions") or []
    return next((c["status"] for c in conditions if c["type"] == type_), None)


def _gone(extensions: client.ApiextensionsV1Api, name: str) -> bool:
    try:
        read_crd(extensions, name)
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def _poll(predicate: Any, *, what: str, timeout_s: float = ESTABLISH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def installed_crds(api: client.ApiClient) -> Iterator[list[dict[str, Any]]]:
    """The committed CRDs, created and Established; deleted (and waited for) afterwards."""
    import yaml

    documents = [yaml.safe_load(path.read_text()) for path in sorted(CRD_DIR.glob("*.yaml"))]
    extensions = client.ApiextensionsV1Api(api)
    created = []
    try:
        for document in documents:
            extensions.create_custom_resource_definition(document)
            created.append(document["metadata"]["name"])
        for name in created:
            _poll(lambda name=name: condition(read_crd(extensions, name), "Established")
                  == "True", what=f"CRD {name} to be Established")
        yield [read_crd(extensions, name) for name in created]
    finally:
        for name in created:
            extensions.delete_custom_resource_definition(name)
        for name in created:
            _poll(lambda name=name: _gone(extensions, name), what=f"{name} deleted")


# -- the controller, as a process with the ServiceAccount of manifests/rbac ---------------------

CONTROLLER = "sluice-controller"
ROUTER_TOKEN = "router-admin-token-for-tests"


def rbac_documents(namespace: str, models_namespace: str | None = None) -> list[dict[str, Any]]:
    """manifests/rbac's ServiceAccount, ClusterRole, leader-election Role and bindings, the
    account in ``namespace`` and the cluster-scoped names made unique to it (tests run one
    controller each). With ``models_namespace``, namespaced mode as the README applies it: the
    Role of namespaced/role.yaml in that namespace instead of the ClusterRole, no nodes."""
    import yaml

    rules = (RBAC_DIR / "clusterrole.yaml" if models_namespace is None
             else RBAC_DIR / "namespaced" / "role.yaml")
    documents = [document for path in (RBAC_DIR / "serviceaccount.yaml", rules,
                                       RBAC_DIR / "leader-election.yaml")
                 for document in yaml.safe_load_all(path.read_text())]
    for document in documents:
        metadata = document["metadata"]
        if "namespace" in metadata:
            metadata["namespace"] = namespace
        elif document["kind"] in ("Role", "RoleBinding"):
            metadata["namespace"] = models_namespace  # kubectl apply -n MODELS
        else:
            metadata["name"] = f"{metadata['name']}-{namespace}"
        for subject in document.get("subjects", []):
            subject["namespace"] = namespace
        if document.get("roleRef", {}).get("kind") == "ClusterRole":
            document["roleRef"]["name"] = f"{document['roleRef']['name']}-{namespace}"
    return documents


class ControllerAccount:
    """The controller's ServiceAccount in ``namespace``, bound by manifests/rbac, and a
    kubeconfig with its token (context namespace ``namespace``): a process that uses it may do
    exactly what the controller may. ``close()`` deletes the cluster-scoped parts."""

    def __init__(self, cluster: Any, namespace: str, work_dir: Path,
                 models_namespace: str | None = None) -> None:
        from kubernetes import utils

        self.cluster = cluster
        self.documents = rbac_documents(namespace, models_namespace)
        with cluster.api_client() as api:
            for document in self.documents:
                utils.create_from_dict(api, document, namespace=document["metadata"].get(
                    "namespace", "default"))
            self.token = client.CoreV1Api(api).create_namespaced_service_account_token(
                CONTROLLER, namespace, {"spec": {"expirationSeconds": 3600}}).status.token
            _poll(lambda: _can_watch_policies(api, namespace, models_namespace or namespace),
                  what="RBAC to take effect")
        self.kubeconfig = work_dir / f"controller-{namespace}.kubeconfig"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "sluice",
            "clusters": [{"name": "test", "cluster": {
                "server": cluster.server, "certificate-authority": str(cluster.ca_file)}}],
            "users": [{"name": CONTROLLER, "user": {"token": self.token}}],
            "contexts": [{"name": "sluice", "context": {"cluster": "test", "user": CONTROLLER,
                                                        "namespace": namespace}}],
        }))

    def close(self) -> None:
        with self.cluster.api_client() as api:
            rbac = client.RbacAuthorizationV1Api(api)
            for document in self.documents:
                name = document["metadata"]["name"]
                with contextlib.suppress(ApiException):
                    if document["kind"] == "ClusterRole":
                        rbac.delete_cluster_role(name)
                    elif document["kind"] == "ClusterRoleBinding":
                        rbac.delete_cluster_role_binding(name)


class ControllerProcess:
    """``sluice controller -n NAMESPACE`` as a subprocess, authenticated as the ServiceAccount
    that manifests/rbac binds: whatever it does, those permissions allow."""

    def __init__(self, cluster: Any, namespace: str, work_dir: Path, *args: str,
                 account: ControllerAccount | None = None, all_namespaces: bool = False,
                 manages: str | None = None) -> None:
        """With ``account``, run as that (shared) account; else make one and own it. With
        ``all_namespaces``, ``-A``, with ``manages``, ``-n manages`` (its account still in
        ``namespace``)."""
        from tests import procs

        self.cluster = cluster
        self.namespace = namespace
        self.owns_account = account is None
        self.account = account or ControllerAccount(cluster, namespace, work_dir)
        self.kubeconfig = self.account.kubeconfig
        self.health_port = procs.free_port()
        scope = ["-A"] if all_namespaces else ["-n", manages or namespace]
        self.argv = [sys.executable, "-m", "autoscaler.cli", "controller", "--kubeconfig",
                     str(self.kubeconfig), *scope, "--health-listen",
                     f"127.0.0.1:{self.health_port}", *args]
        self.proc: Any = None
        self.start()

    def start(self) -> None:
        from tests import procs

        self.proc = procs.Proc.start(self.argv, ready_url=f"http://127.0.0.1:{self.health_port}"
                                     "/readyz", cwd=str(ROOT), timeout=60.0)

    def stop(self) -> None:
        self.proc.close()

    def close(self) -> None:
        self.stop()
        if self.owns_account:
            self.account.close()


def _can_watch_policies(api: client.ApiClient, namespace: str, where: str) -> bool:
    review = client.AuthorizationV1Api(api).create_subject_access_review({"spec": {
        "user": f"system:serviceaccount:{namespace}:{CONTROLLER}",
        "resourceAttributes": {"verb": "watch", "group": "sluice.dev",
                               "resource": "scalingpolicies", "namespace": where}}})
    return bool(review.status.allowed)


# -- what a user writes ------------------------------------------------------------------------

KWOK_SCHEDULING = {
    "nodeSelector": {"type": "kwok"},
    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists",
                     "effect": "NoSchedule"}],
}


def scaling_policy(name: str, service: str, revision: str, scale_target: dict[str, str],
                   **policy: Any) -> dict[str, Any]:
    return {"apiVersion": "sluice.dev/v1alpha1", "kind": "ScalingPolicy",
            "metadata": {"name": name},
            "spec": {"service": service, "revision": revision, "scaleTargetRef": scale_target,
                     **policy}}


def router_secret(token: str = ROUTER_TOKEN) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sluice-router-admin"},
            "stringData": {"token": token}}


def router_deployment(service: str, token: str = ROUTER_TOKEN,
                      replicas: int = 1) -> dict[str, Any]:
    """The router beside an InferenceService, its pods run by the process kubelet. It starts
    without a table and is not Ready until the controller has published one."""
    from tests.k8s import process_kubelet

    labels = {"app.kubernetes.io/name": "sluice-router", "sluice.dev/service": service}
    command = ["{python}", "-m", "router.main", "--listen", "{ip}:{port}",
               "--admin-listen", "{ip}:8081"]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": f"{service}-router", "labels": labels},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, process_kubelet.PROCESS_LABEL: "true"},
                             "annotations": {
                                 process_kubelet.COMMAND_ANNOTATION: json.dumps(command)}},
                "spec": {**KWOK_SCHEDULING, "terminationGracePeriodSeconds": 5,
                         "containers": [{
                             "name": "router", "image": "sluice:test",
                             "env": [{"name": "SLUICE_ADMIN_TOKEN", "value": token}],
                             "ports": [{"name": "http", "containerPort": 8080},
                                       {"name": "admin", "containerPort": 8081}],
                             "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8081},
                                                "periodSeconds": 1}}]}}}}


# -- the test's namespace as a user sees it ---------------------------------------------------

class Cluster:
    """The test's namespace as a user sees it: objects in, status and Events out."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def create_isvc(self, document: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(
            kserve.GROUP, kserve.VERSION, self.namespace, kserve.PLURAL, document)

    def create_policy(self, document: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(
            resources.GROUP, resources.VERSION, self.namespace,
            resources.SCALING_POLICY.plural, document)

    def policy(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            resources.GROUP, resources.VERSION, self.namespace,
            resources.SCALING_POLICY.plural, name)

    def policy_status(self, name: str) -> dict[str, Any]:
        return self.policy(name).get("status") or {}

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.policy_status(name).get("conditions", [])
                     if c["type"] == type_), {})

    def pods(self, selector: str) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(self.namespace, label_selector=selector).items

    def events(self, reason: str) -> list[dict[str, Any]]:
        """events.k8s.io Events with ``reason``, as JSON (the client's models refuse the ones
        other components write without an eventTime)."""
        response = client.EventsV1Api(self.api).list_namespaced_event(
            self.namespace, _preload_content=False)
        try:
            listed = json.loads(response.data)
        finally:
            response.release_conn()
        return [e for e in listed["items"] if e.get("reason") == reason]

    def create_rollout(self, document: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(
            resources.GROUP, resources.VERSION, self.namespace, resources.ROLLOUT.plural,
            document)

    def rollout(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            resources.GROUP, resources.VERSION, self.namespace, resources.ROLLOUT.plural, name)

    def delete_rollout(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            resources.GROUP, resources.VERSION, self.namespace, resources.ROLLOUT.plural, name)

    def annotate_rollout(self, name: str, command: str) -> None:
        """What ``kubectl annotate rollout.sluice.dev/NAME sluice.dev/command=...`` does."""
        self.custom.patch_namespaced_custom_object(
            resources.GROUP, resources.VERSION, self.namespace, resources.ROLLOUT.plural, name,
            {"metadata": {"annotations": {"sluice.dev/command": command}}})

    def replicas(self, deployment: str) -> int:
        scale = self.apps.read_namespaced_deployment_scale(deployment, self.namespace)
        return scale.spec.replicas or 0  # the client reads an omitted 0 as None




def process_router(deployment: dict[str, Any], token: str = ROUTER_TOKEN) -> dict[str, Any]:
    """A router Deployment written by ``sluice manifests router``, its pods run by the process
    kubelet: the same labels, ports, probes and arguments, with what only a real kubelet does
    done here (``$(POD_IP)`` and the Secret's token filled in) and kwok's node taint tolerated.
    The data port binds the pod IP, not 0.0.0.0: every pod here shares the machine's loopback."""
    from tests.k8s import process_kubelet

    deployment = copy.deepcopy(deployment)
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    args = [arg.replace("$(POD_IP)", "{ip}").replace("0.0.0.0:", "{ip}:")
            for arg in container["args"]]
    assert container["command"][0] == "sluice"
    command = ["{python}", "-m", "autoscaler.cli", *container["command"][1:], *args]
    for variable in container["env"]:
        if "secretKeyRef" in variable.get("valueFrom", {}):
            variable.pop("valueFrom")
            variable["value"] = token
    template["metadata"]["labels"][process_kubelet.PROCESS_LABEL] = "true"
    template["metadata"].setdefault("annotations", {})[process_kubelet.COMMAND_ANNOTATION] = \
        json.dumps(command)
    template["spec"].update(KWOK_SCHEDULING)
    return deployment
