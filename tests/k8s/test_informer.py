"""The informer (autoscaler/kube/informer.py) against the real apiserver.

Covered:
- the first list is reported ADDED and sets ``synced``; what changes afterwards is reported
  ADDED/MODIFIED/DELETED in order, filtered by label and field selectors; one namespace or
  all; a late handler is replayed the cache; a failing handler does not stop the others;
- a watch answered 410 Gone (its resourceVersion made older than the restarted apiserver's
  watch cache and compacted away in etcd while the informer was held in its back-off) leads to
  a re-list, diffed against the cache: what was deleted meanwhile is reported DELETED, what
  was created ADDED, what was changed MODIFIED, and nothing else;
- the apiserver stopped: the informer keeps its cache, retries with bounded exponential
  back-off (delays exactly as the injected randomness makes them), and resumes when the
  apiserver is back;
- the back-off's delays, table-driven.

Objects are ConfigMaps: the informer is generic, and ConfigMaps need no controller or node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator

import pytest
from kubernetes import client as sync_client

from autoscaler.kube import client, informer
from tests.k8s import waiting

CONFIG_MAPS = client.Kind("", "v1", "configmaps", "ConfigMap", model="V1ConfigMap")
SYNC_TIMEOUT_S = 30.0
CHANGE_TIMEOUT_S = 30.0
RESTART_TIMEOUT_S = 120.0


@pytest.fixture
def core(k8s_cluster) -> Iterator[sync_client.CoreV1Api]:
    with k8s_cluster.api_client() as api:
        yield sync_client.CoreV1Api(api)


class Recorder:
    """A handler that keeps (type, namespace, name) of every change."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str]] = []

    def __call__(self, change: informer.Change) -> None:
        namespace, name, _ = informer.metadata(change.object)
        self.changes.append((str(change.type), namespace, name))

    def names(self) -> list[tuple[str, str]]:
        return [(kind, name) for kind, _, name in self.changes]


