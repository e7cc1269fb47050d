"""The generated CRDs and the RBAC manifests, against a real kube-apiserver.

Covered:
- the committed CRDs install and become Established, with their short names and category in
  discovery;
- the examples in manifests/examples are accepted, and the apiserver fills in the same defaults
  as pydantic;
- invalid objects are rejected with 422 naming the field, and pydantic rejects the same spec at
  the same field: bounds, patterns, enums and the cross-field CEL rules;
- status and spec are written separately (status subresource), and `kubectl get` columns show
  the spec and the status of each kind;
- the controller's ServiceAccount, bound by manifests/rbac (cluster-wide or namespaced), may do
  what the controller needs and nothing else; its leader-election Lease only in its own
  namespace and by name.

Not covered: upgrades between CRD versions (there is one version), the controller itself.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from kubernetes import client, utils
from kubernetes.client.rest import ApiException

from policies import resources
from tests.k8s import sluice

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "manifests" / "crds"
EXAMPLE_DIR = ROOT / "manifests" / "examples"
RBAC_DIR = ROOT / "manifests" / "rbac"
RESOURCES_BY_KIND = {resource.kind: resource for resource in resources.RESOURCES}
ESTABLISH_TIMEOUT_S = 30.0
CONTROLLER = "sluice-controller"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def _example(kind: str) -> dict[str, Any]:
    for path in sorted(EXAMPLE_DIR.glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        if document["kind"] == kind:
            return document
    raise LookupError(f"no example of {kind} in {EXAMPLE_DIR}")


def _poll(predicate, *, what: str, timeout_s: float = ESTABLISH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def custom_objects(k8s_cluster, installed_crds) -> Iterator[client.CustomObjectsApi]:
    with k8s_cluster.api_client() as api:
        yield client.CustomObjectsApi(api)


def _create(objects: client.CustomObjectsApi, namespace: str, document: dict, **kwargs) -> dict:
    resource = RESOURCES_BY_KIND[document["kind"]]
    return objects.create_namespaced_custom_object(
        resources.GROUP, resources.VERSION, namespace, resource.plural, document, **kwargs
    )


def test_crds_are_established_with_names_in_discovery(k8s_cluster, installed_crds):
    assert {crd["spec"]["names"]["kind"] for crd in installed_crds} == set(RESOURCES_BY_KIND)
    for crd in installed_crds:
        assert sluice.condition(crd, "NamesAccepted") == "True"
        # No field the apiserver dropped or rewrote: what is committed is what is served.
        committed = yaml.safe_load((CRD_DIR / f"{crd['metadata']['name']}.yaml").read_text())
        assert crd["spec"]["versions"] == committed["spec"]["versions"]

    with k8s_cluster.api_client() as api:
        # What `kubectl get sp` and `kubectl get sluice` resolve their names with.
        discovery = client.CustomObjectsApi(api).get_api_resources(
            resources.GROUP, resources.VERSION
        )
    served = {entry.name: entry for entry in discovery.resources}
    for resource in resources.RESOURCES:
        entry = served[resource.plural]
        assert (entry.kind, entry.namespaced) == (resource.kind, True)
        assert entry.short_names == list(resource.short_names)
        assert entry.categories == [resources.CATEGORY]
        assert f"{resource.plural}/status" in served


@pytest.mark.parametrize("kind", sorted(RESOURCES_BY_KIND))
def test_examples_are_accepted_with_pydantics_defaults(custom_objects, k8s_namespace, kind):
    example = _example(kind)
    created = _create(custom_objects, k8s_namespace, example)
    expected = RESOURCES_BY_KIND[kind].spec.model_validate(example["spec"])
    # Equal as numbers: the apiserver returns a default of 60.0 as 60.
    assert created["spec"] == expected.model_dump(by_alias=True, mode="json", exclude_none=True)


def _scaling_policy_spec(**changes: Any) -> dict[str, Any]:
    return {**_example("ScalingPolicy")["spec"], **changes}


def _rollout_spec(**changes: Any) -> dict[str, Any]:
    return {**_example("Rollout")["spec"], **changes}


def _custom_metrics(*metrics: dict[str, Any]) -> dict[str, Any]:
    return {"custom": [{"name": "gpu-memory", "query": "max(gpu_mem_used_ratio)"} | metric
                       for metric in metrics]}


INVALID_SPECS = [
    pytest.param(
        "ScalingPolicy", _scaling_policy_spec(target=-1), "target", "greater than 0",
        id="negative-target",
    ),
    pytest.param(
        "ScalingPolicy", _scaling_policy_spec(target=0), "target", "greater than 0",
        id="zero-target",
    ),
    pytest.param(
        "ScalingPolicy", _scaling_policy_spec(metric="latency"), "metric", "should match",
        id="unknown-metric",
    ),
    pytest.param(
        "ScalingPolicy", _scaling_policy_spec(minReplicas=5, maxReplicas=2), "minReplicas",
        "must not exceed maxReplicas", id="min-over-max",
    ),
    pytest.param(
        "ScalingPolicy", _scaling_policy_spec(minReplicas=0, maxReplicas=2, initialScale=3),
        "initialScale", "must not exceed maxReplicas", id="initial-scale-over-max",
    ),
    pytest.param(
        "ScalingPolicy", _scaling_policy_spec(metric="custom:kv-cache", target=None,
                                              signal={"query": "avg(kv)"}), "target",
        "required for a custom metric", id="custom-metric-without-target",
    ),
    pytest.param(
        "ScalingPolicy", _scaling_policy_spec(metric="custom:kv-cache", target=0.6), "signal",
        "required for a custom metric: its query", id="custom-metric-without-signal",
    ),
    pytest.param(
        "ScalingPolicy", _scaling_policy_spec(signal={"query": "avg(kv)"}), "signal",
        "only a custom metric (custom:<name>) has a signal", id="signal-without-custom-metric",
    ),
    pytest.param(
        "ScalingPolicy", _scaling_policy_spec(metric="custom:kv-cache", target=0.6, signal={
            "query": "avg(kv)", "type": "Median"}), "signal.type", "Unsupported value",
        id="signal-of-an-unknown-type",
    ),
    pytest.param(
        "ScalingPolicy", _scaling_policy_spec(targetUtilization=1.5), "targetUtilization",
        "less than or equal to 1", id="utilization-over-one",
    ),
    pytest.param(
        "ScalingPolicy",
        _scaling_policy_spec(scaleTargetRef={"kind": "StatefulSet", "name": "fraud-model-v2"}),
        "scaleTargetRef.kind", "Unsupported value", id="target-not-a-deployment",
    ),
    pytest.param(
        "ScalingPolicy", _scaling_policy_spec(service="Fraud_Model"), "service", "should match",
        id="service-not-a-dns-label",
    ),
    pytest.param(
        "Rollout", _rollout_spec(steps=[{"weight": 50}, {"weight": 150}]), "steps[1].weight",
        "less than or equal to 100", id="weight-over-100",
    ),
    pytest.param(
        "Rollout", _rollout_spec(steps=[{"weight": 50}, {"weight": 20}, {"weight": 100}]),
        "steps", "must exceed the previous step's weight", id="weights-decrease",
    ),
    pytest.param(
        "Rollout", _rollout_spec(steps=[{"weight": 50}, {"weight": 50}, {"weight": 100}]),
        "steps", "must exceed the previous step's weight", id="weights-repeat",
    ),
    pytest.param(
        "Rollout", _rollout_spec(steps=[{"weight": 50}, {"weight": 90}]), "steps",
        "the last step must have weight 100", id="last-step-below-100",
    ),
    pytest.param(
        "Rollout", _rollout_spec(canaryRevision="v1"), "canaryRevision",
        "must differ from stableRevision", id="canary-is-stable",
    ),
    pytest.param(
        "Rollout", _rollout_spec(maxDurationSeconds=120), "maxDurationSeconds",
        "must exceed the steps' minimum durations", id="max-duration-too-short",
    ),
    pytest.param(
        "Rollout", _rollout_spec(analysis={"judge": "vibes"}), "analysis.judge",
        "Unsupported value", id="unknown-judge",
    ),
    pytest.param(
        "Rollout", _rollout_spec(stickiness={}), "stickiness", "give a header or a cookie",
        id="stickiness-without-source",
    ),
    pytest.param(
        "Rollout", _rollout_spec(slo=_custom_metrics({})), "slo.custom",
        "give min, max or both", id="custom-metric-without-bounds",
    ),
    pytest.param(
        "Rollout", _rollout_spec(slo=_custom_metrics({"min": 2, "max": 1})), "slo.custom",
        "min must not exceed max", id="custom-metric-min-over-max",
    ),
    pytest.param(
        "Rollout", _rollout_spec(slo=_custom_metrics({"min": 0.1}, {"max": 0.9})), "slo.custom",
        "names must be unique", id="custom-metric-names-repeat",
    ),
]


@pytest.mark.parametrize(("kind", "spec", "field", "message"), INVALID_SPECS)
def test_invalid_objects_are_rejected_naming_the_field(custom_objects, kind, spec, field, message):
    document = _example(kind) | {"spec": spec}
    with pytest.raises(ApiException) as rejected:
        # Dry run: validated in full, stored nowhere, so no namespace is needed per case.
        _create(custom_objects, "default", document, dry_run="All")
    assert rejected.value.status == 422
    causes = {
        cause["field"]: cause["message"]
        for cause in json.loads(rejected.value.body)["details"]["causes"]
    }
    assert message in causes[f"spec.{field}"], causes

    # pydantic, which the controller parses specs with, rejects the same field (or, for a
    # rule on a whole list, one of its items).
    with pytest.raises(pydantic.ValidationError) as invalid:
        RESOURCES_BY_KIND[kind].spec.model_validate(spec)
    paths = [_path(error["loc"]) for error in invalid.value.errors()]
    assert any(path == field or path.startswith((f"{field}.", f"{field}[")) for path in paths)


def _path(loc: tuple[str | int, ...]) -> str:
    """A pydantic error location in the apiserver's notation: steps[1].weight."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)[1:]


