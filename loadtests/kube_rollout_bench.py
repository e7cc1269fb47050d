"""``make bench``'s kube_rollouts: time to detect a bad canary and to promote a good one on the
test cluster, beside the same rollouts on the local stack and Flagger's rule.

Each rollout is the one tests/k8s/test_kube_rollouts.py runs (tests/k8s/rollouts.py sets it
up): an InferenceService's predictor v1 on one replica, its canary predictor v2 at zero, a
router process behind a kwok pod, ``sluice controller`` as a subprocess with manifests/rbac's
ServiceAccount, a fresh namespace each, and the local tests' short policy (20 → 50 → 100 %,
steps of at least 5 s and 50 canary requests, a verdict every second). Locust runs at 20 users x
4 RPS through the router (a 127.0.0.0/8 pod IP) from before the Rollout is created until the
revision that lost is drained. The bad canary answers 5 % of its requests with a 500
(examples/model_server.py ``--error-rate``); the good one is v1's twin.

Times come from the rollout's own record. On the cluster: the Rollout's creationTimestamp (the
apiserver's, whole seconds) is the start; the controller's Events (MicroTime) say when v2 got
its first weight (the first ``Step`` with one), the first failing verdict (``Verdict`` "fail
…"), all the traffic (the ``Step`` at 100 %) and the end (``RolledBack``, ``Promoted``). On the
local stack (``sluice up``, the same revisions and policy): the rollout API's transitions and
verdicts, seconds since the driver started, which is when the API accepted the rollout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests import kube_bench, rollout_bench

ERROR_RATE = 0.05
ENDED = ("Promoted", "RolledBack", "Failed")
LOCAL_SERVICE = "model"


@dataclass(frozen=True)
class Rollout:
    """One measured rollout: seconds from its start to each moment (None: it did not happen),
    and what the clients saw."""

    where: str
    """"cluster" or "local"."""
    bad: bool
    phase: str
    first_traffic_s: float | None
    fail_verdict_s: float | None
    full_traffic_s: float | None
    ended_s: float | None
    requests: int
    failures: int
    canary_requests: int

    def since_first_traffic(self, moment: float | None) -> float | None:
        if moment is None or self.first_traffic_s is None:
            return None
        return moment - self.first_traffic_s


def _canary_args(bad: bool) -> tuple[str, ...]:
    return ("--error-rate", str(ERROR_RATE)) if bad else ()


# -- on the test cluster ----------------------------------------------------------------------

async def _cluster_rollout(k8s: Any, api: Any, work: Path, index: int, bad: bool) -> Rollout:
    from kubernetes import client

    from tests.k8s import cluster as control_plane
    from tests.k8s import rollouts, sluice, waiting

    namespace = f"rollout-{index}"
    core: Any = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    cluster = sluice.Cluster(api, namespace)
    run_dir = work / namespace
    run_dir.mkdir()
    controller = sluice.ControllerProcess(k8s, namespace, run_dir, "--tick", "0.5")
    try:
        router = rollouts.serve_two_revisions(cluster, _canary_args(bad))
        load = rollouts.Load(router, run_dir)
        try:
            await waiting.eventually(
                lambda: rollouts.router_stats(router)["v1"]["requests"]["total"] > 100,
                timeout_s=rollouts.TIMEOUT_S, what="load on v1")
            cluster.create_rollout(rollouts.rollout_policy())
            await waiting.eventually(lambda: rollouts.phase(cluster) in ENDED,
                                     timeout_s=rollouts.TIMEOUT_S, what="the rollout ended")
            # What the losing revision had in flight is answered before Locust stops, so every
            # error it caused is counted.
            loser = "v2" if rollouts.phase(cluster) != "Promoted" else "v1"
            await waiting.eventually(
                lambda: rollouts.drained(rollouts.router_stats(router)[loser]),
                timeout_s=rollouts.TIMEOUT_S, what=f"{loser} drained")
            canary_requests = rollouts.router_stats(router)["v2"]["requests"]["total"]
        finally:
            summary = await load.stop()
        record = cluster.rollout(rollouts.ROLLOUT)
        events = {reason: sorted(cluster.events(reason), key=lambda e: e["eventTime"])
                  for reason in ("Step", "Verdict", "RolledBack", "Promoted")}
    finally:
        controller.close()
        core.delete_namespace(namespace)  # its pods go, and the kubelet ends their processes
    control_plane.wait_until(lambda: control_plane.is_gone(lambda: core.read_namespace(
        namespace)), timeout_s=120, what=f"namespace {namespace} deleted")

    start = rollouts.seconds(record["metadata"]["creationTimestamp"])

    def first(reason: str, note: Callable[[str], bool] = lambda _: True) -> float | None:
        moment = next((rollouts.seconds(e["eventTime"]) for e in events[reason]
                       if note(e["note"])), None)
        return None if moment is None else moment - start

    phase = record["status"]["phase"]
    return Rollout(
        "cluster", bad, phase, first_traffic_s=first("Step", lambda n: _weight(n) > 0),
        fail_verdict_s=first("Verdict", lambda n: n.startswith("fail")),
        full_traffic_s=first("Step", lambda n: _weight(n) == 100),
        ended_s=first(phase) if phase in events else None, requests=summary.requests,
        failures=summary.failures, canary_requests=canary_requests)


def _weight(note: str) -> int:
    """The canary's weight in a Step Event's note ("step 1/3, v2 at 20 %: …")."""
    found = re.search(r" at (\d+) %", note)
    return int(found.group(1)) if found else 0


async def _cluster_rollouts(runs: int) -> list[Rollout]:
    from kubernetes import client

    from tests.k8s import kserve

    measured = []
    with kube_bench.test_cluster() as (k8s, _, work), k8s.api_client() as api:
        kserve.install_crd(api)
        kube_bench._node(client.CoreV1Api(api), "rollouts-node", pods=110)
        for index in range(2 * runs):  # bad and good taking turns: drift hits both alike
            measured.append(await _cluster_rollout(k8s, api, work, index, bad=index % 2 == 0))
            print(f"kube_rollouts: {measured[-1]}", file=sys.stderr)
    return measured


# -- on the local stack -----------------------------------------------------------------------

async def _local_rollout(work: Path, index: int, bad: bool) -> Rollout:
    from tests.integration import conftest as local
    from tests.k8s import rollouts, waiting

    def revision(name: str, weight: int, *args: str, **scaling: Any) -> dict[str, Any]:
        return local.stack_revision(name, weight, command=[
            *local.MODEL_SERVER, "--revision", name, "--latency", "0.01", *args],
            metric="rps", target=100, **scaling)

    run_dir = work / f"local-{index}"
    run_dir.mkdir()
    stack = local.Stack(run_dir, [revision("v1", 100, minReplicas=1, initialScale=1),
                                  revision("v2", 0, *_canary_args(bad))])
    base = f"http://{stack.controller}/rollouts"

    def stats() -> dict[str, dict[str, Any]]:
        _, body = local.call("GET", f"http://127.0.0.1:{stack.admin}/stats")
        return {r["revision"]: r for r in body["revisions"]}

    def rollout() -> dict[str, Any]:
        _, body = local.call("GET", f"{base}/{LOCAL_SERVICE}?verdicts=100")
        return body

    try:
        stack.wait_for(lambda s: s["v1"]["ready"] == 1)
        load = rollouts.Load(stack.url, run_dir, model=LOCAL_SERVICE)
        try:
            await waiting.eventually(lambda: stats()["v1"]["requests"]["total"] > 100,
                                     timeout_s=rollouts.TIMEOUT_S, what="load on v1")
            code, body = local.call("POST", base, {**rollouts.rollout_policy()["spec"],
                                                   "service": LOCAL_SERVICE}, stack.token)
            if code != 201:
                raise RuntimeError(f"the rollout was refused: {code} {body}")
            await waiting.eventually(lambda: rollout()["phase"] in ENDED,
                                     timeout_s=rollouts.TIMEOUT_S, what="the rollout ended")
            loser = "v2" if rollout()["phase"] != "Promoted" else "v1"
            await waiting.eventually(lambda: rollouts.drained(stats()[loser]),
                                     timeout_s=rollouts.TIMEOUT_S, what=f"{loser} drained")
            canary_requests = stats()["v2"]["requests"]["total"]
        finally:
            summary = await load.stop()
        record = rollout()
    finally:
        stack.proc.close()

    def first(entries: list[dict[str, Any]], match: Callable[[dict[str, Any]], bool]
              ) -> float | None:
        return next((float(e["elapsed_s"]) for e in entries if match(e)), None)

    phase, transitions = record["phase"], record["transitions"]
    return Rollout(
        "local", bad, phase, first_traffic_s=first(transitions, lambda t: t["canary_weight"] > 0),
        fail_verdict_s=first(record["verdicts"], lambda v: v["outcome"] == "fail"),
        full_traffic_s=first(transitions, lambda t: t["canary_weight"] == 100),
        ended_s=first(transitions, lambda t: t["phase"] == phase), requests=summary.requests,
        failures=summary.failures, canary_requests=canary_requests)


async def _local_rollouts(runs: int) -> list[Rollout]:
    measured = []
    with tempfile.TemporaryDirectory(prefix="sluice-local-rollouts-") as scratch:
        for index in range(2 * runs):
            measured.append(await _local_rollout(Path(scratch), index, bad=index % 2 == 0))
            print(f"kube_rollouts (local): {measured[-1]}", file=sys.stderr)
    return measured


# -- the section ------------------------------------------------------------------------------

def benchmark_section(args: argparse.Namespace) -> str:
    began = time.monotonic()
    cluster = asyncio.run(_cluster_rollouts(args.rollouts))
    load_cluster = os.getloadavg()[0]
    local = asyncio.run(_local_rollouts(args.rollouts))
    load_local = os.getloadavg()[0]
    return render(args, cluster, local, (load_cluster, load_local), time.monotonic() - began)


def _spread(values: list[float | None]) -> str:
    """Median (min to max) of the runs, and how many lacked the moment."""
    known = [v for v in values if v is not None]
    if not known:
        return "—"
    text = f"{statistics.median(known):.1f} s ({min(known):.1f} to {max(known):.1f})"
    return text + (f", {len(values) - len(known)} without" if len(known) < len(values) else "")


def _flagger_rule(interval_s: float, partial_steps: int) -> tuple[str, str]:
    """rollout_bench's model of Flagger's scheduler, which every failed check of a bad canary
    and every passed check of a good one follows: rolled back on the tick after the
    threshold-th failure, promoted by the tick whose check passes at its last partial weight."""
    detect = ", ".join(f"{(t + 1) * interval_s:g} s (threshold {t})"
                       for t in rollout_bench.FLAGGER_THRESHOLDS)
    return detect, f"{partial_steps * interval_s:g} s"


def recorded_rollout_rows(path: Path) -> list[str]:
    """The detection and time-to-promote rows of docs/benchmarks.md's rollouts section, as
    recorded there (simulated: sluice and Flagger at Flagger's documented example)."""
    text = path.read_text() if path.exists() else ""
    section = re.search(r"<!-- section:rollouts -->\n(.*?)<!-- /section:rollouts -->", text,
                        re.S)
    if section is None:
        return []
    rows = [line for line in section.group(1).splitlines() if line.startswith("|")]
    return rows[:2] + [row for row in rows[2:] if "5 % errors" in row or (
        "time to promote" in row and "500 RPS" not in row)]


def render(args: argparse.Namespace, cluster: list[Rollout], local: list[Rollout],
           loads: tuple[float, float], took_s: float) -> str:
    def column(runs: list[Rollout], bad: bool, value: Callable[[Rollout], float | None]
               ) -> str:
        return _spread([value(r) for r in runs if r.bad is bad])

    def ended(runs: list[Rollout], bad: bool) -> str:
        phases = [r.phase for r in runs if r.bad is bad]
        want = "RolledBack" if bad else "Promoted"
        return f"{phases.count(want)} of {len(phases)}"

    def errors(runs: list[Rollout], bad: bool) -> str:
        mine = [r for r in runs if r.bad is bad]
        return ", ".join(f"{r.failures}/{r.requests}" for r in mine)

    def exposure(runs: list[Rollout]) -> str:
        """weight x RPS x (detection + interval) x rate, per bad run: the errors a client
        should expect (test_kube_rollouts bounds them at 3 times this)."""
        from tests.k8s import rollouts

        rps = rollouts.USERS * rollouts.USER_RPS
        first = rollouts.rollout_policy()["spec"]["steps"][0]["weight"] / 100
        detections = [r.since_first_traffic(r.ended_s) for r in runs if r.bad]
        return ", ".join(f"{first * rps * (d + rollouts.INTERVAL_S) * ERROR_RATE:.1f}"
                         for d in detections if d is not None)

    rows: list[tuple[str, Callable[[list[Rollout]], str]]] = [
        ("bad canary: rolled back", lambda runs: ended(runs, True)),
        ("bad: start → rolled back", lambda runs: column(runs, True, lambda r: r.ended_s)),
        ("bad: first canary traffic → first failing verdict", lambda runs: column(
            runs, True, lambda r: r.since_first_traffic(r.fail_verdict_s))),
        ("bad: first canary traffic → rolled back", lambda runs: column(
            runs, True, lambda r: r.since_first_traffic(r.ended_s))),
        ("bad: requests the canary served, per run", lambda runs: ", ".join(
            str(r.canary_requests) for r in runs if r.bad)),
        ("bad: failed requests / all, per run", lambda runs: errors(runs, True)),
        ("bad: expected failed requests (weight x RPS x (detection + interval) x 5 %)",
         exposure),
        ("good canary: promoted", lambda runs: ended(runs, False)),
        ("good: start → all traffic (the 100 % step)", lambda runs: column(
            runs, False, lambda r: r.full_traffic_s)),
        ("good: start → Promoted", lambda runs: column(runs, False, lambda r: r.ended_s)),
        ("good: failed requests / all, per run", lambda runs: errors(runs, False)),
        ("start → first canary traffic (all runs)", lambda runs: _spread(
            [r.first_traffic_s for r in runs])),
    ]
    detect_here, promote_here = _flagger_rule(5, 2)
    detect_doc, promote_doc = _flagger_rule(
        rollout_bench.FLAGGER_INTERVAL_S,
        rollout_bench.FLAGGER_MAX_WEIGHT // rollout_bench.FLAGGER_STEP_WEIGHT)
    lines = [
        "## Kubernetes: rollouts on the test cluster", "",
        f"Made by `{args.command}` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores "
        f"shared with the test cluster (load average {loads[0]:.1f} after the cluster's runs, "
        f"{loads[1]:.1f} after the local ones; {took_s / 60:.0f} min in all). "
        f"{args.rollouts} bad and {args.rollouts} good canaries, taking turns, on each of: the "
        "test cluster (tests/k8s: real apiserver, etcd, scheduler, controller-manager, kwok "
        "nodes; the model servers and the router are processes behind kwok pods; `sluice "
        "controller` with manifests/rbac's ServiceAccount, one fresh namespace per rollout, "
        "revisions that are KServe's predictor Deployments) and the local stack (`sluice up`, "
        "the same revisions as processes). Every rollout: the local tests' short policy "
        "(weights 20 → 50 → 100 %, each step at least 5 s and 50 canary requests, a verdict "
        "every 1 s, success rate ≥ 99 % with a 2-point margin, latency tolerance 50 %), "
        "Locust at 20 users x 4 RPS through the router from before the start until the "
        "revision that lost is drained; the bad canary answers 5 % of its requests with a "
        "500, the good one is v1's twin (10 ms a request).", "",
        "Times are from the rollout's own record, median (min to max) of the runs. Cluster: the "
        "start is the Rollout's creationTimestamp (whole seconds, so up to 1 s early); the "
        "controller's Events (microseconds) give the first canary weight (the first `Step` with "
        "one), the first failing `Verdict`, all the traffic (the `Step` at 100 %), `RolledBack` "
        "and `Promoted`. Local: the rollout API's transitions and verdicts, from the moment the "
        "API took the rollout. Code: "
        "loadtests/kube_rollout_bench.py.", "",
        "| measure | test cluster | local stack |", "|---|---|---|",
        *(f"| {name} | {cell(cluster)} | {cell(local)} |" for name, cell in rows), "",
        "Flagger's rule (loadtests/rollout_bench.py models its scheduler: a check per "
        "interval, a bad canary rolled back on the tick after its threshold-th failed check, "
        "a good one promoted by the tick whose check passes at its last partial weight): at "
        f"its documented example (interval {rollout_bench.FLAGGER_INTERVAL_S} s, stepWeight "
        f"{rollout_bench.FLAGGER_STEP_WEIGHT} to {rollout_bench.FLAGGER_MAX_WEIGHT} %) "
        f"rolled back after {detect_doc}, promoted after {promote_doc}; with this policy's "
        f"weights (20, 50 %) and an interval as short as its steps (5 s; Flagger's metric "
        f"templates usually query over 1m) rolled back after {detect_here}, promoted after "
        f"{promote_here}.",
        "",
    ]
    recorded = recorded_rollout_rows(args.out)
    if recorded:
        lines += ["As recorded in the rollouts section above (simulated, 50 RPS, sluice's "
                  "default policy and Flagger at Flagger's documented example; times from the "
                  "start, median (p90)):", "", *recorded, ""]
    return "\n".join(lines)

