"""The /metrics histograms bucket for bucket: the integration test (test_router_admin.py) checks
the exposition against /stats?raw=1 on a handful of real latencies, which fill few buckets; here
every bucket has observations, at a bound and just above it, so an off-by-one cannot hide."""

from prometheus_client.parser import text_string_to_metric_families

from router import admin, stats


def test_each_prometheus_bucket_counts_exactly_the_observations_at_or_below_its_bound():
    s = stats.RevisionStats(0.0)
    observed = [*stats.LATENCY_BOUNDS_S, *(b * 1.01 for b in stats.PROMETHEUS_BUCKETS_S)]
    for latency in observed:
        s.answered(200, latency)
    raw = s.raw(0.0)
    lines = admin._histogram("sluice_router_request_duration_seconds", 'revision="v1"',
                             raw["latency_buckets"], raw["latency_sum_s"])
    exposition = ("# TYPE sluice_router_request_duration_seconds histogram\n"
                  + "\n".join(lines) + "\n")
    (family,) = text_string_to_metric_families(exposition)
    buckets = {float(s.labels["le"]): s.value for s in family.samples
               if s.name.endswith("_bucket")}
    assert sorted(buckets) == [*stats.PROMETHEUS_BUCKETS_S, float("inf")]
    for le, count in buckets.items():
        assert count == sum(1 for latency in observed if latency <= le), f"le={le}"
    totals = {s.name: s.value for s in family.samples if not s.name.endswith("_bucket")}
    assert totals["sluice_router_request_duration_seconds_count"] == len(observed)
    assert totals["sluice_router_request_duration_seconds_sum"] == sum(observed)