def test_unknown_fields_are_rejected_under_strict_field_validation(custom_objects):
    document = _example("ScalingPolicy") | {"spec": _scaling_policy_spec(maxReplica=3)}
    with pytest.raises(ApiException) as rejected:
        _create(custom_objects, "default", document, dry_run="All", field_validation="Strict")
    assert rejected.value.status == 400
    assert 'unknown field "spec.maxReplica"' in json.loads(rejected.value.body)["message"]


SCALING_POLICY_STATUS = {
    "observedGeneration": 1,
    "desired": 3,
    "ready": 2,
    "weight": 100,
    "conditions": [
        {
            "type": "CapacityLimited",
            "status": "True",
            "reason": "NotEnoughGPUs",
            "message": "free GPUs hold 3 of the 4 replicas wanted",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ],
}


def test_status_and_spec_are_written_separately(custom_objects, k8s_namespace):
    # What the controller would write.
    resources.ScalingPolicyStatus.model_validate(SCALING_POLICY_STATUS)
    plural, name = resources.SCALING_POLICY.plural, _example("ScalingPolicy")["metadata"]["name"]
    at = (resources.GROUP, resources.VERSION, k8s_namespace, plural, name)
    created = _create(custom_objects, k8s_namespace, _example("ScalingPolicy"))
    assert "status" not in created

    # Through /status, the spec part of a patch is ignored and the generation stays.
    patched = custom_objects.patch_namespaced_custom_object_status(
        *at, {"status": SCALING_POLICY_STATUS, "spec": {"minReplicas": 7}}
    )
    assert patched["status"] == SCALING_POLICY_STATUS
    assert patched["spec"] == created["spec"]
    assert patched["metadata"]["generation"] == created["metadata"]["generation"]

    # Through the resource, the status part is ignored and the generation moves on.
    patched = custom_objects.patch_namespaced_custom_object(
        *at, {"spec": {"maxReplicas": 9}, "status": {"desired": 100}}
    )
    assert patched["status"] == SCALING_POLICY_STATUS
    assert patched["spec"] == created["spec"] | {"maxReplicas": 9}
    assert patched["metadata"]["generation"] == created["metadata"]["generation"] + 1

    # The status schema is enforced too.
    with pytest.raises(ApiException) as rejected:
        custom_objects.patch_namespaced_custom_object_status(*at, {"status": {"desired": -1}})
    assert rejected.value.status == 422
    assert "status.desired" in rejected.value.body


ROLLOUT_STATUS = {
    "observedGeneration": 1,
    "phase": "Progressing",
    "step": 1,
    "weight": 25,
    "verdict": "pass",
    "conditions": [],
    "lastVerdicts": [
        {"metric": "errors", "outcome": "pass", "reason": "0.1 % vs 0.1 %, within 1 point",
         "time": "2026-01-01T00:00:00Z"},
        {"metric": "latency", "outcome": "inconclusive", "reason": "31 of 50 requests",
         "time": "2026-01-01T00:00:00Z"},
    ],
}


@pytest.mark.parametrize(
    ("kind", "status", "columns"),
    [
        pytest.param(
            "ScalingPolicy", SCALING_POLICY_STATUS,
            {"Name": "fraud-model-v2", "Service": "fraud-model", "Revision": "v2",
             "Metric": "rps", "Target": 2.5, "Min": 1, "Max": 20, "Desired": 3, "Ready": 2,
             "Weight": 100, "Deployment": "fraud-model-v2"},
            id="ScalingPolicy",
        ),
        pytest.param(
            "Rollout", ROLLOUT_STATUS,
            {"Name": "fraud-model-v2", "Service": "fraud-model", "Stable": "v1", "Canary": "v2",
             "Weight": 25, "Step": 1, "Phase": "Progressing", "Verdict": "pass",
             "Judge": "sequential"},
            id="Rollout",
        ),
    ],
)
def test_get_shows_spec_and_status_columns(custom_objects, k8s_namespace, kind, status, columns):
    resource, example = RESOURCES_BY_KIND[kind], _example(kind)
    resource.status.model_validate(status)  # what the controller would write
    _create(custom_objects, k8s_namespace, example)
    custom_objects.patch_namespaced_custom_object_status(
        resources.GROUP, resources.VERSION, k8s_namespace, resource.plural,
        example["metadata"]["name"], {"status": status},
    )
    # What `kubectl get` asks for: the server renders the printer columns as a Table.
    response = custom_objects.list_namespaced_custom_object(
        resources.GROUP, resources.VERSION, k8s_namespace, resource.plural,
        _headers={"Accept": TABLE}, _preload_content=False,
    )
    try:
        table = json.loads(response.data)
    finally:
        response.release_conn()
    names = [column["name"] for column in table["columnDefinitions"]]
    (row,) = table["rows"]
    cells = dict(zip(names, row["cells"], strict=True))
    del cells["Age"]
    assert cells == columns


def _rbac_documents(paths: list[Path], namespace: str,
                    applied_in: str | None = None) -> list[dict[str, Any]]:
    """The manifests with their namespace (sluice-system) replaced by the test's; a namespaced
    object that names none goes to ``applied_in``, as ``kubectl apply -n`` puts it."""
    documents = [
        document
        for path in paths
        for document in yaml.safe_load_all(path.read_text())
    ]
    for document in documents:
        if "namespace" in document["metadata"]:
            document["metadata"]["namespace"] = namespace
        elif document["kind"] in ("Role", "RoleBinding"):
            assert applied_in is not None, f"{document['kind']} without a namespace"
            document["metadata"]["namespace"] = applied_in
        for subject in document.get("subjects", []):
            subject["namespace"] = namespace
    return documents


@contextlib.contextmanager
def _applied(api: client.ApiClient, documents: list[dict[str, Any]]) -> Iterator[None]:
    """Creates the documents; deletes the cluster-scoped ones after (the namespace goes anyway)."""
    rbac = client.RbacAuthorizationV1Api(api)
    delete = {
        "ClusterRole": rbac.delete_cluster_role,
        "ClusterRoleBinding": rbac.delete_cluster_role_binding,
    }
    created = []
    try:
        for document in documents:
            utils.create_from_dict(api, document,
                                   namespace=document["metadata"].get("namespace", "default"))
            created.append(document)
        yield
    finally:
        for document in created:
            if document["kind"] in delete:
                delete[document["kind"]](document["metadata"]["name"])


Permission = tuple[str, ...]
"""verb, API group, resource, subresource and optionally the object's name: a
SubjectAccessReview's resource attributes."""

NEEDED: list[Permission] = [
    ("list", "sluice.dev", "scalingpolicies", ""),
    ("watch", "sluice.dev", "scalingpolicies", ""),
    ("watch", "sluice.dev", "rollouts", ""),
    ("patch", "sluice.dev", "rollouts", ""),
    ("patch", "sluice.dev", "scalingpolicies", "status"),
    ("patch", "sluice.dev", "rollouts", "status"),
    ("get", "apps", "deployments", "scale"),
    ("patch", "apps", "deployments", "scale"),
    ("watch", "", "pods", ""),
    ("create", "events.k8s.io", "events", ""),
    ("patch", "events.k8s.io", "events", ""),
    ("get", "apps", "deployments", ""),
    ("watch", "serving.kserve.io", "inferenceservices", ""),
]
"""Each verb the controller's code uses (autoscaler/kube/client.py's calls, its informers),
and no other: what it never does is in FORBIDDEN."""
LEADER_ELECTION: list[Permission] = [
    ("create", "coordination.k8s.io", "leases", ""),
    ("get", "coordination.k8s.io", "leases", "", "sluice-controller"),
    ("update", "coordination.k8s.io", "leases", "", "sluice-controller"),
]
"""The controller's Lease, in its own namespace only (manifests/rbac/leader-election.yaml)."""
ROUTER_TOKEN = ("get", "", "secrets", "", "sluice-router-admin")
"""The routers' admin token: the one Secret the controller may read."""
READ_NODES: Permission = ("list", "", "nodes", "")
FORBIDDEN: list[Permission] = [
    ("update", "sluice.dev", "scalingpolicies", ""),
    ("patch", "sluice.dev", "scalingpolicies", ""),
    ("update", "apps", "deployments", "scale"),
    ("create", "", "events", ""),
    ("create", "sluice.dev", "scalingpolicies", ""),
    ("delete", "sluice.dev", "scalingpolicies", ""),
    ("list", "apps", "deployments", ""),
    ("patch", "apps", "deployments", ""),
    ("update", "apps", "deployments", ""),
    ("patch", "serving.kserve.io", "inferenceservices", ""),
    ("create", "", "pods", ""),
    ("delete", "", "pods", ""),
    ("get", "", "secrets", ""),
    ("get", "", "secrets", "", "database-password"),
    ("list", "", "secrets", ""),
    ("delete", "", "events", ""),
    ("patch", "", "nodes", ""),
    ("get", "coordination.k8s.io", "leases", "", "kube-scheduler"),
    ("update", "coordination.k8s.io", "leases", "", "kube-controller-manager"),
    ("patch", "coordination.k8s.io", "leases", "", "sluice-controller"),
    ("delete", "coordination.k8s.io", "leases", "", "sluice-controller"),
    ("list", "coordination.k8s.io", "leases", ""),
    ("watch", "coordination.k8s.io", "leases", ""),
]


def _allowed(api: client.ApiClient, account_namespace: str, permission: Permission,
             namespace: str) -> bool:
    """Whether the controller's ServiceAccount has `permission` in `namespace` ("" = cluster)."""
    verb, group, resource, subresource, *name = permission
    review = client.AuthorizationV1Api(api).create_subject_access_review({
        "spec": {
            "user": f"system:serviceaccount:{account_namespace}:{CONTROLLER}",
            "resourceAttributes": {
                "verb": verb, "group": group, "resource": resource,
                "subresource": subresource, "namespace": namespace,
                **({"name": name[0]} if name else {}),
            },
        }
    })
    return review.status.allowed


def _wait_for_rbac(api: client.ApiClient, account_namespace: str) -> None:
    # The RBAC authorizer reads roles and bindings from informers, a moment behind the writes.
    _poll(
        lambda: _allowed(api, account_namespace, NEEDED[0], account_namespace),
        what="the controller's role binding to take effect",
    )


def test_cluster_role_grants_what_the_controller_needs_and_nothing_else(
    k8s_cluster, installed_crds, k8s_namespace
):
    documents = _rbac_documents(
        [RBAC_DIR / "serviceaccount.yaml", RBAC_DIR / "clusterrole.yaml",
         RBAC_DIR / "leader-election.yaml"], k8s_namespace
    )
    with k8s_cluster.api_client() as api, _applied(api, documents):
        _wait_for_rbac(api, k8s_namespace)
        for namespace in (k8s_namespace, "default"):
            for permission in [*NEEDED, ROUTER_TOKEN]:
                assert _allowed(api, k8s_namespace, permission, namespace), permission
            for permission in FORBIDDEN:
                assert not _allowed(api, k8s_namespace, permission, namespace), permission
        for permission in LEADER_ELECTION:
            assert _allowed(api, k8s_namespace, permission, k8s_namespace), permission
            assert not _allowed(api, k8s_namespace, permission, "default"), permission
        assert _allowed(api, k8s_namespace, READ_NODES, "")

        # And for real, with the ServiceAccount's own token.
        policy = _create(client.CustomObjectsApi(api), k8s_namespace, _example("ScalingPolicy"))
        token = client.CoreV1Api(api).create_namespaced_service_account_token(
            CONTROLLER, k8s_namespace, {"spec": {"expirationSeconds": 600}}
        ).status.token
        with k8s_cluster.api_client(token=token) as controller:
            patched = client.CustomObjectsApi(controller).patch_namespaced_custom_object_status(
                resources.GROUP, resources.VERSION, k8s_namespace,
                resources.SCALING_POLICY.plural, policy["metadata"]["name"],
                {"status": {"desired": 2}},
            )
            assert patched["status"]["desired"] == 2
            with pytest.raises(ApiException) as denied:
                client.CoreV1Api(controller).delete_namespaced_pod("any-pod", k8s_namespace)
            assert denied.value.status == 403


def test_namespaced_role_grants_nothing_outside_its_namespace(
    k8s_cluster, installed_crds, k8s_namespace, models_namespace
):
    """The account in the controller's namespace, the Role applied in the models' (README's
    ``kubectl apply -n models``): what it needs there, nothing elsewhere, its Lease at home."""
    documents = _rbac_documents(
        [RBAC_DIR / "serviceaccount.yaml", *sorted((RBAC_DIR / "namespaced").glob("*.yaml")),
         RBAC_DIR / "leader-election.yaml"],
        k8s_namespace, applied_in=models_namespace,
    )
    with k8s_cluster.api_client() as api, _applied(api, documents):
        _poll(lambda: _allowed(api, k8s_namespace, NEEDED[0], models_namespace),
              what="the controller's role binding to take effect")
        for permission in [*NEEDED, ROUTER_TOKEN]:
            assert _allowed(api, k8s_namespace, permission, models_namespace), permission
            for elsewhere in (k8s_namespace, "default"):
                assert not _allowed(api, k8s_namespace, permission, elsewhere), permission
        for permission in LEADER_ELECTION:
            assert _allowed(api, k8s_namespace, permission, k8s_namespace), permission
            assert not _allowed(api, k8s_namespace, permission, models_namespace), permission
        for permission in FORBIDDEN:
            assert not _allowed(api, k8s_namespace, permission, models_namespace), permission
        assert _allowed(api, k8s_namespace, READ_NODES, "")
