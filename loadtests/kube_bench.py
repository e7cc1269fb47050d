"""``make bench`` on Kubernetes: scale from zero and the controller's cost, on the test cluster.

The cluster is tests/k8s's (tests/k8s/cluster.py): a real kube-apiserver, etcd, scheduler and
controller-manager, kwok nodes, and the process kubelet running real processes behind pods
(tests/k8s/process_kubelet.py). The controller runs as a subprocess with the ServiceAccount
token manifests/rbac binds; the router is what ``sluice manifests router`` writes, its pod run
by the process kubelet.

- ``kube_coldstart``: revisions at zero replicas, one request each (pinned with
  X-Sluice-Revision), through the router. Per cold start: the router's poke (its /events, a
  wall-clock time) → the Deployment's spec.replicas seen changed by a watch (an upper bound on
  when the controller's /scale patch landed), and the model server's own ready moment (it logs
  it, wall clock) → the response at the client: what sluice adds once the replica can serve.
- ``kube_controller``: the controller's CPU seconds per tick, from /proc, with 1,000
  ScalingPolicies on 1,000 Deployments (half at 1 replica, half at 0) in four namespaces, in
  steady state: no load, nothing to change, what watching and deciding costs.

Every process of the cluster runs on this machine's two cores beside the one measured.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import datetime
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "model"
BENCH_NAMESPACE = "bench"
TIMEOUT_S = 180.0
PAYLOAD = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32",
                       "data": [1, 2, 3, 4]}]}
_READY_LINE = re.compile(r"ready on \S+ at (\S+)")


@contextlib.contextmanager
def test_cluster() -> Iterator[tuple[Any, Any, Path]]:
    """The test cluster with sluice's CRDs and the process kubelet: (cluster, kubelet, work
    dir). The work dir (logs included) is removed afterwards unless the body failed."""
    from tests.k8s import cluster, process_kubelet, sluice

    work = Path(tempfile.mkdtemp(prefix="sluice-kube-bench-"))
    with cluster.started(work) as k8s:
        kubelet = process_kubelet.ProcessKubelet(k8s.kubeconfig, k8s.log_dir / "process-kubelet")
        kubelet.start()
        try:
            with k8s.api_client() as api, contextlib.contextmanager(sluice.installed_crds)(api):
                yield k8s, kubelet, work
        except BaseException:
            print(f"kube bench failed; logs kept in {work}", file=sys.stderr)
            raise
        finally:
            kubelet.stop()
    shutil.rmtree(work, ignore_errors=True)


def _node(core: Any, name: str, pods: int) -> None:
    from tests.k8s import cluster

    core.create_node(cluster.gpu_node_manifest(name, gpus=0, cpu="1000", memory="4Ti",
                                               pods=pods))
    cluster.wait_schedulable(core, name)


def _wait(predicate: Callable[[], object], what: str, timeout_s: float = TIMEOUT_S) -> None:
    from tests.k8s import waiting

    waiting.until(predicate, timeout_s=timeout_s, what=what)


def _deployment(name: str, replicas: int, *, process: bool) -> dict[str, Any]:
    """A revision's Deployment; with ``process``, its pods run the reference model server as
    process pods, else they are plain kwok pods (Ready at once, nothing runs)."""
    from tests.k8s import kserve, process_kubelet, sluice

    labels = {"app": name}
    template: dict[str, Any] = {"metadata": {"labels": dict(labels)}, "spec": {
        **sluice.KWOK_SCHEDULING, "terminationGracePeriodSeconds": 5,
        "containers": [{"name": "model", "image": "model:bench",
                        "ports": [{"name": "http", "containerPort": 8080}]}]}}
    if process:
        template["metadata"]["labels"][process_kubelet.PROCESS_LABEL] = "true"
        template["metadata"]["annotations"] = {process_kubelet.COMMAND_ANNOTATION: json.dumps(
            kserve.model_server_command(SERVICE))}
        template["spec"]["containers"][0]["readinessProbe"] = {
            "httpGet": {"path": f"/v2/models/{SERVICE}/ready", "port": 8080},
            "periodSeconds": 1}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": template}}


def _policy(name: str, revision: str, deployment: str, replicas: int,
            service: str = SERVICE) -> dict[str, Any]:
    from tests.k8s import sluice

    return sluice.scaling_policy(
        name, service, revision, {"apiVersion": "apps/v1", "kind": "Deployment",
                                  "name": deployment},
        metric="concurrency", target=1, minReplicas=replicas, maxReplicas=max(1, replicas),
        initialScale=replicas)


def _all_enforced(custom: Any, namespace: str | None, count: int) -> bool:
    if namespace is None:
        listed = custom.list_cluster_custom_object("sluice.dev", "v1alpha1", "scalingpolicies")
    else:
        listed = custom.list_namespaced_custom_object("sluice.dev", "v1alpha1", namespace,
                                                      "scalingpolicies")
    return _enforced(listed) == count


def _enforced(listed: dict[str, Any]) -> int:
    return sum(1 for p in listed["items"] if any(
        c["type"] == "Ready" and c.get("reason") == "Enforced"
        for c in (p.get("status") or {}).get("conditions", [])))


# (a) and (b): cold starts through the router


class ScaleWatch:
    """When each Deployment of a namespace was first seen asked for replicas (a watch, on its
    own thread): the moment the controller's /scale patch was visible to a client."""

    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client, watch

        self.seen: dict[str, float] = {}
        self._apps = client.AppsV1Api(api)
        self._namespace = namespace
        self._watch = watch.Watch()
        self._stopped = False
        version = self._apps.list_namespaced_deployment(namespace).metadata.resource_version
        self._thread = threading.Thread(target=self._run, args=(version,), daemon=True)
        self._thread.start()

    def _run(self, version: str) -> None:
        try:
            for event in self._watch.stream(self._apps.list_namespaced_deployment,
                                            self._namespace, resource_version=version,
                                            timeout_seconds=600):
                now = time.time()
                deployment = event["object"]
                if (deployment.spec.replicas or 0) > 0:
                    self.seen.setdefault(deployment.metadata.name, now)
        except Exception:
            if not self._stopped:  # the cluster going away ends the stream: not an error
                raise

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()


