"""The control core over in-memory implementations of its interfaces: no process, no socket,
an injected clock. What it must do in every setting: decide a poke within the call, take in and
let go of revisions while it runs, and resume from state that went through JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field

import pytest

from autoscaler.control import core, ports
from autoscaler.rollouts import driver
from policies import codec, routing, scaling, wire


@dataclass
class MemoryReplicas:
    """Replicas that start when asked and become ready when the test says so."""

    desired: int = 0
    ready: int = 0
    starting: int = 0
    failure: str | None = None
    restarts: int = 0
    released_with: list[frozenset[str]] = field(default_factory=list)
    closed: bool = False
    cold_starts: list[float] = field(default_factory=list)

    def counts(self) -> ports.ReplicaCounts:
        return ports.ReplicaCounts(self.ready, self.starting)

    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{9000 + i}" for i in range(self.ready)]

    def scale(self, desired: int) -> None:
        self.desired = desired
        live = self.ready + self.starting
        if desired > live:
            self.starting += desired - live
        elif desired < live:
            drop = live - desired
            cancelled = min(drop, self.starting)
            self.starting -= cancelled
            self.ready -= drop - cancelled

    def become_ready(self, seconds: float = 1.0) -> None:
        self.ready += self.starting
        self.cold_starts += [seconds] * self.starting
        self.starting = 0

    def take_cold_starts(self) -> tuple[float, ...]:
        taken, self.cold_starts = tuple(self.cold_starts), []
        return taken

    def released(self, listed: frozenset[str]) -> None:
        self.released_with.append(listed)

    async def close(self) -> None:
        self.closed = True


class NoGpus:
    def free_gpus(self, target: ports.RevisionTarget) -> int | None:
        return None


class Routers:
    """The routers as the core sees them: loads it reads, tables it publishes."""

    def __init__(self) -> None:
        self.loads: dict[ports.Key, ports.RevisionLoad] = {}
        self.tables: list[routing.RouteTable] = []

    async def load(self) -> dict[ports.Key, ports.RevisionLoad]:
        return dict(self.loads)

    async def pokes(self, on_poke: ports.PokeHandler) -> None:
        await asyncio.Event().wait()  # the tests call on_poke themselves

    async def publish(self, table: routing.RouteTable) -> None:
        self.tables.append(table)

    def revisions(self) -> dict[str, list[str]]:
        last = self.tables[-1]
        return {name: [r.name for r in s.revisions] for name, s in last.services.items()}


class JsonStore:
    """A state store that keeps only JSON text, as a custom resource's status does."""

    def __init__(self) -> None:
        self.documents: dict[ports.StateKey, str] = {}

    def load(self, key: ports.StateKey, kind: type[ports.T]) -> ports.T | None:
        document = self.documents.get(key)
        return None if document is None else codec.load(kind, json.loads(document))

    def save(self, key: ports.StateKey, state: object) -> None:
        self.documents[key] = json.dumps(codec.dump(state), allow_nan=False)

    def drop(self, key: ports.StateKey) -> None:
        self.documents.pop(key, None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = {"metric": "concurrency", "target": 1, "targetUtilization": 1.0}


def target(revision: str = "v1", weight: int = 100, service: str = "model",
           **policy: object) -> ports.RevisionTarget:
    return ports.RevisionTarget(service, revision, scaling.load_policy({**POLICY, **policy}),
                                weight)


def new_core(store: ports.StateStore | None = None) -> tuple[core.Core, Routers, Clock]:
    routers, clock = Routers(), Clock()
    control = core.Core(capacity=NoGpus(), publisher=routers, load=routers, store=store,
                        clock=clock)
    return control, routers, clock


def poke(revision: str = "v1", buffered: int = 1) -> wire.Poke:
    return wire.Poke(service="model", revision=revision, buffered=buffered, time=0.0)


def test_a_poke_asks_for_a_replica_within_the_call():
    control, _, _ = new_core()
    replicas = MemoryReplicas()
    control.upsert(target(), replicas)
    assert replicas.desired == 0
    control.on_poke(poke())  # a plain call: nothing awaited between the poke and the ask
    assert (replicas.desired, replicas.starting) == (1, 1)


def test_a_poke_for_a_revision_the_core_does_not_have_changes_nothing():
    control, _, _ = new_core()
    replicas = MemoryReplicas()
    control.upsert(target(), replicas)
    control.on_poke(poke("v9"))
    assert replicas.desired == 0


async def test_a_revision_added_at_runtime_is_decided_on_the_next_tick_and_published():
    control, routers, clock = new_core()
    control.upsert(target("v1"), MemoryReplicas())
    await control.publish()
    assert routers.revisions() == {"model": ["v1"]}
    added = MemoryReplicas()
    control.upsert(target("v2", weight=0, minReplicas=2), added)
    assert added.desired == 0  # nothing decided before the tick
    clock.now += 1
    await control.tick()
    assert added.desired == 2
    added.become_ready()
    await control.publish()
    assert routers.revisions() == {"model": ["v1", "v2"]}
    v2 = routers.tables[-1].services["model"].revisions[1]
    assert (v2.weight, len(v2.endpoints)) == (0, 2)


async def test_a_wave_is_paced_while_replicas_start_and_released_freely_once_none_does():
    """The pace shares a wave held at zero between the first replica ready and the ones still
    starting (the policy's target in flight each); once none is starting, the queue goes as
    fast as the ready replicas answer."""
    control, routers, _ = new_core()
    replicas = MemoryReplicas()
    control.upsert(target("v1", minReplicas=0, initialScale=0), replicas)
    replicas.scale(3)
    replicas.ready, replicas.starting = 1, 2
    await control.publish()
    assert routers.tables[-1].services["model"].revisions[0].release_concurrency == 1
    replicas.become_ready()
    await control.publish()
    assert routers.tables[-1].services["model"].revisions[0].release_concurrency == 0


async def test_a_removed_revision_leaves_the_table_then_goes_to_zero_and_its_state_is_dropped():
    store = JsonStore()
    control, routers, clock = new_core(store)
    kept, removed = MemoryReplicas(), MemoryReplicas()
    control.upsert(target("v1"), kept)
    control.upsert(target("v2", weight=0, minReplicas=1), removed)
    await control.tick()
    removed.become_ready()
    await control.publish()
    assert routers.revisions() == {"model": ["v1", "v2"]}
    assert ports.StateKey.scaling(("model", "v2")) in store.documents

    control.remove(("model", "v2"))
    assert removed.ready == 1, "still serving until the routers have a table without it"
    clock.now += 1
    await control.tick()  # not decided any more: no replica asked for while it leaves
    assert removed.desired == 1
    await control.publish()
    assert routers.revisions() == {"model": ["v1"]}
    assert (removed.desired, removed.ready) == (0, 0)
    assert removed.released_with[-1] == frozenset(), "nothing of it is listed any more"
    await control.close()
    assert removed.closed
    assert ports.StateKey.scaling(("model", "v2")) not in store.documents
    assert not control.has(("model", "v2"))
    assert control.revisions_of("model") == []  # closed: the core forgot every revision


class GatedRouters(Routers):
    """Routers that take a table only when the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def publish(self, table: routing.RouteTable) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().publish(table)


async def test_a_replica_retired_while_a_publish_is_in_flight_is_released_only_after_the_next():
    """The table in flight still lists a replica scaled away meanwhile: the routers hold it,
    so it may not be stopped until a table without it has been accepted."""
    routers = GatedRouters()
    control = core.Core(capacity=NoGpus(), publisher=routers, load=routers, clock=Clock())
    replicas = MemoryReplicas()
    control.upsert(target(minReplicas=2), replicas)
    replicas.scale(2)
    replicas.become_ready()
    both = frozenset(replicas.endpoints())
    in_flight = asyncio.create_task(control.publish())
    await routers.entered.wait()
    replicas.scale(1)  # a tick retires one while the routers are taking the table
    routers.gate.set()
    await in_flight
    assert set(routers.tables[-1].services["model"].revisions[0].endpoints) == both
    assert replicas.released_with == [both], "released only what the routers no longer list"
    await control.publish()
    assert replicas.released_with[-1] == frozenset(replicas.endpoints())
    assert len(replicas.released_with[-1]) == 1


async def test_a_revision_removed_while_a_publish_is_in_flight_goes_after_the_next():
    routers = GatedRouters()
    control = core.Core(capacity=NoGpus(), publisher=routers, load=routers, clock=Clock())
    kept, removed = MemoryReplicas(), MemoryReplicas()
    control.upsert(target("v1"), kept)
    control.upsert(target("v2", weight=0), removed)
    in_flight = asyncio.create_task(control.publish())
    await routers.entered.wait()
    control.remove(("model", "v2"))
    routers.gate.set()
    await in_flight
    assert routers.revisions() == {"model": ["v1", "v2"]}
    assert not removed.closed and ("model", "v2") in control.revisions
    await control.publish()
    assert routers.revisions() == {"model": ["v1"]}
    assert ("model", "v2") not in control.revisions


async def test_a_revision_added_while_a_publish_is_in_flight_is_kept_and_published_next():
    routers = GatedRouters()
    control = core.Core(capacity=NoGpus(), publisher=routers, load=routers, clock=Clock())
    control.upsert(target("v1"), MemoryReplicas())
    in_flight = asyncio.create_task(control.publish())
    await routers.entered.wait()
    added = MemoryReplicas()
    control.upsert(target("v2", weight=0), added)
    routers.gate.set()
    await in_flight
    assert control.has(("model", "v2")) and not added.closed
    assert added.released_with == [], "not in the table the routers hold: nothing to release"
    await control.publish()
    assert routers.revisions() == {"model": ["v1", "v2"]}


async def test_nothing_is_published_until_the_driver_knows_every_revision():
    """A restarted controller learns its revisions one reconcile at a time: a table sent
    between two would take the canary out of every router (its weights jump)."""
    routers, whole = Routers(), asyncio.Event()
    control = core.Core(capacity=NoGpus(), publisher=routers, load=routers, clock=Clock(),
                        whole=whole)
    running = asyncio.create_task(control.run())
    try:
        control.upsert(target("v1", weight=50), MemoryReplicas())
        for _ in range(20):  # what the publishing task takes to send a table, and more
            await asyncio.sleep(0)
        assert routers.tables == []
        control.upsert(target("v2", weight=50), MemoryReplicas())
        whole.set()
        await control.published()
        assert [routers.revisions() for _ in routers.tables] == [{"model": ["v1", "v2"]}]
    finally:
        running.cancel()
        await control.close()


async def test_a_service_whose_revisions_are_all_removed_is_not_published_empty():
    control, routers, _ = new_core()
    replicas = MemoryReplicas()
    control.upsert(target("v1"), replicas)
    await control.publish()
    control.remove(("model", "v1"))
    await control.publish()
    assert len(routers.tables) == 1  # no table without services is sent
    assert replicas.desired == 0


def test_weights_change_together_and_holds_apply_at_once():
    control, _, _ = new_core()
    stable, canary = MemoryReplicas(), MemoryReplicas()
    control.upsert(target("v1"), stable)
    control.upsert(target("v2", weight=0), canary)
    control.set_weights("model", {"v1": 80, "v2": 20})
    with pytest.raises(KeyError):
        control.set_weights("model", {"v1": 0, "v3": 100})
    assert (control.weight(("model", "v1")), control.weight(("model", "v2"))) == (80, 20)
    control.hold("model", "v2", floor=3)
    assert canary.desired == 3
    control.hold("model", "v2", parked="rolled back")
    assert canary.desired == 0
    table = control.table()
    assert table is not None
    assert table.services["model"].revisions[1].unavailable == "rolled back"


async def test_weights_are_published_by_the_time_published_returns():
    control, routers, _ = new_core()
    control.upsert(target("v1"), MemoryReplicas())
    control.upsert(target("v2", weight=0), MemoryReplicas())
    running = asyncio.create_task(control.run())
    try:
        await asyncio.wait_for(control.published(), 10)
        control.set_weights("model", {"v1": 0, "v2": 100})
        await asyncio.wait_for(control.published(), 10)
        assert [r.weight for r in routers.tables[-1].services["model"].revisions] == [0, 100]
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_decider_state_goes_through_json_and_a_new_core_resumes_from_it():
    store = JsonStore()
    control, routers, clock = new_core(store)
    replicas = MemoryReplicas()
    control.upsert(target(), replicas)
    for second in range(10):  # a load of 6 in flight for ten seconds: six replicas, history
        clock.now = 1000.0 + second
        routers.loads[("model", "v1")] = ports.RevisionLoad(concurrency=6.0, inflight=6)
        await control.tick()
        replicas.become_ready(2.5)
    before = control.revisions[("model", "v1")].state
    assert len(before.history) == 10 and before.cold_start_s == pytest.approx(2.5)

    again, routers_again, clock_again = new_core(store)
    again.upsert(target(), replicas)
    assert again.revisions[("model", "v1")].state == before
    clock_again.now = 1010.0
    routers_again.loads[("model", "v1")] = ports.RevisionLoad(concurrency=6.0, inflight=6)
    await again.tick()
    resumed = again.revisions[("model", "v1")].state
    assert resumed.history[:10] == before.history  # the window carries on, not from scratch
    assert resumed.cold_start_s == pytest.approx(2.5)  # learned before the restart


async def test_rollout_memory_goes_through_json_and_a_new_driver_resumes_at_its_step():
    store = JsonStore()
    control, _, clock = new_core(store)
    stable, canary = MemoryReplicas(ready=2), MemoryReplicas()
    control.upsert(target("v1"), stable)
    control.upsert(target("v2", weight=0), canary)

    class Counters:
        served = 0

        async def counters(self) -> dict[str, dict[ports.Key, ports.Counters]]:
            self.served += 100
            bounds = (0.01, 0.1)
            return {"http://router": {
                ("model", "v1"): ports.Counters(self.served * 4, 0, (0, self.served * 4, 0),
                                                bounds),
                ("model", "v2"): ports.Counters(self.served, 0, (0, self.served, 0), bounds)}}

    counters = Counters()
    policy = {"service": "model", "stableRevision": "v1", "canaryRevision": "v2",
              "steps": [{"weight": 10, "minDurationSeconds": 1, "minRequests": 1},
                        {"weight": 50, "minDurationSeconds": 1, "minRequests": 1},
                        {"weight": 100, "minDurationSeconds": 1, "minRequests": 1}],
              "analysis": {"intervalSeconds": 1, "minSampleSize": 10}}
    first = driver.RolloutDriver(driver.parse_policy(policy), control, counters, None)
    canary.ready = 5
    for second in range(4):
        clock.now += 1.0 + second
        await first.interval()
    assert first.state.canary_weight > 0
    saved = store.load(ports.StateKey.rollout("model"), driver.Memory)
    assert saved == first.memory

    rollouts = driver.Rollouts(control, counters)
    resumed = await rollouts.start(policy, resume=True)
    await rollouts.stop()
    assert resumed.memory.state.step >= first.state.step  # no reset to step 0
    # One more interval ran on resuming: its 100 canary requests were added to the evidence
    # from before, not judged from scratch.
    assert resumed.memory.judged.canary.requests == first.memory.judged.canary.requests + 100
    assert control.weight(("model", "v2")) == first.state.canary_weight, "no weight jump"


# -- missing load: hold, never down, a stale backlog expires -------------------------------------

IDLE = ports.RevisionLoad()


async def test_missing_load_holds_the_count_and_never_scales_to_zero():
    control, routers, clock = new_core()
    replicas = MemoryReplicas()
    control.upsert(target(stableWindowSeconds=6, scaleToZeroGraceSeconds=1), replicas)
    control.on_poke(poke())
    replicas.become_ready()
    routers.loads[("model", "v1")] = IDLE  # answered, then idle
    await control.tick()
    routers.loads.clear()  # the routers stop answering
    for _ in range(120):
        clock.now += 1
        await control.tick()
        assert replicas.desired == 1, "scaled on data it did not have"
    row = control.status()[0]
    assert "LoadMissing: no load reported for 120 s" in row.conditions

    routers.loads[("model", "v1")] = IDLE  # they answer again: idle, so down it goes
    for _ in range(30):
        clock.now += 1
        await control.tick()
    assert replicas.desired == 0


async def test_a_stale_backlog_expires_and_drives_nothing():
    control, routers, clock = new_core()
    replicas = MemoryReplicas()
    control.upsert(target(maxReplicas=6), replicas)
    routers.loads[("model", "v1")] = ports.RevisionLoad(concurrency=6.0, inflight=6, rps=60,
                                                        buffered=20)
    await control.tick()
    assert replicas.desired == 6
    replicas.become_ready()
    routers.loads.clear()
    clock.now += control.load_stale_s + 1
    await control.tick()

    row = control.status()[0]
    assert (row.buffered, row.desired) == (0, 6)  # not "buffered 20" for requests long gone
    control.on_poke(poke(buffered=1))  # a poke decides on its own count, and lowers nothing
    assert replicas.desired == 6


def test_the_table_says_why_in_a_sentence_and_keeps_a_place_for_pacing():
    control, _, _ = new_core()
    control.upsert(target("v1"), MemoryReplicas(failure="its command cannot start"))
    (row,) = control.table().services["model"].revisions  # type: ignore[union-attr]
    assert row.unavailable == "its command cannot start"



async def test_a_restarted_core_lowers_no_count_before_the_routers_report_load():
    """A controller that starts again beside a Deployment that serves, its decider's memory
    older than the stable window, has not heard from the routers yet: their silence is not
    zero load, and the memory is no reason to scale down either."""
    store = JsonStore()
    before, routers, clock = new_core(store)
    serving = MemoryReplicas()
    before.upsert(target(maxReplicas=20), serving)
    routers.loads[("model", "v1")] = ports.RevisionLoad(concurrency=10.0, inflight=10)
    for _ in range(5):
        await before.tick()
        serving.become_ready()
        clock.now += 1
    assert serving.desired == 10

    after = core.Core(capacity=NoGpus(), publisher=routers, load=Routers(), store=store,
                      clock=clock)
    clock.now += 120  # the memory's newest sample is older than the 60 s stable window
    after.upsert(target(maxReplicas=20), serving)
    await after.tick()  # no router has answered yet
    clock.now += 1
    await after.tick()
    assert serving.desired == 10
    after.load_source = routers  # the routers answer: the count follows what they say
    routers.loads[("model", "v1")] = ports.RevisionLoad(concurrency=15.0, inflight=15)
    clock.now += 1
    await after.tick()
    assert serving.desired == 15
