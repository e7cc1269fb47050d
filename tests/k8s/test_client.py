"""The controller's Kubernetes client (autoscaler/kube/client.py) against the real apiserver.

Covered:
- loading from a kubeconfig and from an in-cluster ServiceAccount (token, CA, namespace files);
- list (paged, label and field selectors, one namespace or all) and get, decoded to the same
  models as the ``kubernetes`` package; custom resources as dicts;
- ``/scale``: read replicas and selector, set replicas, and nothing else of the Deployment;
- merge-patch of a ScalingPolicy's ``/status``;
- events.k8s.io/v1 Events created and patched (series), MicroTime with microsecond 0;
- Leases: create, conflict on create, update with the current resourceVersion, conflict with
  a stale one;
- errors: 404 → NotFound, 403 → ApiError, nothing listening → Unavailable, a server that
  never answers → Unavailable once the timeout passes.

The watch stream, and 410 → ``Gone``, are exercised by test_informer.py: on a young apiserver
no resourceVersion is older than its watch cache, so only a restarted one answers 410.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as sync_client
from kubernetes_asyncio import client as k8s

from autoscaler.kube import client
from policies import resources
from tests.k8s import waiting

ROOT = Path(__file__).resolve().parents[2]
CONFIG_MAPS = client.Kind("", "v1", "configmaps", "ConfigMap", model="V1ConfigMap")


@pytest.fixture
def admin(k8s_cluster) -> Iterator[sync_client.ApiClient]:
    with k8s_cluster.api_client() as api:
        yield api


@pytest.fixture(scope="module")
def sluice_crds(k8s_cluster) -> Iterator[None]:
    """The committed sluice CRDs, applied server-side (so a rerun or another module's copy
    is no conflict), removed after the module."""
    documents = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "manifests/crds").glob("*"))]
    with k8s_cluster.api_client() as api:
        extensions = sync_client.ApiextensionsV1Api(api)
        for document in documents:
            extensions.patch_custom_resource_definition(
                document["metadata"]["name"], document, field_manager="sluice-tests", force=True,
                _content_type="application/apply-patch+yaml",
            )
        for document in documents:
            _wait_established(extensions, document["metadata"]["name"])
        yield
        names = [document["metadata"]["name"] for document in documents]
        for name in names:
            extensions.delete_custom_resource_definition(name)
        # test_crds.py creates the same CRDs next and needs them gone, not Terminating.
        def gone() -> bool:
            served = extensions.list_custom_resource_definition().items
            return not {crd.metadata.name for crd in served} & set(names)

        waiting.until(gone, timeout_s=60, what="the sluice CRDs to be deleted")


def _wait_established(extensions: sync_client.ApiextensionsV1Api, name: str) -> None:
    def established() -> bool:
        conditions = extensions.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    waiting.until(established, timeout_s=30, what=f"CRD {name} Established")


def _config_map(name: str, **labels: str) -> dict:
    return {"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}


async def test_lists_pages_with_selectors_as_kubernetes_models(kube, admin, k8s_namespace):
    core = sync_client.CoreV1Api(admin)
    for index in range(5):
        core.create_namespaced_config_map(k8s_namespace, _config_map(f"cm-{index}", app="a"))
    core.create_namespaced_config_map(k8s_namespace, _config_map("other", app="b"))

    listing = await kube.list(CONFIG_MAPS, namespace=k8s_namespace, label_selector="app=a",
                              page_size=2)
    assert sorted(cm.metadata.name for cm in listing.items) == [f"cm-{i}" for i in range(5)]
    assert all(isinstance(cm, k8s.V1ConfigMap) for cm in listing.items)
    assert int(listing.resource_version) > 0

    by_field = await kube.list(CONFIG_MAPS, namespace=k8s_namespace,
                               field_selector="metadata.name=other")
    assert [cm.data for cm in by_field.items] == [{"k": "v"}]

    everywhere = await kube.list(CONFIG_MAPS, label_selector="app=b")
    assert [(cm.metadata.namespace, cm.metadata.name) for cm in everywhere.items] == [
        (k8s_namespace, "other")
    ]
    got = await kube.get(CONFIG_MAPS, k8s_namespace, "cm-3")
    assert (type(got).__name__, got.metadata.labels) == ("V1ConfigMap", {"app": "a"})
    # The same model names and fields as the kubernetes package the tests use.
    assert set(k8s.V1Pod.attribute_map.items()) == set(sync_client.V1Pod.attribute_map.items())


def _deployment(name: str, replicas: int) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "sluice.invalid/x:1"}]},
            },
        },
    }


async def test_scale_subresource_sets_replicas_and_nothing_else(kube, admin, k8s_namespace):
    apps = sync_client.AppsV1Api(admin)
    created = apps.create_namespaced_deployment(k8s_namespace, _deployment("model", 1))

    scale = await kube.get_scale(k8s_namespace, "model")
    assert isinstance(scale, k8s.V1Scale)
    assert scale.spec.replicas == 1
    patched = await kube.patch_scale(k8s_namespace, "model", 3)
    assert patched.spec.replicas == 3

    after = apps.read_namespaced_deployment("model", k8s_namespace)
    assert after.spec.replicas == 3
    assert after.spec.template == created.spec.template
    assert after.metadata.generation == created.metadata.generation + 1

    # status.selector is the Deployment controller's status.selector: there once it has run.
    async def selector() -> str | None:
        return (await kube.get_scale(k8s_namespace, "model")).status.selector

    await waiting.eventually(selector, timeout_s=30, what="the scale's status.selector")
    assert await selector() == "app=model"

    with pytest.raises(ValueError, match="replicas"):
        await kube.patch_scale(k8s_namespace, "model", -1)
    with pytest.raises(client.NotFound):
        await kube.get_scale(k8s_namespace, "absent")


async def test_status_is_merge_patched(kube, admin, sluice_crds, k8s_namespace):
    policy = next(
        document for path in sorted((ROOT / "manifests/examples").glob("*.yaml"))
        if (document := yaml.safe_load(path.read_text()))["kind"] == "ScalingPolicy"
    )
    name = policy["metadata"]["name"]
    sync_client.CustomObjectsApi(admin).create_namespaced_custom_object(
        resources.GROUP, resources.VERSION, k8s_namespace, resources.SCALING_POLICY.plural,
        policy,
    )
    first = await kube.patch_status(client.SCALING_POLICIES, k8s_namespace, name,
                                    {"desired": 3, "ready": 1})
    assert first["status"] == {"desired": 3, "ready": 1}
    second = await kube.patch_status(client.SCALING_POLICIES, k8s_namespace, name, {"ready": 2})
    assert second["status"] == {"desired": 3, "ready": 2}  # merged, not replaced
    assert second["spec"] == first["spec"]

    with pytest.raises(client.ApiError) as invalid:
        await kube.patch_status(client.SCALING_POLICIES, k8s_namespace, name, {"desired": -1})
    assert invalid.value.status == 422
    assert "status.desired" in invalid.value.message


async def test_events_are_created_and_counted(kube, admin, k8s_namespace):
    sync_client.CoreV1Api(admin).create_namespaced_config_map(k8s_namespace, _config_map("target"))
    whole_second = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    event = await kube.create_event(k8s_namespace, {
        "metadata": {"generateName": "target-"},
        "eventTime": client.micro_time(whole_second),
        "reportingController": "sluice.dev/controller",
        "reportingInstance": "sluice-controller-0",
        "action": "Scale",
        "reason": "ScaledUp",
        "note": "desired 0 -> 1: a request waits at zero",
        "type": "Normal",
        "regarding": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": k8s_namespace,
                      "name": "target"},
    })
    assert isinstance(event, k8s.EventsV1Event)
    assert event.event_time == whole_second

    repeated = await kube.patch_event(k8s_namespace, event.metadata.name, {
        "series": {"count": 2, "lastObservedTime": datetime.datetime.now(datetime.UTC)},
    })
    assert repeated.series.count == 2
    stored = sync_client.EventsV1Api(admin).read_namespaced_event(event.metadata.name,
                                                                  k8s_namespace)
    assert (stored.reason, stored.series.count) == ("ScaledUp", 2)


def _lease(name: str, holder: str) -> k8s.V1Lease:
    return k8s.V1Lease(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1LeaseSpec(
            holder_identity=holder,
            lease_duration_seconds=15,
            # Microsecond 0: isoformat() would drop the fraction MicroTime requires.
            acquire_time=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
            renew_time=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        ),
    )


async def test_leases_update_only_from_the_current_version(kube, k8s_namespace):
    created = await kube.create_lease(k8s_namespace, _lease("sluice-controller", "a"))
    assert created.spec.holder_identity == "a"
    with pytest.raises(client.Conflict):
        await kube.create_lease(k8s_namespace, _lease("sluice-controller", "b"))

    current = await kube.get_lease(k8s_namespace, "sluice-controller")
    current.spec.holder_identity = "b"
    current.spec.renew_time = datetime.datetime.now(datetime.UTC)
    renewed = await kube.update_lease(k8s_namespace, current)
    assert renewed.spec.holder_identity == "b"
    assert renewed.metadata.resource_version != created.metadata.resource_version

    stale = _lease("sluice-controller", "c")
    stale.metadata.resource_version = created.metadata.resource_version
    with pytest.raises(client.Conflict):
        await kube.update_lease(k8s_namespace, stale)
    assert (await kube.get_lease(k8s_namespace, "sluice-controller")).spec.holder_identity == "b"


def _service_account_dir(tmp_path: Path, k8s_cluster, token: str, namespace: str) -> Path:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(token)
    (account / "ca.crt").write_text(k8s_cluster.ca_file.read_text())
    (account / "namespace").write_text(namespace)
    return account


def _in_cluster_environment(k8s_cluster) -> dict[str, str]:
    host, port = k8s_cluster.server.removeprefix("https://").rsplit(":", 1)
    return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}


async def test_in_cluster_config_uses_the_service_account(k8s_cluster, admin, k8s_namespace,
                                                          tmp_path):
    # The namespace's default ServiceAccount: it exists and is granted nothing.
    token = sync_client.CoreV1Api(admin).create_namespaced_service_account_token(
        "default", k8s_namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    settings = client.ClientSettings(
        service_account_dir=_service_account_dir(tmp_path, k8s_cluster, token, k8s_namespace)
    )
    api = await client.connect(settings, environ=_in_cluster_environment(k8s_cluster))
    async with api:
        assert api.namespace == k8s_namespace
        assert api.server == k8s_cluster.server
        with pytest.raises(client.ApiError) as forbidden:
            await api.list(client.PODS, namespace=k8s_namespace)
        assert not await api.allowed("list", client.PODS, k8s_namespace)  # asking is allowed
        assert not await api.allowed("watch", client.NODES)
    assert forbidden.value.status == 403
    assert f"system:serviceaccount:{k8s_namespace}:default" in forbidden.value.message


async def test_missing_configuration_is_a_clear_error(tmp_path):
    with pytest.raises(client.ConfigError, match="does not exist"):
        await client.connect(client.ClientSettings(kubeconfig=tmp_path / "absent"))
    with pytest.raises(client.ConfigError, match="in-cluster"):
        await client.connect(
            client.ClientSettings(service_account_dir=tmp_path),
            environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "1"},
        )


async def test_allowed_says_what_rbac_grants(kube, k8s_namespace):
    assert await kube.allowed("watch", client.NODES)  # the admin
    assert await kube.allowed("patch", client.DEPLOYMENTS, k8s_namespace)


async def test_not_found_is_its_own_error(kube, k8s_namespace):
    with pytest.raises(client.NotFound) as missing:
        await kube.get(client.PODS, k8s_namespace, "absent")
    assert missing.value.reason == "NotFound"


def _kubeconfig_for(k8s_cluster, server: str, tmp_path: Path) -> Path:
    config = yaml.safe_load(k8s_cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = server
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_nothing_listening_is_unavailable(k8s_cluster, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    kubeconfig = _kubeconfig_for(k8s_cluster, f"https://127.0.0.1:{port}", tmp_path)
    api = await client.connect(client.ClientSettings(kubeconfig=kubeconfig))
    async with api:
        with pytest.raises(client.Unavailable):
            await api.list(client.PODS)


async def test_a_server_that_never_answers_times_out(k8s_cluster, tmp_path):
    # Accepts connections and says nothing: the TLS handshake never completes.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        kubeconfig = _kubeconfig_for(k8s_cluster, f"https://127.0.0.1:{port}", tmp_path)
        settings = client.ClientSettings(kubeconfig=kubeconfig, connect_timeout_s=0.3,
                                         request_timeout_s=0.5)
        api = await client.connect(settings)
        async with api:
            with pytest.raises(client.Unavailable, match="timed out"):
                await api.get_scale("default", "model")