async def _follow_pokes(admin_url: str, pokes: dict[str, float]) -> None:
    from policies import wire

    timeout = aiohttp.ClientTimeout(sock_read=None, total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(f"{admin_url}/events") as response:
        async for line in response.content:
            if line.strip():
                poke = wire.Poke.model_validate_json(line)
                pokes.setdefault(poke.revision, poke.time)


def _ready_at(log: Path) -> float:
    """The model server's own ready moment, from the line it logs (wall clock)."""
    match = _READY_LINE.search(log.read_text(errors="replace"))
    if match is None:
        raise RuntimeError(f"{log}: no 'ready on … at …' line")
    return datetime.datetime.fromisoformat(match.group(1)).timestamp()


async def _cold_starts(router: str, admin: str, revisions: list[str], core: Any,
                       scales: ScaleWatch, log_dir: Path) -> list[dict[str, float]]:
    pokes: dict[str, float] = {}
    follower = asyncio.create_task(_follow_pokes(admin, pokes))
    await asyncio.sleep(1.0)  # subscribed before the first request
    rows = []
    try:
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
            for revision in revisions:
                sent = time.time()
                async with session.post(f"{router}/v2/models/{SERVICE}/infer", json=PAYLOAD,
                                        headers={"X-Sluice-Revision": revision}) as response:
                    await response.read()
                    answered = time.time()
                    if response.status != 200:
                        raise RuntimeError(f"{revision}: {response.status}")
                deployment = f"{SERVICE}-{revision}"
                (pod,) = core.list_namespaced_pod(BENCH_NAMESPACE,
                                                  label_selector=f"app={deployment}").items
                ready = _ready_at(log_dir / f"{BENCH_NAMESPACE}.{pod.metadata.name}.log")
                rows.append({"first_response": answered - sent,
                             "after_ready": answered - ready,
                             "poke_to_scale": scales.seen[deployment] - pokes[revision]})
                print(f"cold start {revision}: {rows[-1]}", file=sys.stderr)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    return rows


def coldstart_section(args: argparse.Namespace) -> str:
    from kubernetes import client

    from autoscaler.kube import router_manifests as rm
    from tests.k8s import sluice
    from tests.k8s.pods import is_ready

    revisions = [f"r{i}" for i in range(args.cold_starts)]
    with test_cluster() as (k8s, _, work), k8s.api_client() as api:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        custom = client.CustomObjectsApi(api)
        core.create_namespace({"metadata": {"name": BENCH_NAMESPACE}})
        _node(core, "bench-node", pods=110)
        for revision in revisions:
            apps.create_namespaced_deployment(BENCH_NAMESPACE, _deployment(
                f"{SERVICE}-{revision}", 0, process=True))
        core.create_namespaced_secret(BENCH_NAMESPACE, sluice.router_secret())
        settings = rm.RouterSettings(SERVICE, BENCH_NAMESPACE, replicas=1)
        made = {obj["kind"]: obj for obj in rm.objects(settings)}
        apps.create_namespaced_deployment(BENCH_NAMESPACE,
                                          sluice.process_router(made["Deployment"]))
        for revision in revisions:
            custom.create_namespaced_custom_object(
                "sluice.dev", "v1alpha1", BENCH_NAMESPACE, "scalingpolicies",
                _policy(f"{SERVICE}-{revision}", revision, f"{SERVICE}-{revision}", 0))
        controller = sluice.ControllerProcess(k8s, BENCH_NAMESPACE, work)
        scales = ScaleWatch(api, BENCH_NAMESPACE)
        try:
            selector = ",".join(f"{k}={v}" for k, v in rm.selector(settings).items())
            _wait(lambda: any(is_ready(p) for p in core.list_namespaced_pod(
                BENCH_NAMESPACE, label_selector=selector).items), "the router Ready")
            _wait(lambda: _all_enforced(custom, BENCH_NAMESPACE, len(revisions)),
                  "every policy Enforced")
            (router_pod,) = core.list_namespaced_pod(BENCH_NAMESPACE,
                                                     label_selector=selector).items
            ip = router_pod.status.pod_ip
            rows = asyncio.run(_cold_starts(f"http://{ip}:{rm.HTTP_PORT}",
                                            f"http://{ip}:{rm.ADMIN_PORT}", revisions, core,
                                            scales, k8s.log_dir / "process-kubelet"))
        finally:
            scales.stop()
            controller.close()

    def stat(field: str, scale: float = 1000.0) -> tuple[float, float]:
        values = [row[field] * scale for row in rows]
        return statistics.median(values), max(values)

    after, poke = stat("after_ready"), stat("poke_to_scale")
    load = os.getloadavg()[0]
    first = stat("first_response")
    return "\n".join([
        "## Kubernetes: scale from zero on the test cluster", "",
        f"Made by `{args.command}` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores "
        f"(load average {load:.1f} at the end): {len(rows)} revisions of one service at zero "
        "replicas, one request each through the "
        "router (`sluice manifests router`, pinned with X-Sluice-Revision), the controller at "
        "its default 1 s tick (so every start came from the router's poke). Replicas are the "
        "reference model server behind process pods; the Deployment controller, scheduler and "
        "kwok place them.", "",
        "| measure | median ms | max ms | goal |", "|---|---|---|---|",
        f"| router poke → Deployment's /scale seen changed (watch) | {poke[0]:.1f} | "
        f"{poke[1]:.1f} | ≤ 100 ({'met' if poke[1] <= 100 else 'MISSED'}) |",
        f"| replica ready (its own log) → response at the client | {after[0]:.0f} | "
        f"{after[1]:.0f} | ≤ 100 ({'met' if after[1] <= 100 else 'MISSED'}) |",
        f"| request at zero → response | {first[0]:.0f} | {first[1]:.0f} | (replica start-up "
        "bound) |", "",
        "*Poke → /scale* is the router's poke time (its /events) to the moment a watch on the "
        "namespace's Deployments saw spec.replicas change: an upper bound on the controller's "
        "patch (it includes the watch's delivery). *Ready → response*: from the model server's "
        "ready line to the client's response: sluice's probe of the new pod finding it, the "
        "route table published to the router, and the buffered request served.", "",
        "What limits *ready → response*: sluice's own probe of a new pod "
        "(autoscaler/kube/replicas.py, `ProbeSettings`, `probe_interval`) starts 20 ms after "
        "the pod runs and grows to at most 50 ms apart while the pod is expected to come up "
        "(its first 10 s, or twice its revision's learned cold start), so a model server is "
        "found within 50 ms of listening, 25 ms on average; then publishing the table to the "
        "router and serving the buffered request take a few ms. Past that stretch it backs off "
        "by half each miss up to 1 s, so a pod that takes long costs a probe a second. Before "
        "(2026-11-30), when the probe backed off to 1 s from the start, this measure was 110 ms "
        "median, 179 ms max: a model server that took ~0.5 s to listen was found up to ~0.25 s "
        "later.", ""])


# (c): the controller's CPU per tick at 1,000 ScalingPolicies

SCALE_NAMESPACES = 4


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _populate(api: Any, first: int, stop: int) -> None:
    """Deployments ``first`` to ``stop`` - 1 (every other one at 1 replica) and their
    ScalingPolicies, spread over SCALE_NAMESPACES namespaces; returns once their pods run."""
    from kubernetes import client

    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    namespaces = [f"scale-{i}" for i in range(SCALE_NAMESPACES)]
    if first == 0:
        for namespace in namespaces:
            core.create_namespace({"metadata": {"name": namespace}})

    def create(i: int) -> None:
        namespace, replicas = namespaces[i % len(namespaces)], i % 2
        name = f"rev-{i:04d}"
        apps.create_namespaced_deployment(namespace, _deployment(name, replicas, process=False))
        custom.create_namespaced_custom_object(
            "sluice.dev", "v1alpha1", namespace, "scalingpolicies",
            _policy(name, "v1", name, replicas, service=f"svc-{i:04d}"))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(first, stop)))

    def pods_ready() -> bool:
        pods = core.list_pod_for_all_namespaces(label_selector="app").items
        return sum(1 for p in pods if p.status.phase == "Running") >= stop // 2

    _wait(pods_ready, f"{stop // 2} pods Running", timeout_s=600)


