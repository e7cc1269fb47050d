"""The simulator on custom-signal traces (t,rps,signal): the policy's signal drives sluice and
the HPA, the KPA follows requests in flight, and the CSV form is checked like the rps one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoscaler.sim import cli as sim_cli
from autoscaler.sim import model, traces
from policies import scaling

POLICY = scaling.load_policy({
    "metric": "custom:kv-cache", "target": 0.6, "minReplicas": 1,
    "signal": {"query": 'avg(vllm:gpu_cache_usage_perc{revision="$revision"})'}})


def signal_trace(rps: float, per_request: list[float]) -> traces.Trace:
    return traces.Trace("kv", np.full(len(per_request), rps), "synthetic", cold_start_s=30,
                        signal=np.asarray(per_request, dtype=float))


def test_requests_that_fill_more_cache_scale_the_signal_policy_and_not_the_kpa():
    # 4 requests/s in flight 8 s: 32 in flight; at 5 % each 1.6 caches (3 replicas at 60 %),
    # at 15 % each 4.8 caches (8 replicas); requests in flight do not change. The typical
    # request (the median) is the short one, which the KPA's target is tuned for.
    trace = signal_trace(4.0, [0.05] * 600 + [0.15] * 500)
    runs = model.simulate(trace, POLICY, model.replica_model(trace, POLICY))
    sluice, kpa = runs["sluice"].series, runs["kpa"].series
    assert sluice.ready[590] == math.ceil(4 * 8 * 0.05 / 0.6) == 3
    assert sluice.ready[-1] == math.ceil(4 * 8 * 0.15 / 0.6) == 8
    assert kpa.ready[590] == 3  # tuned for the typical request ...
    assert runs["sluice"].metrics.slo_violation_s < runs["kpa"].metrics.slo_violation_s
    assert runs["oracle"].metrics.slo_violation_s == 0


def test_a_csv_trace_with_a_signal_column_is_a_custom_signal_trace(tmp_path):
    path = tmp_path / "kv.csv"
    path.write_text("t,rps,signal\n0,3,0.05\n10,3,0.15\n19,3,0.15\n")
    trace = traces.load_csv(path)
    assert trace.signal is not None
    assert (trace.signal[0], trace.signal[10], len(trace.signal)) == (0.05, 0.15, 20)


@pytest.mark.parametrize(("text", "problem"), [
    ("t,rps,signal\n0,3\n", "expected 3 columns"),
    ("t,rps,signal\n0,3,0\n", "signal must be above 0"),
    ("t,rps,kv\n0,3,0.1\n", "the header must be"),
])
def test_a_bad_signal_trace_says_where(tmp_path, text, problem):
    path = tmp_path / "kv.csv"
    path.write_text(text)
    with pytest.raises(traces.TraceError, match=problem):
        traces.load_csv(path)


def test_the_policy_must_fit_the_trace(tmp_path):
    rps_policy = tmp_path / "rps.yaml"
    rps_policy.write_text("metric: rps\ntarget: 10\n")
    with pytest.raises(sim_cli.UsageError, match="custom-signal trace replays a signal"):
        sim_cli.load_policy_file(rps_policy, traces.bundled("gpu-kv"))
    custom = tmp_path / "kv.yaml"
    custom.write_text("metric: custom:kv\ntarget: 0.6\nsignal: {query: 'avg(kv)'}\n")
    with pytest.raises(sim_cli.UsageError, match="must scale on 'rps'"):
        sim_cli.load_policy_file(custom, traces.bundled("step"))


def test_the_bundled_gpu_kv_trace_runs_its_example_policy():
    assert sim_cli.main(["--policy", "examples/policies/gpu-kv.yaml", "--trace", "gpu-kv",
                         "--json"]) == 0
