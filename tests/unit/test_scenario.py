"""Scenario files (loadtests/scenario.py) and the stack file the loadtest reads, without load.

Covered: every bundled scenario is valid; a duration scale shortens the load and the windows but
not the bounds the system is held to, and a bound that no longer fits says so; invalid files
name the field and the reason; the policy's replica count for a rate; the environment that
carries a scenario into Locust; reading a `sluice up` stack file.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from loadtests import observe, scenario, shapes
from policies import scaling

ROOT = Path(__file__).resolve().parents[2]
STEP = {
    "name": "step",
    "phases": [{"name": "idle", "seconds": 10, "users": 0},
               {"name": "step", "seconds": 60, "users": 30, "rampSeconds": 2}],
    "expectations": [
        {"readyReplicas": {"phase": "step", "atLeast": "policy", "withinSeconds": 15}},
        {"latency": {"phase": "step", "afterSeconds": 20, "maxMs": 250}},
        {"errors": {"maxPercent": 0}},
    ],
}
POLICY = {"service": "model", "stableRevision": "v1", "canaryRevision": "v2",
          "steps": [{"weight": 50}, {"weight": 100}]}
CANARY = {
    "name": "canary",
    "phases": [{"name": "steady", "seconds": 100, "users": 10}],
    "rollout": {"startAtSeconds": 10, "policy": POLICY},
    "expectations": [{"rollout": {"phase": "Promoted", "withinSeconds": 60}}],
}


@pytest.mark.parametrize("name", scenario.bundled())
def test_every_bundled_scenario_is_valid_and_judges_something(name):
    loaded = scenario.load(name)
    assert loaded.name == name
    assert loaded.description
    assert loaded.expectations


def test_scaling_shortens_the_load_and_its_windows_not_the_bounds():
    full = scenario.parse(copy.deepcopy(CANARY) | {"expectations": [
        *CANARY["expectations"], {"latency": {"afterSeconds": 40, "maxMs": 100}}]})
    short = scenario.parse(scenario._scaled(full.model_dump(by_alias=True), 0.25), 0.25)

    assert [p.seconds for p in short.phases] == [25]
    assert short.rollout.start_at_seconds == 2.5
    assert short.expectations[1].latency.after_seconds == 10
    assert short.expectations[0].rollout.within_seconds == 60  # the system's bound stays
    assert short.rollout.policy == full.rollout.policy
    assert short.schedule() == shapes.Phases((shapes.Phase(25, 10),))


def test_scaling_a_ramp_with_its_phase():
    short = scenario.parse(scenario._scaled(copy.deepcopy(STEP), 0.5), 0.5)
    assert [(p.seconds, p.ramp_seconds) for p in short.phases] == [(5, 0), (30, 1)]


def test_a_bound_that_no_longer_fits_its_scaled_phase_names_the_scale(tmp_path):
    path = tmp_path / "step.yaml"
    path.write_text(yaml.safe_dump(STEP))
    with pytest.raises(scenario.ScenarioError) as refused:
        scenario.load(path, duration_scale=0.2)
    assert refused.value.problems == [
        ("expectations.0.readyReplicas.withinSeconds",
         "15 s is longer than phase 'step' (12 s at --duration-scale 0.2)")]


def edited(base: dict, path: str, value) -> dict:
    """A deep copy of `base` with the value at a dotted path replaced (None: removed)."""
    document = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = document
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is None:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return document


@pytest.mark.parametrize(("document", "field", "reason"), [
    pytest.param(edited(STEP, "phases", []), "phases", "at least 1 item",
                 id="no-phase"),
    pytest.param(edited(STEP, "phases.1.users", 100_000), "phases.1.users",
                 "less than or equal to 5000", id="too-many-users"),
    pytest.param(edited(STEP, "phases.1.rampSeconds", 90), "phases.1",
                 "rampSeconds (90) must not exceed seconds (60)", id="ramp-past-its-phase"),
    pytest.param(edited(STEP, "phases.1.name", "idle"), "phases",
                 "phase names must be unique: idle", id="same-phase-twice"),
    pytest.param(edited(STEP, "expectations.2", {"errors": {"maxCount": 0},
                                                 "latency": {"maxMs": 5}}),
                 "expectations.2", "give exactly one of errors, latency", id="two-kinds-in-one"),
    pytest.param(edited(STEP, "expectations.2", {"latencyy": {"maxMs": 5}}),
                 "expectations.2.latencyy", "Extra inputs are not permitted", id="unknown-kind"),
    pytest.param(edited(STEP, "expectations.1.latency.phase", "steady"),
                 "expectations.1.latency.phase", "no phase 'steady' (phases: idle, step)",
                 id="no-such-phase"),
    pytest.param(edited(STEP, "expectations.1.latency.afterSeconds", 60),
                 "expectations.1.latency.afterSeconds", "60 s leaves nothing of step (60 s)",
                 id="window-left-empty"),
    pytest.param(edited(STEP, "expectations.0.readyReplicas.atLeast", "lots"),
                 "expectations.0.readyReplicas.atLeast",
                 "'lots' is neither a count (0-10000) nor 'policy'", id="count-not-a-count"),
    pytest.param(edited(STEP, "expectations.2.errors", {}), "expectations.2.errors",
                 "give maxPercent, maxCount or both", id="errors-without-a-bound"),
    pytest.param(edited(STEP, "expectations.1.latency.quantile", 99),
                 "expectations.1.latency.quantile", "less than 1", id="quantile-in-percent"),
    pytest.param(edited(STEP, "users", {"mix": {"v1": 0, "v2": 0}}), "users.mix",
                 "at least one weight must be above 0", id="users-send-nothing"),
    pytest.param(edited(STEP, "loops", 3), "loops", "Extra inputs are not permitted",
                 id="unknown-field"),
    pytest.param(edited(STEP, "expectations.2", {"rollout": {"phase": "Promoted",
                                                             "withinSeconds": 9}}),
                 "expectations.2.rollout", "the scenario starts no rollout",
                 id="rollout-expected-but-none-started"),
    pytest.param(edited(CANARY, "rollout.policy.steps.0.weight", 100),
                 "rollout.policy.steps.1.weight", "must exceed the previous step's weight",
                 id="invalid-rollout-policy"),
    pytest.param(edited(CANARY, "rollout.policy.service", "other"), "rollout.policy.service",
                 "'other' is not the scenario's service 'model'", id="rollout-elsewhere"),
    pytest.param(edited(CANARY, "rollout.startAtSeconds", 100), "rollout.startAtSeconds",
                 "100 s is not before the end of the load (100 s)", id="rollout-after-load"),
    pytest.param(edited(CANARY, "expectations.0.rollout.phase", "Paused"),
                 "expectations.0.rollout.phase", "'Promoted' or 'RolledBack'",
                 id="rollout-verdict-unknown"),
])
def test_an_invalid_scenario_names_the_field_and_the_reason(document, field, reason):
    with pytest.raises(scenario.ScenarioError) as refused:
        scenario.parse(document)
    fields = {problem[0]: problem[1] for problem in refused.value.problems}
    assert field in fields, refused.value.problems
    assert reason in fields[field]
    assert f"{field}: " in str(refused.value)


@pytest.mark.parametrize(("content", "reason"), [
    pytest.param("- a list\n", "not a mapping of scenario fields", id="not-a-mapping"),
    pytest.param("name: [unclosed\n", "is not YAML", id="not-yaml"),
])
def test_a_file_that_is_no_scenario_is_refused(tmp_path, content, reason):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(scenario.ScenarioError, match=reason):
        scenario.load(path)


def test_an_unknown_name_lists_the_bundled_scenarios():
    with pytest.raises(scenario.ScenarioError) as refused:
        scenario.load("stepp")
    assert refused.value.problems[0][0] == "(file)"
    assert "bundled: canary, scale-from-zero, soak, spike, step" in refused.value.problems[0][1]


@pytest.mark.parametrize("scale", [0, -1, 101])
def test_a_duration_scale_out_of_range_is_refused(scale):
    with pytest.raises(scenario.ScenarioError, match="--duration-scale"):
        scenario.load("step", duration_scale=scale)


@pytest.mark.parametrize(("policy", "rps", "latency_s", "replicas"), [
    pytest.param({"metric": "rps", "target": 10, "targetUtilization": 0.8}, 45, None, 6,
                 id="rps"),
    pytest.param({"metric": "rps", "target": 10, "targetUtilization": 0.8}, 40, None, 5,
                 id="rps-exactly-at-a-count"),
    pytest.param({"metric": "rps", "target": 10, "minReplicas": 3}, 5, None, 3,
                 id="at-least-min-replicas"),
    pytest.param({"metric": "rps", "target": 10, "maxReplicas": 2}, 45, None, 7,
                 id="max-replicas-ignored"),
    pytest.param({"metric": "concurrency", "target": 4, "targetUtilization": 0.5}, 100, 0.05, 3,
                 id="concurrency-by-littles-law"),
    pytest.param({"metric": "concurrency", "target": 4}, 100, None, None,
                 id="concurrency-without-latency"),
    pytest.param({"metric": "custom:kv-cache", "target": 0.8, "signal": {"query": "avg(kv)"}},
                 100, 0.05, None, id="custom"),
])
def test_the_policy_count_for_a_rate(policy, rps, latency_s, replicas):
    assert scenario.policy_replicas(scaling.load_policy(policy), rps, latency_s) == replicas


def test_the_scenario_reaches_locust_through_the_environment():
    loaded = scenario.load("canary")
    env = loaded.locust_env()
    assert shapes.from_env(env) == loaded.schedule()
    assert env["SLUICE_MODEL"] == "model"
    assert float(env["SLUICE_USER_RPS"]) == loaded.users.rps_per_user
    assert float(env["SLUICE_RUN_SECONDS"]) == loaded.seconds
    assert loaded.offered_rps(1.0) == 25 * 2
    assert loaded.offered_rps(loaded.seconds) == 0


def test_the_stack_file_gives_addresses_and_policies():
    stack = observe.LocalStack.load(ROOT / "examples" / "loadtest.yaml")
    assert (stack.router, stack.router_admin, stack.controller) == (
        "127.0.0.1:8080", "127.0.0.1:8081", "127.0.0.1:8082")
    assert set(stack.policies["model"]) == {"v1", "v2"}
    assert stack.policies["model"]["v1"].metric == "rps"


def test_a_stack_file_with_an_invalid_policy_names_its_field(tmp_path):
    document = yaml.safe_load((ROOT / "examples" / "loadtest.yaml").read_text())
    document["services"]["model"]["revisions"][1]["scaling"] = {"targetUtilization": 2}
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(observe.ObserverError,
                       match=r"services\.model\.revisions\.1\.scaling\.targetUtilization: "):
        observe.LocalStack.load(path)
