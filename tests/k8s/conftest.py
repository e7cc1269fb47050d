"""Fixtures of tests/k8s: a real Kubernetes control plane on loopback (cluster.py), started
once per session, and what tests build on it. See README.md in this directory.

Every test in this directory is marked ``k8s``, so ``-m "not k8s"`` skips the lot.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from autoscaler.kube import client as kube_client
from tests.k8s import cluster as control_plane
from tests.k8s import kserve, process_kubelet, sluice
from tests.k8s.cluster import Cluster

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items, so mark only the ones in this directory.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.k8s)


def pytest_collection_finish(session: pytest.Session) -> None:
    # Build here rather than in the fixture: a cold build takes tens of minutes and would trip
    # the per-test timeout. Only when k8s tests survived deselection.
    if session.config.option.collectonly or not any(
        item.get_closest_marker("k8s") for item in session.items
    ):
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    # Show the build's progress: a silent half hour looks like a hang.
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        try:
            control_plane.control_plane_bin_dir()
        except subprocess.CalledProcessError as error:
            pytest.exit(
                f"{control_plane.BUILD_SCRIPT.name} failed with exit code {error.returncode}; "
                'see its output above, or deselect these tests with -m "not k8s"',
                returncode=pytest.ExitCode.INTERNAL_ERROR,
            )


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with control_plane.started(tmp_path_factory.mktemp("k8s-cluster")) as started:
        yield started


@pytest.fixture
def k8s_namespace(k8s_cluster: Cluster) -> Iterator[str]:
    """A fresh namespace, deleted after the test and waited for.

    Waiting matters: a leftover Pending pod would otherwise be scheduled onto the GPU nodes of
    the next test.
    """
    yield from _fresh_namespace(k8s_cluster)


@pytest.fixture
def models_namespace(k8s_cluster: Cluster) -> Iterator[str]:
    """A second fresh namespace, where the models run apart from the controller's account."""
    yield from _fresh_namespace(k8s_cluster)


def _fresh_namespace(k8s_cluster: Cluster) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    with k8s_cluster.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": name}})
        try:
            yield name
        finally:
            core.delete_namespace(name)
            control_plane.wait_until(
                lambda: control_plane.is_gone(lambda: core.read_namespace(name)),
                timeout_s=60,
                what=f"namespace {name} to be deleted",
            )


@pytest.fixture
def make_gpu_node(k8s_cluster: Cluster) -> Iterator[Callable[..., str]]:
    """Creates kwok-managed fake GPU nodes, waits until they can take pods, deletes them after.

    Usage: ``make_gpu_node("gpu-0", gpus=4)``. Pods land on them only with a toleration for
    ``kwok.x-k8s.io/node`` (NoSchedule); ``nodeSelector: {type: kwok}`` pins them there.
    """
    created: list[str] = []
    with k8s_cluster.api_client() as api:
        core = client.CoreV1Api(api)

        def make(name: str, gpus: int = 4, cpu: str = "32", memory: str = "256Gi") -> str:
            core.create_node(control_plane.gpu_node_manifest(name, gpus=gpus, cpu=cpu,
                                                             memory=memory))
            created.append(name)
            control_plane.wait_schedulable(core, name)
            return name

        try:
            yield make
        finally:
            for name in created:
                with contextlib.suppress(ApiException):
                    core.delete_node(name)
                # Without its node kwok no longer finishes these pods' deletion, and PodGC
                # waits 40 s before it does; namespace teardown would stall on them.
                for pod in core.list_pod_for_all_namespaces(
                    field_selector=f"spec.nodeName={name}"
                ).items:
                    with contextlib.suppress(ApiException):
                        core.delete_namespaced_pod(
                            pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
                        )


@pytest.fixture(scope="session")
def process_kubelet_session(k8s_cluster: Cluster) -> Iterator[process_kubelet.ProcessKubelet]:
    kubelet = process_kubelet.ProcessKubelet(
        k8s_cluster.kubeconfig, k8s_cluster.log_dir / "process-kubelet"
    )
    kubelet.start()
    try:
        yield kubelet
    finally:
        kubelet.stop()


@pytest.fixture
def kubelet(
    process_kubelet_session: process_kubelet.ProcessKubelet,
) -> Iterator[process_kubelet.ProcessKubelet]:
    """The kubelet for process pods (process_kubelet.py), one per session; fails the test if
    it reported a pod it could not run meanwhile."""
    reported = len(process_kubelet_session.errors)
    yield process_kubelet_session
    problems = process_kubelet_session.errors[reported:]
    assert not problems, f"the process kubelet reported: {problems}"


@pytest.fixture
def cluster(k8s_cluster: Cluster, k8s_namespace) -> Iterator[sluice.Cluster]:
    with k8s_cluster.api_client() as api:
        yield sluice.Cluster(api, k8s_namespace)


@pytest.fixture
def controller(k8s_cluster, k8s_namespace, installed_crds, kserve_crd,
               tmp_path, request) -> Iterator[sluice.ControllerProcess]:
    """The controller for the test's namespace; its log is shown if the test failed."""
    started = sluice.ControllerProcess(k8s_cluster, k8s_namespace, tmp_path, "--tick", "0.5")
    failures_before = request.session.testsfailed
    yield started
    if request.session.testsfailed > failures_before:
        sys.stderr.write(f"--- the controller's log ---\n{started.proc.output()}\n")
    started.close()


@pytest.fixture(scope="session")
def installed_crds(k8s_cluster: Cluster) -> Iterator[list[dict]]:
    """sluice's committed CRDs, Established, for the whole session; deleted at its end."""
    with k8s_cluster.api_client() as api:
        yield from sluice.installed_crds(api)


@pytest.fixture(scope="session")
def kserve_crd(k8s_cluster: Cluster) -> dict:
    """KServe's real InferenceService CRD, installed once per session (server-side apply)."""
    with k8s_cluster.api_client() as api:
        return kserve.install_crd(api)


@pytest.fixture
async def kube(k8s_cluster) -> AsyncIterator[kube_client.Client]:
    """sluice's own asyncio client on the test cluster, as the controller's admin."""
    api = await kube_client.connect(kube_client.ClientSettings(
        kubeconfig=k8s_cluster.kubeconfig))
    async with api:
        yield api
