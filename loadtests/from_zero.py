"""``make bench`` section ``fromzero``: steps from zero replicas on the local stack, measured live
and replayed in the simulator.

Why: what a scale-from-zero decision buys is only seen live, where the requests that arrive
during the first cold start wait in the router's buffer and the decider sees them; and the
simulator is only worth trusting within the gap it shows against the same step run live.

Each run starts a fresh ``sluice up`` with one revision of the reference model server
(examples/model_server.py: ``SERVICE_S`` per request, ``MODEL_LOAD_S`` of model loading) at
zero replicas, then locust users from zero (Poisson pacing, closed loop: a user whose request
waits sends no other); a surge is offered open loop instead (vegeta at a fixed rate from its
first second, whatever the answers: users who wait for their answers would ramp it up only as
fast as the replicas come). A scenario may first serve a warm-up load and wait until the revision is
back at zero, so that the step meets a revision that has served before. The controller's
/status and the router's /stats are polled every ``POLL_S``; from them, over the hold from the
first arrival:

- replica-seconds: ready + starting replicas, the controller's record;
- needed: the oracle's replica-seconds from the measured arrivals per second
  (``baselines.oracle_replicas``), a replica serving ``target * utilization`` requests/s on rps
  and that many in flight on concurrency, each request in flight the service time the router
  measured (its mean in flight over its arrival rate);
- failed requests, and the p99 latency after the first cold start: of the requests locust
  sent after the first replica was ready (including any wait behind the cold start's
  backlog);
- time to the needed count: from the first arrival until the controller asks for (and has
  ready) the count the oracle needs in most seconds of the hold's second half;
- the same arrivals replayed by the simulator (``sluice simulate --from-zero``) with the
  measured cold start and service time, and replicas that take every request, as the reference
  model server does: sluice's replica-seconds and p99 queueing delay against the live ones
  (live wait: the p99 latency of the hold's requests less ``SERVICE_S``). Not for a scenario
  with a warm-up, whose replay would need the warm-up too.

``python -m loadtests.from_zero --json FILE`` runs the scenarios alone and keeps every run's
figures (and ``--timeline FILE`` its polls); the section shows such a file's runs of an older
commit beside the fresh ones (``--from-zero-before FILE``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoscaler.sim import model as simulate
from autoscaler.sim import traces
from loadtests import run, shapes, vegeta
from policies import baselines, scaling

ROOT = Path(__file__).resolve().parents[1]
SERVICE_S = 0.02
"""Seconds the reference model server takes per request (``--latency``)."""
MODEL_LOAD_S = 2.0
"""Seconds it takes to load its model before it is ready (``--startup-delay``)."""
POLL_S = 0.2
"""Seconds between polls of the controller's status and the router's stats."""
IDLE_S = 1.0
"""Seconds without users at the start of each locust run."""
UNSATURATED_RPS = 1e6
"""Requests/s a replica serves in the replay when the reference model server takes every
request sent to it (asyncio, no ``--parallelism``): at these loads it never queues one."""
ZERO_WITHIN_S = 180.0
"""Longest wait, after a warm-up, for the revision to be back at zero replicas (stable window
plus grace period: 90 s with the defaults)."""
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
V2_BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32",
                       "data": [0.1, 0.2, 0.3, 0.4]}]}
"""The Open Inference Protocol V2 request locust's users send (loadtests/locustfile.py)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    policy: dict[str, Any]
    users: int
    """Users at 1 request/s each, from zero; an open-loop scenario's requests/s."""
    hold_s: float
    warm_up: tuple[int, float] | None = None
    """(users, seconds) served first, then idle until the revision is at zero again."""
    open_loop: bool = False
    """Offer ``users`` requests/s at once and whatever the answers (vegeta), not users."""
    parallelism: int = 0
    """The model server's ``--parallelism``: requests it works on at once, the rest waiting
    inside it, as a GPU or the GIL would have them; 0 (the default) works on every one."""


ISSUE_POLICY = {"metric": "concurrency", "target": 1, "targetUtilization": 1.0,
                "maxReplicas": 8, "minReplicas": 0, "initialScale": 0}
