"""The rollout benchmark: sluice's sequential judge against Flagger's rule on simulated traffic.

Why: the two numbers that decide whether automated canary analysis is worth having — how fast
a bad canary is stopped, and how often a good one is rolled back for nothing — depend on
sampling noise at the traffic a canary actually gets, so they are measured over many seeded
runs, each controller on the very same requests.

Traffic, one run (numpy, seeded by the run's number): 50 RPS in total, Poisson arrivals per
second. Each request carries three draws made before any controller sees it: which arm it goes
to (canary if its uniform draw is below the canary's weight at that second, so each arm's
per-second count is Poisson), whether it fails (below the arm's error rate) and its latency
(lognormal: exp(ln median + sigma z) with the arm's median). Stable: 0.5 % errors, median
150 ms, sigma 0.45, so its p99 is 427 ms, under the SLO of 500 ms with some headroom. Every
scenario and controller replays the same draws for the same run number (common random
numbers); only the arms' parameters and the weights the controllers choose differ.

Scenarios: a bad canary with 5 % errors; a bad canary 50 % slower (median 225 ms); A/A, a
canary identical to stable, 1,000 rollouts, which gives the false rollbacks and the time to
promote a good canary.

Controllers, both with the weights of Flagger's documented example (stepWeight 10 up to
maxWeight 50):

- sluice: ``policies.progression.advance`` driven by ``policies.judges.sequential`` every 5 s,
  with the default policy but those steps (10, 20, 30, 40, 50, 100 %, each at least 30 s and
  100 canary requests). The canary always has the replicas it needs: capacity is not measured.
- Flagger, as its scheduler runs (pkg/controller/scheduler.go) with the documented example
  (interval 1m, maxWeight 50, stepWeight 10, request-success-rate min 99 over 1m,
  request-duration P99 max 500 ms over 30s): at t = 0 the weight goes to 10; every 60 s it
  rolls back if failedChecks ≥ threshold, else runs the checks on the canary alone; a failed
  check adds to failedChecks (cumulative, never reset) and halts the weight; a passed one adds
  10 %, or at 50 % promotes. The P99 is Prometheus' histogram_quantile over Istio's duration
  buckets. Threshold 5 (the docs' example) and 1 (the default when unset). A canary failing
  every check is rolled back on the tick after the one that counted the threshold-th failure:
  (threshold + 1) intervals, one more than the docs' interval * threshold. Idealized in
  Flagger's favour: exact counts over the window, no scrape or rate() extrapolation lag.

Detection time is from the start of the rollout to the decision to roll back; time to promote
is to the decision that the canary gets all the traffic (sluice: entering the 100 % step;
Flagger: ``Promote()``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from policies import judges, progression, rollout

TOTAL_RPS = 50.0
STABLE_ERROR_RATE = 0.005
STABLE_MEDIAN_S = 0.150
LOG_SIGMA = 0.45
HORIZON_S = 1200
"""Seconds simulated per run at most; a rollout still running then counts as unfinished."""
AA_RUNS = 1000
BAD_RUNS = 300
BUSY_RUNS = 100

FLAGGER_INTERVAL_S = 60
FLAGGER_STEP_WEIGHT = 10
FLAGGER_MAX_WEIGHT = 50
FLAGGER_SUCCESS_MIN = 99.0
FLAGGER_SUCCESS_WINDOW_S = 60
FLAGGER_DURATION_MAX_MS = 500.0
FLAGGER_DURATION_WINDOW_S = 30
FLAGGER_THRESHOLDS = (5, 1)
ISTIO_DURATION_BUCKETS_MS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
    600000, 1800000, 3600000,
)
"""Istio's default buckets for istio_request_duration_milliseconds."""

DETECTION_GOAL_S = 30.0
FALSE_ROLLBACK_GOAL = 0.01


@dataclass(frozen=True)
class Arms:
    """A scenario: the service's traffic and the canary's error rate and median latency."""

    name: str
    canary_error_rate: float = STABLE_ERROR_RATE
    canary_median_s: float = STABLE_MEDIAN_S
    total_rps: float = TOTAL_RPS


