"""Canary judges: measurements of the canary (and of stable on the same window) in, a verdict out.

Pure: no clock, no I/O, no randomness. Each judge returns a :class:`Verdict` — pass, fail or
inconclusive — made of one :class:`Finding` per metric that records what was observed, the
bound it was held to, the test statistic, the p-value or likelihood ratio and the sample sizes,
with a sentence a person can read. Too little traffic is always *inconclusive*, never *fail*.

Inputs are per-arm windows: requests, errors and latencies. Latencies come as raw samples or as
the router's histogram (~5 % wide log buckets, ``router/stats.py``); a histogram is turned into
*approximate samples*, each bucket's count at its geometric midpoint (the overflow bucket at its
lower bound). Every test below is then run on those values: rank tests only need the order,
which bucketing keeps except inside a bucket (counted as ties), and the log-latency moments
move by less than the bucket width (ln 1.05 ≈ 0.05) over a spread of ~0.5.

**thresholds** — the canary alone against the SLO, with exact binomial tests, so a breach must
be significant and not a coin flip at low traffic. Errors: H0 "error rate ≤ 1 - min"; with
``e`` errors in ``n`` requests, p = P(Binomial(n, 1 - min) ≥ e). Latency: H0 "the q-quantile
≤ maxMs", i.e. at most 1 - q of requests are slower, p = P(Binomial(n, 1 - q) ≥ slow). Example:
min 99 %, 300 requests with 4 errors (98.7 %, which Flagger fails): p = P(Bin(300, 0.01) ≥ 4)
= 0.35, a pass; 12 errors (96 %): p = 6e-5 < 0.005, a fail.

**compare** — canary against stable on the same window, as Kayenta's judge does. Errors:
Fisher's exact test, one-sided (the canary errs more). Latency: Mann-Whitney U, one-sided, on
log-latency with the canary shifted down by the tolerance: it fails only when the canary is
slower than stable by *more* than ``tolerancePercent``. Rejecting at shift ln(1 + t) is the same
as the lower confidence bound of the Hodges-Lehmann shift lying above ln(1 + t), which is
Kayenta's rule with a tolerance the user chooses instead of 25 % of the estimate itself.
Example, expected values: 300 canary and 2,700 stable samples, lognormal with sigma 0.45; canary
50 % slower: U/(nm) = P(canary/1.1 slower) = 0.69, z = 10.6, p = 1e-26, a fail; canary 5 %
slower: U/(nm) = 0.47, p = 0.95, a pass.

**sequential** — canary against stable, one interval at a time, with always-valid bounds: the
state carries running statistics, each call adds the latest interval, and the chance that a
canary as good as stable is *ever* failed, at any of the looks of the whole rollout, is at most
``alpha`` (Ville's inequality: a nonnegative supermartingale starting at 1 exceeds 1/alpha with
probability ≤ alpha, however long it is watched).

- Errors, fail: a mixture likelihood ratio on the rate ratio θ = canary's error rate / stable's
  (Netflix's counting-process test). Given an interval's errors, each came from the canary
  with probability π(θ) = n_c θ / (n_c θ + n_s) — exact, for any weights and any traffic. The
  product over intervals of π(θ)/π(1) per canary error and (1 - π(θ))/(1 - π(1)) per stable
  error is a martingale when θ = 1 (a supermartingale when the canary errs less); its average
  over θ = √2 … 64 (12 values, evenly spaced in log θ) fails the canary when it reaches
  1/alpha_m. Example: 10 % of 50 RPS, canary 5 % errors, stable 0.5 %: each error is the
  canary's with probability 0.53 instead of 0.10, 0.57 nats of evidence per error, 0.48
  errors/s: past 1/alpha_m = 250 (ln 250 = 5.5 nats plus the mixture's cost) in about 25 s.
- Errors, early pass: a ratio says nothing while errors are rare, so the pass is on the
  difference: a confidence sequence for each arm's error rate (a beta-binomial mixture, exact
  for any number of looks), and the canary passes once its upper bound minus stable's lower
  bound is within ``marginPoints * 100 / w`` for the weight w it is about to get: the whole
  service's error rate then grows by at most ``marginPoints``. Bounding a rare rate takes many
  requests (within 1 point of 0.5 %: ~2,000), so the margin is loose where the canary's share,
  and the evidence, are small (10 points to go to 10 %) and tight where they are large (1 point
  to take all the traffic). Errors have no tolerance on the fail side: any proven increase
  fails; between stable and stable + margin lies the indifference zone, as in Wald's SPRT.
- Latency: the difference of mean log-latency (the log of the ratio of geometric means), per
  interval, weighted by inverse variance: S = Σ d_k / v_k, I = Σ 1 / v_k with
  v_k = s_c² / n_c + s_s² / n_s (each arm's variance of ln latency). S is a Brownian motion in
  information time I whatever the weights do (exactly for lognormal latencies of known
  variance; with the variance estimated, asymptotically). The normal-mixture (mSPRT)
  confidence sequence S/I ± sqrt((1 + τ²I)(2 ln(1/alpha_m) + ln(1 + τ²I)) / τ²) / I, with
  τ = 0.2, fails the canary when its lower end is above ln(1 + tolerance) and passes it when
  its upper end is below. Example: sigma 0.45, canary 5 RPS, stable 45 RPS: I grows by 22 per
  second; a 50 % slower canary (ln 1.5 = 0.41) has its lower end at 0.41 - 0.25 > ln 1.1 =
  0.095 after 10 s.
- The SLO itself: whatever stable does, the canary fails once it is shown to breach the SLO
  — the lower end of an always-valid confidence sequence on its error rate above
  ``1 - min``, or on its share of requests slower than ``maxMs`` above ``1 - quantile`` (the
  same beta-binomial sequences as the errors pass). Not shown is not a breach: these two
  only ever fail a canary, they never hold one back.
- Several metrics: alpha is split over the four tests that can fail a canary (Bonferroni,
  with weights): 40 % each to errors and latency against stable, which must be fast, 10 %
  each to errors and latency against the SLO, a safety net for what stable does not show
  (a tenth of alpha costs ln 4 = 1.4 nats more evidence than 40 %: seconds, for a breach
  worth stopping). The union bound holds for the supremum over time as well, so the family
  stays always-valid: P(any test ever falsely fails) ≤ Σ alpha_m = alpha. The errors pass uses two
  sequences, each at alpha_m / 2. Custom metrics are bounds on a value the user's query
  computes, as Flagger's are; they are not tests and are outside this budget.

**Time to first byte** (``slo.ttft``, streamed responses only): when the SLO has it, every
judge holds the canary's TTFT histogram to it exactly as it holds latency (the same tests on
the ``ttft`` metrics), and latency's shares of alpha are split evenly between the two (the
sequential judge's 40 % and 10 % become 20 % and 5 % each), so the family stays within alpha.

A fixed-horizon judge (thresholds, compare) is right at its level only when looked at once; the
rollout state machine acts on their verdicts only at the end of a step.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from policies import rollout

METRIC_ERRORS = "errors"
METRIC_LATENCY = "latency"
METRIC_ERRORS_SLO = "errors-slo"
METRIC_LATENCY_SLO = "latency-slo"
METRIC_TTFT = "ttft"
METRIC_TTFT_SLO = "ttft-slo"
STATISTICAL_METRICS = 2
"""Errors and latency share alpha (Bonferroni); custom metrics are bounds, not tests."""
COMPARISON_SHARE = 0.4
"""Share of alpha for each of the sequential judge's comparisons with stable (errors, latency)."""
SLO_SHARE = 0.1
"""Share of alpha for each of its tests against the SLO (errors, latency); the four shares add
up to 1 (Bonferroni)."""

