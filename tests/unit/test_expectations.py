"""The loadtest judge (loadtests/expectations.py) on made-up runs: table-driven, instant.

Covered: every kind of expectation passing, failing and unknown, with the observed value, the
bound and a reason naming both; windows (phases, afterSeconds) deciding what counts; the
policy's count behind ``atLeast: policy``; an unknown result failing the run. The records come
from the locustfile's timeline format (record.Client.from_summary), so that format is covered
too.
"""

from __future__ import annotations

import pytest

from loadtests import expectations, latency, observe, record, scenario
from loadtests.expectations import Outcome
from policies import scaling

T0 = 1_000_000.0
RPS_POLICY = scaling.load_policy({"metric": "rps", "target": 10, "targetUtilization": 0.8,
                                  "maxReplicas": 2})


def second(t: int, ok: int = 10, failed: int = 0, ms: float = 20.0, revision: str = "v1",
           sent: int | None = None, failures: dict[str, int] | None = None) -> dict:
    row = {"t": t, "sent": ok + failed if sent is None else sent, "ok": ok, "failed": failed,
           "revisions": {revision: [ok, failed]},
           "latency": {str(latency.bucket(ms)): ok + failed}}
    return {**row, "failures": failures} if failures else row


def client(seconds: list[dict], first_sent: float | None = 0.0,
           first_ok: float | None = 0.1) -> record.Client:
    return record.Client.from_summary({"timeline": {
        "started_at": T0, "seconds": seconds,
        "first_sent_at": None if first_sent is None else T0 + first_sent,
        "first_ok_at": None if first_ok is None else T0 + first_ok}})


def state(desired: int | None, ready: int | None = None) -> observe.RevisionState:
    return observe.RevisionState(desired=desired, ready=desired if ready is None else ready,
                                 starting=0)


def sample(t: float, v1: observe.RevisionState | None = None,
           router: int | None = None, rollout: str | None = None) -> observe.Sample:
    return observe.Sample(
        at=T0 + t, revisions={"v1": v1} if v1 else {},
        router=None if router is None else {"v1": observe.RouterCounts(router, 0, 0)},
        rollout=None if rollout is None else observe.RolloutState(rollout, 1, 3, 20, "why"))


def run(expectation: dict, seconds: list[dict], samples: list[observe.Sample] = (),
        phases: list[dict] | None = None, rollout_at: float | None = None,
        **client_args) -> record.Run:
    document = {
        "name": "test",
        "phases": phases or [{"name": "idle", "seconds": 5, "users": 0},
                             {"name": "step", "seconds": 20, "users": 30}],
        "users": {"rpsPerUser": 1.5},
        "expectations": [expectation],
    }
    if rollout_at is not None:
        document["rollout"] = {"startAtSeconds": 1, "policy": {
            "service": "model", "stableRevision": "v1", "canaryRevision": "v2"}}
    return record.Run(scenario=scenario.parse(document), client=client(seconds, **client_args),
                      samples=tuple(samples), policies={"v1": RPS_POLICY},
                      rollout_started_at=None if rollout_at is None else T0 + rollout_at)


def judged(a_run: record.Run) -> list[expectations.Result]:
    return expectations.judge(a_run)


def steady(n: int, **kwargs) -> list[dict]:
    return [second(t, **kwargs) for t in range(n)]


def test_errors_within_their_bound_pass():
    [result] = judged(run({"errors": {"maxPercent": 1}}, steady(25)))
    assert (result.outcome, result.observed, result.bound) == (Outcome.PASS, 0.0, "<= 1 %")
    assert result.reason == ("errors in the whole run: 0.00 % (0 of 250 requests failed); "
                             "bound <= 1 %")


def test_errors_over_their_bound_fail_naming_both():
    seconds = [*steady(20), second(20, ok=5, failed=5)]
    percent, count = judged(run({"errors": {"maxPercent": 1, "maxCount": 3}}, seconds))
    assert (percent.outcome, percent.observed) == (Outcome.FAIL, pytest.approx(2.381, abs=1e-3))
    assert "2.38 % (5 of 210 requests failed); bound <= 1 %" in percent.reason
    assert (count.outcome, count.observed, count.bound) == (Outcome.FAIL, 5, "<= 3")


def test_errors_name_why_the_requests_failed_most_frequent_first():
    seconds = [*steady(20),
               second(20, ok=5, failed=3, failures={"503": 2, "ConnectionResetError": 1}),
               second(21, ok=5, failed=2, failures={"ConnectionResetError": 2})]
    percent, count = judged(run({"errors": {"maxPercent": 1, "maxCount": 3}}, seconds))
    assert "(5 of 215 requests failed; ConnectionResetError: 3, 503: 2); bound" in percent.reason
    assert "5 of 215 requests failed (ConnectionResetError: 3, 503: 2); bound <= 3" in count.reason