BAD_ERRORS = Arms("bad canary: 5 % errors (stable 0.5 %)", canary_error_rate=0.05)
BAD_LATENCY = Arms("bad canary: 50 % slower", canary_median_s=1.5 * STABLE_MEDIAN_S)
IDENTICAL = Arms("A/A: canary identical to stable")
IDENTICAL_BUSY = Arms("A/A at 500 RPS", total_rps=500.0)
"""Ten times the traffic: where the evidence comes ten times as fast."""


@dataclass(frozen=True, eq=False)
class Trace:
    """One run's requests in arrival order, with the draws that decide their fate."""

    second_starts: npt.NDArray[np.int64]
    """Index of the first request of each second; one more entry than seconds."""
    arm_draw: npt.NDArray[np.float64]
    error_draw: npt.NDArray[np.float64]
    latency_z: npt.NDArray[np.float64]

    @classmethod
    def seeded(cls, seed: int, total_rps: float) -> Trace:
        rng = np.random.default_rng(seed)
        arrivals = rng.poisson(total_rps, HORIZON_S)
        n = int(arrivals.sum())
        return cls(np.concatenate(([0], np.cumsum(arrivals))), rng.random(n), rng.random(n),
                   rng.standard_normal(n))

    def served(self, arms: Arms, start_s: int, end_s: int,
               canary_weight: int) -> tuple[judges.ArmWindow, judges.ArmWindow]:
        """(canary, stable) of the requests arriving in [start_s, end_s) at this weight."""
        first, last = self.second_starts[start_s], self.second_starts[end_s]
        to_canary = self.arm_draw[first:last] < canary_weight / 100
        errors, z = self.error_draw[first:last], self.latency_z[first:last]
        return (_arm(to_canary, errors, z, arms.canary_error_rate, arms.canary_median_s),
                _arm(~to_canary, errors, z, STABLE_ERROR_RATE, STABLE_MEDIAN_S))


def _arm(mine: npt.NDArray[np.bool_], error_draw: npt.NDArray[np.float64],
         latency_z: npt.NDArray[np.float64], error_rate: float,
         median_s: float) -> judges.ArmWindow:
    latencies = np.exp(np.log(median_s) + LOG_SIGMA * latency_z[mine])
    return judges.ArmWindow(int(mine.sum()), int((error_draw[mine] < error_rate).sum()),
                            judges.Latencies.from_samples(latencies))


@dataclass(frozen=True)
class Ending:
    """How a simulated rollout ended: 'rolled back', 'promoted' or 'unfinished'."""

    result: str
    at_s: float


def sluice_policy() -> rollout.RolloutPolicy:
    """The default policy with the weights of Flagger's example, for a like-for-like run."""
    weights = (*range(FLAGGER_STEP_WEIGHT, FLAGGER_MAX_WEIGHT + 1, FLAGGER_STEP_WEIGHT),
               rollout.FULL_WEIGHT)
    return rollout.RolloutPolicy(service="model", stable_revision="v1", canary_revision="v2",
                                 steps=[rollout.Step(weight=w) for w in weights])


def sluice_run(trace: Trace, arms: Arms, policy: rollout.RolloutPolicy) -> Ending:
    interval = int(policy.analysis.interval_s)
    ready = progression.RolloutInputs(now=0.0, verdict=None, canary_ready=1, canary_needed=1,
                                   stable_ready=1)
    action, state = progression.advance(ready, progression.RolloutState(), policy)
    judged = judges.SequentialState()
    for start in range(0, HORIZON_S - interval + 1, interval):
        canary, stable = trace.served(arms, start, start + interval, action.canary_weight)
        window = judges.Window(canary, stable,
                               deciding_weight=progression.next_canary_weight(state, policy))
        verdict, judged = judges.sequential(window, judged, policy)
        inputs = progression.RolloutInputs(now=float(start + interval), verdict=verdict,
                                        canary_requests=canary.requests, canary_ready=1,
                                        canary_needed=1, stable_ready=1)
        action, state = progression.advance(inputs, state, policy)
        if state.phase is progression.Phase.ROLLED_BACK:
            return Ending("rolled back", inputs.now)
        if action.canary_weight == rollout.FULL_WEIGHT:
            return Ending("promoted", inputs.now)
    return Ending("unfinished", HORIZON_S)