LOG_FLOOR_S = 1e-6
"""A latency of 0 (a clock's rounding) counts as 1 µs, so its logarithm is finite."""

RATE_RATIOS = tuple(2 ** (k / 2) for k in range(1, 13))
"""The error-rate ratios √2 … 64 the errors test mixes over, evenly in log θ: a ratio below √2
needs thousands of errors to show, and above 64 the test is decided by its first few errors."""

ERROR_RATE_PRIOR = (0.5, 0.5)
"""Beta prior of the error-rate confidence sequences: Jeffreys', which puts its weight at the
ends where error rates live and costs ~½ ln n nats of evidence."""

LATENCY_PRIOR_SD = 0.2
"""τ of the latency mixture, on the log-ratio scale: tuned for effects of ~20 %, the size
between a tolerance of 10 % and the regressions worth stopping fast."""

MIN_VARIANCE_DOF = 10
"""Degrees of freedom an arm's log-latency variance needs before its latencies are weighed."""


def _rate_grid() -> npt.NDArray[np.float64]:
    lower_half = np.geomspace(1e-9, 0.5, 2048)
    return np.concatenate((lower_half, 1 - lower_half[-2::-1]))


RATE_GRID = _rate_grid()
"""Error rates the confidence sequences are evaluated at: 1 % apart in relative terms near 0
and, mirrored, near 1."""
_LOG_RATES = np.log(RATE_GRID)
_LOG_COMPLEMENTS = np.log1p(-RATE_GRID)


