"""The simulator (autoscaler/sim/model.py) on tiny synthetic traces, its trace loading
(autoscaler/sim/traces.py) and its command line. Everything runs in simulated time.

Unless a test says otherwise the policy scales on rps with target 100 at utilization 0.7, so a
ready replica serves 70 requests/s, and replicas start in 10 s.
"""

import json
import math

import numpy as np
import pytest

from autoscaler import cli
from autoscaler.sim import cli as sim_cli
from autoscaler.sim import model, traces
from loadtests import sim_bench
from policies import scaling

CAPACITY = 70


def policy(**overrides):
    return scaling.ScalingPolicy(**{"metric": "rps", "target": 100, "min_replicas": 1,
                                    **overrides})


def trace(rates, **replica_model):
    return traces.Trace("test", np.asarray(rates, dtype=float), "synthetic", **replica_model)


def simulate_(rates, the_policy=None, **replica_model):
    the_trace, the_policy = trace(rates, **replica_model), the_policy or policy()
    return model.simulate(the_trace, the_policy, model.replica_model(the_trace, the_policy))


def scale_to_zero(**overrides):
    return policy(min_replicas=0, **overrides)


SCALERS = ("sluice", "kpa", "hpa")


def test_constant_load_holds_exactly_enough_replicas_without_scale_events():
    runs = simulate_([400] * 300)
    for name in (*SCALERS, "oracle"):
        assert set(runs[name].series.desired) == {math.ceil(400 / CAPACITY)}, name
        assert runs[name].metrics.scale_events == 0, name
        assert runs[name].metrics.slo_violation_s == 0, name


@pytest.mark.parametrize("name", SCALERS)
def test_load_step_settles_at_ceil_of_load_over_capacity(name):
    run = simulate_([100] * 60 + [400] * 600)[name]
    settled = run.series.desired[-300:]
    assert set(settled) == {math.ceil(400 / CAPACITY)}
    assert run.series.ready[-1] == math.ceil(400 / CAPACITY)


def test_noisy_level_on_a_replica_boundary_keeps_its_count():
    """1050 rps is exactly 15 replicas: the stable window's mean crosses the boundary every few
    windows, and a scaler that follows it restarts a replica each time."""
    rates = np.random.default_rng(1).poisson(1050, 900).astype(float)
    runs = simulate_(list(rates), cold_start_s=60)
    assert runs["sluice"].metrics.scale_events * 5 <= runs["kpa"].metrics.scale_events


def test_warm_up_runs_at_the_median_of_the_first_seconds():
    # A first second far off the rate must not set the warm start: 6 replicas, not 1.
    runs = simulate_([10] + [400] * 299)
    for name in SCALERS:
        assert runs[name].series.desired[0] == math.ceil(400 / CAPACITY), name
        assert runs[name].metrics.scale_events == 0, name


def test_replicas_become_ready_one_cold_start_after_they_are_asked_for():
    run = simulate_([100] * 30 + [2000] * 60, cold_start_s=20)["sluice"]
    # asked for at the end of second 30, started at 31, ready at 51
    assert run.series.desired[30] == 2 < run.series.desired[31]
    assert run.series.ready[50] == 2 < run.series.ready[51]
    assert run.series.billed[31] == run.series.desired[31]


@pytest.mark.parametrize("name", (*SCALERS, "oracle"))
def test_a_trace_from_zero_starts_at_zero_replicas_after_idling(name):
    runs = simulate_([0] * 30 + [400] * 120, scale_to_zero(), from_zero=True)
    # The HPA cannot go below one replica; every other scaler idles at zero until the load.
    assert set(runs[name].series.desired[:30]) == ({1} if name == "hpa" else {0})
    assert runs[name].series.ready[-1] == math.ceil(400 / CAPACITY)


def test_the_first_request_at_zero_starts_a_replica_within_its_second():
    """As the router's poke does: the replica is asked for when the request arrives (second
    30), not at the tick that ends the second, and is ready a cold start later."""
    run = simulate_([0] * 30 + [40] * 60, scale_to_zero(), from_zero=True,
                    cold_start_s=5)["sluice"]
    assert run.series.desired[29:31] == [0, 1]
    assert run.series.billed[30] == 1
    assert run.series.ready[34:36] == [0, 1]