"""The issue's policy: one request in flight per replica, at most 8, from zero."""
SURGE_POLICY = {**ISSUE_POLICY, "bufferDepth": 4000}
"""The same, holding a surge's cold start of requests: 400 a second through a first cold start
of 2.5 s is about the default depth of 1000."""
SCENARIOS = (
    Scenario("concurrency-40", "40 RPS, concurrency", ISSUE_POLICY, 40, 60.0),
    Scenario("concurrency-40-serial", "40 RPS, concurrency, a server that works on 1 at a "
             "time", ISSUE_POLICY, 40, 60.0, parallelism=1),
    Scenario("rps-40", f"40 RPS, rps (target {1 / SERVICE_S:g})",
             {**ISSUE_POLICY, "metric": "rps", "target": 1 / SERVICE_S}, 40, 60.0),
    Scenario("surge-400", "400 RPS surge, concurrency, never served", SURGE_POLICY, 400, 30.0,
             open_loop=True),
    Scenario("surge-400-served", "400 RPS surge, concurrency, served before", SURGE_POLICY,
             400, 30.0, warm_up=(40, 20.0), open_loop=True),
)


@dataclass
class Poll:
    at: float
    """Unix seconds, the clock locust stamps requests with."""
    desired: int
    ready: int
    starting: int
    arrived: int
    """Requests that chose the revision so far: answered, in flight or buffered."""
    buffered: int
    inflight_60s: float
    rps_60s: float


@dataclass(frozen=True)
class Result:
    replica_s: float
    needed_s: float
    service_s: float
    """Seconds a request was in flight, as the router measured it over the last minute."""
    failures: int
    requests: int
    p99_after_ms: float | None
    peak_desired: int
    needed_count: int
    """Replicas the oracle asks for in most seconds of the hold's second half."""
    cold_start_s: float
    to_desired_s: float | None
    to_ready_s: float | None
    live_p99_wait_s: float
    sim_replica_s: float | None
    sim_p99_wait_s: float | None

    @property
    def ratio(self) -> float:
        return self.replica_s / self.needed_s


class Stack:
    """A fresh ``sluice up`` with one revision; stopped by PID. Its run directory (replica and
    router logs) is removed unless ``keep``."""

    def __init__(self, policy: dict[str, Any], parallelism: int = 0) -> None:
        self.port, self.admin, self.status = (_free_port() for _ in range(3))
        self.workdir = Path(tempfile.mkdtemp(prefix="sluice-fromzero-"))
        server = [sys.executable, str(ROOT / "examples" / "model_server.py"), "--port", "{port}",
                  "--latency", str(SERVICE_S), "--startup-delay", str(MODEL_LOAD_S),
                  "--parallelism", str(parallelism)]
        stack = {
            "router": {"listen": f"127.0.0.1:{self.port}", "admin": f"127.0.0.1:{self.admin}"},
            "controller": {"listen": f"127.0.0.1:{self.status}"},
            "services": {"model": {"revisions": [
                {"name": "v1", "weight": 100, "command": server, "scaling": policy}]}},
        }
        (self.workdir / "stack.yaml").write_text(json.dumps(stack))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autoscaler.cli", "up", "-f", str(self.workdir / "stack.yaml"),
             "--run-dir", str(self.workdir / "run")],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "XDG_RUNTIME_DIR": str(self.workdir / "xdg")})
        deadline = time.monotonic() + 60
        while True:
            try:
                self.row()
                _get(f"http://127.0.0.1:{self.admin}/readyz")
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close(keep=True)
                    raise RuntimeError(f"sluice up did not start; see {self.workdir}") from None
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def row(self) -> dict[str, Any]:
        """The revision's row of the controller's status."""
        row: dict[str, Any] = _get(f"http://127.0.0.1:{self.status}/status")["revisions"][0]
        return row

    def poll(self) -> Poll:
        row = self.row()
        revisions = _get(f"http://127.0.0.1:{self.admin}/stats")["revisions"]
        at = time.time()
        if not revisions:
            return Poll(at, row["desired"], row["ready"], row["starting"], 0, 0, 0.0, 0.0)
        revision = revisions[0]
        return Poll(at, row["desired"], row["ready"], row["starting"],
                    revision["requests"]["total"] + revision["inflight"] + revision["buffered"],
                    revision["buffered"], revision["inflight_avg"]["60s"],
                    revision["rps"]["60s"])

    def close(self, keep: bool = False) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> Any:
    with OPENER.open(url, timeout=5) as response:
        return json.loads(response.read())


Request = tuple[float, float, bool]
"""One request as locust saw it: (start, Unix seconds; latency, ms; failed)."""


def _locust(stack: Stack, users: int, seconds: float) -> list[Request]:
    step = shapes.Step(idle_seconds=IDLE_S, users=users, hold_seconds=seconds)
    requests_path = stack.workdir / "requests.json"
    run.run_locust(stack.url, step, IDLE_S + seconds, env={
        "SLUICE_USER_RPS": "1", "SLUICE_USER_PACING": "poisson",
        "SLUICE_LOAD_REQUESTS": str(requests_path)})
    return [tuple(r) for r in json.loads(requests_path.read_text())]