class Outcome(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, eq=False)
class Latencies:
    """One arm's latencies in a window, as distinct values (seconds, ascending) with counts."""

    values_s: npt.NDArray[np.float64]
    counts: npt.NDArray[np.int64]
    log_resolution: float = 0.0
    """How far (in ln seconds) a value may sit from the latency it stands for: half the widest
    histogram bucket; 0 for raw samples."""

    @classmethod
    def empty(cls) -> Latencies:
        return cls(np.zeros(0), np.zeros(0, dtype=np.int64))

    @classmethod
    def from_samples(cls, seconds: npt.ArrayLike) -> Latencies:
        values, counts = np.unique(np.asarray(seconds, dtype=np.float64), return_counts=True)
        if values.size and values[0] < 0:
            raise ValueError("latencies must not be negative")
        return cls(values, counts.astype(np.int64))

    @classmethod
    def from_histogram(cls, upper_bounds_s: Sequence[float], counts: Sequence[int]) -> Latencies:
        """The router's histogram: bucket i counts latencies in (bound[i-1], bound[i]], the last
        count is the overflow above the last bound. Each bucket becomes its geometric midpoint
        (the first bucket's lower edge mirrors the second's width), the overflow its bound."""
        bounds = np.asarray(upper_bounds_s, dtype=np.float64)
        weights = np.asarray(counts, dtype=np.int64)
        if bounds.size < 2 or weights.size != bounds.size + 1 or np.any(np.diff(bounds) <= 0):
            raise ValueError("need ≥ 2 increasing bounds and one count per bucket plus overflow")
        if np.any(weights < 0):
            raise ValueError("bucket counts must not be negative")
        lower = np.concatenate(([bounds[0] ** 2 / bounds[1]], bounds[:-1]))
        values = np.concatenate((np.sqrt(lower * bounds), bounds[-1:]))
        kept = weights > 0
        return cls(values[kept], weights[kept], float(np.max(np.log(bounds / lower))) / 2)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def samples(self) -> npt.NDArray[np.float64]:
        return np.repeat(self.values_s, self.counts)

    def log_moments(self) -> tuple[int, float, float]:
        """(count, sum, sum of squares) of ln(seconds)."""
        logs = np.log(np.maximum(self.values_s, LOG_FLOOR_S))
        return self.total, float(np.dot(self.counts, logs)), float(np.dot(self.counts, logs**2))

    def quantile(self, q: float) -> float | None:
        """The smallest latency with at least a fraction q of the window at or below it."""
        n = self.total
        if n == 0:
            return None
        index = int(np.searchsorted(np.cumsum(self.counts), q * n, side="left"))
        return float(self.values_s[min(index, self.values_s.size - 1)])

    def count_above(self, seconds: float) -> int:
        return int(self.counts[self.values_s > seconds].sum())


@dataclass(frozen=True, eq=False)
class ArmWindow:
    """What one revision served in a window."""

    requests: int
    errors: int
    latencies: Latencies = field(default_factory=Latencies.empty)
    """Latencies of the window's requests (errors included); may be fewer than ``requests``
    when not every request was timed."""
    ttft: Latencies = field(default_factory=Latencies.empty)
    """Times to first byte of the window's streamed responses."""

    def __post_init__(self) -> None:
        if not 0 <= self.errors <= self.requests:
            raise ValueError(f"need 0 ≤ errors ≤ requests, got {self.errors} of {self.requests}")


@dataclass(frozen=True, eq=False)
class Window:
    """One analysis window: the canary, stable over the same time, and custom metric values."""

    canary: ArmWindow
    stable: ArmWindow = field(default_factory=lambda: ArmWindow(0, 0))
    custom: Mapping[str, float | None] = field(default_factory=dict)
    """Each custom metric's value by name; missing or None when its query returned nothing."""
    deciding_weight: int = rollout.FULL_WEIGHT
    """The canary weight the verdict decides on (``progression.next_canary_weight``); the
    sequential judge's errors margin is scaled to it."""

    def __post_init__(self) -> None:
        if not 0 < self.deciding_weight <= rollout.FULL_WEIGHT:
            raise ValueError(f"deciding_weight must be in 1..100, got {self.deciding_weight}")


@dataclass(frozen=True)
class Finding:
    """One metric's ruling, with everything that went into it."""

    metric: str
    outcome: Outcome
    reason: str
    """A sentence naming the values, the bounds and the statistic."""
    observed: float | None = None
    """The canary's value, in ``unit``."""
    baseline: float | None = None
    """Stable's value on the same window, in ``unit``, when compared."""
    bound: float | None = None
    """The bound the observed value or effect was held to, in ``unit`` (a difference of
    percentages in points)."""
    unit: str = ""
    statistic: float | None = None
    """The test statistic: errors or slow requests counted, the odds ratio, U, or a z-score
    against the tolerance."""
    p_value: float | None = None
    """Of a fixed-horizon test (thresholds, compare)."""
    likelihood_ratio: float | None = None
    """Of an always-valid test (sequential): its mixture likelihood ratio against stable's error
    rate, or against the latency tolerance; 1/alpha_m is its bound."""
    interval: tuple[float, float] | None = None
    """Always-valid confidence sequence on the effect (sequential), in ``unit``."""
    canary_samples: int = 0
    stable_samples: int = 0


@dataclass(frozen=True)
class Verdict:
    judge: rollout.Judge
    outcome: Outcome
    findings: tuple[Finding, ...]

    @property
    def reason(self) -> str:
        """The findings that decided the outcome, in one line."""
        decisive = [f for f in self.findings if f.outcome is self.outcome] or self.findings
        return "; ".join(f"{f.metric}: {f.reason}" for f in decisive)