def flagger_run(trace: Trace, arms: Arms, threshold: int) -> Ending:
    weight = FLAGGER_STEP_WEIGHT  # the first tick, at t = 0, routes the first step
    failed_checks = 0
    for tick in range(FLAGGER_INTERVAL_S, HORIZON_S + 1, FLAGGER_INTERVAL_S):
        if failed_checks >= threshold:
            return Ending("rolled back", tick)
        if _flagger_checks_pass(trace, arms, tick, weight):
            if weight >= FLAGGER_MAX_WEIGHT:
                return Ending("promoted", tick)
            weight += FLAGGER_STEP_WEIGHT
        else:
            failed_checks += 1
    return Ending("unfinished", HORIZON_S)


def _flagger_checks_pass(trace: Trace, arms: Arms, tick: int, weight: int) -> bool:
    """request-success-rate and request-duration on the canary alone; no data fails a check,
    as Flagger's "no values found" does."""
    canary, _ = trace.served(arms, tick - FLAGGER_SUCCESS_WINDOW_S, tick, weight)
    if canary.requests == 0:
        return False
    if 100 * (1 - canary.errors / canary.requests) < FLAGGER_SUCCESS_MIN:
        return False
    recent, _ = trace.served(arms, tick - FLAGGER_DURATION_WINDOW_S, tick, weight)
    p99 = histogram_quantile(0.99, recent.latencies)
    return p99 is not None and p99 <= FLAGGER_DURATION_MAX_MS


def histogram_quantile(q: float, latencies: judges.Latencies) -> float | None:
    """Prometheus' histogram_quantile over Istio's buckets, in ms: the bucket holding rank
    q * count, interpolated linearly from its lower bound (0 for the first bucket)."""
    bounds = np.asarray(ISTIO_DURATION_BUCKETS_MS)
    counts = np.bincount(np.searchsorted(bounds, 1000 * latencies.values_s, side="left"),
                         weights=latencies.counts, minlength=bounds.size + 1)
    total = counts.sum()
    if total == 0:
        return None
    cumulative = np.cumsum(counts)
    bucket = int(np.searchsorted(cumulative, q * total, side="left"))
    if bucket >= bounds.size:
        return float(bounds[-1])  # in +Inf: Prometheus returns the highest finite bound
    below = cumulative[bucket - 1] if bucket else 0.0
    lower = bounds[bucket - 1] if bucket else 0.0
    return float(lower + (bounds[bucket] - lower) * (q * total - below) / counts[bucket])


@dataclass(frozen=True)
class Results:
    """Every run's ending, per scenario and controller."""

    endings: dict[tuple[str, str], list[Ending]]

    def times(self, arms: Arms, controller: str, result: str) -> list[float]:
        return [e.at_s for e in self.endings[arms.name, controller] if e.result == result]

    def count(self, arms: Arms, controller: str, result: str) -> int:
        return len(self.times(arms, controller, result))


def controllers() -> dict[str, Callable[[Trace, Arms], Ending]]:
    """Each controller by the name the table shows, as a function of the run."""
    found: dict[str, Callable[[Trace, Arms], Ending]] = {
        "sluice": functools.partial(sluice_run, policy=sluice_policy())}
    for threshold in FLAGGER_THRESHOLDS:
        found[f"Flagger, threshold {threshold}"] = functools.partial(
            flagger_run, threshold=threshold)
    return found


def measure(aa_runs: int = AA_RUNS, bad_runs: int = BAD_RUNS,
            busy_runs: int = BUSY_RUNS) -> Results:
    """Every scenario's runs through every controller, spread over the machine's cores."""
    jobs = [(arms, seed) for arms, runs in ((BAD_ERRORS, bad_runs), (BAD_LATENCY, bad_runs),
                                            (IDENTICAL, aa_runs), (IDENTICAL_BUSY, busy_runs))
            for seed in range(runs)]
    endings: dict[tuple[str, str], list[Ending]] = {}
    with concurrent.futures.ProcessPoolExecutor() as pool:
        for (arms, _), ended in zip(jobs, pool.map(_simulated, jobs, chunksize=25),
                                    strict=True):
            for name, ending in ended.items():
                endings.setdefault((arms.name, name), []).append(ending)
    return Results(endings)


