"""The rollout driver's pure helpers: windows from router counters, the canary's replica need,
parsing a policy document, and the controller's token files and address checks."""

import json
import stat

import pydantic
import pytest

from autoscaler.control import ports
from autoscaler.local import stack, status
from autoscaler.rollouts import driver as rollout_driver
from autoscaler.rollouts import token as controller_token
from autoscaler.sources import prometheus
from policies import judges, scaling

BOUNDS = (0.01, 0.02, 0.04)


def counters(requests, errors, buckets):
    return ports.Counters(requests, errors, tuple(buckets), BOUNDS)


# -- windows -------------------------------------------------------------------------------------

def test_a_window_is_the_difference_of_two_snapshots():
    key = ("model", "v2")
    before = {key: counters(100, 1, [10, 80, 10, 0])}
    now = {key: counters(150, 4, [10, 110, 25, 5])}
    window = rollout_driver.since(now[key], before[key])
    assert (window.requests, window.errors, window.latency_buckets) == (50, 3, (0, 30, 15, 5))
    arm = rollout_driver.arm_window(window)
    assert (arm.requests, arm.errors, arm.latencies.total) == (50, 3, 50)
    assert arm.latencies.values_s[-1] == BOUNDS[-1]  # the overflow bucket sits at its bound


def test_a_revision_new_since_the_last_snapshot_counts_whole_and_a_missing_one_is_none():
    key = ("model", "v2")
    now = {key: counters(7, 0, [7, 0, 0, 0])}
    assert rollout_driver.since(now[key], None) == now[key]
    assert rollout_driver.since(None, now[key]) is None
    empty = rollout_driver.arm_window(None)
    assert (empty.requests, empty.errors, empty.latencies.total) == (0, 0, 0)


def test_a_router_restart_starts_the_window_afresh():
    key = ("model", "v1")
    before = {key: counters(1000, 5, [500, 500, 0, 0])}
    now = {key: counters(20, 0, [20, 0, 0, 0])}
    assert rollout_driver.since(now[key], before[key]).requests == 20


def test_a_restart_is_seen_when_any_count_goes_down_not_only_requests():
    """A restarted router that has already served more requests than before: errors and a
    bucket went down, so the window is everything since the restart, never negative."""
    key = ("model", "v1")
    before = {key: counters(100, 5, [50, 50, 0, 0])}
    now = {key: counters(150, 1, [140, 10, 0, 0])}
    window = rollout_driver.since(now[key], before[key])
    assert (window.requests, window.errors, window.latency_buckets) == (150, 1, (140, 10, 0, 0))
    rollout_driver.arm_window(window)  # a valid window: no negative count


def test_windows_add_up_routers_and_leave_out_a_restarted_or_new_one():
    before = {"a": rollout_driver.Arms(counters(100, 1, [100, 0, 0, 0]),
                                       counters(900, 0, [900, 0, 0, 0])),
              "b": rollout_driver.Arms(counters(50, 0, [50, 0, 0, 0]), None)}
    now = {"a": rollout_driver.Arms(counters(130, 2, [130, 0, 0, 0]),
                                    counters(990, 0, [990, 0, 0, 0])),
           "b": rollout_driver.Arms(counters(70, 1, [70, 0, 0, 0]),
                                    counters(5, 0, [5, 0, 0, 0])),
           "c": rollout_driver.Arms(counters(9, 0, [9, 0, 0, 0]), None)}
    window = rollout_driver.windows(now, before)
    assert (window.canary.requests, window.canary.errors) == (30 + 20, 1 + 1)
    assert window.stable.requests == 90 + 5  # b's stable is new there: all of it
    assert window.restarted == ()  # c is new: it starts the next window, it did not restart

    restarted = {**now, "a": rollout_driver.Arms(counters(3, 0, [3, 0, 0, 0]),
                                                 counters(10, 0, [10, 0, 0, 0]))}
    window = rollout_driver.windows(restarted, before)
    assert window.restarted == ("a",)
    assert window.canary.requests == 20  # only b's


# -- the canary's replicas -----------------------------------------------------------------------

def policy(**fields):
    return scaling.load_policy({"metric": "rps", "target": 10, "targetUtilization": 0.5,
                                **fields})


@pytest.mark.parametrize(("weight", "demand", "needed"), [
    (0, 100.0, 0),       # no weight, no replicas asked for
    (10, 0.0, 1),        # any weight needs one, even with no load
    (10, 100.0, 2),      # 10 RPS at 5 per replica
    (50, 100.0, 10),
    (100, 100.0, 20),
    (25, 20.0, 1),       # 5 RPS: exactly one replica's worth, not two
])
def test_canary_needed_sizes_the_weights_share_of_the_load(weight, demand, needed):
    assert rollout_driver.canary_needed(weight, demand, policy()) == needed