# -- thresholds ----------------------------------------------------------------------------------


def thresholds(window: Window, policy: rollout.RolloutPolicy) -> Verdict:
    """The canary against the SLO on one window (a step's, looked at once)."""
    alpha_m = policy.analysis.alpha / _statistical_metrics(policy)
    canary = window.canary
    findings = [
        _success_rate_finding(canary, policy, alpha_m),
        *(_latency_quantile_finding(_timed(canary, metric), slo, policy, alpha_m, metric)
          for metric, slo in _timings(policy)),
        *_custom_findings(window, policy),
    ]
    return _verdict(rollout.Judge.THRESHOLDS, findings)


def _timings(policy: rollout.RolloutPolicy) -> list[tuple[str, rollout.Latency]]:
    """The timing SLOs judged: latency, and ttft when the SLO has it."""
    ttft = policy.slo.ttft
    return [(METRIC_LATENCY, policy.slo.latency),
            *([(METRIC_TTFT, ttft)] if ttft is not None else [])]


def _statistical_metrics(policy: rollout.RolloutPolicy) -> int:
    return STATISTICAL_METRICS + (policy.slo.ttft is not None)


def _timed(arm: ArmWindow, metric: str) -> Latencies:
    return arm.ttft if metric == METRIC_TTFT else arm.latencies


def _success_rate_finding(
    canary: ArmWindow, policy: rollout.RolloutPolicy, alpha_m: float
) -> Finding:
    slo = policy.slo.success_rate
    guard = policy.analysis.min_sample_size
    n, errors = canary.requests, canary.errors
    if n < guard:
        return Finding(METRIC_ERRORS, Outcome.INCONCLUSIVE,
                       f"too little traffic: {n} canary requests < {guard}",
                       bound=slo.minimum, unit="%", canary_samples=n)
    rate = 100 * (1 - errors / n)
    p = float(stats.binom.sf(errors - 1, n, 1 - slo.minimum / 100))
    facts = f"{errors} errors in {n} requests, p = {p:.3g}"
    if p < alpha_m:
        outcome = Outcome.FAIL
        reason = f"success rate {rate:.2f} % < {slo.minimum:g} % ({facts} < {alpha_m:g})"
    elif rate < slo.minimum:
        outcome = Outcome.PASS
        reason = (f"success rate {rate:.2f} % < {slo.minimum:g} % but not significantly "
                  f"({facts} ≥ {alpha_m:g})")
    else:
        outcome = Outcome.PASS
        reason = f"success rate {rate:.2f} % ≥ {slo.minimum:g} % ({facts})"
    return Finding(METRIC_ERRORS, outcome, reason, observed=rate, bound=slo.minimum, unit="%",
                   statistic=float(errors), p_value=p, canary_samples=n)


def _latency_quantile_finding(
    latencies: Latencies, slo: rollout.Latency, policy: rollout.RolloutPolicy, alpha_m: float,
    metric: str = METRIC_LATENCY,
) -> Finding:
    guard = policy.analysis.min_sample_size
    name = f"p{100 * slo.quantile:g}"
    n = latencies.total
    if n < guard:
        return Finding(metric, Outcome.INCONCLUSIVE,
                       f"too little traffic: {n} timed canary requests < {guard}",
                       bound=slo.max_ms, unit="ms", canary_samples=n)
    slow = latencies.count_above(slo.max_ms / 1000)
    observed = 1000 * (latencies.quantile(slo.quantile) or 0.0)
    p = float(stats.binom.sf(slow - 1, n, 1 - slo.quantile))
    facts = f"{slow} of {n} slower than {slo.max_ms:g} ms, p = {p:.3g}"
    if p < alpha_m:
        outcome = Outcome.FAIL
        reason = f"{name} {observed:.1f} ms > {slo.max_ms:g} ms ({facts} < {alpha_m:g})"
    elif observed > slo.max_ms:
        outcome = Outcome.PASS
        reason = (f"{name} {observed:.1f} ms > {slo.max_ms:g} ms but not significantly "
                  f"({facts} ≥ {alpha_m:g})")
    else:
        outcome = Outcome.PASS
        reason = f"{name} {observed:.1f} ms ≤ {slo.max_ms:g} ms ({facts})"
    return Finding(metric, outcome, reason, observed=observed, bound=slo.max_ms,
                   unit="ms", statistic=float(slow), p_value=p, canary_samples=n)


# -- compare -------------------------------------------------------------------------------------


def compare(window: Window, policy: rollout.RolloutPolicy) -> Verdict:
    """The canary against stable on one window (a step's, looked at once), Kayenta-style."""
    alpha_m = policy.analysis.alpha / _statistical_metrics(policy)
    findings = [
        _error_comparison(window, policy, alpha_m),
        *(_latency_comparison(window, slo, policy, alpha_m, metric)
          for metric, slo in _timings(policy)),
        *_custom_findings(window, policy),
    ]
    return _verdict(rollout.Judge.COMPARE, findings)


