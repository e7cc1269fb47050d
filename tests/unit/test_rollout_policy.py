"""RolloutPolicy: defaults, the YAML (camelCase) form, every rejected value with its path, and
the JSON schema the Rollout CRD is generated from. The judges and the state machine that read a
policy are in test_judges.py and test_rollouts.py."""

import pydantic
import pytest
import yaml

from policies import rollout, validation

NAMES = {"service": "fraud-model", "stableRevision": "v1", "canaryRevision": "v2"}


def load(**fields):
    return rollout.load_rollout({**NAMES, **fields})


@pytest.mark.parametrize(
    ("path", "default"),
    [
        pytest.param("analysis.interval_s", 5.0, id="interval"),
        pytest.param("analysis.judge", rollout.Judge.SEQUENTIAL, id="judge"),
        pytest.param("analysis.alpha", 0.01, id="alpha"),
        pytest.param("analysis.min_sample_size", 50, id="min-sample-size"),
        pytest.param("analysis.failure_limit", 4, id="failure-limit"),
        pytest.param("slo.success_rate.minimum", 99.0, id="success-rate-min"),
        pytest.param("slo.success_rate.margin_points", 1.0, id="error-margin"),
        pytest.param("slo.latency.quantile", 0.99, id="latency-quantile"),
        pytest.param("slo.latency.max_ms", 500.0, id="latency-max"),
        pytest.param("slo.latency.tolerance_percent", 10.0, id="latency-tolerance"),
        pytest.param("slo.custom", [], id="no-custom-metrics"),
        pytest.param("max_duration_s", 3600.0, id="max-duration"),
        pytest.param("stickiness", None, id="no-stickiness"),
        pytest.param("promotion.old_stable", rollout.AfterPromotion.SCALE_TO_ZERO,
                     id="old-stable-scaled-to-zero"),
        pytest.param("rollback.canary", rollout.AfterRollback.SCALE_TO_ZERO,
                     id="canary-scaled-to-zero"),
    ],
)
def test_defaults(path, default):
    value = load()
    for part in path.split("."):
        value = getattr(value, part)
    assert value == default


def test_default_steps_are_5_10_25_50_100_with_30s_and_100_requests():
    steps = load().steps
    assert [s.weight for s in steps] == [5, 10, 25, 50, 100]
    assert {(s.min_duration_s, s.min_requests) for s in steps} == {(30.0, 100)}


def test_yaml_form_is_camel_case():
    policy = load(
        steps=[{"weight": 10, "minDurationSeconds": 60, "minRequests": 500}, {"weight": 100}],
        analysis={"intervalSeconds": 2, "judge": "compare", "alpha": 0.05, "minSampleSize": 20,
                  "failureLimit": 2},
        slo={"successRate": {"min": 99.9, "marginPoints": 0.5},
             "latency": {"quantile": 0.95, "maxMs": 250, "tolerancePercent": 20},
             "custom": [{"name": "gpu-memory", "query": "max(gpu_mem)", "max": 0.95}]},
        maxDurationSeconds=900, stickiness={"header": "X-User-Id"},
        promotion={"oldStable": "keep"}, rollback={"canary": "keep"},
    )
    assert (policy.steps[0].min_duration_s, policy.steps[0].min_requests) == (60, 500)
    assert (policy.analysis.interval_s, policy.analysis.judge, policy.analysis.alpha) == (
        2, rollout.Judge.COMPARE, 0.05)
    assert (policy.slo.success_rate.minimum, policy.slo.latency.max_ms) == (99.9, 250)
    assert policy.slo.custom[0].maximum == 0.95
    assert (policy.max_duration_s, policy.stickiness.header) == (900, "X-User-Id")
    assert (policy.promotion.old_stable, policy.rollback.canary) == ("keep", "keep")


def test_the_module_docstrings_example_loads():
    example = rollout.__doc__.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    policy = rollout.load_rollout(yaml.safe_load(example))
    assert [s.weight for s in policy.steps] == [10, 50, 100]
    assert policy.slo.custom[0].name == "gpu-memory"