def test_errors_outside_the_window_do_not_count():
    seconds = [second(t, failed=3) for t in range(5)] + [second(t) for t in range(5, 25)]
    [result] = judged(run({"errors": {"phase": "step", "maxCount": 0}}, seconds))
    assert result.outcome is Outcome.PASS
    assert result.reason.startswith("errors in phase step: 0 of 200")


def test_errors_with_no_request_in_the_window_are_unknown_and_fail_the_run():
    results = judged(run({"errors": {"phase": "step", "maxCount": 0}}, steady(5)))
    assert [r.outcome for r in results] == [Outcome.UNKNOWN]
    assert not expectations.passed(results)


@pytest.mark.parametrize(("after", "outcome", "observed"), [
    pytest.param(0, Outcome.FAIL, 1500, id="cold-start-seconds-count"),
    pytest.param(3, Outcome.PASS, 20, id="settled-window"),
])
def test_latency_quantile_over_its_window(after, outcome, observed):
    seconds = ([second(t, ms=1500) for t in range(5, 7)]
               + [second(t, ms=20) for t in range(7, 25)])
    [result] = judged(run({"latency": {"phase": "step", "afterSeconds": after, "maxMs": 250}},
                          seconds))
    assert result.outcome is outcome
    assert result.observed == pytest.approx(observed, rel=0.05)  # the histogram's resolution
    assert result.bound == "<= 250 ms"
    assert f"{result.observed:.1f} ms" in result.reason and "bound <= 250 ms" in result.reason


@pytest.mark.parametrize(("seconds", "routed", "outcome", "reason"), [
    pytest.param(steady(3), 30, Outcome.PASS,
                 "all 30 requests sent were answered with a 2xx; the router counted 30",
                 id="all-answered-once"),
    pytest.param(steady(3), None, Outcome.PASS, "the router's counts were not observed",
                 id="no-router-counts"),
    pytest.param([*steady(2), second(2, ok=8, failed=1, sent=10)], 29, Outcome.FAIL,
                 "28 of 30 requests sent were answered with a 2xx (1 failed, 1 never answered)",
                 id="failed-and-unanswered"),
    pytest.param(steady(3), 31, Outcome.FAIL, "the router answered 31 requests, the client "
                 "sent 30", id="answered-twice"),
])
def test_every_request_answered_once(seconds, routed, outcome, reason):
    samples = [] if routed is None else [sample(-1, router=0), sample(4, router=routed)]
    [result] = judged(run({"answered": {}}, seconds, samples))
    assert result.outcome is outcome
    assert reason in result.reason


@pytest.mark.parametrize(("first_ok", "ready_at", "outcome", "bound"), [
    pytest.param(1.8, 1.5, Outcome.PASS, "<= 2.50 s", id="within-cold-start-plus-margin"),
    pytest.param(3.0, 1.5, Outcome.FAIL, "<= 2.50 s", id="held-too-long-after-ready"),
    pytest.param(0.05, -1.0, Outcome.PASS, "<= 1.00 s", id="already-warm"),
])
def test_first_response_within_the_cold_start_plus_a_margin(first_ok, ready_at, outcome, bound):
    samples = [sample(-2, state(0)), sample(ready_at, state(1))]
    [result] = judged(run({"firstResponse": {"withinColdStartPlusSeconds": 1}}, steady(3),
                          samples, first_ok=first_ok))
    assert (result.outcome, result.observed, result.bound) == (outcome, first_ok, bound)
    assert f"the first answer came {first_ok:.2f} s after the first request" in result.reason


def test_first_response_without_a_ready_replica_seen_is_unknown():
    [result] = judged(run({"firstResponse": {"withinColdStartPlusSeconds": 1}}, steady(3),
                          [sample(0, state(1, ready=0))]))
    assert result.outcome is Outcome.UNKNOWN
    assert "no ready replica of v1 was observed" in result.reason


READY_POLICY = {"readyReplicas": {"phase": "step", "atLeast": "policy", "withinSeconds": 10}}


def test_ready_replicas_reaching_the_policys_count_pass():
    samples = [sample(4, state(0)), sample(6, state(6, ready=2)), sample(11, state(6))]
    [result] = judged(run(READY_POLICY, steady(25), samples))
    assert (result.outcome, result.observed, result.bound) == (Outcome.PASS, 6,
                                                                ">= 6 within 10 s")
    assert "6 ready 6.0 s into phase step" in result.reason
    assert "the policy: ceil(45 rps / (10 x 0.8))" in result.reason