def _too_little(canary_n: int, stable_n: int, guard: int) -> str | None:
    if canary_n < guard or stable_n < guard:
        return f"too little traffic: canary {canary_n}, stable {stable_n} requests (need {guard})"
    return None


def _error_comparison(window: Window, policy: rollout.RolloutPolicy, alpha_m: float) -> Finding:
    canary, stable = window.canary, window.stable
    short = _too_little(canary.requests, stable.requests, policy.analysis.min_sample_size)
    if short:
        return Finding(METRIC_ERRORS, Outcome.INCONCLUSIVE, short, unit="%",
                       canary_samples=canary.requests, stable_samples=stable.requests)
    table = [[canary.errors, canary.requests - canary.errors],
             [stable.errors, stable.requests - stable.errors]]
    odds_ratio, p = (float(x) for x in stats.fisher_exact(table, alternative="greater"))
    ours, theirs = 100 * canary.errors / canary.requests, 100 * stable.errors / stable.requests
    facts = f"Fisher's exact p = {p:.3g}"
    if p < alpha_m:
        outcome = Outcome.FAIL
        reason = f"error rate {ours:.2f} % > stable's {theirs:.2f} % ({facts} < {alpha_m:g})"
    else:
        outcome = Outcome.PASS
        reason = (f"error rate {ours:.2f} % vs stable's {theirs:.2f} %, not significantly "
                  f"higher ({facts} ≥ {alpha_m:g})")
    return Finding(METRIC_ERRORS, outcome, reason, observed=ours, baseline=theirs, unit="%",
                   statistic=odds_ratio, p_value=p, canary_samples=canary.requests,
                   stable_samples=stable.requests)


def _latency_comparison(window: Window, slo: rollout.Latency, policy: rollout.RolloutPolicy,
                        alpha_m: float, metric: str = METRIC_LATENCY) -> Finding:
    ours, theirs = _timed(window.canary, metric), _timed(window.stable, metric)
    tolerance = slo.tolerance_percent
    bound = 1 + tolerance / 100
    short = _too_little(ours.total, theirs.total, policy.analysis.min_sample_size)
    if short:
        return Finding(metric, Outcome.INCONCLUSIVE, short, bound=bound, unit="x",
                       canary_samples=ours.total, stable_samples=theirs.total)
    shifted = np.log(np.maximum(ours.samples(), LOG_FLOOR_S)) - math.log(bound)
    result = stats.mannwhitneyu(shifted, np.log(np.maximum(theirs.samples(), LOG_FLOOR_S)),
                                alternative="greater", method="asymptotic")
    u, p = float(result.statistic), float(result.pvalue)
    ratio = (ours.quantile(0.5) or 0.0) / max(theirs.quantile(0.5) or 0.0, LOG_FLOOR_S)
    facts = (f"Mann-Whitney U = {u:.0f}, P(canary/{bound:g} slower) = "
             f"{u / (ours.total * theirs.total):.2f}, p = {p:.3g}")
    if p < alpha_m:
        outcome = Outcome.FAIL
        reason = (f"slower than stable by more than {tolerance:g} % (median ratio "
                  f"{ratio:.2f}; {facts} < {alpha_m:g})")
    else:
        outcome = Outcome.PASS
        reason = (f"not slower than stable by more than {tolerance:g} % (median ratio "
                  f"{ratio:.2f}; {facts} ≥ {alpha_m:g})")
    return Finding(metric, outcome, reason, observed=ratio, bound=bound, unit="x",
                   statistic=u, p_value=p, canary_samples=ours.total,
                   stable_samples=theirs.total)


# -- sequential ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmTotals:
    """One arm's running totals over the rollout."""

    requests: int = 0
    errors: int = 0
    timed: int = 0
    """Requests with a latency."""
    log_sum: float = 0.0
    """Σ ln latency (seconds)."""
    log_squares: float = 0.0
    """Σ (ln latency)²."""

    def added(self, window: ArmWindow, moments: tuple[int, float, float]) -> ArmTotals:
        timed, log_sum, log_squares = moments
        return ArmTotals(self.requests + window.requests, self.errors + window.errors,
                         self.timed + timed, self.log_sum + log_sum,
                         self.log_squares + log_squares)

    @property
    def log_variance(self) -> float | None:
        """Variance of ln latency over the whole rollout. It includes any drift over time, which
        the per-interval differences cancel, so it can only overstate the variance of a
        difference: the bounds get wider, never invalid. Pooling across intervals is also what
        lets a canary with one request per interval be judged at all."""
        if self.timed <= MIN_VARIANCE_DOF:
            return None
        return max(self.log_squares - self.log_sum**2 / self.timed, 0.0) / (self.timed - 1)


@dataclass(frozen=True)
class TimingEvidence:
    """The sequential judge's running statistics for time to first byte, as SequentialState
    keeps them for latency (its arms count no requests, only timed streams)."""

    canary: ArmTotals = ArmTotals()
    stable: ArmTotals = ArmTotals()
    score: float = 0.0
    information: float = 0.0
    canary_slow: int = 0
    """Canary streams slower to their first byte than the SLO's ``maxMs``."""