def _enforced_after(custom: Any, count: int, timeout_s: float) -> tuple[float | None, int]:
    """Seconds until ``count`` policies are Enforced (None: not within ``timeout_s``), and how
    many were."""
    began = time.monotonic()
    try:
        _wait(lambda: _enforced_count(custom) >= count, f"{count} policies Enforced",
              timeout_s=timeout_s)
    except TimeoutError:
        return None, _enforced_count(custom)
    return time.monotonic() - began, count


def _resolved_after(proc: Any, count: int, timeout_s: float) -> tuple[float | None, int]:
    """Seconds until a (re)started controller has resolved ``count`` policies to their
    Deployments (its log says so for each; their status says Enforced from before), and how
    many it had."""
    began = time.monotonic()
    while True:
        resolved = proc.output().count(" scales Deployment ")
        if resolved >= count:
            return time.monotonic() - began, resolved
        if time.monotonic() - began > timeout_s:
            return None, resolved
        time.sleep(1.0)


def _enforced_count(custom: Any) -> int:
    listed = custom.list_cluster_custom_object("sluice.dev", "v1alpha1", "scalingpolicies")
    return _enforced(listed)


def controller_section(args: argparse.Namespace) -> str:
    """CPU per tick in steady state as policies are added a quarter at a time (each quarter's
    status writes go out before the next), then a restart with all of them at once."""
    from kubernetes import client

    from tests.k8s import sluice

    policies, ticks = args.policies, args.ticks
    steps = [policies * k // 4 for k in range(1, 5)]
    rows = []
    with test_cluster() as (k8s, _, work), k8s.api_client() as api:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        core.create_namespace({"metadata": {"name": "sluice-bench"}})
        _node(core, "scale-node", pods=policies)
        controller = None
        profiler: _Profiler | None = None
        try:
            for first, stop in zip([0, *steps], steps, strict=False):
                began = time.monotonic()
                _populate(api, first, stop)
                created = time.monotonic() - began
                if controller is None:
                    controller = sluice.ControllerProcess(k8s, "sluice-bench", work,
                                                          all_namespaces=True)
                enforced_s, enforced = _enforced_after(custom, stop, args.enforce_timeout)
                time.sleep(5)  # the last status writes go out
                pid = controller.proc.pid
                profiler = _Profiler(pid, ticks, work / f"controller-{stop}.raw") \
                    if stop == policies else None
                before, began = _cpu_seconds(pid), time.monotonic()
                time.sleep(ticks)
                cpu, wall = _cpu_seconds(pid) - before, time.monotonic() - began
                rows.append({"policies": stop, "created_s": created, "enforced_s": enforced_s,
                             "enforced": enforced, "tick_ms": cpu / wall * 1000,
                             "rss": _rss_mib(pid), "load": os.getloadavg()[0],
                             "timeouts": controller.proc.output().count("timed out")})
                print(f"kube_controller: {rows[-1]}", file=sys.stderr)
            hot = profiler.hot_spots() if profiler is not None else []
            # A restart (a failover, an upgrade) meets every policy at once.
            assert controller is not None
            controller.stop()
            controller.start()
            began_cpu = _cpu_seconds(controller.proc.pid)
            restart_s, restarted = _resolved_after(controller.proc, policies,
                                                   args.enforce_timeout)
            restart_cpu = _cpu_seconds(controller.proc.pid) - began_cpu
            restart_timeouts = controller.proc.output().count("timed out")
        finally:
            if controller is not None:
                controller.close()
    return _render_controller(args, rows, hot, restart_s, restarted, restart_cpu,
                              restart_timeouts)


def _render_controller(args: argparse.Namespace, rows: list[dict[str, Any]],
                       hot: list[tuple[float, str]], restart_s: float | None, restarted: int,
                       restart_cpu: float, restart_timeouts: int) -> str:
    def enforced(seconds: float | None, count: int, of: int) -> str:
        return f"{seconds:.0f} s" if seconds is not None else (
            f"not all: {count:,} of {of:,} after {args.enforce_timeout:.0f} s")

    last = rows[-1]
    lines = [
        "## Kubernetes: the controller's CPU per tick", "",
        f"Made by `{args.command}` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores "
        "shared with the test cluster (and whatever else runs on the machine): "
        f"`sluice controller -A` (1 s tick) with up to {last['policies']:,} ScalingPolicies in "
        f"{SCALE_NAMESPACES} namespaces, each on its own Deployment (every other one at 1 "
        "replica, a kwok pod; the rest at 0), no routers and no load: nothing to scale, the "
        "steady state. Policies are added a quarter at a time while the controller runs; once "
        f"the new ones are Enforced (and 5 s more), CPU is measured over {args.ticks} s: user "
        "+ system seconds of the controller process (/proc) per second, one tick's worth.", "",
        "| policies | CPU per 1 s tick ms | new ones Enforced after | RSS MiB | "
        "calls timed out (so far) | machine load (1 min) |", "|---|---|---|---|---|---|",
        *(f"| {row['policies']:,} | {row['tick_ms']:.0f} | "
          f"{enforced(row['enforced_s'], row['enforced'], row['policies'])} | "
          f"{row['rss']:.0f} | {row['timeouts']:,} | {row['load']:.1f} |" for row in rows), "",
        f"Goal: ≤ 100 ms per 1 s tick at {last['policies']:,} policies "
        f"({'met' if last['tick_ms'] <= 100 else 'MISSED'}: {last['tick_ms']:.0f} ms).", "",
        f"Restarted with all {last['policies']:,} at once (a failover or an upgrade): "
        + (f"every policy resolved to its Deployment and managed again after {restart_s:.0f} s"
           if restart_s is not None else
           f"{restarted:,} of {last['policies']:,} policies resolved to their Deployments and "
           f"managed again after {args.enforce_timeout:.0f} s (not all)")
        + f", {restart_cpu:.0f} CPU s meanwhile, {restart_timeouts:,} apiserver calls timed "
        "out.", ""]
    if hot:
        lines += [f"Where the time went at {last['policies']:,} (py-spy, the measuring window; "
                  "share of the samples with the function on the stack):", "",
                  "| share | function |", "|---|---|",
                  *(f"| {share:.0%} | `{name}` |" for share, name in hot), ""]
    return "\n".join([*lines, LIMITS, ""])


LIMITS = (
    "What was changed on 2026-11-30 (the run before measured 102, 256, 330 and 416 ms at 250 "
    "to 1,000 policies, never caught up above 500, and 42,898 calls timed out), each from the "
    "profiles of that run:\n\n"
    "- Status (`Controller._status_forever`): a policy's status is built (conditions, "
    "explanation, pydantic validation) only when something it shows changed (`Policy.shown`: "
    "decision, counts, failure, unschedulable, desired, signal reading, generation, "
    "resourceVersion); the decider's memory is written about every 60 s (`state_interval_s`, "
    "was 10 s), spread per policy, and not when it says what the last one written said (an "
    "idle revision's), so a steady cluster writes no status; status PATCHes in flight are "
    "bounded (`status_writes` 16) below the client's pool of 32.\n"
    "- Client: timeouts no longer count the wait for a pooled connection (`sock_connect` 5 s, "
    "`sock_read` 15 s, total 30 s), and its session no longer trusts the environment (no "
    "~/.netrc lookup per call).\n"
    "- Reconcile: 4 workers (`reconcile_workers`), a failing policy retried after its own "
    "back-off (0.1 s doubling to 10 s) instead of a 1 s sleep that held up every other one, "
    "and an index instead of scans to find a revision's policy.\n"
    "- Decider: an idle stable window skips `_risen`'s splits and windows are found by "
    "bisection: `decide` for an idle revision with a full 60 s window costs 0.045 ms "
    "in-process, was 0.13 ms.\n\n"
    "In-process, the controller with a fake apiserver and 1,000 policies (a micro-benchmark, "
    "not committed): no routers 55 → 9 ms CPU a second; routers reporting every revision idle "
    "241 → 128 ms.\n\n"
    "What limits it now:\n\n"
    "- This measure has no routers, and a revision no router reports is not decided each tick "
    "(control/core.py: missing load holds), so the decider is not in the figures above. With "
    "routers reporting all 1,000 revisions, deciding them every tick costs ~45 ms a tick "
    "in-process, and the core's bookkeeping around each decision (counts, inputs, the state "
    "store) about as much: over the goal (128 ms in-process). Next: not deciding again a "
    "revision whose inputs and window have not changed (idle at the same count).\n"
    "- What is left here is the status loop's look at each policy every second (its "
    "fingerprint: counts, failure, the decider's memory when due) and the watches; no "
    "status is written in the steady state.")


class _Profiler:
    """py-spy sampling a process for ``seconds``, when py-spy is installed (``pip install
    py-spy`` into .venv); its hot spots are sluice's functions by inclusive share."""

    def __init__(self, pid: int, seconds: int, out: Path) -> None:
        import subprocess

        found = shutil.which("py-spy") or shutil.which("py-spy", path=str(
            Path(sys.executable).parent))
        self._out = out
        self._proc = None if found is None else subprocess.Popen(
            [found, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "50",
             "--format", "raw", "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if found is None:
            print("py-spy not found: no hot spots (pip install py-spy)", file=sys.stderr)

    def hot_spots(self, count: int = 15) -> list[tuple[float, str]]:
        if self._proc is None or self._proc.wait(60) != 0 or not self._out.exists():
            return []
        inclusive: dict[str, int] = {}
        total = 0
        for line in self._out.read_text().splitlines():
            stack, _, samples = line.rpartition(" ")
            total += int(samples)
            # one row per function, whatever line of it was running
            for frame in {re.sub(r":\d+\)$", ")", f) for f in stack.split(";")}:
                if re.search(r"\((autoscaler|policies)/", frame) and not re.match(
                        r"(<module>|main|_run_code) ", frame):
                    inclusive[frame] = inclusive.get(frame, 0) + int(samples)
        ranked = sorted(inclusive.items(), key=lambda item: -item[1])[:count]
        return [(samples / total, frame) for frame, samples in ranked] if total else []