@pytest.mark.parametrize("by_alias", [True, False], ids=["camelCase", "snake_case"])
def test_dump_loads_back(by_alias):
    policy = load(steps=[{"weight": 20}, {"weight": 100}],
                  slo={"custom": [{"name": "queue", "query": "q", "min": 0, "max": 5}]})
    assert rollout.load_rollout(policy.model_dump(by_alias=by_alias)) == policy


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        pytest.param({"service": "Fraud Model"}, "service", id="service-not-a-dns-label"),
        pytest.param({"stableRevision": ""}, "stableRevision", id="empty-stable"),
        pytest.param({"canaryRevision": "v1"}, "canaryRevision", id="canary-is-stable"),
        pytest.param({"steps": []}, "steps", id="no-steps"),
        pytest.param({"steps": [{"weight": 0}, {"weight": 100}]}, "steps.0.weight",
                     id="zero-weight"),
        pytest.param({"steps": [{"weight": 101}]}, "steps.0.weight", id="weight-over-100"),
        pytest.param({"steps": [{"weight": 50}, {"weight": 10}, {"weight": 100}]},
                     "steps.1.weight", id="decreasing-weights"),
        pytest.param({"steps": [{"weight": 10}, {"weight": 10}, {"weight": 100}]},
                     "steps.1.weight", id="repeated-weight"),
        pytest.param({"steps": [{"weight": 10}, {"weight": 50}]}, "steps.1.weight",
                     id="last-step-not-100"),
        pytest.param({"steps": [{"weight": 100, "minDurationSeconds": 0}]},
                     "steps.0.minDurationSeconds", id="zero-step-duration"),
        pytest.param({"steps": [{"weight": 100, "minRequests": -1}]}, "steps.0.minRequests",
                     id="negative-step-requests"),
        pytest.param({"steps": [{"weight": 100, "pause": "10m"}]}, "steps.0.pause",
                     id="unknown-step-field"),
        pytest.param({"analysis": {"intervalSeconds": 0}}, "analysis.intervalSeconds",
                     id="zero-interval"),
        pytest.param({"analysis": {"judge": "bayesian"}}, "analysis.judge", id="unknown-judge"),
        pytest.param({"analysis": {"alpha": 0}}, "analysis.alpha", id="zero-alpha"),
        pytest.param({"analysis": {"alpha": 0.5}}, "analysis.alpha", id="alpha-half"),
        pytest.param({"analysis": {"minSampleSize": 0}}, "analysis.minSampleSize",
                     id="zero-sample-guard"),
        pytest.param({"analysis": {"failureLimit": 0}}, "analysis.failureLimit",
                     id="zero-failure-limit"),
        pytest.param({"slo": {"successRate": {"min": 100}}}, "slo.successRate.min",
                     id="success-rate-100"),
        pytest.param({"slo": {"successRate": {"min": 0}}}, "slo.successRate.min",
                     id="success-rate-0"),
        pytest.param({"slo": {"successRate": {"marginPoints": 0}}}, "slo.successRate.marginPoints",
                     id="zero-margin"),
        pytest.param({"slo": {"latency": {"quantile": 1}}}, "slo.latency.quantile",
                     id="quantile-1"),
        pytest.param({"slo": {"latency": {"quantile": 0}}}, "slo.latency.quantile",
                     id="quantile-0"),
        pytest.param({"slo": {"latency": {"maxMs": 0}}}, "slo.latency.maxMs", id="zero-max-ms"),
        pytest.param({"slo": {"latency": {"tolerancePercent": 0}}},
                     "slo.latency.tolerancePercent", id="zero-tolerance"),
        pytest.param({"slo": {"custom": [{"name": "q", "query": "x"}]}}, "slo.custom.0",
                     id="custom-without-bounds"),
        pytest.param({"slo": {"custom": [{"name": "q", "query": "x", "min": 2, "max": 1}]}},
                     "slo.custom.0", id="custom-min-over-max"),
        pytest.param({"slo": {"custom": [{"name": "Q!", "query": "x", "max": 1}]}},
                     "slo.custom.0.name", id="custom-bad-name"),
        pytest.param({"slo": {"custom": [{"name": "q", "query": "", "max": 1}]}},
                     "slo.custom.0.query", id="custom-empty-query"),
        pytest.param({"slo": {"custom": [{"name": "q", "query": "x", "max": 1},
                                         {"name": "q", "query": "y", "min": 0}]}},
                     "slo.custom", id="custom-duplicate-names"),
        pytest.param({"maxDurationSeconds": 0}, "maxDurationSeconds", id="zero-max-duration"),
        pytest.param({"maxDurationSeconds": 150}, "maxDurationSeconds",
                     id="max-duration-shorter-than-steps"),
        pytest.param({"stickiness": {}}, "stickiness", id="stickiness-without-source"),
        pytest.param({"promotion": {"oldStable": "delete"}}, "promotion.oldStable",
                     id="unknown-promotion"),
        pytest.param({"rollback": {"canary": "delete"}}, "rollback.canary",
                     id="unknown-rollback"),
        pytest.param({"maxDuration": 60}, "maxDuration", id="misspelt-field"),
    ],
)
def test_invalid_value_is_rejected_with_its_path(fields, path):
    with pytest.raises(pydantic.ValidationError) as caught:
        load(**fields)
    lines = validation.describe(caught.value).splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [path]


