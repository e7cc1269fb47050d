"""Per-revision stats: windows on an injected clock, histogram quantiles, merging workers."""

import pytest

from router import stats


def run_load(s, start, seconds, rps, latency=0.01, status=200):
    """Feed arrivals and completions in time order, as the loop clock would."""
    events = []
    for i in range(int(seconds * rps)):
        t = start + i / rps
        events += [(t, 1), (t + latency, -1)]
    for t, delta in sorted(events):
        if delta == 1:
            s.arrived(t)
        s.assigned(t, delta)
        if delta == -1:
            s.answered(status, latency)


def test_rates_over_windows():
    s = stats.RevisionStats(0.0)
    run_load(s, 0.0, 60, 10)
    summary = stats.summarize(s.raw(60.0))
    assert summary["rps"]["60s"] == pytest.approx(10, rel=0.02)
    assert summary["rps"]["6s"] == pytest.approx(10, rel=0.05)
    assert summary["requests"]["2xx"] == 600


@pytest.mark.parametrize("phase", [0.05, 0.3, 0.55, 0.8, 0.99])
def test_a_rate_does_not_depend_on_when_bursts_fall_in_the_second(phase):
    """20 clients released together by a cold start send in step, 20 requests every 0.5 s:
    40 requests/s, read as 40 whatever the moment of the reading (over a second and a
    fraction it read 20 to 80, and the controller held 6 replicas for a load that needs 4)."""
    s = stats.RevisionStats(0.0)
    for tick in range(40):
        for _ in range(20):
            s.arrived(0.2 + tick / 2)
    summary = stats.summarize(s.raw(19.0 + phase))
    assert summary["rps"]["1s"] == 40
    assert summary["rps"]["6s"] == 40


def test_time_averaged_inflight_counts_time_not_events():
    """One request in flight for 10 s averages 1.0 over the last 6 s, with no events in it."""
    s = stats.RevisionStats(0.0)
    s.arrived(0.0)
    s.assigned(0.0, 1)
    summary = stats.summarize(s.raw(10.0))
    assert summary["inflight"] == 1
    assert summary["inflight_avg"]["6s"] == pytest.approx(1.0)
    assert summary["inflight_avg"]["60s"] == pytest.approx(10 / 60, rel=0.01)
    assert summary["rps"]["60s"] == pytest.approx(1 / 60, abs=0.001)


def test_requests_sent_to_replicas_over_a_second_give_the_service_time_with_its_in_flight():
    """3 requests wait until a replica is ready at 1.0, then it takes them and 3 new ones in
    that second, one every 1/6 s, 0.5 s each, and goes on at that pace. Over [2, 3): 6 sent,
    3 in flight on average, 0.5 s a request by Little's law. Over [1, 2) the 3 released ones
    were sent on top of 3 arrivals: sent counts them, arrivals do not."""
    s = stats.RevisionStats(0.0)
    for t in (0.2, 0.4, 0.6):
        s.arrived(t)
    events = []
    for i in range(18):
        start = 1.0 + i / 6
        events += [(start, 1), (start + 0.5, -1)]
    snapshots = {}
    for t, delta in sorted(events):
        for at in (2.01, 3.01):
            if t > at and at not in snapshots:
                snapshots[at] = s.raw(at)  # in time order, as the loop clock runs
        if delta == 1 and t >= 1.5:
            s.arrived(t)
        s.assigned(t, delta)
    first = stats.summarize(snapshots[2.01])
    assert (first["dispatched"]["1s"], first["rps"]["1s"]) == (6, 3)
    steady = stats.summarize(snapshots[3.01])
    assert steady["dispatched"]["1s"] == 6
    assert steady["inflight_avg"]["1s"] / steady["dispatched"]["1s"] == pytest.approx(0.5)
    merged = stats.summarize(stats.merge([snapshots[3.01], snapshots[3.01]]))
    assert merged["dispatched"]["1s"] == 12


def test_old_seconds_fall_out_of_the_window():
    s = stats.RevisionStats(0.0)
    run_load(s, 0.0, 5, 100)
    summary = stats.summarize(s.raw(200.0))
    assert summary["rps"] == {"1s": 0.0, "6s": 0.0, "60s": 0.0}
    assert summary["requests"]["total"] == 500


@pytest.mark.parametrize("latency", [0.0012, 0.05, 0.8, 12.0])
def test_quantiles_within_five_percent(latency):
    s = stats.RevisionStats(0.0)
    run_load(s, 0.0, 1, 100, latency=latency)
    p50 = stats.summarize(s.raw(1.0))["latency_ms"]["p50"]
    assert p50 == pytest.approx(latency * 1000, rel=0.05)


