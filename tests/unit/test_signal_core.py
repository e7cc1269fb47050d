"""The control core on a custom signal, over in-memory ports and an injected clock: the value
sizes the revision, a missing one holds it and says why, and the routers still wake it."""

from __future__ import annotations

import math

import pytest

from autoscaler.control import core, ports
from policies import scaling
from tests.unit.test_core import Clock, MemoryReplicas, NoGpus, Routers, poke

KEY = ("model", "v1")
QUERY = 'avg(vllm:gpu_cache_usage_perc{service="$service",revision="$revision"})'


class Signals:
    """A SignalSource whose readings the test sets (a Reading, or a function of nothing that
    makes one); it records the queries it was sent."""

    def __init__(self) -> None:
        self.reading = ports.Reading(None, "nothing yet")
        self.asked: list[dict[ports.Key, ports.SignalQuery]] = []

    async def signals(self, queries):
        self.asked.append(dict(queries))
        reading = self.reading() if callable(self.reading) else self.reading
        return {key: reading for key in queries}


class Scraped:
    """A per-replica average as Prometheus sees it: ``total`` spread over the replicas, one
    scrape (a tick) late, so a replica that just became ready is not in it yet."""

    def __init__(self, replicas: MemoryReplicas, total: float) -> None:
        self.replicas, self.total, self.scraped = replicas, total, replicas.ready

    def __call__(self) -> ports.Reading:
        average = self.total / self.scraped if self.scraped else None
        self.scraped = self.replicas.ready
        return ports.Reading(average) if average is not None else ports.Reading(None, "no data")


def signal_core(kind: str = "AverageValue", **policy):
    routers, clock, source = Routers(), Clock(), Signals()
    control = core.Core(capacity=NoGpus(), publisher=routers, load=routers, clock=clock,
                        signals_=source)
    spec = scaling.load_policy({
        "metric": "custom:kv-cache", "target": 0.5, "stableWindowSeconds": 6,
        "minReplicas": 0, "initialScale": 0,
        "signal": {"query": QUERY, "type": kind, "timeoutSeconds": 3}, **policy})
    replicas = MemoryReplicas()
    control.upsert(ports.RevisionTarget("model", "v1", spec), replicas)
    routers.loads[KEY] = ports.RevisionLoad()
    return control, replicas, source, clock


async def ticks(control, clock, count: int, replicas: MemoryReplicas) -> None:
    for _ in range(count):
        clock.now += 1
        await control.tick()
        replicas.become_ready()


async def test_the_query_names_the_revision_and_carries_its_timeout():
    control, replicas, source, clock = signal_core()
    await ticks(control, clock, 1, replicas)
    assert source.asked == [{KEY: ports.SignalQuery(
        'avg(vllm:gpu_cache_usage_perc{service="model",revision="v1"})', 3.0)}]


async def test_an_average_value_signal_sizes_the_revision_at_ready_times_value_over_target():
    control, replicas, source, clock = signal_core(minReplicas=2)
    await ticks(control, clock, 2, replicas)
    assert replicas.ready == 2
    source.reading = Scraped(replicas, total=2.6)  # 2 replicas at 1.3: six replicas' worth
    desired = []
    for _ in range(30):
        await ticks(control, clock, 1, replicas)
        desired.append(replicas.desired)
    # up to ceil(2.6 / 0.5) and no further: the new replicas, at first outside the average,
    # never multiply it (no runaway), and once in it they share the same total
    assert desired[-1] == math.ceil(2.6 / 0.5) == 6
    assert max(desired) == 6
    [row] = control.status()
    assert row.signal == pytest.approx(2.6 / 6)
    assert row.demand == pytest.approx(2.6)
    assert not any(c.startswith("SignalMissing") for c in row.conditions)


async def test_a_missing_signal_holds_the_count_says_why_and_recovers():
    control, replicas, source, clock = signal_core(minReplicas=0)
    replicas.scale(4)
    replicas.become_ready()
    source.reading = Scraped(replicas, total=4.0)
    await ticks(control, clock, 20, replicas)
    assert replicas.desired == 8  # a total of 4.0 against 0.5 each
    for problem in ("Prometheus at http://127.0.0.1:9 did not answer", "no data for 'q'",
                    "'q' is NaN (no traffic in its window?)"):
        source.reading = ports.Reading(None, problem)
        await ticks(control, clock, 30, replicas)  # longer than window and grace together
        assert replicas.desired == 8, problem
        [row] = control.status()
        assert f"SignalMissing: kv-cache: {problem}; replicas held" in row.conditions
    source.reading = ports.Reading(0.0)  # back, and idle: the decider may scale down again
    await ticks(control, clock, 60, replicas)
    assert replicas.desired < 8
    [row] = control.status()
    assert not any(c.startswith("SignalMissing") for c in row.conditions)


async def test_a_value_that_is_no_load_is_missing_not_zero():
    control, replicas, source, clock = signal_core()
    replicas.scale(3)
    replicas.become_ready()
    source.reading = Scraped(replicas, total=1.5)
    await ticks(control, clock, 10, replicas)
    assert replicas.desired == 3
    source.reading = ports.Reading(-2.0)
    await ticks(control, clock, 40, replicas)
    assert replicas.desired == 3
    assert any("negative" in c for c in control.status()[0].conditions)


async def test_at_zero_replicas_the_routers_buffered_request_wakes_it_without_a_signal():
    control, replicas, source, clock = signal_core()
    source.reading = ports.Reading(None, "no data for 'q'")  # no replica exports anything
    await ticks(control, clock, 3, replicas)
    assert replicas.desired == 0
    control.on_poke(poke(buffered=2))
    assert replicas.desired == 1


async def test_a_value_under_the_activation_threshold_lets_the_revision_go_to_zero():
    control, replicas, source, clock = signal_core(
        kind="Value", scaleToZeroGraceSeconds=0,
        signal={"query": "sum(x)", "type": "Value", "activationThreshold": 0.2})
    replicas.scale(1)
    replicas.become_ready()
    control.load_source.loads[KEY] = ports.RevisionLoad()
    source.reading = ports.Reading(0.2)  # an idle model's background
    await ticks(control, clock, 20, replicas)
    assert replicas.desired == 0


async def test_without_a_signal_source_the_revision_is_held_and_status_says_so():
    routers, clock = Routers(), Clock()
    control = core.Core(capacity=NoGpus(), publisher=routers, load=routers, clock=clock)
    replicas = MemoryReplicas()
    replicas.scale(2)
    replicas.become_ready()
    control.upsert(ports.RevisionTarget("model", "v1", scaling.load_policy({
        "metric": "custom:q", "target": 1, "signal": {"query": "sum(q)"}})), replicas)
    for _ in range(3):
        clock.now += 1
        await control.tick()
    assert replicas.desired == 2
    assert any("no signal source" in c for c in control.status()[0].conditions)