def test_a_replica_serves_the_part_of_the_second_it_is_ready_in():
    """A 2.5 s cold start from second 30: ready halfway through second 32, which it serves half
    of (35 of 70 requests), and ready when the scaler looks at that second's end."""
    run = simulate_([0] * 30 + [40] * 60, scale_to_zero(), from_zero=True,
                    cold_start_s=2.5)["sluice"]
    assert run.series.ready[31:34] == [0, 0, 1]
    queued = run.series.queue
    assert queued[31] - queued[32] == pytest.approx(35.0 - 40.0)


def test_requests_held_at_zero_leave_when_the_replica_is_ready_not_at_its_second():
    """10 requests spread over second 30 wait for a replica ready at 32.5 that serves them in
    the half second left: the n-th (of 10) arrives at 30 + n/10 and leaves at 32.5 + n/20."""
    run = simulate_([0] * 30 + [10] + [0] * 30, scale_to_zero(), from_zero=True,
                    cold_start_s=2.5)["sluice"]
    assert run.metrics.mean_delay_s == pytest.approx(2.25, abs=0.01)
    assert run.metrics.p99_delay_s == pytest.approx(2.5, abs=0.01)


def test_from_zero_warm_up_is_idle_whatever_the_trace_starts_with():
    runs = simulate_([400] * 120, scale_to_zero(), from_zero=True)
    assert runs["sluice"].series.ready[0] == 0
    assert runs["sluice"].metrics.slo_violation_s > 0  # the first cold start waits


SERVICE_S = 0.1
"""Requests in flight 100 ms: a replica aiming for 7 in flight (10 at 70 %) serves 70 rps."""


def test_concurrency_capacity_is_the_in_flight_aim_over_the_service_time():
    the_trace = trace([100] * 10, service_s=SERVICE_S)
    replicas = model.replica_model(the_trace, policy(metric="concurrency", target=10))
    assert (replicas.capacity_rps, replicas.service_s) == (pytest.approx(70.0), SERVICE_S)


def test_concurrency_policy_follows_the_load_like_rps():
    runs = simulate_([100] * 60 + [400] * 300, policy(metric="concurrency", target=10),
                     service_s=SERVICE_S)
    # The HPA is left out: it scaled for the step's backlog and holds that for 300 s.
    for name in ("sluice", "kpa", "oracle"):
        assert runs[name].series.desired[-1] == math.ceil(400 / CAPACITY), name


def test_concurrency_from_zero_guesses_once_then_buys_the_load_not_the_cold_start_backlog():
    """Two steps from zero on requests in flight, of 100 ms requests. At the first, nothing has
    served yet: sluice guesses each of a second's arrivals in flight (400 in flight, 58
    replicas), once; the KPA counts every request held through the cold start as in flight
    (Knative's activator reports them so), which grows with the wait. At the second the
    service time is known: the held requests are a backlog to drain, not load."""
    rates = [0] * 30 + [400] * 300 + [0] * 200 + [400] * 300
    runs = simulate_(rates, scale_to_zero(metric="concurrency", target=10), from_zero=True,
                     service_s=SERVICE_S)
    sluice, kpa, oracle = (runs[name].series for name in ("sluice", "kpa", "oracle"))
    second = slice(530, None)
    assert max(sluice.desired[:530]) == math.ceil(400 / 7)
    assert max(kpa.desired[:530]) > 5 * math.ceil(400 / 7)
    assert sum(sluice.billed[second]) <= 1.15 * sum(oracle.billed[second])
    assert sum(kpa.billed[second]) > 1.5 * sum(oracle.billed[second])
    assert sluice.ready[-1] == math.ceil(400 / CAPACITY)


def test_concurrency_policy_needs_a_service_time():
    with pytest.raises(model.UsageError, match="--service-time"):
        model.replica_model(trace([100]), policy(metric="concurrency", target=10))


def test_requests_are_conserved():
    rates = [100] * 30 + [2000] * 30
    runs = simulate_(rates)
    assert any(run.metrics.queued_at_end > 0 for run in runs.values())
    for run in runs.values():
        m = run.metrics
        assert m.arrived == sum(rates)
        assert m.served + m.queued_at_end == pytest.approx(m.arrived, rel=1e-9)
        assert m.served <= m.arrived


