"""Streamed responses, pure parts: what counts as a stream, what the router's counters make of
one, and the judges holding a canary's time to first byte to the SLO like its latency."""

from __future__ import annotations

import numpy as np
import pytest

from autoscaler.control import ports
from autoscaler.rollouts import driver
from policies import judges, rollout, wire
from router import proxy, stats


@pytest.mark.parametrize(("content_type", "streamed"), [
    (b"text/event-stream", True),
    (b"text/event-stream; charset=utf-8", True),
    (b"Text/Event-Stream", True),
    (b"application/x-ndjson", True),
    (b"application/json", False),
    (b"text/plain", False),
])
def test_what_counts_as_a_stream(content_type, streamed):
    assert proxy.is_stream(content_type) is streamed


def test_a_streams_first_byte_and_chunk_rate_reach_stats_and_add_up_over_workers():
    workers = [stats.RevisionStats(0.0), stats.RevisionStats(0.0)]
    for worker, ttft_s in zip(workers, (0.1, 0.3), strict=True):
        worker.streams += 1
        worker.first_byte(ttft_s)
        worker.stream_ended(chunks=11, streaming_s=0.5)  # 10 gaps of 50 ms: 20 chunks/s
    workers[0].streams += 1  # one still streaming
    merged = stats.merge([w.raw(1.0) for w in workers])
    figures = wire.Streams.model_validate(stats.summarize(merged)["streams"])
    assert figures.inflight == 1
    assert (figures.ttft_ms.min, figures.ttft_ms.max, figures.ttft_ms.count) == (100.0, 300.0, 2)
    assert figures.chunks_per_s == pytest.approx(20.0)
    # the histograms are ~5 % wide: a quantile is within a bucket of the truth
    assert figures.chunk_ms.p50 == pytest.approx(50.0, rel=0.05)
    assert figures.ttft_ms.p99 == pytest.approx(300.0, rel=0.05)


def test_a_one_chunk_stream_has_a_first_byte_and_no_rate():
    revision = stats.RevisionStats(0.0)
    revision.streams += 1
    revision.first_byte(0.2)
    revision.stream_ended(chunks=1, streaming_s=0.0)
    raw = revision.raw(1.0)
    assert (raw["streams"], raw["ttft_count"], sum(raw["chunk_buckets"])) == (0, 1, 0)
    assert stats.summarize(stats.merge([raw]))["streams"]["chunks_per_s"] is None


def arm(requests: int, latencies_s: np.ndarray, ttft_s: np.ndarray) -> judges.ArmWindow:
    return judges.ArmWindow(requests, 0, judges.Latencies.from_samples(latencies_s),
                            judges.Latencies.from_samples(ttft_s))


POLICY = rollout.load_rollout({
    "service": "m", "stableRevision": "v1", "canaryRevision": "v2",
    "slo": {"latency": {"maxMs": 5000, "tolerancePercent": 10},
            "ttft": {"maxMs": 5000, "tolerancePercent": 10}}})


def intervals(ttft_slowdown: float, rng: np.random.Generator, count: int = 20):
    """Streams whose total is a 100 ms prefill plus 900 ms of decoding, each arm's times
    lognormal around them; the canary's prefill is ``ttft_slowdown`` times stable's."""
    for _ in range(count):
        def streams(n, slowdown):
            prefill = 0.1 * slowdown * rng.lognormal(0, 0.1, n)
            return n, prefill + 0.9 * rng.lognormal(0, 0.05, n), prefill
        canary, stable = streams(20, ttft_slowdown), streams(80, 1.0)
        yield judges.Window(arm(*canary), arm(*stable), deciding_weight=25)


@pytest.mark.parametrize(("slowdown", "ttft_outcome"), [
    (1.5, judges.Outcome.FAIL), (1.0, judges.Outcome.PASS),
])
def test_a_canary_slower_to_its_first_token_fails_on_ttft_while_latency_holds(slowdown,
                                                                              ttft_outcome):
    state, rng = judges.SequentialState(), np.random.default_rng(7)
    for window in intervals(slowdown, rng):
        verdict, state = judges.sequential(window, state, POLICY)
    findings = {f.metric: f for f in verdict.findings}
    assert findings["ttft"].outcome is ttft_outcome, findings["ttft"].reason
    assert findings["latency"].outcome is not judges.Outcome.FAIL, findings["latency"].reason
    assert verdict.outcome is (judges.Outcome.FAIL if ttft_outcome is judges.Outcome.FAIL
                               else verdict.outcome)


@pytest.mark.parametrize("judge", [judges.thresholds, judges.compare])
def test_the_fixed_horizon_judges_hold_ttft_too(judge):
    policy = POLICY.model_copy(update={"slo": POLICY.slo.model_copy(update={
        "ttft": rollout.Latency(max_ms=120, tolerance_percent=10)})})
    window = next(intervals(1.5, np.random.default_rng(3), count=1))
    window = judges.Window(arm(400, window.canary.latencies.samples()[:1].repeat(400),
                               np.full(400, 0.15)),
                           arm(400, window.stable.latencies.samples()[:1].repeat(400),
                               np.full(400, 0.1)))
    findings = {f.metric: f for f in judge(window, policy).findings}
    assert findings["ttft"].outcome is judges.Outcome.FAIL, findings["ttft"].reason


def test_without_a_ttft_slo_nothing_is_judged_on_it():
    policy = rollout.load_rollout({"service": "m", "stableRevision": "v1",
                                   "canaryRevision": "v2"})
    verdict, _ = judges.sequential(next(intervals(3.0, np.random.default_rng(1))),
                                   judges.SequentialState(), policy)
    assert "ttft" not in {f.metric for f in verdict.findings}


def test_the_routers_ttft_histogram_reaches_the_judges():
    bounds = stats.LATENCY_BOUNDS_S
    buckets = [0] * (len(bounds) + 1)
    buckets[bounds.index(0.1)] = 7
    window = ports.Counters(10, 0, tuple(buckets), bounds, tuple(buckets))
    judged = driver.arm_window(window)
    assert judged.ttft.total == 7
    assert judged.ttft.quantile(0.5) == pytest.approx(0.1, rel=0.05)
