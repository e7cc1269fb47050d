"""Custom signals, pure parts: the query checked when a policy is applied, the revision's names
put in safely, what a value asks of replicas, and which answers are no value at all."""

from __future__ import annotations

import math

import pydantic
import pytest

from autoscaler.local import stack
from autoscaler.sources import prometheus
from policies import scaling, signals

IDENTITY = signals.Identity("fraud-model", "v2", "team-a")


@pytest.mark.parametrize(("query", "problem"), [
    pytest.param('avg(vllm:gpu_cache_usage_perc{revision="$revision"})', None, id="vllm-gauge"),
    pytest.param('sum(rate(x{service="$service",namespace=~"$namespace|x"}[1m]))', None,
                 id="rate-regex"),
    pytest.param('label_replace(up, "a", "${1}", "b", "(.*)")', None, id="label-replace-group"),
    pytest.param("vector(1)", None, id="scalar-function"),
    pytest.param("sum(rate(", "not valid PromQL: unclosed left parenthesis", id="unclosed"),
    pytest.param("nosuch(x)", "unknown function", id="unknown-function"),
    pytest.param('x{a=~"("}', "illegal regex", id="bad-regex"),
    pytest.param("x[5m]", "range vector", id="range-vector"),
    pytest.param('"text"', "returns a string", id="string"),
    pytest.param("sum($revision)", "unexpected character: '$'", id="placeholder-outside-string"),
    pytest.param('x{a="$pod"}', "unknown placeholder $pod", id="unknown-placeholder"),
])
def test_a_query_is_checked_when_the_policy_is_applied(query, problem):
    found = signals.query_problem(query)
    if problem is None:
        assert found is None
    else:
        assert problem in found


def test_an_invalid_query_is_refused_with_the_field_and_the_reason():
    with pytest.raises(pydantic.ValidationError) as raised:
        scaling.load_policy({"metric": "custom:queue", "target": 4,
                             "signal": {"query": "sum(queue_waiting"}})
    [error] = raised.value.errors()
    assert error["loc"] == ("signal", "query")
    assert "not valid PromQL" in error["msg"]


@pytest.mark.parametrize(("query", "rendered"), [
    pytest.param('avg(x{revision="$revision",service="$service"})',
                 'avg(x{revision="v2",service="fraud-model"})', id="matchers"),
    pytest.param('x{namespace=~"$namespace|shared"}', 'x{namespace=~"team-a|shared"}',
                 id="inside-a-regex"),
    pytest.param('label_replace(x{revision="$revision"}, "a", "$1", "b", "(.*)")',
                 'label_replace(x{revision="v2"}, "a", "$1", "b", "(.*)")',
                 id="group-references-left-alone"),
])
def test_the_revisions_names_go_into_its_string_literals(query, rendered):
    assert signals.render(query, IDENTITY) == rendered


@pytest.mark.parametrize("name", ['v2"}) or vector(1) #', "v2\\", "V2", "v 2"])
def test_a_name_that_could_leave_its_string_literal_is_never_put_in_a_query(name):
    with pytest.raises(ValueError, match="not a DNS name"):
        signals.render('x{revision="$revision"}', signals.Identity("model", name))


@pytest.mark.parametrize(("kind", "threshold", "value", "ready", "demand"), [
    pytest.param("AverageValue", 0, 0.6, 3, 1.8, id="average-times-ready"),
    pytest.param("AverageValue", 0, 0.6, 0, 0.0, id="no-replica-no-share"),
    pytest.param("Value", 0, 7.0, 3, 7.0, id="total-as-is"),
    pytest.param("Value", 0, 7.0, 0, 7.0, id="total-at-zero-replicas"),
    pytest.param("AverageValue", 0.05, 0.05, 4, 0.0, id="at-threshold-is-idle"),
    pytest.param("Value", 2, 2.5, 1, 2.5, id="above-threshold-counts-whole"),
])
def test_what_a_value_asks_of_the_decider(kind, threshold, value, ready, demand):
    signal = signals.Signal(query="sum(x)", type=kind, activation_threshold=threshold)
    assert signal.demand(value, ready) == pytest.approx(demand)


@pytest.mark.parametrize(("kind", "value", "ready", "target", "replicas"), [
    pytest.param("AverageValue", 0.75, 4, 0.5, 6, id="hpa-average-value"),
    pytest.param("Value", 30, 2, 4, 8, id="total-divided-among-replicas"),
])
def test_the_policys_aim_is_the_signals_target_without_utilization(kind, value, ready, target,
                                                                   replicas):
    policy = scaling.load_policy({"metric": "custom:s", "target": target,
                                  "targetUtilization": 0.5,
                                  "signal": {"query": "sum(x)", "type": kind}})
    demand = policy.signal.demand(value, ready)
    assert scaling.replicas_for(demand, policy) == math.ceil(
        (ready * value if kind == "AverageValue" else value) / target) == replicas


@pytest.mark.parametrize(("value", "problem"), [
    (0.0, None), (3.5, None), (math.nan, "NaN"), (math.inf, "inf"), (-1.0, "negative"),
])
def test_a_value_that_is_no_load_is_no_signal(value, problem):
    found = signals.usable(value)
    assert (found is None) if problem is None else (problem in found)


NOW = 1_000_000.0


@pytest.mark.parametrize(("result", "value", "problem"), [
    pytest.param([{"metric": {}, "value": [NOW, "0.25"]}], 0.25, None, id="one-series"),
    pytest.param([NOW, "3"], 3.0, None, id="scalar"),
    pytest.param([], None, "no data", id="empty"),
    pytest.param([{"value": [NOW, "1"]}, {"value": [NOW, "2"]}], None, "2 series",
                 id="many-series"),
    pytest.param([{"value": [NOW, "NaN"]}], None, "NaN", id="nan"),
    pytest.param([{"value": [NOW, "+Inf"]}], None, "inf", id="infinite"),
    pytest.param([{"value": [NOW - 120, "1"]}], None, "stale", id="stale-answer"),
    pytest.param([{"value": "garbage"}], None, "unexpected answer", id="garbage"),
])
def test_prometheus_answers_that_hold_no_value_say_why(result, value, problem):
    reading = prometheus.reading("q", result, NOW, max_age_s=30)
    assert reading.value == value
    assert (reading.problem is None) if problem is None else (problem in reading.problem)


def test_a_stack_with_a_signal_and_no_prometheus_is_refused_naming_the_field(tmp_path):
    file = tmp_path / "stack.yaml"
    file.write_text(
        "services:\n  model:\n    revisions:\n      - name: v1\n        command: ['true']\n"
        "        scaling: {metric: 'custom:kv', target: 0.5, signal: {query: 'avg(kv)'}}\n")
    with pytest.raises(ValueError, match=r"^services\.model\.revisions\.0\.scaling\.signal: "
                                         r"a custom signal is queried at a Prometheus"):
        stack.load(file)
