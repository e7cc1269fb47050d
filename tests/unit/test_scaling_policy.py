"""ScalingPolicy: KPA defaults, the YAML (camelCase) form, every rejected value with its path,
and the JSON schema the CRD is generated from. The decisions made from a policy are in
test_decider.py."""

import pydantic
import pytest

from policies import scaling, validation


@pytest.mark.parametrize(
    ("field", "knative_default"),
    [
        pytest.param("metric", "concurrency", id="metric"),
        pytest.param("target_per_replica", 100.0, id="container-concurrency-target-default"),
        pytest.param("target_utilization", 0.7, id="container-concurrency-target-percentage"),
        pytest.param("min_replicas", 0, id="min-scale"),
        pytest.param("replica_ceiling", None, id="max-scale-unbounded"),
        pytest.param("initial_scale", 1, id="initial-scale"),
        pytest.param("activation_scale", 1, id="activation-scale"),
        pytest.param("stable_window_s", 60.0, id="stable-window"),
        pytest.param("panic_window_percentage", 10.0, id="panic-window-percentage"),
        pytest.param("panic_window_s", 6.0, id="panic-window"),
        pytest.param("panic_threshold_percentage", 200.0, id="panic-threshold-percentage"),
        pytest.param("max_scale_up_rate", 1000.0, id="max-scale-up-rate"),
        pytest.param("max_scale_down_rate", 2.0, id="max-scale-down-rate"),
        pytest.param("scale_down_delay_s", 0.0, id="scale-down-delay"),
        pytest.param("scale_to_zero_grace_s", 30.0, id="scale-to-zero-grace-period"),
        pytest.param("buffer_timeout_s", 300.0, id="revision-timeout"),
    ],
)
def test_defaults_are_knatives(field, knative_default):
    assert getattr(scaling.ScalingPolicy(), field) == knative_default


def test_sluice_defaults():
    policy = scaling.ScalingPolicy()
    assert (policy.buffer_depth, policy.gpus_per_replica, policy.gpu_resource) == (
        1000, 0, "nvidia.com/gpu",
    )


def test_rps_target_defaults_to_knatives():
    assert scaling.load_policy({"metric": "rps"}).target_per_replica == 200.0


def test_yaml_form_is_camel_case():
    policy = scaling.load_policy({
        "metric": "rps", "target": 50, "targetUtilization": 0.8, "maxReplicas": 10,
        "stableWindowSeconds": 120, "scaleDownDelaySeconds": 30, "scaleToZeroGraceSeconds": 0,
        "bufferTimeoutSeconds": 900, "gpusPerReplica": 1, "gpuResource": "nvidia.com/mig-1g.10gb",
    })
    assert (
        policy.target, policy.target_utilization, policy.max_replicas, policy.stable_window_s,
        policy.scale_down_delay_s, policy.scale_to_zero_grace_s, policy.buffer_timeout_s,
        policy.gpus_per_replica, policy.gpu_resource,
    ) == (50, 0.8, 10, 120, 30, 0, 900, 1, "nvidia.com/mig-1g.10gb")


@pytest.mark.parametrize("by_alias", [True, False], ids=["camelCase", "snake_case"])
def test_dump_loads_back(by_alias):
    policy = scaling.load_policy({"metric": "custom:kv-cache", "target": 0.5, "maxReplicas": 4,
                                  "signal": {"query": "avg(kv_cache_usage)", "type": "Value",
                                             "activationThreshold": 0.1, "timeoutSeconds": 3}})
    assert scaling.load_policy(policy.model_dump(by_alias=by_alias)) == policy


