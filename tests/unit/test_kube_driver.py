"""The Kubernetes driver's logic without a cluster: label selectors, which pods are endpoints
and which are starting, scaling through /scale (coalesced, never down blind), and what the
status says. The same code runs against the real apiserver in tests/k8s."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from types import SimpleNamespace

import pytest

from autoscaler.control import ports
from autoscaler.kube import pods, replicas, selectors, status
from policies import decider, scaling


@pytest.mark.parametrize(("selector", "labels", "matches"), [
    ("", {}, True),
    ("app=isvc.m-predictor", {"app": "isvc.m-predictor", "x": "1"}, True),
    ("app=isvc.m-predictor", {"app": "other"}, False),
    ("app==a,tier!=cache", {"app": "a", "tier": "web"}, True),
    ("app==a,tier!=cache", {"app": "a", "tier": "cache"}, False),
    ("app in (a, b),!canary", {"app": "b"}, True),
    ("app in (a, b),!canary", {"app": "b", "canary": "1"}, False),
    ("app notin (a,b),track", {"app": "c", "track": "x"}, True),
    ("app notin (a,b),track", {"app": "a", "track": "x"}, False),
])
def test_selectors_read_as_scale_reports_them(selector, labels, matches):
    assert selectors.parse(selector)(labels) is matches


def test_an_unreadable_selector_names_its_requirement():
    with pytest.raises(ValueError, match="'a b c'"):
        selectors.parse("app=x,a b c")


def probe_schedule(cold_start_s: float | None, until_s: float,
                   settings: replicas.ProbeSettings) -> list[tuple[float, float]]:
    """(age, wait) of each probe of a pod created at 0 that never answers: the waits the
    Prober sleeps, from the pure schedule."""
    age, wait, waits = 0.0, settings.first_interval_s, []
    while age < until_s:
        waits.append((round(age, 3), round(wait, 4)))
        age += wait
        wait = replicas.probe_interval(wait, age, cold_start_s, settings)
    return waits


@pytest.mark.parametrize(("cold_start_s", "fast_until_s"), [
    (None, 10.0),   # nothing learned: the floor
    (0.5, 10.0),    # a fast model server: the floor still
    (30.0, 60.0),   # a slow one: twice its learned cold start
])
def test_a_starting_pod_is_probed_every_50_ms_while_expected_then_backs_off_to_a_second(
        cold_start_s, fast_until_s):
    settings = replicas.ProbeSettings()
    schedule = probe_schedule(cold_start_s, fast_until_s + 30.0, settings)
    fast = [wait for age, wait in schedule if age < fast_until_s]
    slow = [wait for age, wait in schedule if age >= fast_until_s + 10.0]
    assert fast[:4] == [0.02, 0.03, 0.045, 0.05]  # starts at once, grows to the cap
    assert max(fast) == settings.fast_interval_s
    assert fast[-1] == settings.fast_interval_s
    assert slow and set(slow) == {settings.max_interval_s}
    waits = [wait for _, wait in schedule]
    assert waits == sorted(waits)  # never faster again once backing off


def test_the_probe_backs_off_by_half_each_miss_after_the_fast_stretch():
    settings = replicas.ProbeSettings()
    past = settings.fast_floor_s + 1
    assert replicas.probe_interval(0.05, past, None, settings) == pytest.approx(0.075)
    assert replicas.probe_interval(0.8, past, None, settings) == settings.max_interval_s
    assert replicas.probe_interval(0.05, 5.0, None, settings) == settings.fast_interval_s
    assert replicas.fast_for(100.0, settings) == 200.0
    assert replicas.fast_for(None, settings) == settings.fast_floor_s


def pod(name: str = "p1", **fields: object) -> pods.PodView:
    base = pods.PodView(namespace="ns", name=name, uid=f"uid-{name}", labels={"app": "m"},
                        phase="Running", ip="127.1.0.5", created_at=100.0, deleting=False,
                        kubelet_ready=False, unschedulable=None, failing=None, restarts=0,
                        port=8080, readiness_port=8080, readiness_path="/ready")
    return dataclasses.replace(base, **fields)


@pytest.mark.parametrize(("ip", "expected"), [
    ("10.1.2.3", "http://10.1.2.3:8080/ready"),
    ("fd00:10:244::5", "http://[fd00:10:244::5]:8080/ready"),
])
def test_a_pod_url_brackets_an_ipv6_address(ip, expected):
    assert pods.url(ip, 8080, "/ready") == expected
    assert pod(ip=ip).endpoint == expected.removesuffix("/ready")


class FakeScaleApi:
    """Answers /scale patches after the test lets it; records each."""

    def __init__(self) -> None:
        self.patches: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False
        self.tried_thrice = asyncio.Event()

    async def patch_scale(self, namespace: str, name: str, replicas_: int) -> object:
        await self.gate.wait()
        self.patches.append(replicas_)
        if len(self.patches) >= 3:
            self.tried_thrice.set()
        if self.fail:
            from autoscaler.kube import client
            raise client.Unavailable("refused")
        return SimpleNamespace(spec=SimpleNamespace(replicas=replicas_))


def kube_replicas(api: FakeScaleApi, index: replicas.PodIndex, prober: replicas.Prober,
                  healthy: bool = True, spec_replicas: int = 0) -> replicas.KubeReplicas:
    return replicas.KubeReplicas(api, replicas.ScaleTarget("ns", "m-predictor", "app=m"),  # type: ignore[arg-type]
                                 spec_replicas, index, prober, healthy=lambda: healthy,
                                 retry_s=0.01)


async def test_a_pod_is_an_endpoint_once_probed_until_the_kubelet_has_spoken():
    prober = replicas.Prober(None, lambda _: None)  # type: ignore[arg-type]
    fresh = pod()
    assert not prober.ready(fresh)
    prober._ready_at[fresh.uid] = (101.0, 0)  # sluice's probe answered
    assert prober.ready(fresh)
    assert not prober.ready(dataclasses.replace(fresh, deleting=True))  # leaves at once
    assert not prober.ready(dataclasses.replace(fresh, failing="CrashLoopBackOff"))
    assert not prober.ready(dataclasses.replace(fresh, restarts=1))  # restarted since
    prober.update(dataclasses.replace(fresh, kubelet_ready=True))
    assert prober.ready(dataclasses.replace(fresh, kubelet_ready=True))
    assert not prober.ready(fresh), "once the kubelet has said Ready, its word decides"


async def test_counts_take_asked_for_pods_as_starting_but_not_unschedulable_ones():
    index, prober = replicas.PodIndex(), replicas.Prober(None, lambda _: None)  # type: ignore[arg-type]
    api = FakeScaleApi()
    revision = kube_replicas(api, index, prober)
    ready = pod("ready", kubelet_ready=True)
    prober.update(ready)
    for view in (ready, pod("starting", ip=None, phase="Pending"),
                 pod("stuck", ip=None, phase="Pending", unschedulable="Insufficient gpu"),
                 pod("leaving", deleting=True, kubelet_ready=True),
                 pod("other", labels={"app": "other"})):
        index.put(view)
    revision.desired = 5
    asked = time.time()
    counts = revision.counts()
    # 1 ready; starting: the starting pod, and 2 more asked for (5 - 1 ready - 1 stuck) that
    # the Deployment has yet to create, counted as one number.
    assert (counts.ready, counts.starting) == (1, 3)
    assert revision.endpoints() == ["http://127.1.0.5:8080"]
    assert revision.unschedulable == "Insufficient gpu"
    # Ready per the kubelet, not probed by sluice: ready when counts() first saw it, by the
    # wall clock; created at 100.0.
    (cold_start,) = revision.take_cold_starts()
    assert asked - 100.0 <= cold_start <= time.time() - 100.0
    assert revision.take_cold_starts() == ()


async def test_scale_patches_once_for_the_latest_count_and_never_down_blind():
    api, index = FakeScaleApi(), replicas.PodIndex()
    prober = replicas.Prober(None, lambda _: None)  # type: ignore[arg-type]
    revision = kube_replicas(api, index, prober, spec_replicas=0)
    api.gate.clear()
    revision.scale(1)
    revision.scale(3)
    revision.scale(2)
    api.gate.set()
    assert revision._patching is not None
    await revision._patching
    assert api.patches == [2] or api.patches == [1, 2]  # coalesced: ends on the latest count
    assert revision.applied == 2

    blind = kube_replicas(api, index, prober, healthy=False, spec_replicas=2)
    blind.scale(0)
    assert blind.desired == 2 and blind._patching is None, "held while the apiserver is away"
    blind.scale(3)
    assert blind.desired == 3, "up is still allowed"


async def test_a_failed_patch_is_retried_until_it_lands():
    api, index = FakeScaleApi(), replicas.PodIndex()
    prober = replicas.Prober(None, lambda _: None)  # type: ignore[arg-type]
    revision = kube_replicas(api, index, prober)
    api.fail = True
    revision.scale(1)
    await asyncio.wait_for(api.tried_thrice.wait(), 10)
    assert revision.last_error is not None and "refused" in revision.last_error
    api.fail = False
    assert revision._patching is not None
    await asyncio.wait_for(revision._patching, 10)
    assert (revision.applied, revision.last_error) == (1, None)


def decision(**fields: object) -> decider.ScalingDecision:
    base = decider.ScalingDecision(desired=2, conditions=frozenset(), stable_demand=1.5,
                                   panic_demand=2.0, wanted=2, capacity_limit=None,
                                   cold_start_s=1.0)
    return dataclasses.replace(base, **fields)


def by_type(conditions: list[status.Condition]) -> dict[str, status.Condition]:
    return {c.type: c for c in conditions}


def test_conditions_say_what_holds():
    limited = decision(desired=4, wanted=8, capacity_limit=4,
                       conditions=frozenset({decider.Condition.CAPACITY_LIMITED}))
    shown = by_type(status.conditions_for(limited, ready=4, failure=None, unschedulable=None,
                                          problem=None))
    assert shown["Ready"].status and shown["Active"].status
    assert shown["CapacityLimited"].status
    assert shown["CapacityLimited"].message == "free GPUs hold 4 replicas of the 8 wanted"
    assert not shown["ReplicaFailed"].status and not shown["Panicking"].status

    failing = by_type(status.conditions_for(
        decision(desired=0, conditions=frozenset({decider.Condition.SCALED_TO_ZERO})), ready=0,
        failure="pod p: CrashLoopBackOff: exited with code 3, restarted 2 times",
        unschedulable=None, problem=None))
    assert (failing["Active"].status, failing["Active"].reason) == (False, "ScaledToZero")
    assert (failing["ReplicaFailed"].status, failing["ReplicaFailed"].reason) == (
        True, "CrashLoopBackOff")

    problem = status.Condition("Ready", False, "AutoscalerConflict", "hpa would fight")
    assert status.conditions_for(None, ready=0, failure=None, unschedulable=None,
                                 problem=problem) == [problem]


@pytest.mark.parametrize(("reading", "missing", "why"), [
    (None, True, "not read yet"),
    (ports.Reading(None, "Prometheus at http://127.0.0.1:9 refused the connection"), True,
     "refused the connection"),
    (ports.Reading(float("nan")), True, "NaN"),
    (ports.Reading(0.4), False, ""),
])
def test_a_custom_signal_says_when_it_is_missing_and_why(reading, missing, why):
    policy = scaling.load_policy({"metric": "custom:kv-cache", "target": 0.5, "signal": {
        "query": 'avg(kv{revision="$revision"})', "type": "AverageValue"}})
    shown = status.signal_condition(policy, reading)
    assert shown is not None and shown.type == "SignalMissing"
    assert shown.status is missing
    assert why in shown.message and (not missing or shown.message.startswith("kv-cache: "))
    assert status.signal_condition(scaling.load_policy({"metric": "rps", "target": 5}),
                                   reading) is None


def test_a_condition_keeps_its_transition_time_while_its_status_stays():
    first = status.rendered([status.Condition("Active", True, "Serving")], [], 1000.0, 1)
    again = status.rendered([status.Condition("Active", True, "Serving", "2 ready")], first,
                            2000.0, 2)
    flipped = status.rendered([status.Condition("Active", False, "ScaledToZero")], again,
                              3000.0, 2)
    assert first[0]["lastTransitionTime"] == again[0]["lastTransitionTime"] \
        == "1970-01-01T00:16:40Z"
    assert flipped[0]["lastTransitionTime"] == "1970-01-01T00:50:00Z"
    assert status.validated({"conditions": flipped, "desired": 0})  # the CRD's schema holds


def test_the_reason_names_the_demand_and_the_cap():
    policy = scaling.load_policy({"metric": "concurrency", "target": 2, "targetUtilization": 1})
    text = status.explain(decision(desired=4, wanted=6, capacity_limit=4, stable_demand=11.0),
                          policy)
    assert text.startswith("11 in flight over the stable window")
    assert "at 2 per replica: 6 wanted, free GPUs hold 4, 4 asked for" in text