def test_canary_needed_never_exceeds_max_replicas_and_is_one_for_a_custom_signal():
    assert rollout_driver.canary_needed(100, 1000.0, policy(maxReplicas=3)) == 3
    custom = scaling.load_policy({"metric": "custom:kv-cache", "target": 0.8,
                                  "signal": {"query": "avg(kv_cache_usage)"}})
    assert rollout_driver.canary_needed(50, 1000.0, custom) == 1


# -- policy documents ----------------------------------------------------------------------------

SPEC = {"service": "model", "stableRevision": "v1", "canaryRevision": "v2"}


def test_a_policy_or_a_rollout_resource_is_accepted():
    assert rollout_driver.parse_policy(SPEC).canary_revision == "v2"
    resource = {"apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "spec": SPEC}
    assert rollout_driver.parse_policy(resource).service == "model"


@pytest.mark.parametrize(("document", "field"), [
    ({**SPEC, "canaryRevision": "v1"}, "canaryRevision"),
    ({**SPEC, "analysis": {"intervalSeconds": 0}}, "analysis.intervalSeconds"),
    ({**SPEC, "steps": [{"weight": 50}]}, "steps.0.weight"),
    ({**SPEC, "colour": "blue"}, "colour"),
    ([SPEC], "(document)"),
    ({"kind": "Rollout"}, "(document)"),
])
def test_an_invalid_document_names_the_field(document, field):
    with pytest.raises(rollout_driver.RolloutError) as raised:
        rollout_driver.parse_policy(document)
    assert raised.value.status == 400
    assert field in [p["field"] for p in raised.value.problems]


def test_findings_are_json_with_their_statistics():
    finding = judges.Finding("errors", judges.Outcome.FAIL, "higher", observed=5.0,
                             baseline=0.1, bound=2.0, unit="%", likelihood_ratio=900.0,
                             interval=(1.0, 9.0), canary_samples=200, stable_samples=800)
    shown = json.loads(json.dumps(rollout_driver.finding_json(finding)))
    assert shown["outcome"] == "fail" and shown["interval"] == [1.0, 9.0]
    assert (shown["likelihood_ratio"], shown["canary_samples"]) == (900.0, 200)


# -- the controller's token and address ----------------------------------------------------------

def test_the_token_is_written_0600_and_found_by_port(tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    path = controller_token.well_known_path("127.0.0.1:9182", env)
    assert path == tmp_path / "sluice" / "controller-9182.token"
    path.parent.mkdir()
    path.write_text("old")
    path.chmod(0o644)
    controller_token.write("secret", [path])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    fresh = tmp_path / "fresh" / "controller.token"
    controller_token.write("secret", [fresh])
    assert stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700
    assert controller_token.find("127.0.0.1:9182", env=env) == "secret"
    assert controller_token.find("127.0.0.1:9182", env={**env, controller_token.ENV: "x"}) == "x"
    other = tmp_path / "given"
    other.write_text("given\n")
    assert controller_token.find("127.0.0.1:9182", other, env={controller_token.ENV: "x"}) \
        == "given"
    with pytest.raises(controller_token.TokenNotFound, match=r"controller-9999\.token"):
        controller_token.find("127.0.0.1:9999", env=env)


def test_removing_leaves_a_newer_stacks_token_alone(tmp_path):
    path = tmp_path / "controller.token"
    controller_token.write("newer", [path])
    controller_token.remove("older", [path])
    assert path.exists()
    controller_token.remove("newer", [path])
    assert not path.exists()


@pytest.mark.parametrize("listen", ["0.0.0.0:8082", "10.1.2.3:8082", "example.com:8082"])
def test_the_controller_listens_on_loopback_only(listen):
    with pytest.raises(pydantic.ValidationError, match="not a loopback address"):
        stack.ControllerSpec(listen=listen)
    assert stack.ControllerSpec(listen="127.0.0.2:8082").listen == "127.0.0.2:8082"
    assert stack.ControllerSpec(listen="localhost:8082").listen == "localhost:8082"


def test_status_shows_a_line_per_rollout():
    shown = status.render([], [{"service": "model", "stable_revision": "v1",
                               "canary_revision": "v2", "phase": "Progressing", "step": 2,
                               "steps": 3, "canary_weight": 50, "reason": "step 2 of 3"}])
    assert shown.splitlines()[-1] == ("rollout model: Progressing, step 2/3, v2 at 50 % "
                                      "(step 2 of 3)")


def test_prometheus_credentials_stay_out_of_messages():
    source = prometheus.PrometheusSource("http://user:secret@127.0.0.1:9/")
    assert source.url == "http://127.0.0.1:9/"