@dataclass(frozen=True)
class SequentialState:
    """The running statistics of the sequential judge; start with ``SequentialState()``."""

    error_log_lrs: tuple[float, ...] = (0.0,) * len(RATE_RATIOS)
    """ln of the errors likelihood ratio at each of RATE_RATIOS against a ratio of 1."""
    canary: ArmTotals = ArmTotals()
    stable: ArmTotals = ArmTotals()
    latency_score: float = 0.0
    """S: Σ over intervals of the log-latency difference over its variance."""
    latency_information: float = 0.0
    """I: Σ over intervals of 1 / variance of the log-latency difference."""
    canary_slow: int = 0
    """Canary requests slower than the SLO's ``maxMs``."""
    log_resolution: float = 0.0
    """The widest rounding of a latency seen on either arm (``Latencies.log_resolution``)."""
    ttft: TimingEvidence = TimingEvidence()
    """The same for time to first byte, when the SLO judges it."""


def _timing_added(canary: ArmTotals, stable: ArmTotals, score: float, information: float,
                  ours: ArmWindow, theirs: ArmWindow, metric: str
                  ) -> tuple[ArmTotals, ArmTotals, float, float]:
    """One interval's timings (``metric``'s) added to the arms' totals and to S and I."""
    ours_timed, theirs_timed = _timed(ours, metric), _timed(theirs, metric)
    ours_moments, theirs_moments = ours_timed.log_moments(), theirs_timed.log_moments()
    counted_ours, counted_theirs = (ours, theirs) if metric == METRIC_LATENCY else (
        ArmWindow(0, 0), ArmWindow(0, 0))
    canary = canary.added(counted_ours, ours_moments)
    stable = stable.added(counted_theirs, theirs_moments)
    ours_n, ours_sum, _ = ours_moments
    theirs_n, theirs_sum, _ = theirs_moments
    ours_var, theirs_var = canary.log_variance, stable.log_variance
    if ours_n and theirs_n and ours_var is not None and theirs_var is not None:
        variance = max(ours_var / ours_n + theirs_var / theirs_n, 1e-12)
        score += (ours_sum / ours_n - theirs_sum / theirs_n) / variance
        information += 1 / variance
    return canary, stable, score, information


def sequential(
    window: Window, state: SequentialState, policy: rollout.RolloutPolicy
) -> tuple[Verdict, SequentialState]:
    """Add the latest interval (``window`` holds only what happened since the previous call)
    to the running statistics and judge everything seen so far."""
    ours, theirs = window.canary, window.stable
    log_lrs = _error_log_lrs(state.error_log_lrs, ours, theirs)
    canary, stable, score, information = _timing_added(
        state.canary, state.stable, state.latency_score, state.latency_information, ours,
        theirs, METRIC_LATENCY)
    slow = state.canary_slow + ours.latencies.count_above(policy.slo.latency.max_ms / 1000)
    resolution = max(state.log_resolution, ours.latencies.log_resolution,
                     theirs.latencies.log_resolution)
    ttft, ttft_slo = state.ttft, policy.slo.ttft
    if ttft_slo is not None:
        ttft = TimingEvidence(*_timing_added(ttft.canary, ttft.stable, ttft.score,
                                             ttft.information, ours, theirs, METRIC_TTFT),
                              ttft.canary_slow + ours.ttft.count_above(ttft_slo.max_ms / 1000))
        resolution = max(resolution, ours.ttft.log_resolution, theirs.ttft.log_resolution)
    new_state = SequentialState(log_lrs, canary, stable, score, information, slow, resolution,
                                ttft)

    alpha, timings = policy.analysis.alpha, _timings(policy)
    compared, held = alpha * COMPARISON_SHARE, alpha * SLO_SHARE
    timing_evidence = {METRIC_LATENCY: (score, information), METRIC_TTFT: (ttft.score,
                                                                          ttft.information)}
    findings = [
        _sequential_errors(new_state, policy, compared, window.deciding_weight),
        *(_sequential_latency(new_state, slo, compared / len(timings), metric,
                              *timing_evidence[metric]) for metric, slo in timings),
        *_sequential_slo(new_state, policy, held, held / len(timings)),
        *_custom_findings(window, policy),
    ]
    return _verdict(rollout.Judge.SEQUENTIAL, findings), new_state


def _error_log_lrs(
    log_lrs: tuple[float, ...], canary: ArmWindow, stable: ArmWindow
) -> tuple[float, ...]:
    """Add one interval's errors to ln LR(θ) for every θ in RATE_RATIOS."""
    if canary.requests == 0 or stable.requests == 0 or canary.errors + stable.errors == 0:
        return log_lrs
    theta = np.asarray(RATE_RATIOS)
    share = canary.requests / (canary.requests + stable.requests)
    shares = canary.requests * theta / (canary.requests * theta + stable.requests)
    added = (canary.errors * np.log(shares / share)
             + stable.errors * np.log((1 - shares) / (1 - share)))
    return tuple((np.asarray(log_lrs) + added).tolist())


