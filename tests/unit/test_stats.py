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