@pytest.mark.parametrize(
    "rates",
    [
        pytest.param([100] * 60 + [1000] * 120 + [100] * 120, id="step-up-and-down"),
        pytest.param([300] * 60 + [2400] * 20 + [300] * 120, id="spike"),
    ],
)
def test_oracle_is_the_lower_bound_of_cost_and_never_queues(rates):
    runs = simulate_(rates)
    oracle = runs["oracle"].metrics
    assert (oracle.slo_violation_s, oracle.queued_s, oracle.p99_delay_s) == (0, 0, 0.0)
    for name in SCALERS:
        assert runs[name].metrics.replica_seconds >= oracle.replica_seconds, name


@pytest.mark.parametrize("name", ["kpa", "hpa"])
def test_only_a_scaler_that_queues_costs_less_than_the_oracle(name):
    """On a steady ramp the baselines lag behind the load: cheaper than exactly enough, because
    requests wait for the replicas they did not start in time."""
    runs = simulate_(list(np.linspace(100, 1500, 300)))
    lagging = runs[name].metrics
    assert lagging.replica_seconds < runs["oracle"].metrics.replica_seconds
    assert lagging.slo_violation_s > 0


def test_gpu_inventory_caps_the_replicas_that_start():
    the_policy = policy(gpus_per_replica=2)
    runs = simulate_([100] * 30 + [2000] * 120, the_policy, gpu_inventory=8)
    for name, run in runs.items():
        assert max(run.series.ready) <= 4, name
        assert max(run.series.billed) <= 4, name
    assert max(runs["kpa"].series.desired) > 4  # the rest wait as Pending replicas
    assert max(runs["sluice"].series.desired) == 4  # sluice asks only for what GPUs hold


def test_queueing_delay_is_the_distance_between_arrivals_and_service():
    # 140 requests arrive evenly in one second, 70 are served in it and 70 in the next:
    # the n-th request waits n/140 s, so delays are uniform on [0, 1].
    mean, p99 = model._delays(np.array([0.0, 140, 0, 0]), np.array([0.0, 70, 70, 0]), 0)
    assert mean == pytest.approx(0.5, abs=1e-3)
    assert p99 == pytest.approx(0.99, abs=1e-3)


def test_kpa_baseline_keeps_the_workload_but_knatives_knobs():
    tuned = policy(target_utilization=0.8, stable_window_s=240, scale_down_delay_s=300,
                   gpus_per_replica=2, max_replicas=20)
    kpa = model.kpa_policy(tuned)
    assert (kpa.target, kpa.target_utilization, kpa.gpus_per_replica, kpa.max_replicas) == (
        100, 0.8, 2, 20)
    assert (kpa.stable_window_s, kpa.scale_down_delay_s) == (60, 0)


@pytest.mark.parametrize("name", traces.BUNDLED)
def test_bundled_traces_are_deterministic_per_seed(name):
    first, again = traces.bundled(name), traces.bundled(name)
    assert np.array_equal(first.rps, again.rps)
    assert not np.array_equal(first.rps, traces.bundled(name, seed=1).rps)
    assert first.rps.min() >= 0
    assert (sim_bench.EXAMPLE_POLICIES / first.policy).exists()


def test_csv_rates_hold_until_the_next_row(tmp_path):
    path = tmp_path / "load.csv"
    path.write_text("t,rps\n10,5\n12,20\n13.5,7\n")
    assert traces.load_csv(path).rps.tolist() == [5, 5, 20, 20, 7]


@pytest.mark.parametrize(
    ("content", "error"),
    [
        pytest.param("time,rate\n0,1\n", "load.csv:1: the header must be 't,rps'", id="header"),
        pytest.param("t,rps\n0,1\n1,many\n", "load.csv:3: rps must be a number, got 'many'",
                     id="not-a-number"),
        pytest.param("t,rps\n0,-1\n", "load.csv:2: rps must be a non-negative number",
                     id="negative"),
        pytest.param("t,rps\n0,1\n1,nan\n", "load.csv:3: rps must be a non-negative number",
                     id="nan"),
        pytest.param("t,rps\n5,1\n5,2\n", "load.csv:3: t must increase, got 5 after 5",
                     id="t-not-increasing"),
        pytest.param("t,rps\n0,1,2\n", "load.csv:2: expected 2 columns", id="columns"),
        pytest.param("t,rps\n", "load.csv: no rows after the header", id="no-rows"),
        pytest.param("t,rps\n1e9,1\n", "load.csv:2: t must be at most", id="too-long"),
    ],
)
def test_bad_csv_says_what_and_where(tmp_path, content, error):
    path = tmp_path / "load.csv"
    path.write_text(content)
    with pytest.raises(traces.TraceError, match=error):
        traces.load_csv(path)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "policy.yaml").write_text("metric: rps\ntarget: 100\nminReplicas: 1\n")
    (tmp_path / "load.csv").write_text("t,rps\n0,100\n60,1000\n120,100\n179,100\n")
    return tmp_path