def _sequential_errors(state: SequentialState, policy: rollout.RolloutPolicy, alpha_m: float,
                       deciding_weight: int) -> Finding:
    canary, stable = state.canary, state.stable
    margin = policy.slo.success_rate.margin_points * rollout.FULL_WEIGHT / deciding_weight
    if canary.requests == 0 or stable.requests == 0:
        return Finding(METRIC_ERRORS, Outcome.INCONCLUSIVE, "no traffic on both arms yet",
                       bound=margin, unit="%", canary_samples=canary.requests,
                       stable_samples=stable.requests)
    top = max(state.error_log_lrs)
    log_lr = top + math.log(sum(math.exp(x - top) for x in state.error_log_lrs) / len(RATE_RATIOS))
    likelihood_ratio = math.exp(min(log_lr, 700.0))
    ours_low, ours_high = _rate_bounds(canary.errors, canary.requests, alpha_m / 2)
    theirs_low, theirs_high = _rate_bounds(stable.errors, stable.requests, alpha_m / 2)
    interval = (100 * (ours_low - theirs_high), 100 * (ours_high - theirs_low))
    ours = 100 * canary.errors / canary.requests
    theirs = 100 * stable.errors / stable.requests
    rates = f"{ours:.2f} % vs stable's {theirs:.2f} %"
    evidence = f"likelihood ratio {likelihood_ratio:.3g}"
    excess = f"excess within [{interval[0]:+.2f}, {interval[1]:+.2f}] points"
    if log_lr >= math.log(1 / alpha_m):
        best = RATE_RATIOS[int(np.argmax(state.error_log_lrs))]
        outcome = Outcome.FAIL
        reason = (f"error rate {rates}: higher ({evidence} ≥ {1 / alpha_m:g}, "
                  f"likeliest ratio {best:.1f}x)")
    elif interval[1] <= margin:
        outcome = Outcome.PASS
        reason = f"error rate {rates}: {excess} ≤ margin {margin:.3g} at {deciding_weight} %"
    else:
        outcome = Outcome.INCONCLUSIVE
        reason = (f"error rate {rates}: {evidence} < {1 / alpha_m:g}; {excess}, margin "
                  f"{margin:.3g} at {deciding_weight} %")
    return Finding(METRIC_ERRORS, outcome, reason, observed=ours, baseline=theirs, bound=margin,
                   unit="%", likelihood_ratio=likelihood_ratio, interval=interval,
                   canary_samples=canary.requests, stable_samples=stable.requests)


def _sequential_latency(state: SequentialState, slo: rollout.Latency, alpha_m: float,
                        metric: str, score: float, information: float) -> Finding:
    tolerance = slo.tolerance_percent
    bound = 1 + tolerance / 100
    if information <= 0:
        return Finding(metric, Outcome.INCONCLUSIVE,
                       f"too few timed requests yet (each arm needs {MIN_VARIANCE_DOF + 1})",
                       bound=bound, unit="x", canary_samples=state.canary.requests,
                       stable_samples=state.stable.requests)
    estimate = score / information
    spread = LATENCY_PRIOR_SD**2 * information
    half = math.sqrt((1 + spread) * (2 * math.log(1 / alpha_m) + math.log1p(spread))) / (
        LATENCY_PRIOR_SD * information)
    low, high = math.exp(estimate - half), math.exp(estimate + half)
    edge = math.log(bound)
    z = (estimate - edge) * math.sqrt(information)
    log_lr = (LATENCY_PRIOR_SD**2 * (score - edge * information) ** 2
              / (2 * (1 + spread)) - 0.5 * math.log1p(spread))
    ratio = math.exp(estimate)
    facts = f"ratio {ratio:.3f} within [{low:.3f}, {high:.3f}]"
    # Each arm's mean may be off by its rounding; together by twice that, which the interval,
    # made for sampling noise alone, does not cover when latencies hardly vary.
    if estimate - half > edge + 2 * state.log_resolution:
        outcome = Outcome.FAIL
        rounding = (f" x {math.exp(2 * state.log_resolution):.3f} for histogram rounding"
                    if state.log_resolution else "")
        reason = (f"slower than stable by more than {tolerance:g} % ({facts} > {bound:g}"
                  f"{rounding})")
    elif estimate + half <= edge:
        outcome = Outcome.PASS
        reason = f"within {tolerance:g} % of stable ({facts} ≤ {bound:g})"
    else:
        outcome = Outcome.INCONCLUSIVE
        reason = f"not yet known to be within {tolerance:g} % of stable ({facts} ∋ {bound:g})"
    return Finding(metric, outcome, reason, observed=ratio, bound=bound, unit="x",
                   statistic=z, likelihood_ratio=math.exp(min(log_lr, 700.0)),
                   interval=(low, high), canary_samples=state.canary.requests,
                   stable_samples=state.stable.requests)