def _simulated(job: tuple[Arms, int]) -> dict[str, Ending]:
    arms, seed = job
    trace = Trace.seeded(seed, arms.total_rps)
    return {name: run(trace, arms) for name, run in controllers().items()}


def _spread(times: list[float]) -> str:
    if not times:
        return "—"
    return f"{statistics.median(times):.0f} s ({float(np.percentile(times, 90)):.0f} s)"


def benchmark_section(args: argparse.Namespace) -> str:
    """docs/benchmarks.md's rollout section: the table, the goals judged and how it was made."""
    results = measure()
    names = list(controllers())
    lines = [
        "## Rollouts: detection and false rollbacks", "",
        f"Made by `{args.command}` (`make bench` runs every section). Simulated traffic: the "
        "numbers depend on the code and the seeds, not on the machine. Model and controllers: "
        "loadtests/rollout_bench.py.", "",
        f"{TOTAL_RPS:g} RPS in total, Poisson; stable {100 * STABLE_ERROR_RATE:g} % errors, "
        f"lognormal latency with median {1000 * STABLE_MEDIAN_S:g} ms and sigma {LOG_SIGMA:g} "
        "(p99 427 ms). Weights 10, 20, 30, 40, 50 % then all, as Flagger's documented example "
        "(stepWeight 10, maxWeight 50, interval 1m, success rate ≥ 99 % over 1m, P99 ≤ 500 ms "
        "over 30s). sluice: the default policy (sequential judge every 5 s, alpha 0.01, "
        "steps of at least 30 s and 100 canary requests, error margin 1 point, latency "
        "tolerance 10 %) with those weights. Each run replays the same requests to every "
        f"controller. Bad canaries: {BAD_RUNS} runs each; A/A: {AA_RUNS:,} rollouts, and "
        f"{BUSY_RUNS} at 500 RPS. Times are from the start of the rollout to the decision to "
        "roll back or to give the canary all the traffic; median (p90).", "",
        "| scenario | measure | " + " | ".join(names) + " | goal | met |",
        "|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for arms in (BAD_ERRORS, BAD_LATENCY):
        detected = results.times(arms, "sluice", "rolled back")
        met = (len(detected) == BAD_RUNS
               and statistics.median(detected) <= DETECTION_GOAL_S)
        lines.append(_row(f"{arms.name}, canary at 10 %", "detection",
                          [_spread(results.times(arms, name, "rolled back")) for name in names],
                          f"median ≤ {DETECTION_GOAL_S:g} s", met))
    rollbacks = [results.count(IDENTICAL, name, "rolled back") for name in names]
    lines.append(_row(IDENTICAL.name, "false rollbacks",
                      [f"{100 * count / AA_RUNS:.1f} % ({count})" for count in rollbacks],
                      f"≤ {100 * FALSE_ROLLBACK_GOAL:g} %",
                      rollbacks[0] <= FALSE_ROLLBACK_GOAL * AA_RUNS))
    for arms in (IDENTICAL, IDENTICAL_BUSY):
        promoted = [results.times(arms, name, "promoted") for name in names]
        faster = bool(promoted[0]) and all(
            statistics.median(promoted[0]) < statistics.median(other)
            for other in promoted[1:] if other)
        lines.append(_row(arms.name, "time to promote", [_spread(t) for t in promoted],
                          "faster than Flagger", faster))
    scenarios = (BAD_ERRORS, BAD_LATENCY, IDENTICAL, IDENTICAL_BUSY)
    undecided = ", ".join(
        f"{name} {sum(results.count(arms, name, 'unfinished') for arms in scenarios)}"
        for name in names)
    lines += ["", f"Runs still undecided after {HORIZON_S} s: {undecided}.", ""]
    return "\n".join(lines)


def _row(scenario: str, measure: str, cells: list[str], goal: str, met: bool) -> str:
    return (f"| {scenario} | {measure} | " + " | ".join(cells)
            + f" | {goal} | {'met' if met else '**MISSED**'} |")