def _open_loop(stack: Stack, rate: int, seconds: float) -> list[Request]:
    """``rate`` V2 infer requests a second from the first, whatever the answers (vegeta), after
    ``IDLE_S`` of nothing as locust's step has."""
    body = stack.workdir / "body.json"
    body.write_text(json.dumps(V2_BODY))
    target = f"POST {stack.url}/v2/models/model/infer\nContent-Type: application/json\n@{body}\n"
    time.sleep(IDLE_S)
    attack = subprocess.run(
        [vegeta.binary(), "attack", f"-rate={rate}/s", f"-duration={seconds:g}s",
         "-timeout=60s", "-max-workers=8000", "-keepalive=true"],
        input=target.encode(), capture_output=True, check=True, timeout=seconds + 120)
    rows = subprocess.run([vegeta.binary(), "encode", "-to", "csv"], input=attack.stdout,
                          capture_output=True, check=True, timeout=60).stdout.decode()
    # timestamp (Unix ns), status, latency (ns), ...: a status 0 is no answer (vegeta's error).
    return [(int(row[0]) / 1e9, int(row[2]) / 1e6, not 200 <= int(row[1]) < 300)
            for row in csv.reader(rows.splitlines())]


def measure(scenario: Scenario, timeline: list[Poll] | None = None) -> Result:
    """One run of the scenario on a fresh stack; its polls are added to ``timeline``."""
    stack = Stack(scenario.policy, scenario.parallelism)
    polls: list[Poll] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                polls.append(stack.poll())
            except OSError:
                pass  # a poll that times out under load is a gap, not an error
            done.wait(POLL_S)

    watcher = threading.Thread(target=watch, daemon=True)
    keep = False
    try:
        if scenario.warm_up is not None:
            _locust(stack, *scenario.warm_up)
            _wait_at_zero(stack)
        watcher.start()
        offer = _open_loop if scenario.open_loop else _locust
        requests = offer(stack, scenario.users, scenario.hold_s + 1)
        done.set()
        watcher.join()
        keep = any(failed for _, _, failed in requests) or stack.row()["restarts"] > 0
    finally:
        done.set()
        stack.close(keep=keep)
    if keep:
        print(f"{scenario.name}: failures or replica restarts; logs kept in {stack.workdir}",
              file=sys.stderr)
    if timeline is not None:
        timeline.extend(polls)
    return judged(scenario, polls, requests)


def _wait_at_zero(stack: Stack) -> None:
    deadline = time.monotonic() + ZERO_WITHIN_S
    while (row := stack.row())["ready"] + row["starting"] > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the revision was not back at zero within {ZERO_WITHIN_S:g} s")
        time.sleep(1.0)