@pytest.mark.parametrize(
    ("metric", "kind", "signal"),
    [
        pytest.param("rps", scaling.MetricKind.RPS, None, id="rps"),
        pytest.param("concurrency", scaling.MetricKind.CONCURRENCY, None, id="concurrency"),
        pytest.param("streams", scaling.MetricKind.STREAMS, None, id="streams"),
        pytest.param("custom:kv-cache", scaling.MetricKind.CUSTOM, "kv-cache", id="custom"),
        pytest.param("custom:vllm.num_waiting", scaling.MetricKind.CUSTOM, "vllm.num_waiting",
                     id="custom-prometheus-style"),
    ],
)
def test_metric_kinds(metric, kind, signal):
    custom = {"signal": {"query": "sum(queue_waiting)"}} if kind is scaling.MetricKind.CUSTOM \
        else {}
    policy = scaling.load_policy({"metric": metric, "target": 1, **custom})
    assert (policy.metric_kind, policy.custom_signal) == (kind, signal)


@pytest.mark.parametrize(
    "resource",
    ["nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "nvidia.com/mig-3g.40gb",
     "nvidia.com/mig-1g.10gb+me"],
)
def test_gpu_resources_accepted(resource):
    assert scaling.load_policy({"gpuResource": resource}).gpu_resource == resource


@pytest.mark.parametrize(
    ("stable_window_s", "panic_percentage", "panic_window_s"),
    [
        pytest.param(60, 10, 6.0, id="knative-default"),
        pytest.param(6, 10, 1.0, id="at-least-one-second"),
        pytest.param(65, 10, 6.0, id="rounded"),
        pytest.param(120, 100, 120.0, id="whole-stable-window"),
    ],
)
def test_panic_window(stable_window_s, panic_percentage, panic_window_s):
    policy = scaling.ScalingPolicy(
        stable_window_s=stable_window_s, panic_window_percentage=panic_percentage
    )
    assert policy.panic_window_s == panic_window_s


@pytest.mark.parametrize(
    ("data", "path"),
    [
        pytest.param({"metric": "latency"}, "metric", id="unknown-metric"),
        pytest.param({"metric": "custom:"}, "metric", id="custom-without-name"),
        pytest.param({"metric": "custom:Bad Name", "target": 1}, "metric", id="custom-bad-name"),
        pytest.param({"metric": "custom:kv-cache", "signal": {"query": "avg(kv)"}}, "target",
                     id="custom-without-target"),
        pytest.param({"metric": "custom:kv-cache", "target": 1}, "signal",
                     id="custom-without-signal"),
        pytest.param({"metric": "rps", "signal": {"query": "avg(kv)"}}, "signal",
                     id="signal-without-custom-metric"),
        pytest.param({"target": 0}, "target", id="zero-target"),
        pytest.param({"targetUtilization": 0}, "targetUtilization", id="zero-utilization"),
        pytest.param({"targetUtilization": 1.2}, "targetUtilization", id="utilization-over-1"),
        pytest.param({"minReplicas": -1}, "minReplicas", id="negative-min"),
        pytest.param({"maxReplicas": -1}, "maxReplicas", id="negative-max"),
        pytest.param({"minReplicas": 5, "maxReplicas": 3}, "minReplicas", id="min-over-max"),
        pytest.param({"initialScale": 4, "maxReplicas": 3}, "initialScale", id="initial-over-max"),
        pytest.param({"initialScale": -1}, "initialScale", id="negative-initial"),
        pytest.param({"activationScale": 0}, "activationScale", id="zero-activation"),
        pytest.param({"activationScale": 4, "maxReplicas": 3}, "activationScale",
                     id="activation-over-max"),
        pytest.param({"stableWindowSeconds": 5}, "stableWindowSeconds", id="stable-under-6s"),
        pytest.param({"stableWindowSeconds": 3601}, "stableWindowSeconds", id="stable-over-1h"),
        pytest.param({"panicWindowPercentage": 0.5}, "panicWindowPercentage", id="panic-pct-low"),
        pytest.param({"panicWindowPercentage": 101}, "panicWindowPercentage",
                     id="panic-pct-high"),
        pytest.param({"panicThresholdPercentage": 100}, "panicThresholdPercentage",
                     id="panic-threshold-low"),
        pytest.param({"panicThresholdPercentage": 1001}, "panicThresholdPercentage",
                     id="panic-threshold-high"),
        pytest.param({"maxScaleUpRate": 1}, "maxScaleUpRate", id="scale-up-rate-1"),
        pytest.param({"maxScaleDownRate": 1}, "maxScaleDownRate", id="scale-down-rate-1"),
        pytest.param({"scaleDownDelaySeconds": -1}, "scaleDownDelaySeconds",
                     id="negative-delay"),
        pytest.param({"scaleToZeroGraceSeconds": -1}, "scaleToZeroGraceSeconds",
                     id="negative-grace"),
        pytest.param({"bufferDepth": -1}, "bufferDepth", id="negative-buffer-depth"),
        pytest.param({"bufferTimeoutSeconds": 0}, "bufferTimeoutSeconds", id="zero-timeout"),
        pytest.param({"gpusPerReplica": -1}, "gpusPerReplica", id="negative-gpus"),
        pytest.param({"gpuResource": "amd.com/gpu"}, "gpuResource", id="other-vendor"),
        pytest.param({"gpuResource": "nvidia.com/mig-9g.10gb"}, "gpuResource",
                     id="no-such-mig-profile"),
        pytest.param({"maxReplica": 3}, "maxReplica", id="misspelt-field"),
        pytest.param({"minReplicas": "two"}, "minReplicas", id="not-a-number"),
    ],
)
def test_invalid_value_is_rejected_with_its_path(data, path):
    with pytest.raises(pydantic.ValidationError) as caught:
        scaling.load_policy(data)
    lines = validation.describe(caught.value).splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [path]