def test_every_problem_is_reported_once_per_line_with_its_reason():
    with pytest.raises(pydantic.ValidationError) as caught:
        load(canaryRevision="v1", steps=[{"weight": 50}, {"weight": 20}],
             maxDurationSeconds=60)
    assert validation.describe(caught.value).splitlines() == [
        "canaryRevision: must differ from stableRevision",
        "steps.1.weight: must exceed the previous step's weight (50)",
        "steps.1.weight: the last step must have weight 100",
        "maxDurationSeconds: must exceed the steps' minimum durations together (60 s)",
    ]


def test_names_are_required():
    with pytest.raises(pydantic.ValidationError) as caught:
        rollout.load_rollout({})
    paths = [line.split(": ", 1)[0]
             for line in validation.describe(caught.value).splitlines()]
    assert paths == ["service", "stableRevision", "canaryRevision"]


def test_policy_is_immutable():
    with pytest.raises(pydantic.ValidationError):
        load().max_duration_s = 10


def test_only_the_sequential_judge_looks_continuously():
    assert [j for j in rollout.Judge if j.looks_continuously] == [rollout.Judge.SEQUENTIAL]


def test_schema_describes_every_field_and_carries_bounds():
    schema = rollout.RolloutPolicy.model_json_schema(by_alias=True)
    definitions = schema["$defs"]

    def described(field):
        """A nested model is described by its docstring, or by its fields' descriptions."""
        if "$ref" not in field:
            return field.get("description")
        model = definitions[field["$ref"].split("/")[-1]]
        return model.get("description") or all(described(f) for f in model["properties"].values())

    models = [schema, *(d for d in definitions.values() if "properties" in d)]
    assert all(described(field) for m in models for field in m["properties"].values())
    weight = definitions["Step"]["properties"]["weight"]
    assert (weight["minimum"], weight["maximum"]) == (1, 100)
    assert definitions["Step"]["properties"]["minDurationSeconds"]["exclusiveMinimum"] == 0
    alpha = definitions["Analysis"]["properties"]["alpha"]
    assert (alpha["exclusiveMinimum"], alpha["exclusiveMaximum"]) == (0, 0.5)
    quantile = definitions["Latency"]["properties"]["quantile"]
    assert (quantile["exclusiveMinimum"], quantile["exclusiveMaximum"]) == (0, 1)
    assert schema["properties"]["steps"]["minItems"] == 1
    assert definitions["Analysis"]["properties"]["judge"]["default"] == "sequential"
    assert schema["required"] == ["service", "stableRevision", "canaryRevision"]