def judged(scenario: Scenario, polls: list[Poll], requests: list[Request]) -> Result:
    """The run's figures from its polls and the requests sent (locust's or vegeta's)."""
    policy = scaling.load_policy(scenario.policy)
    before = polls[0]  # a warm-up's requests were counted before it
    first = next(i for i, p in enumerate(polls) if p.arrived > before.arrived)
    # From the last poll without an arrival: every arrival counted falls after it, and the
    # hold, the cold start and the times to the needed count are at most a poll longer.
    start = polls[max(0, first - 1)].at
    window = [p for p in polls if start <= p.at <= start + scenario.hold_s]
    replica_s = sum((b.at - a.at) * (a.ready + a.starting)
                    for a, b in itertools.pairwise(window))
    arrivals = per_second(polls, start, int(scenario.hold_s))
    last = window[-1]
    service_s = last.inflight_60s / last.rps_60s if last.rps_60s else SERVICE_S
    capacity_rps = per_replica_rps(policy, service_s)
    plan = baselines.oracle_replicas(arrivals.tolist(), capacity_rps, policy)
    first_ready = next(p for p in window if p.ready > 0)
    # The hold's requests by locust's own clock: a poll's time and the router's count of a
    # request that started a few milliseconds before it do not line up.
    sent = min(at for at, _, _ in requests)
    held = [(at, ms) for at, ms, _ in requests if at <= sent + scenario.hold_s]
    after_ms = [ms for at, ms in held if at >= first_ready.at]
    p99_after = float(np.quantile(after_ms, 0.99)) if after_ms else None
    p99_all = float(np.quantile([ms for _, ms in held], 0.99)) / 1000
    needed_count = int(np.median(plan[len(plan) // 2:]))
    sim = None if scenario.warm_up else replayed(arrivals, policy, service_s,
                                                 first_ready.at - start, scenario.parallelism)
    return Result(
        replica_s=replica_s, needed_s=float(sum(plan)), service_s=service_s,
        failures=sum(failed for _, _, failed in requests), requests=len(requests),
        p99_after_ms=p99_after,
        peak_desired=max(p.desired for p in window), needed_count=needed_count,
        cold_start_s=first_ready.at - start,
        to_desired_s=next((p.at - start for p in window if p.desired >= needed_count), None),
        to_ready_s=next((p.at - start for p in window if p.ready >= needed_count), None),
        live_p99_wait_s=max(0.0, p99_all - SERVICE_S),
        sim_replica_s=None if sim is None else sim.replica_seconds,
        sim_p99_wait_s=None if sim is None else sim.p99_delay_s)


def per_replica_rps(policy: scaling.ScalingPolicy, service_s: float) -> float:
    """Requests per second one replica serves at the policy's aim."""
    per_replica = policy.target_per_replica * policy.target_utilization
    if policy.metric_kind is scaling.MetricKind.CONCURRENCY:
        return per_replica / service_s
    return per_replica


def per_second(polls: list[Poll], start: float, seconds: int) -> np.ndarray:
    """Arrivals in each second from ``start``: the cumulative count interpolated between polls."""
    at = np.array([p.at for p in polls])
    arrived = np.array([p.arrived for p in polls], dtype=float)
    return np.diff(np.interp(start + np.arange(seconds + 1), at, arrived))


def replayed(arrivals: np.ndarray, policy: scaling.ScalingPolicy, service_s: float,
             cold_start_s: float, parallelism: int = 0) -> simulate.Metrics:
    """The same arrivals in the simulator, from zero, with the measured cold start and
    service time, each replica serving what the model server's parallelism lets it: sluice's
    figures (`sluice simulate --trace live.csv --from-zero ...`)."""
    trace = traces.Trace("live", arrivals, "measured arrivals", cold_start_s=cold_start_s,
                         from_zero=True, service_s=service_s)
    capacity = parallelism / SERVICE_S if parallelism else UNSATURATED_RPS
    model = simulate.replica_model(trace, policy, capacity=capacity)
    return simulate.simulate(trace, policy, model)["sluice"].metrics


def benchmark_section(args: argparse.Namespace) -> str:
    results: dict[str, list[Result]] = {}
    for scenario in SCENARIOS:
        for _ in range(args.from_zero_runs):
            result = measure(scenario)
            print(scenario.name, json.dumps(dataclasses.asdict(result)), file=sys.stderr)
            results.setdefault(scenario.name, []).append(result)
    before = None
    if args.from_zero_before is not None and args.from_zero_before.exists():
        before = loaded(args.from_zero_before)
    return render(args.command, args.from_zero_runs, results, before)


def loaded(path: Path) -> tuple[str, dict[str, list[Result]]]:
    """Runs written by ``--json``: (what the file's first line says they measured, runs by
    scenario)."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    runs: dict[str, list[Result]] = {}
    for line in lines[1:]:
        scenario = line.pop("scenario")
        runs.setdefault(scenario, []).append(Result(**line))
    return lines[0]["measured"], runs


def _spread(values: list[float], fmt: str = "{:.0f}") -> str:
    """Median [min, max] of the runs."""
    shown = fmt.format(statistics.median(values))
    if len(values) > 1:
        shown += f" [{fmt.format(min(values))}, {fmt.format(max(values))}]"
    return shown


def _gap(simulated: float | None, live: float) -> float:
    return (simulated - live) / live if simulated is not None and live else math.nan


def render(command: str, runs: int, results: dict[str, list[Result]],
           before: tuple[str, dict[str, list[Result]]] | None = None) -> str:
    lines = [
        "## Autoscaler: steps from zero on the local stack, and the same steps simulated", "",
        f"Made by `{command}` on {time.strftime('%Y-%m-%d')} (loadtests/from_zero.py): a fresh "
        f"`sluice up` per run, one revision of the reference model server ({SERVICE_S * 1000:g} "
        f"ms per request, {MODEL_LOAD_S:g} s model load; it works on every request at once, "
        "asyncio, except on the row that says it works on 1 at a time: `--parallelism 1`, "
        "the rest waiting inside it, what `target: 1` tells sluice of a server) at zero "
        "replicas, policy "
        "`targetUtilization: 1.0, maxReplicas: 8` with the metric and target shown, locust "
        "users at 1 request/s each with Poisson pacing; the surges are offered open loop "
        "instead (vegeta: 400 requests/s from the first second whatever the answers, "
        "`bufferDepth: 4000`). Needed: the oracle's replica-seconds "
        "from the measured arrivals and the measured service time (in flight per request, "
        "router side). p99 after the first cold start: latency of the requests locust sent after "
        "the first replica was ready. To needed count: from the first arrival until the "
        "controller asks for / has ready the count the oracle needs in most seconds of the "
        f"hold's second half. {runs} runs per scenario: median [min, max]"
        + (f"; *before*: {before[0]}." if before else "."), "",
        "| scenario | replica-s | needed | ratio | peak asked | failed | p99 after first cold "
        "start ms | service ms | cold start s | to needed count, asked / ready s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, label, rows in (
            (scenario, label, runs_of[scenario.name])
            for scenario in SCENARIOS
            for label, runs_of in (("", results), ("*before*: ", before[1] if before else {}))
            if scenario.name in runs_of):
        lines.append(
            f"| {label}{scenario.what} | {_spread([r.replica_s for r in rows])} | "
            f"{_spread([r.needed_s for r in rows])} | "
            f"{_spread([r.ratio for r in rows], '{:.2f}')} | "
            f"{_spread([float(r.peak_desired) for r in rows])} | "
            f"{sum(r.failures for r in rows)} of {sum(r.requests for r in rows):,} | "
            f"{_spread([r.p99_after_ms or math.nan for r in rows], '{:.0f}')} | "
            f"{_spread([r.service_s * 1000 for r in rows], '{:.1f}')} | "
            f"{_spread([r.cold_start_s for r in rows], '{:.1f}')} | "
            f"{_spread([r.to_desired_s or math.inf for r in rows], '{:.1f}')} / "
            f"{_spread([r.to_ready_s or math.inf for r in rows], '{:.1f}')} |")
    lines += [
        "", "Sim-to-real: each run's arrivals per second replayed by the simulator from zero "
        "with that run's cold start and service time, and replicas that serve what the "
        "reference model server does: every request (`sluice simulate --trace FILE.csv "
        "--from-zero --cold-start S --service-time S --capacity 1000000`), or 1 at a time "
        f"(`--capacity {1 / SERVICE_S:g}`); gap = (sim - live) / live, per run.", "",
        "| scenario | replica-s live | replica-s sim | gap | p99 wait live s | p99 wait sim s "
        "| gap |", "|---|---|---|---|---|---|---|",
    ]
    for scenario in SCENARIOS:
        rows = results[scenario.name]
        if scenario.warm_up is not None:
            continue
        lines.append(
            f"| {scenario.what} | {_spread([r.replica_s for r in rows])} | "
            f"{_spread([r.sim_replica_s or math.nan for r in rows])} | "
            f"{_spread([_gap(r.sim_replica_s, r.replica_s) for r in rows], '{:+.0%}')} | "
            f"{_spread([r.live_p99_wait_s for r in rows], '{:.2f}')} | "
            f"{_spread([r.sim_p99_wait_s or math.nan for r in rows], '{:.2f}')} | "
            f"{_spread([_gap(r.sim_p99_wait_s, r.live_p99_wait_s) for r in rows], '{:+.0%}')} |")
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.from_zero")
    parser.add_argument("--from-zero-runs", type=int, default=3)
    parser.add_argument("--only", choices=[s.name for s in SCENARIOS], action="append")
    parser.add_argument("--json", type=Path, required=True,
                        help="write each run's figures here, after a first line saying what "
                        "was measured (--measured)")
    parser.add_argument("--measured", default="this checkout",
                        help="what the runs measured, e.g. 'main at <commit>'")
    parser.add_argument("--timeline", type=Path, help="append each run's polls here")
    args = parser.parse_args(argv)
    args.json.write_text(json.dumps({"measured": args.measured}) + "\n")
    for scenario in SCENARIOS:
        if args.only and scenario.name not in args.only:
            continue
        for _ in range(args.from_zero_runs):
            polls: list[Poll] = []
            result = measure(scenario, polls)
            figures = json.dumps({"scenario": scenario.name, **dataclasses.asdict(result)})
            with args.json.open("a") as out:
                out.write(figures + "\n")
            if args.timeline:
                with args.timeline.open("a") as out:
                    out.write(json.dumps({"scenario": scenario.name,
                                          "polls": [dataclasses.astuple(p) for p in polls]})
                              + "\n")
            print(figures, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