def test_client_gone_is_499_not_5xx():
    s = stats.RevisionStats(0.0)
    s.answered(499, 1.0)
    s.answered(503, 0.0)
    requests = stats.summarize(s.raw(1.0))["requests"]
    assert requests["499"] == 1
    assert requests["5xx"] == 1


def test_merging_workers_adds_up_exactly():
    a, b = stats.RevisionStats(0.0), stats.RevisionStats(0.0)
    run_load(a, 0.0, 10, 30, latency=0.002)
    run_load(b, 0.0, 10, 20, latency=0.2, status=500)
    b.waited(3.0)
    merged = stats.summarize(stats.merge([a.raw(10.0), b.raw(10.0)]))
    assert merged["requests"]["total"] == 500
    assert merged["requests"]["5xx"] == 200
    assert merged["rps"]["6s"] == pytest.approx(50, rel=0.05)
    assert merged["latency_ms"]["p50"] == pytest.approx(2, rel=0.05)
    assert merged["latency_ms"]["p90"] == pytest.approx(200, rel=0.05)
    assert merged["cold_start_waits"] == {"count": 1, "mean_s": 3.0, "max_s": 3.0}


@pytest.mark.parametrize("latency", [0.0012, 0.05, 3.95, 700.0])
def test_a_percentile_is_never_outside_the_observations(latency):
    """One 3.95 s request showed p50 4021 / p99 4118 ms: interpolation inside its ~5 % bucket."""
    s = stats.RevisionStats(0.0)
    s.answered(200, latency)
    figures = stats.summarize(s.raw(1.0))["latency_ms"]
    for q in ("p50", "p90", "p99", "min", "max"):
        assert figures[q] == pytest.approx(latency * 1000)


def test_percentiles_stay_between_the_smallest_and_largest_of_all_workers():
    a, b = stats.RevisionStats(0.0), stats.RevisionStats(0.0)
    for latency in (0.101, 0.102, 0.103):
        a.answered(200, latency)
    b.answered(200, 0.104)
    raw_b = b.raw(1.0)
    merged = stats.merge([a.raw(1.0), raw_b, stats.RevisionStats(0.0).raw(1.0)])
    assert (merged["latency_min_s"], merged["latency_max_s"]) == (0.101, 0.104)
    figures = stats.summarize(merged)["latency_ms"]
    assert 101 <= figures["p50"] <= figures["p99"] <= 104
    assert stats.summarize(stats.RevisionStats(0.0).raw(1.0))["latency_ms"]["max"] is None


def test_exact_status_codes_add_up_over_workers():
    a, b = stats.RevisionStats(0.0), stats.RevisionStats(0.0)
    for status in (200, 200, 500, 503, 499):
        a.answered(status, 0.01)
    for status in (503, 404):
        b.answered(status, 0.01)
    merged = stats.merge([a.raw(1.0), b.raw(1.0)])
    assert merged["by_code"] == {"200": 2, "404": 1, "499": 1, "500": 1, "503": 2}
    assert merged["by_class"] == [1, 0, 2, 0, 1, 3]
    assert stats.summarize(merged)["requests"] == {
        "total": 7, "1xx": 0, "2xx": 2, "3xx": 0, "4xx": 1, "5xx": 3, "499": 1}


@pytest.mark.parametrize(("at_a", "at_b"), [
    pytest.param(100.500, 100.503, id="milliseconds-apart"),
    pytest.param(100.999, 101.001, id="straddling-a-second"),
])
def test_merged_rates_are_the_sum_of_the_workers_rates(at_a, at_b):
    """Each worker's window ends at its own snapshot; the merged in-flight average and rate are
    what the workers did together, also when the snapshots fall on either side of a second."""
    a, b = stats.RevisionStats(0.0), stats.RevisionStats(0.0)
    for s, inflight in ((a, 3), (b, 5)):
        s.assigned(0.0, inflight)
        for i in range(int(at_a * 10)):  # 10 arrivals per second each, until the snapshot
            s.arrived(i / 10)
    merged = stats.summarize(stats.merge([a.raw(at_a), b.raw(at_b)]))
    assert merged["inflight"] == 8
    assert merged["inflight_avg"] == {"1s": 8.0, "6s": 8.0, "60s": 8.0}
    assert merged["rps"]["6s"] == pytest.approx(20, rel=0.03)
    assert merged["rps"]["60s"] == pytest.approx(20, rel=0.01)