def test_every_problem_is_reported_once_per_line():
    with pytest.raises(pydantic.ValidationError) as caught:
        scaling.load_policy({"minReplicas": 4, "initialScale": 5, "maxReplicas": 3})
    assert validation.describe(caught.value).splitlines() == [
        "minReplicas: must not exceed maxReplicas (3)",
        "initialScale: must not exceed maxReplicas (3)",
    ]


def test_unbounded_max_allows_any_min():
    assert scaling.load_policy({"minReplicas": 50, "initialScale": 60}).replica_ceiling is None


def test_policy_is_immutable():
    with pytest.raises(pydantic.ValidationError):
        scaling.ScalingPolicy().min_replicas = 3


def test_schema_describes_every_field_and_carries_bounds():
    properties = scaling.ScalingPolicy.model_json_schema(by_alias=True)["properties"]
    assert all(schema.get("description") for schema in properties.values())
    assert properties["targetUtilization"]["maximum"] == 1
    assert properties["stableWindowSeconds"]["minimum"] == 6
    assert properties["panicThresholdPercentage"]["maximum"] == 1000
    assert properties["gpuResource"]["pattern"] == scaling.GPU_RESOURCE_PATTERN


@pytest.mark.parametrize(("policy", "pace"), [
    pytest.param({"metric": "concurrency", "target": 5}, 4, id="5x0.7"),
    pytest.param({"metric": "concurrency", "target": 10, "targetUtilization": 1.0}, 10,
                 id="exact"),
    pytest.param({"metric": "concurrency", "target": 1, "targetUtilization": 0.1}, 1,
                 id="at-least-one"),
    pytest.param({"metric": "concurrency"}, 70, id="knative-default-100x0.7"),
    pytest.param({"metric": "rps", "target": 50}, 0, id="rps-unpaced"),
    pytest.param({"metric": "custom:kv", "target": 0.8, "signal": {"query": "avg(kv)"}}, 0,
                 id="custom-unpaced"),
    pytest.param({"metric": "streams", "target": 8}, 0, id="streams-unpaced"),
])
def test_release_pace_for_the_route_table(policy, pace):
    assert scaling.load_policy(policy).release_concurrency == pace