def _sequential_slo(state: SequentialState, policy: rollout.RolloutPolicy,
                    alpha_m: float, timing_alpha_m: float) -> list[Finding]:
    """The canary's error rate and slow share against the SLO's allowances: fail once the lower
    end of their confidence sequence is above the allowance; otherwise pass (not shown to
    breach), so that these never hold a canary back, and a canary without traffic is judged
    by the comparisons, which say inconclusive."""
    canary = state.canary
    success, latency = policy.slo.success_rate, policy.slo.latency
    quantile = f"p{100 * latency.quantile:g}"
    checks = [
        (METRIC_ERRORS_SLO, canary.errors, canary.requests, 1 - success.minimum / 100,
         f"success rate ≥ {success.minimum:g} %", "errors", alpha_m),
        (METRIC_LATENCY_SLO, state.canary_slow, canary.timed, 1 - latency.quantile,
         f"{quantile} ≤ {latency.max_ms:g} ms", f"slower than {latency.max_ms:g} ms",
         timing_alpha_m),
    ]
    ttft = policy.slo.ttft
    if ttft is not None:
        checks.append((METRIC_TTFT_SLO, state.ttft.canary_slow, state.ttft.canary.timed,
                       1 - ttft.quantile, f"TTFT p{100 * ttft.quantile:g} ≤ {ttft.max_ms:g} ms",
                       f"slower to a first byte than {ttft.max_ms:g} ms", timing_alpha_m))
    findings = []
    for metric, count, total, allowed, slo, what, alpha in checks:
        if total == 0:
            findings.append(Finding(metric, Outcome.PASS, f"{slo}: no requests yet", unit="%",
                                    bound=100 * allowed))
            continue
        low, high = _rate_bounds(count, total, alpha)
        facts = (f"{count} of {total} {what}, {100 * count / total:.2f} % within "
                 f"[{100 * low:.2f}, {100 * high:.2f}] %")
        breached = low > allowed
        reason = (f"{slo} breached: {facts} > {100 * allowed:g} %" if breached
                  else f"{slo} not shown breached: {facts}")
        findings.append(Finding(
            metric, Outcome.FAIL if breached else Outcome.PASS, reason,
            observed=100 * count / total, bound=100 * allowed, unit="%", statistic=float(count),
            interval=(100 * low, 100 * high), canary_samples=total))
    return findings


def _rate_bounds(errors: int, requests: int, alpha: float) -> tuple[float, float]:
    """Always-valid bounds on an error rate from ``errors`` in ``requests`` (any number of
    looks): the rates p whose beta-binomial mixture likelihood ratio against the data stays
    below 1/alpha. The ratio is convex in p (its minimum, ≤ 1, at errors/requests), so these
    rates form an interval; it is read off RATE_GRID and widened to the grid points just
    outside it, which keeps the bounds valid at ~1 % relative resolution."""
    a, b = ERROR_RATE_PRIOR
    mixture = special.betaln(a + errors, b + requests - errors) - special.betaln(a, b)
    log_ratios = mixture - errors * _LOG_RATES - (requests - errors) * _LOG_COMPLEMENTS
    inside = np.flatnonzero(log_ratios < math.log(1 / alpha))
    if inside.size == 0:  # narrower than the grid's spacing (millions of errors): bracket the
        inside = np.array([int(np.argmin(log_ratios))])  # likeliest grid rate
    first, last = int(inside[0]), int(inside[-1])
    low = float(RATE_GRID[first - 1]) if first > 0 else 0.0
    high = float(RATE_GRID[last + 1]) if last + 1 < RATE_GRID.size else 1.0
    return low, high


# -- shared --------------------------------------------------------------------------------------


def _custom_findings(window: Window, policy: rollout.RolloutPolicy) -> list[Finding]:
    findings = []
    for metric in policy.slo.custom:
        name, low, high = metric.name, metric.minimum, metric.maximum
        value = window.custom.get(name)
        if value is None or math.isnan(value):
            findings.append(Finding(name, Outcome.INCONCLUSIVE, "no value (the query returned "
                                    "nothing)"))
        elif low is not None and value < low:
            findings.append(Finding(name, Outcome.FAIL, f"{value:g} < min {low:g}",
                                    observed=value, bound=low))
        elif high is not None and value > high:
            findings.append(Finding(name, Outcome.FAIL, f"{value:g} > max {high:g}",
                                    observed=value, bound=high))
        else:
            findings.append(Finding(name, Outcome.PASS, f"{value:g} within bounds",
                                    observed=value))
    return findings


def _verdict(judge: rollout.Judge, findings: Sequence[Finding]) -> Verdict:
    outcomes = {f.outcome for f in findings}
    if Outcome.FAIL in outcomes:
        outcome = Outcome.FAIL
    elif outcomes == {Outcome.PASS}:
        outcome = Outcome.PASS
    else:
        outcome = Outcome.INCONCLUSIVE
    return Verdict(judge, outcome, tuple(findings))