class GatedSleep:
    """The informer's sleep: records each delay; while closed, holds the informer there."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.open = asyncio.Event()
        self.open.set()
        self.holding = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.open.is_set():
            await asyncio.sleep(delay)
            return
        self.holding.set()
        await self.open.wait()


@contextlib.asynccontextmanager
async def running(subject: informer.Informer) -> AsyncIterator[None]:
    task = asyncio.create_task(subject.run())
    try:
        await asyncio.wait_for(subject.synced.wait(), SYNC_TIMEOUT_S)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _config_map(name: str, app: str, value: str = "1") -> dict:
    return {"metadata": {"name": name, "labels": {"app": app}}, "data": {"value": value}}


def _failing_handler(change: informer.Change) -> None:
    raise RuntimeError("a handler's bug")


async def test_reports_the_list_then_every_change_in_order(kube, core, k8s_namespace, caplog):
    core.create_namespaced_config_map(k8s_namespace, _config_map("before", "watched"))
    subject = informer.Informer(kube, CONFIG_MAPS, namespace=k8s_namespace,
                                label_selector="app=watched")
    recorder = Recorder()
    subject.add_handler(_failing_handler)
    subject.add_handler(recorder)
    async with running(subject):
        assert recorder.names() == [("ADDED", "before")]

        core.create_namespaced_config_map(k8s_namespace, _config_map("after", "watched"))
        core.create_namespaced_config_map(k8s_namespace, _config_map("ignored", "other"))
        core.patch_namespaced_config_map("before", k8s_namespace, {"data": {"value": "2"}})
        core.delete_namespaced_config_map("after", k8s_namespace)
        await waiting.eventually(lambda: len(recorder.changes) >= 4, timeout_s=CHANGE_TIMEOUT_S,
                                 what="four changes")

        assert recorder.names() == [
            ("ADDED", "before"), ("ADDED", "after"), ("MODIFIED", "before"), ("DELETED", "after"),
        ]
        assert set(subject.objects) == {(k8s_namespace, "before")}
        assert subject.get(k8s_namespace, "before").data == {"value": "2"}
        assert subject.last_error is None

        late = Recorder()
        subject.add_handler(late)
        assert late.names() == [("ADDED", "before")]
    assert "a handler's bug" in caplog.text


async def test_field_selector_and_all_namespaces(kube, core, k8s_namespace):
    app = f"everywhere-{k8s_namespace}"  # unique: other tests' objects stay out
    subject = informer.Informer(kube, CONFIG_MAPS, label_selector=f"app={app}",
                                field_selector="metadata.name!=skipped")
    recorder = Recorder()
    subject.add_handler(recorder)
    try:
        async with running(subject):
            core.create_namespaced_config_map(k8s_namespace, _config_map("here", app))
            core.create_namespaced_config_map("default", _config_map(f"there-{app}", app))
            core.create_namespaced_config_map(k8s_namespace, _config_map("skipped", app))
            await waiting.eventually(lambda: len(subject) == 2, timeout_s=CHANGE_TIMEOUT_S,
                                     what="both namespaces' objects")
            assert set(subject.objects) == {(k8s_namespace, "here"), ("default", f"there-{app}")}
            assert ("ADDED", k8s_namespace, "skipped") not in recorder.changes
    finally:
        core.delete_namespaced_config_map(f"there-{app}", "default")


def _etcd(etcd_url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{etcd_url}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return json.loads(response.read())


def _expire_resource_versions(etcd_url: str) -> int:
    """Writes a key outside the apiserver's prefix, then compacts etcd at that revision: every
    resourceVersion handed out so far is older than what a (re)started apiserver's watch cache
    holds, and older than etcd keeps. Returns the compacted revision."""
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    put = _etcd(etcd_url, "/v3/kv/put", {"key": b64("/sluice-tests/bump"), "value": b64("1")})
    revision = int(put["header"]["revision"])
    _etcd(etcd_url, "/v3/kv/compaction", {"revision": revision, "physical": True})
    return revision


async def test_watch_answered_gone_relists_and_reports_what_changed_meanwhile(
    k8s_cluster, kube, core, k8s_namespace
):
    for name in ("kept", "changed", "deleted"):
        core.create_namespaced_config_map(k8s_namespace, _config_map(name, "relisted"))
    sleep = GatedSleep()
    subject = informer.Informer(kube, CONFIG_MAPS, namespace=k8s_namespace,
                                label_selector="app=relisted", sleep=sleep, random=lambda: 0.0)
    recorder = Recorder()
    subject.add_handler(recorder)
    async with running(subject):
        assert sorted(recorder.names()) == [
            ("ADDED", "changed"), ("ADDED", "deleted"), ("ADDED", "kept"),
        ]
        version_before = subject.resource_version
        # Hold the informer in its back-off once its watch breaks.
        sleep.open.clear()
        await asyncio.to_thread(k8s_cluster.apiserver.stop)
        await asyncio.wait_for(sleep.holding.wait(), RESTART_TIMEOUT_S)
        compacted = await asyncio.to_thread(_expire_resource_versions, k8s_cluster.etcd_url)
        assert int(version_before) < compacted
        await asyncio.to_thread(k8s_cluster.apiserver.start)

        # While the informer is down, the world moves on.
        core.delete_namespaced_config_map("deleted", k8s_namespace)
        core.create_namespaced_config_map(k8s_namespace, _config_map("created", "relisted"))
        core.patch_namespaced_config_map("changed", k8s_namespace, {"data": {"value": "2"}})
        assert recorder.names()[3:] == []

        sleep.open.set()
        await waiting.eventually(lambda: subject.relists == 1, timeout_s=RESTART_TIMEOUT_S,
                                 what="the informer to list again after 410 Gone")
        assert sorted(recorder.names()[3:]) == [
            ("ADDED", "created"), ("DELETED", "deleted"), ("MODIFIED", "changed"),
        ]
        assert set(subject.objects) == {
            (k8s_namespace, name) for name in ("kept", "changed", "created")
        }
        assert subject.get(k8s_namespace, "changed").data == {"value": "2"}

        # And it watches again from the new list.
        core.delete_namespaced_config_map("kept", k8s_namespace)
        await waiting.eventually(lambda: ("DELETED", "kept") in recorder.names(),
                                 timeout_s=CHANGE_TIMEOUT_S, what="a change after the re-list")


FAST_BACKOFF = informer.InformerSettings(backoff_initial_s=0.05, backoff_max_s=0.4,
                                         backoff_factor=2.0, backoff_jitter=0.5)


async def test_backs_off_while_the_apiserver_is_down_and_resumes(
    k8s_cluster, kube, core, k8s_namespace
):
    core.create_namespaced_config_map(k8s_namespace, _config_map("old", "outage"))
    sleep = GatedSleep()
    subject = informer.Informer(kube, CONFIG_MAPS, namespace=k8s_namespace,
                                label_selector="app=outage", settings=FAST_BACKOFF, sleep=sleep,
                                random=lambda: 1.0)
    recorder = Recorder()
    subject.add_handler(recorder)
    async with running(subject):
        await asyncio.to_thread(k8s_cluster.apiserver.stop)
        try:
            await waiting.eventually(lambda: len(sleep.delays) >= 6, timeout_s=RESTART_TIMEOUT_S,
                                     what="six retries while the apiserver is down")
            error_while_down = subject.last_error
        finally:
            await asyncio.to_thread(k8s_cluster.apiserver.start)
        assert isinstance(error_while_down, client.Unavailable)
        # Exponential from 0.05 s, stretched by the injected jitter, capped at 0.4 s.
        assert sleep.delays[:6] == pytest.approx([0.075, 0.15, 0.3, 0.4, 0.4, 0.4])
        # Meanwhile the last view was kept, and still counts as synced.
        assert subject.synced.is_set()
        assert set(subject.objects) == {(k8s_namespace, "old")}

        core.create_namespaced_config_map(k8s_namespace, _config_map("new", "outage"))
        await waiting.eventually(lambda: ("ADDED", "new") in recorder.names(),
                                 timeout_s=RESTART_TIMEOUT_S,
                                 what="a change after the apiserver came back")
        assert subject.last_error is None
        assert ("DELETED", "old") not in recorder.names()


@pytest.mark.parametrize(
    ("random", "failures", "expected"),
    [
        pytest.param(0.0, 1, [0.5], id="first"),
        pytest.param(0.0, 5, [0.5, 1.0, 2.0, 4.0, 8.0], id="doubles"),
        pytest.param(0.0, 9, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0], id="capped"),
        pytest.param(1.0, 3, [0.75, 1.5, 3.0], id="jitter-stretches-by-half"),
        pytest.param(1.0, 7, [0.75, 1.5, 3.0, 6.0, 12.0, 24.0, 30.0], id="jitter-within-cap"),
    ],
)
def test_backoff_delays(random, failures, expected):
    backoff = informer.Backoff(informer.InformerSettings(), lambda: random)
    assert [backoff.next_delay() for _ in range(failures)] == pytest.approx(expected)
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(expected[0])