@pytest.mark.parametrize(
    ("policy_yaml", "field"),
    [
        pytest.param("metric: rps\ntarget: -1\n", "target:", id="bad-value"),
        pytest.param("metric: rps\ntargt: 100\n", "targt:", id="unknown-field"),
        pytest.param("metric: concurrency\n", "metric: concurrency needs the requests' "
                     "service time", id="concurrency-without-service-time"),
        pytest.param("metric: custom:kv\ntarget: 1\n", "metric:", id="custom-signal"),
        pytest.param("- metric\n", "a policy is a mapping", id="not-a-mapping"),
    ],
)
def test_invalid_policy_exits_2_naming_the_field(files, capsys, policy_yaml, field):
    (files / "policy.yaml").write_text(policy_yaml)
    argv = ["simulate", "--policy", str(files / "policy.yaml"), "--trace", "step"]
    assert cli.main(argv) == 2
    assert field in capsys.readouterr().err


@pytest.mark.parametrize("trace_arg", ["nosuchtrace", "missing.csv"])
def test_unknown_trace_exits_2(files, capsys, trace_arg):
    argv = ["--policy", str(files / "policy.yaml"), "--trace", str(files / trace_arg)]
    assert sim_cli.main(argv) == 2
    assert trace_arg in capsys.readouterr().err


def test_json_reports_every_scaler_and_plot_is_a_png(files, capsys):
    png = files / "out.png"
    argv = ["--policy", str(files / "policy.yaml"), "--trace", str(files / "load.csv"),
            "--json", "--plot", str(png)]
    assert sim_cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trace"] == {"name": "load", "description": "load.csv: 4 rows",
                               "duration_s": 180}
    assert report["replica_model"] == {"capacity_rps": 70.0, "cold_start_s": 10.0,
                                       "gpus_per_replica": 0, "gpu_inventory": None,
                                       "service_s": None}
    assert list(report["results"]) == ["sluice", "kpa", "hpa", "oracle"]
    for metrics in report["results"].values():
        assert set(metrics) == {
            "replica_seconds", "slo_violation_s", "queued_s", "mean_delay_s", "p99_delay_s",
            "scale_events", "peak_replicas", "arrived", "served", "queued_at_end"}
    assert png.read_bytes().startswith(b"\x89PNG")


def test_from_zero_and_service_time_options_replay_a_csv_on_concurrency(files, capsys):
    (files / "policy.yaml").write_text("metric: concurrency\ntarget: 1\ntargetUtilization: 1\n"
                                       "minReplicas: 0\n")
    argv = ["--policy", str(files / "policy.yaml"), "--trace", str(files / "load.csv"),
            "--from-zero", "--service-time", "0.02", "--cold-start", "3", "--json"]
    assert sim_cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["replica_model"]["capacity_rps"] == pytest.approx(50.0)
    assert report["results"]["sluice"]["slo_violation_s"] > 0  # it waited for a cold start


@pytest.mark.parametrize("value", ["0", "1.5", "-1"])
def test_service_time_must_be_within_a_step(files, capsys, value):
    argv = ["--policy", str(files / "policy.yaml"), "--trace", "step", "--service-time", value]
    with pytest.raises(SystemExit):
        sim_cli.main(argv)
    assert "--service-time" in capsys.readouterr().err


def test_table_names_every_scaler(files, capsys):
    argv = ["--policy", str(files / "policy.yaml"), "--trace", str(files / "load.csv"),
            "--capacity", "100", "--cold-start", "5", "--tick", "2"]
    assert sim_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "Replicas serve 100 rps each and start in 5 s." in out
    assert [line.split()[0] for line in out.splitlines()[2:]] == [
        "sluice", "kpa", "hpa", "oracle"]
