"""Judge a run against its scenario's expectations: each result states what was observed, the
bound it was held to, and a sentence a person reads in CI, as the rollout judges' findings do.

Pure: `judge(run)` reads a record.Run and returns one `Result` per bound. An expectation that
cannot be judged (no requests in its window, no replica ever observed, no policy known) is
``unknown``, which fails the run as a failed one does: a gate that could not look must not pass.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass

from loadtests import latency, record, scenario

TERMINAL_PHASES = ("Promoted", "RolledBack", "Failed")


class Outcome(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Result:
    expectation: str
    """The expectation as the file has it, with where it looked: ``latency (step, after 10
    s)``."""
    outcome: Outcome
    observed: float | str | None
    bound: str
    """The bound with its comparison and unit, e.g. ``<= 250 ms``."""
    unit: str
    reason: str
    """One sentence naming the observed value and the bound."""

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASS


def judge(run: record.Run) -> list[Result]:
    return [result for expectation in run.scenario.expectations
            for result in _judged(run, expectation.spec)]


def passed(results: list[Result]) -> bool:
    return all(result.passed for result in results)


def _judged(run: record.Run, spec: object) -> list[Result]:
    match spec:
        case scenario.Errors():
            return _errors(run, spec)
        case scenario.Latency():
            return _latency(run, spec)
        case scenario.Answered():
            return _answered(run, spec)
        case scenario.FirstResponse():
            return _first_response(run, spec)
        case scenario.ReadyReplicas():
            return _ready_replicas(run, spec)
        case scenario.DesiredReplicas():
            return _desired_replicas(run, spec)
        case scenario.ScaleEvents():
            return _scale_events(run, spec)
        case scenario.RolloutOutcome():
            return _rollout(run, spec)
    raise TypeError(f"no judge for {type(spec).__name__}")


# -- one function per kind -----------------------------------------------------------------------


def _where(phase: str | None, after_seconds: float = 0.0) -> str:
    place = f"phase {phase}" if phase else "the whole run"
    return f"{place}, after its first {after_seconds:g} s" if after_seconds else place


def _why(seconds: list[record.Second]) -> str:
    """The failures' reasons, most frequent first: "503: 2, ConnectionResetError: 1"; empty
    when none failed (or the record predates reasons)."""
    counts: collections.Counter[str] = collections.Counter()
    for second in seconds:
        counts.update(second.failures)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{reason}: {n}" for reason, n in ranked)


def _errors(run: record.Run, spec: scenario.Errors) -> list[Result]:
    start, end = run.window(spec.phase, spec.after_seconds)
    seconds = run.client.between(start, end)
    failed = sum(s.failed for s in seconds)
    why = _why(seconds)
    answered = sum(s.answered for s in seconds)
    where = _where(spec.phase, spec.after_seconds)
    name = f"errors ({where})"
    if answered == 0:
        return [Result(name, Outcome.UNKNOWN, None, "", "", f"errors: no request was answered "
                       f"in {where}, so there is nothing to judge")]
    results = []
    if spec.max_percent is not None:
        percent = 100 * failed / answered
        outcome = Outcome.PASS if percent <= spec.max_percent else Outcome.FAIL
        results.append(Result(
            name, outcome, round(percent, 3), f"<= {spec.max_percent:g} %", "%",
            f"errors in {where}: {percent:.2f} % ({failed} of {answered} requests failed"
            f"{'; ' + why if why else ''}); bound <= {spec.max_percent:g} %"))
    if spec.max_count is not None:
        outcome = Outcome.PASS if failed <= spec.max_count else Outcome.FAIL
        results.append(Result(
            name, outcome, failed, f"<= {spec.max_count}", "requests",
            f"errors in {where}: {failed} of {answered} requests failed"
            f"{f' ({why})' if why else ''}; bound <= "
            f"{spec.max_count}"))
    return results


def _latency(run: record.Run, spec: scenario.Latency) -> list[Result]:
    start, end = run.window(spec.phase, spec.after_seconds)
    seconds = run.client.between(start, end)
    histogram = latency.merged(s.latency for s in seconds)
    label = f"p{spec.quantile * 100:g}"
    where = _where(spec.phase, spec.after_seconds)
    name = f"latency {label} ({where})"
    observed = latency.quantile(histogram, spec.quantile)
    if observed is None:
        return [Result(name, Outcome.UNKNOWN, None, f"<= {spec.max_ms:g} ms", "ms",
                       f"latency {label}: no request was answered in {where}")]
    outcome = Outcome.PASS if observed <= spec.max_ms else Outcome.FAIL
    return [Result(name, outcome, round(observed, 1), f"<= {spec.max_ms:g} ms", "ms",
                   f"latency {label} in {where}: {observed:.1f} ms over "
                   f"{sum(histogram.values())} requests; bound <= {spec.max_ms:g} ms")]


def _answered(run: record.Run, spec: scenario.Answered) -> list[Result]:
    client = run.client
    sent = sum(s.sent for s in client.seconds)
    ok = sum(s.ok for s in client.seconds)
    failed = sum(s.failed for s in client.seconds)
    name = "answered (the whole run)"
    if sent == 0:
        return [Result(name, Outcome.UNKNOWN, None, "", "requests",
                       "answered: no request was sent")]
    problems = []
    if ok != sent:
        why = _why(list(client.seconds))
        problems.append(f"{ok} of {sent} requests sent were answered with a 2xx ({failed} "
                        f"failed, {sent - ok - failed} never answered"
                        f"{f'; failed: {why}' if why else ''})")
    routed = run.router_totals()
    if routed is not None and routed[0] != sent:
        problems.append(f"the router answered {routed[0]} requests, the client sent {sent}")
    counted = (f"; the router counted {routed[0]}" if routed is not None
               else "; the router's counts were not observed")
    if problems:
        return [Result(name, Outcome.FAIL, ok, f"== {sent} (sent)", "requests",
                       "answered: " + "; ".join(problems))]
    return [Result(name, Outcome.PASS, ok, f"== {sent} (sent)", "requests",
                   f"answered: all {sent} requests sent were answered with a 2xx{counted}")]


def _revision(run: record.Run, revision: str | None) -> str:
    return revision or run.scenario.revision


def _first_ready(run: record.Run, revision: str) -> float | None:
    return next((t for t, state in run.states(revision) if (state.ready or 0) >= 1), None)


def _first_response(run: record.Run, spec: scenario.FirstResponse) -> list[Result]:
    revision = _revision(run, spec.revision)
    client = run.client
    margin = spec.within_cold_start_plus_seconds
    name = f"firstResponse ({revision})"
    bound_text = f"<= cold start + {margin:g} s"
    if client.first_sent_at is None or client.first_ok_at is None:
        return [Result(name, Outcome.FAIL if client.first_sent_at else Outcome.UNKNOWN, None,
                       bound_text, "s", "firstResponse: no request was answered with a 2xx")]
    first_sent = run.t(client.first_sent_at)
    ready = _first_ready(run, revision)
    if ready is None:
        return [Result(name, Outcome.UNKNOWN, None, bound_text, "s",
                       f"firstResponse: no ready replica of {revision} was observed, so its "
                       "cold start is unknown")]
    cold_start = max(0.0, ready - first_sent)
    observed = run.t(client.first_ok_at) - first_sent
    bound = cold_start + margin
    outcome = Outcome.PASS if observed <= bound else Outcome.FAIL
    return [Result(name, outcome, round(observed, 2), f"<= {bound:.2f} s", "s",
                   f"firstResponse: the first answer came {observed:.2f} s after the first "
                   f"request; bound <= {bound:.2f} s ({revision}'s first replica was seen "
                   f"ready {cold_start:.2f} s after it, + {margin:g} s)")]


def _needed(run: record.Run, spec: scenario.ReadyReplicas, revision: str,
            start: float, end: float) -> tuple[int | None, str]:
    """The replica count to reach, and how it was arrived at."""
    if isinstance(spec.at_least, int):
        return spec.at_least, "the scenario's count"
    policy = run.policies.get(revision)
    if policy is None:
        return None, f"no ScalingPolicy is known for {revision}"
    phase = next(p for p in run.scenario.phases if p.name == spec.phase)
    rps = phase.users * run.scenario.users.rps_per_user
    histogram = latency.merged(s.latency for s in run.client.between(start, end))
    mean_ms = latency.mean_ms(histogram)
    needed = scenario.policy_replicas(policy, rps, None if mean_ms is None else mean_ms / 1000)
    if needed is None:
        return None, (f"the policy's count for metric {policy.metric} cannot be derived from "
                      "the load; give atLeast as a number")
    aim = f"{policy.target_per_replica:g} x {policy.target_utilization:g}"
    if policy.metric_kind.value == "rps":
        how = f"the policy: ceil({rps:g} rps / ({aim}))"
    else:
        how = f"the policy: ceil({rps:g} rps x {mean_ms:.1f} ms / ({aim}))"
    if policy.min_replicas and needed == policy.min_replicas:
        how += f", at least minReplicas {policy.min_replicas}"
    return needed, how


def _ready_replicas(run: record.Run, spec: scenario.ReadyReplicas) -> list[Result]:
    revision = _revision(run, spec.revision)
    start, end = run.window(spec.phase)
    deadline = start + spec.within_seconds
    name = f"readyReplicas ({revision}, phase {spec.phase})"
    needed, how = _needed(run, spec, revision, start, end)
    if needed is None:
        return [Result(name, Outcome.UNKNOWN, None, "", "replicas",
                       f"readyReplicas of {revision}: {how}")]
    bound = f">= {needed} within {spec.within_seconds:g} s"
    states = [(t, s.ready) for t, s in run.states(revision)
              if start <= t <= deadline and s.ready is not None]
    if not states:
        return [Result(name, Outcome.UNKNOWN, None, bound, "replicas",
                       f"readyReplicas of {revision}: no observation of its replicas within "
                       f"{spec.within_seconds:g} s of phase {spec.phase}'s start")]
    reached = next((t for t, ready in states if ready >= needed), None)
    most = max(ready for _, ready in states)
    if reached is not None:
        return [Result(name, Outcome.PASS, most, bound, "replicas",
                       f"readyReplicas of {revision}: {needed} ready {reached - start:.1f} s "
                       f"into phase {spec.phase}; bound >= {needed} ({how}) within "
                       f"{spec.within_seconds:g} s")]
    return [Result(name, Outcome.FAIL, most, bound, "replicas",
                   f"readyReplicas of {revision}: at most {most} ready within "
                   f"{spec.within_seconds:g} s of phase {spec.phase}'s start; bound >= {needed} "
                   f"({how})")]


def _desired_replicas(run: record.Run, spec: scenario.DesiredReplicas) -> list[Result]:
    revision = _revision(run, spec.revision)
    start, end = run.window(spec.phase, spec.after_seconds)
    where = _where(spec.phase, spec.after_seconds)
    name = f"desiredReplicas ({revision}, {where})"
    desired = [s.desired for t, s in run.states(revision)
               if start <= t < end and s.desired is not None]
    if not desired:
        return [Result(name, Outcome.UNKNOWN, None, f"<= {spec.at_most}", "replicas",
                       f"desiredReplicas of {revision}: never observed in {where}")]
    most = max(desired)
    outcome = Outcome.PASS if most <= spec.at_most else Outcome.FAIL
    return [Result(name, outcome, most, f"<= {spec.at_most}", "replicas",
                   f"desiredReplicas of {revision} in {where}: at most {most} asked for; bound "
                   f"<= {spec.at_most}")]


def _scale_events(run: record.Run, spec: scenario.ScaleEvents) -> list[Result]:
    revision = _revision(run, spec.revision)
    start, end = run.window(spec.phase, spec.after_seconds)
    where = _where(spec.phase, spec.after_seconds)
    name = f"scaleEvents ({revision}, {where})"
    if not any(start <= t < end for t, _ in run.states(revision)):
        return [Result(name, Outcome.UNKNOWN, None, f"<= {spec.max}", "changes",
                       f"scaleEvents of {revision}: never observed in {where}")]
    changes = [c for c in run.scale_changes(revision) if start <= c.t < end]
    outcome = Outcome.PASS if len(changes) <= spec.max else Outcome.FAIL
    listed = ", ".join(str(change) for change in changes[:5])
    more = f" and {len(changes) - 5} more" if len(changes) > 5 else ""
    detail = f" ({listed}{more})" if changes else ""
    return [Result(name, outcome, len(changes), f"<= {spec.max}", "changes",
                   f"scaleEvents of {revision} in {where}: the replicas asked for changed "
                   f"{len(changes)} times{detail}; bound <= {spec.max}")]


def _rollout(run: record.Run, spec: scenario.RolloutOutcome) -> list[Result]:
    name = f"rollout (expected {spec.phase})"
    bound = f"{spec.phase} within {spec.within_seconds:g} s"
    if run.rollout_started_at is None:
        return [Result(name, Outcome.UNKNOWN, None, bound, "", "rollout: it was never started")]
    started = run.t(run.rollout_started_at)
    seen = [(run.t(s.at), s.rollout) for s in run.samples
            if s.rollout is not None and s.at >= run.rollout_started_at]
    ended = next(((t, state) for t, state in seen if state.phase in TERMINAL_PHASES), None)
    results = []
    if ended is None:
        last = seen[-1][1] if seen else None
        where = (f"still {last.phase} at step {last.step}/{last.steps} ({last.reason})"
                 if last else "never observed")
        results.append(Result(name, Outcome.FAIL, last.phase if last else None, bound, "",
                              f"rollout: expected {spec.phase} within {spec.within_seconds:g} "
                              f"s; observed {where} when the run ended "
                              f"{run.end - started:.1f} s after its start"))
    else:
        t, state = ended
        took = t - started
        ok = state.phase == spec.phase and took <= spec.within_seconds
        results.append(Result(name, Outcome.PASS if ok else Outcome.FAIL, state.phase, bound, "",
                              f"rollout: expected {spec.phase} within {spec.within_seconds:g} "
                              f"s; observed {state.phase} {took:.1f} s after the start "
                              f"({state.reason})"))
    if spec.max_errors is not None:
        seconds = run.client.between(started, float("inf"))
        failed = sum(s.failed for s in seconds)
        outcome = Outcome.PASS if failed <= spec.max_errors else Outcome.FAIL
        why = _why(seconds)
        results.append(Result(f"rollout errors (expected {spec.phase})", outcome, failed,
                              f"<= {spec.max_errors}",
                              "requests", f"rollout errors: {failed} requests failed"
                              f"{f' ({why})' if why else ''} from the rollout's start to the "
                              f"end of the run; bound <= {spec.max_errors}"))
    return results