def test_ready_replicas_held_below_the_policys_count_fail_naming_observed_and_bound():
    samples = [sample(4, state(0)), sample(8, state(2)), sample(14, state(2)),
               sample(20, state(6))]  # after the deadline: too late
    [result] = judged(run(READY_POLICY, steady(25), samples))
    assert (result.outcome, result.observed, result.bound) == (Outcome.FAIL, 2,
                                                                ">= 6 within 10 s")
    assert result.reason == (
        "readyReplicas of v1: at most 2 ready within 10 s of phase step's start; bound >= 6 "
        "(the policy: ceil(45 rps / (10 x 0.8)))")


def test_ready_replicas_of_a_given_count_without_observations_are_unknown():
    expectation = {"readyReplicas": {"phase": "step", "atLeast": 3, "withinSeconds": 10}}
    [result] = judged(run(expectation, steady(25), [sample(1, state(0))]))
    assert result.outcome is Outcome.UNKNOWN
    assert "no observation of its replicas within 10 s" in result.reason


def test_ready_replicas_without_a_known_policy_are_unknown():
    a_run = run(READY_POLICY, steady(25), [sample(6, state(6))])
    a_run = record.Run(a_run.scenario, a_run.client, a_run.samples, policies={})
    [result] = judged(a_run)
    assert result.outcome is Outcome.UNKNOWN
    assert result.reason == "readyReplicas of v1: no ScalingPolicy is known for v1"


def test_desired_replicas_past_the_bound_fail():
    samples = [sample(t, state(d)) for t, d in ((1, 0), (6, 4), (8, 13), (12, 7))]
    [result] = judged(run({"desiredReplicas": {"atMost": 12}}, steady(25), samples))
    assert (result.outcome, result.observed, result.bound) == (Outcome.FAIL, 13, "<= 12")


@pytest.mark.parametrize(("desired", "outcome", "observed"), [
    pytest.param([3, 3, 3, 3], Outcome.PASS, 0, id="steady"),
    pytest.param([2, 3, 3, 2], Outcome.FAIL, 2, id="flapping"),
])
def test_scale_events_in_the_window(desired, outcome, observed):
    samples = [sample(0, state(1))] + [sample(4 + 5 * i, state(d)) for i, d in enumerate(desired)]
    [result] = judged(run({"scaleEvents": {"phase": "step"}}, steady(25), samples))
    assert (result.outcome, result.observed, result.bound) == (outcome, observed, "<= 0")
    if observed:
        assert "changed 2 times (2 -> 3 at 9.0 s, 3 -> 2 at 19.0 s); bound <= 0" in result.reason


@pytest.mark.parametrize(("phases", "expected", "outcome", "reason"), [
    pytest.param([(3, "Progressing"), (20, "Promoted")], "Promoted", Outcome.PASS,
                 "observed Promoted 18.0 s after the start (why)", id="promoted-in-time"),
    pytest.param([(3, "Progressing"), (8, "RolledBack")], "Promoted", Outcome.FAIL,
                 "expected Promoted within 30 s; observed RolledBack 6.0 s after the start",
                 id="rolled-back-but-promotion-expected"),
    pytest.param([(3, "Progressing"), (40, "Promoted")], "Promoted", Outcome.FAIL,
                 "observed Promoted 38.0 s after the start", id="promoted-too-late"),
    pytest.param([(3, "Progressing"), (20, "Progressing")], "RolledBack", Outcome.FAIL,
                 "observed still Progressing at step 1/3 (why) when the run ended",
                 id="never-ended"),
])
def test_rollout_verdict_and_time(phases, expected, outcome, reason):
    samples = [sample(t, rollout=phase) for t, phase in phases]
    expectation = {"rollout": {"phase": expected, "withinSeconds": 30}}
    [result] = judged(run(expectation, steady(25), samples, rollout_at=2.0))
    assert result.outcome is outcome
    assert result.expectation == f"rollout (expected {expected})"
    assert result.bound == f"{expected} within 30 s"
    assert reason in result.reason


def test_rollout_errors_count_from_its_start():
    seconds = [second(0, failed=4), *[second(t, failed=1) for t in range(1, 25)]]
    expectation = {"rollout": {"phase": "RolledBack", "withinSeconds": 30, "maxErrors": 20}}
    verdict, errors = judged(run(expectation, seconds, [sample(6, rollout="RolledBack")],
                                 rollout_at=2.0))
    assert verdict.outcome is Outcome.PASS
    assert (errors.outcome, errors.observed, errors.bound) == (Outcome.FAIL, 23, "<= 20")
