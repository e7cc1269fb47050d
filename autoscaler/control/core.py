"""The control core: collect, decide, act, publish; every tick, and at once on a poke.

One core runs in every setting; what differs is behind the interfaces of control/ports.py,
which drivers implement (local processes, Kubernetes, the simulator). The set of revisions
changes while it runs: a driver ``upsert``s a revision when it appears or its policy changes
and ``remove``s it when it goes.

Each tick reads every revision's load, asks the pure decider (policies/decider.py) for its
replica count and hands that to the revision's replicas. A router's poke (the first request
buffered for a revision at zero) decides that revision at once, so a replica is asked for
within milliseconds of the first request, not at the next tick.

Publishing is its own task, woken whenever the table changes (a replica became ready, one must
drain, a weight moved): a ready replica joins the routes at once, and a retiring one is
released (stopped) only after every router has accepted a table without it, so no request is
sent to a stopping replica. A removed revision leaves the table the same way, then its replicas
are scaled to zero and closed and its state is dropped. A driver that learns its revisions one
at a time (a controller starting, or newly elected) holds the first publish until it knows them
all (``whole``): the routers keep their last table meanwhile.

A rollout (autoscaler/rollouts/) steers revisions through four calls: ``set_weights`` (published
at once as one table), a replica ``floor`` the decider's count is raised to, parking (``hold``
with a reason: zero replicas whatever the decider wants) and ``set_sticky``. The decider keeps
deciding underneath, so its state stays warm when a hold ends.

Decider state goes to the StateStore after every decision, so a new core, in this process or
another, resumes from it; times in it are on ``clock``, which must be wall-clock seconds (kept
from going backwards) wherever state outlives the process.

Missing load (no router reported a revision: routers restarting or unreachable) is no reason to
scale: a tick without a revision's load leaves its replicas as they are (a revision never
decided yet gets its policy's initial count, unless it already runs replicas: a restarted
controller's revisions are not idle until the routers say so), and no decision lowers a
revision's count while its load is older than ``load_stale_s``. That load then expires: a
stale ``buffered`` drives no decision (a poke's own count still starts replicas), status shows
none and says LoadMissing.
Silence may be traffic no router could count, so it never scales a revision to zero; when the
routers answer again, the decider acts on what they say, down as well as up.

A custom signal (policies/signals.py) is read through the SignalSource once per tick, beside
the load. Missing data is never a signal either: a reading without a usable value (no answer,
no data, NaN, stale) keeps the revision's last decision and its replicas, and status says
SignalMissing with the reason. Only a revision with no replica at all is decided without one:
nothing runs to export a value, so it is 0, and the routers' buffered requests wake it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from autoscaler.control import ports
from policies import decider, routing, scaling, signals, wire

logger = logging.getLogger(__name__)

S = TypeVar("S")

PUBLISH_RETRY_S = 0.5
"""Seconds between attempts to publish a table the routers did not take."""


@dataclass(frozen=True)
class Decider(Generic[S]):
    """A decision function with its fresh state: sluice's, or a baseline's in the simulator."""

    decide: Callable[[decider.ScalingInputs, S, scaling.ScalingPolicy],
                     tuple[decider.ScalingDecision, S]]
    fresh: Callable[[], S]
    state_type: type[S]


SLUICE: Decider[decider.DeciderState] = Decider(decider.decide, decider.DeciderState,
                                                decider.DeciderState)


def scaling_inputs(now: float, policy: scaling.ScalingPolicy, load: ports.RevisionLoad,
                   counts: ports.ReplicaCounts, *, buffered: int = 0,
                   free_gpus: int | None = None, cold_starts: tuple[float, ...] = (),
                   custom: float | None = None) -> decider.ScalingInputs:
    """The decider's observations of one revision: the one place they are put together (the
    controller and the simulator both call this). ``buffered`` is a poke's count, which may be
    newer than the load's; ``custom`` is a custom signal's value."""
    value = custom if custom is not None else load.metric(policy.metric_kind)
    return decider.ScalingInputs(
        now=now, value=value, buffered=max(load.buffered, buffered), in_flight=load.inflight,
        arrivals=load.rps, admitted=load.dispatched,
        ready=counts.ready, starting=counts.starting, free_gpus=free_gpus,
        cold_starts=cold_starts)


def signal_value(reading: ports.Reading | None) -> tuple[float | None, str | None]:
    """A custom signal's value, or why there is none (then it is missing, never 0)."""
    if reading is None:
        return None, "not read yet"
    if reading.value is None:
        return None, reading.problem or "no value"
    problem = signals.usable(reading.value)
    return (None, problem) if problem is not None else (reading.value, None)


@dataclass
class Revision:
    """What the core knows of one revision."""

    target: ports.RevisionTarget
    replicas: ports.Replicas
    weight: int
    state: Any
    decision: decider.ScalingDecision | None = None
    load: ports.RevisionLoad = ports.NO_LOAD
    load_at: float = -math.inf
    """When ``load`` was reported (on the core's clock); never, before the first report. A
    revision just added, by a restarted controller too, is not idle: no router has spoken."""
    poke_to_start_ms: float | None = None
    """From the router's poke to a replica start requested, the last time a poke started one."""
    signal: ports.Reading | None = None
    """The custom signal's reading of the last tick; None before the first or without one."""
    signal_used: tuple[float, int] | None = None
    """The signal's value the last decision was made on, and the replicas ready then."""
    ready_seen: tuple[int, float] = (0, -math.inf)
    """(ready, since when): an AverageValue is held for its lag after the count changed."""
    floor: int = 0
    """Replicas a rollout keeps at least; the decider's count is raised to it."""
    parked: str | None = None
    """Why a rollout holds this revision at zero replicas, whatever the decider wants; routers
    answer requests pinned to it with this reason instead of holding them for a replica."""
    removing: bool = False
    """Leaving the core: out of the table, then (unless ``keep_replicas``) scaled to zero, and
    closed."""
    keep_replicas: bool = False

    @property
    def key(self) -> ports.Key:
        return self.target.key

    def replicas_wanted(self, desired: int) -> int:
        """The decider's count with the rollout's hold applied."""
        if self.removing or self.parked:
            return 0
        return max(desired, self.floor)


@dataclass(frozen=True)
class RevisionStatus:
    """One row of ``sluice status`` and of a ScalingPolicy's status."""

    service: str
    name: str
    weight: int
    desired: int
    ready: int
    starting: int
    restarts: int
    rps: float
    inflight: int
    p99_ms: float | None
    buffered: int
    conditions: list[str]
    reason: str | None
    poke_to_start_ms: float | None
    signal: float | None = None
    """The custom signal's value the last decision was made on (the query's, before
    ``type`` makes it a revision total); None without a custom metric."""
    signal_ready: int | None = None
    """The replicas ready at that decision (an AverageValue's total is signal x these)."""
    demand: float | None = None
    """The last decision's demand over the stable window, in the metric's unit (revision
    total); the count follows ceil(demand / per-replica aim) through the decider's rules."""


class MonotonicWallClock:
    """Wall-clock seconds that never go backwards: comparable across processes and hosts (so
    persisted state means the same to the next controller) and safe for the decider, which
    needs time never to decrease."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._last = 0.0

    def __call__(self) -> float:
        self._last = max(self._last, self._wall())
        return self._last


class Core:
    """Decides and acts for a changing set of revisions; see the module docstring."""

    def __init__(self, *, capacity: ports.Capacity, publisher: ports.RoutePublisher | None = None,
                 load: ports.LoadSource | None = None, store: ports.StateStore | None = None,
                 clock: Callable[[], float] | None = None, tick_s: float = 1.0,
                 decider_: Decider[Any] = SLUICE, load_stale_s: float | None = None,
                 signals_: ports.SignalSource | None = None,
                 whole: asyncio.Event | None = None) -> None:
        self.capacity = capacity
        self.publisher = publisher
        self.load_source = load
        self.signal_source = signals_
        self.store: ports.StateStore = store if store is not None else ports.MemoryStore()
        self.clock = clock or MonotonicWallClock()
        self.tick_s = tick_s
        self.decider = decider_
        self.load_stale_s = 3 * tick_s if load_stale_s is None else load_stale_s
        """Seconds after which a revision's last reported load expires (module docstring)."""
        self.revisions: dict[ports.Key, Revision] = {}
        self.service_sticky: dict[str, routing.Sticky] = {}
        """Each service's own stickiness, as its driver declares it."""
        self.rollout_sticky: dict[str, routing.Sticky] = {}
        """A rollout's stickiness, in force while it runs, over the service's own."""
        self._dirty = asyncio.Event()
        self._changes = 0
        """Changes that may alter the table, counted; ``_published_changes`` is how many of
        them every router has accepted."""
        self._published_changes = 0
        self._publishes = asyncio.Condition()
        self._published: routing.RouteTable | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._whole = whole
        """Set by the driver once it has upserted every revision it knows of; nothing is
        published before. A restarted controller adds revisions one reconcile at a time, and a
        table sent between two of them would take a serving revision out of every router."""

    # the set of revisions

    def upsert(self, target: ports.RevisionTarget, replicas: ports.Replicas | None = None) -> None:
        """Add a revision (``replicas`` required), or update its target (policy, concurrency,
        declared weight). A new revision resumes from the state store if it holds its state."""
        revision = self.revisions.get(target.key)
        if revision is not None and not revision.removing:
            if target.weight != revision.target.weight:
                revision.weight = target.weight  # a declared change; a rollout sets its own
            revision.target = target
            self._changed()
            return
        if replicas is None:
            raise ValueError(f"revision {target.key} is new: give its replicas")
        state = self.store.load(ports.StateKey.scaling(target.key), self.decider.state_type)
        if state is None:
            state = self.decider.fresh()
        self.revisions[target.key] = Revision(target, replicas, target.weight, state)
        self._changed()

    def remove(self, key: ports.Key, *, keep_replicas: bool = False) -> None:
        """Take a revision out: it leaves the table, then its replicas go (or, with
        ``keep_replicas``, stay as they are: the driver stops managing them) and its state is
        dropped, after the next publish, so no router sends it a request meanwhile."""
        revision = self.revisions.get(key)
        if revision is None or revision.removing:
            return
        revision.removing = True
        revision.keep_replicas = keep_replicas
        self._changed()

    def has(self, key: ports.Key) -> bool:
        revision = self.revisions.get(key)
        return revision is not None and not revision.removing

    def revisions_of(self, service: str) -> list[str]:
        """The service's revisions, in the order they were added."""
        return [r.target.revision for r in self._live() if r.target.service == service]

    def services(self) -> list[str]:
        return sorted({r.target.service for r in self._live()})

    def _live(self) -> Iterable[Revision]:
        return (r for r in self.revisions.values() if not r.removing)

    # what rollouts read

    def weight(self, key: ports.Key) -> int:
        return self.revisions[key].weight

    def ready(self, key: ports.Key) -> int:
        return self.revisions[key].replicas.counts().ready

    def floor(self, key: ports.Key) -> int:
        return self.revisions[key].floor

    def policy(self, key: ports.Key) -> scaling.ScalingPolicy:
        return self.revisions[key].target.policy

    def service_demand(self, service: str, kind: scaling.MetricKind) -> float:
        """The service's load in ``kind``'s unit, summed over its revisions (6 s rps)."""
        return sum(r.load.rps_6s if kind is scaling.MetricKind.RPS else r.load.metric(kind)
                   for r in self._live() if r.target.service == service)

    # deciding

    async def run(self) -> None:
        """Tick, publish and follow pokes until cancelled."""
        self._changed()
        tasks = [self._tick_forever(), self._publish_forever()]
        if self.load_source is not None:
            tasks.append(self.load_source.pokes(self.on_poke))
        await asyncio.gather(*tasks)

    async def _tick_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bad tick must not stop scaling for good
                logger.exception("a control tick failed; the next one runs as usual")
            await asyncio.sleep(self.tick_s)

    async def tick(self) -> None:
        loads, readings = await asyncio.gather(self._loads(), self.read_signals())
        self.step(loads, readings)

    async def _loads(self) -> Mapping[ports.Key, ports.RevisionLoad]:
        return await self.load_source.load() if self.load_source is not None else {}

    async def read_signals(self) -> dict[ports.Key, ports.Reading]:
        """This tick's reading of every custom signal, from one call to the SignalSource."""
        queries: dict[ports.Key, ports.SignalQuery] = {}
        readings: dict[ports.Key, ports.Reading] = {}
        for revision in self._live():
            signal, target = revision.target.policy.signal, revision.target
            if signal is None:
                continue
            if self.signal_source is None:
                readings[revision.key] = ports.Reading(None, "no signal source: configure "
                                                       "the Prometheus URL")
                continue
            try:
                query = signal.render(signals.Identity(target.service, target.revision,
                                                       target.namespace))
            except ValueError as error:
                readings[revision.key] = ports.Reading(None, str(error))
                continue
            queries[revision.key] = ports.SignalQuery(query, signal.timeout_s)
        if queries and self.signal_source is not None:
            readings.update(await self.signal_source.signals(queries))
        return readings

    def step(self, loads: Mapping[ports.Key, ports.RevisionLoad],
             readings: Mapping[ports.Key, ports.Reading] | None = None) -> None:
        """Decide every revision on these loads and signal readings; one missing holds
        (module docstring)."""
        now = self.clock()
        for key, revision in list(self.revisions.items()):
            load = loads.get(key)
            if load is not None:
                revision.load, revision.load_at = load, now
            elif self._stale(revision, now):
                revision.load = ports.NO_LOAD
            if readings is not None and revision.target.policy.signal is not None:
                revision.signal = readings.get(key, ports.Reading(None, "not read this tick"))
            if revision.removing or (load is None and (revision.decision is not None
                                                       or revision.replicas.desired)):
                continue  # held; deciding on nothing would put zeros in the decider's memory
            try:
                self._decide(revision)
            except Exception:  # one revision's failure must not starve the others
                logger.exception("deciding %s/%s failed", *key)

    def _stale(self, revision: Revision, now: float) -> bool:
        return now - revision.load_at > self.load_stale_s

    def on_poke(self, poke: wire.Poke) -> None:
        revision = self.revisions.get((poke.service, poke.revision))
        if revision is None or revision.removing:
            return
        starting = revision.replicas.counts().starting
        self._decide(revision, buffered=max(1, poke.buffered))
        if revision.replicas.counts().starting > starting:
            revision.poke_to_start_ms = round((time.time() - poke.time) * 1000, 2)

    def _decide(self, revision: Revision, buffered: int = 0) -> None:
        target, replicas = revision.target, revision.replicas
        now = self.clock()
        stale = self._stale(revision, now)
        counts = replicas.counts()
        custom, missing = None, False
        if target.policy.signal is not None:
            value, problem = signal_value(revision.signal)
            missing = problem is not None
            held = missing or self._settling(revision, now, counts.ready)
            if held and revision.decision is not None and counts.ready + counts.starting:
                return  # keep the last decision and the replicas: missing data is no signal
            if value is not None:
                custom = target.policy.signal.demand(value, counts.ready)
                revision.signal_used = (value, counts.ready)
        inputs = scaling_inputs(
            now, target.policy, ports.NO_LOAD if stale else revision.load, counts,
            buffered=buffered, free_gpus=self.capacity.free_gpus(target),
            cold_starts=replicas.take_cold_starts(), custom=custom)
        revision.decision, revision.state = self.decider.decide(inputs, revision.state,
                                                                target.policy)
        self.store.save(ports.StateKey.scaling(revision.key), revision.state)
        wanted = revision.replicas_wanted(revision.decision.desired)
        if (stale or missing) and not (revision.parked or revision.removing):
            wanted = max(wanted, replicas.desired)  # missing data never lowers the count
        self._scale(revision, wanted, revision.decision.conditions)

    @staticmethod
    def _settling(revision: Revision, now: float, ready: int) -> bool:
        """Whether an AverageValue may not yet be over the replicas ready now: their count
        changed within the signal's lag. Its value times the new count would overstate the
        load after a scale-up (and order more replicas, and again) and understate it after a
        scale-down, so the decision waits, as for a missing value."""
        signal = revision.target.policy.signal
        if signal is None or signal.type is not signals.SignalType.AVERAGE_VALUE:
            return False
        if ready != revision.ready_seen[0]:
            revision.ready_seen = (ready, now)
        return now - revision.ready_seen[1] < signal.lag_s

    def _scale(self, revision: Revision, wanted: int, why: Iterable[str]) -> None:
        """Hand ``wanted`` to the revision's replicas; a change is one line in the log."""
        before = revision.replicas.desired
        if wanted != before:
            said = ", ".join(sorted(why))
            logger.info("%s/%s: %d → %d replicas%s", *revision.key, before, wanted,
                        f" ({said})" if said else "")
        revision.replicas.scale(wanted)

    # what rollouts steer

    def set_weights(self, service: str, weights: Mapping[str, int]) -> None:
        """Give revisions of ``service`` these weights and publish them at once, in one table:
        no router ever sees one revision's new weight without the others'."""
        rows = [self.revisions[(service, name)] for name in weights]  # KeyError before changes
        for row, weight in zip(rows, weights.values(), strict=True):
            row.weight = weight
        self._changed()

    def hold(self, service: str, revision: str, floor: int = 0,
             parked: str | None = None) -> None:
        """Keep at least ``floor`` replicas of a revision, or none while ``parked``; applied
        now, not at the next tick, so a canary's replicas start as soon as a rollout asks."""
        row = self.revisions[(service, revision)]
        if (row.floor, row.parked) == (floor, parked):
            return
        row.floor, row.parked = floor, parked
        desired = row.replicas.desired if row.decision is None else row.decision.desired
        self._scale(row, row.replicas_wanted(desired),
                    ["parked by its rollout" if parked else f"rollout floor {floor}"])
        self._changed()  # a parked revision's reason is in the route table

    def set_sticky(self, service: str, sticky: routing.Sticky | None) -> None:
        """A rollout's stickiness for ``service`` (None: the service's own again)."""
        if sticky is None:
            self.rollout_sticky.pop(service, None)
        else:
            self.rollout_sticky[service] = sticky
        self._changed()

    # publishing

    def endpoints_changed(self) -> None:
        """A replica became ready or must drain: publish soon."""
        self._changed()

    def _changed(self) -> None:
        self._changes += 1
        self._dirty.set()

    async def published(self) -> None:
        """Return once every router has accepted a table with every change made so far (a
        rollout's command answers only when its weights serve). Waits as long as publishing
        fails: bound it with a timeout."""
        wanted = self._changes
        async with self._publishes:
            await self._publishes.wait_for(lambda: self._published_changes >= wanted)

    def republish(self) -> None:
        """Send the table again even if unchanged (a router restarted or just became ready)."""
        self._published = None
        self._changed()

    async def _publish_forever(self) -> None:
        if self._whole is not None:
            await self._whole.wait()
        failures = 0
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            changes = self._changes
            try:
                await self.publish()
            except Exception as error:  # routers restarting or unreachable: keep the replicas
                if not failures:  # one line per outage, not one per retry
                    logger.warning("publishing routes failed (%s); retrying every %g s",
                                   str(error) or repr(error), PUBLISH_RETRY_S)
                failures += 1
                await asyncio.sleep(PUBLISH_RETRY_S)
                self._dirty.set()
                continue
            if failures:
                logger.info("routes published again after %d failed attempts", failures)
                failures = 0
            async with self._publishes:
                self._published_changes = changes
                self._publishes.notify_all()

    async def publish(self) -> None:
        """Publish the table if it changed, then release what it no longer lists. A replica
        that starts draining (or a revision removed) while the publish is in flight is still
        in the table the routers now hold: it goes after the next one."""
        table = self.table()
        listed = {r.key: frozenset(r.replicas.endpoints()) for r in self._live()}
        if table is not None and table != self._published and self.publisher is not None:
            await self.publisher.publish(table)
        self._published = table
        for revision in list(self.revisions.values()):
            shown = listed.get(revision.key)
            if shown is not None:
                revision.replicas.released(shown)
            elif revision.removing:
                self._retire(revision)
            # else: added while the publish was in flight; the next one lists it

    def _retire(self, revision: Revision) -> None:
        """Out of every router's table: scale it to zero, close it, forget it."""
        del self.revisions[revision.key]
        self.store.drop(ports.StateKey.scaling(revision.key))
        if not revision.keep_replicas:
            revision.replicas.scale(0)
            revision.replicas.released(frozenset())
        task = asyncio.get_running_loop().create_task(revision.replicas.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def table(self) -> routing.RouteTable | None:
        """The route table: weights, ready endpoints, and why a revision cannot start; None
        while there is no revision. Validated here, so an invalid one is never sent."""
        services: dict[str, list[Revision]] = {}
        for revision in self._live():
            services.setdefault(revision.target.service, []).append(revision)
        if not services:
            return None
        return routing.RouteTable(services={
            name: routing.Service(
                revisions=[self._route(r) for r in rows],
                buffer=routing.Buffer(
                    depth=max(r.target.policy.buffer_depth for r in rows),
                    timeout_s=max(r.target.policy.buffer_timeout_s for r in rows)),
                sticky=self.rollout_sticky.get(name, self.service_sticky.get(name)))
            for name, rows in services.items()})

    @staticmethod
    def _route(revision: Revision) -> routing.Revision:
        """One revision's row of the route table: everything the routers are told about it is
        derived here, from its target, policy, replicas and the rollout's hold."""
        return routing.Revision(
            name=revision.target.revision, weight=revision.weight,
            endpoints=revision.replicas.endpoints(), concurrency=revision.target.concurrency,
            unavailable=revision.replicas.failure or revision.parked,
            # A wave released from the buffer is shared by the replicas that become ready;
            # with none starting there is no one to share it with, and the pace would cap what
            # the ready ones serve while a queue lasts (a limit the policy never set).
            release_concurrency=(revision.target.policy.release_concurrency
                                 if revision.replicas.counts().starting else 0))

    # reporting and stopping

    def status(self) -> list[RevisionStatus]:
        rows = []
        now = self.clock()
        for (service, name), revision in self.revisions.items():
            if revision.removing:
                continue
            decision, load, replicas = revision.decision, revision.load, revision.replicas
            counts = replicas.counts()
            conditions = sorted(str(c) for c in decision.conditions) if decision else []
            if self._stale(revision, now):
                load = ports.NO_LOAD
                conditions.append("LoadMissing: no load reported yet" if math.isinf(
                    revision.load_at) else f"LoadMissing: no load reported for "
                    f"{now - revision.load_at:.0f} s")
            signal_problem = (signal_value(revision.signal)[1]
                              if revision.target.policy.signal is not None else None)
            if signal_problem is not None:
                held = "replicas held" if replicas.desired else "requests wake it"
                conditions.append(f"SignalMissing: {revision.target.policy.custom_signal}: "
                                  f"{signal_problem}; {held}")
            if replicas.failure:
                conditions.append(f"ReplicaFailed: {replicas.failure}")
            if revision.parked:
                conditions.append(f"Parked: {revision.parked}")
            elif revision.floor:
                conditions.append(f"RolloutFloor: {revision.floor}")
            rows.append(RevisionStatus(
                service=service, name=name, weight=revision.weight, desired=replicas.desired,
                ready=counts.ready, starting=counts.starting, restarts=replicas.restarts,
                rps=round(load.rps_6s, 2), inflight=load.inflight, p99_ms=load.p99_ms,
                buffered=load.buffered, conditions=conditions,
                reason=revision.parked or replicas.failure,
                poke_to_start_ms=revision.poke_to_start_ms,
                signal=revision.signal_used[0] if revision.signal_used else None,
                signal_ready=revision.signal_used[1] if revision.signal_used else None,
                demand=decision.stable_demand if decision else None))
        return rows

    async def close(self) -> None:
        """Stop every revision's replicas (the controller is stopping)."""
        revisions = list(self.revisions.values())
        self.revisions.clear()
        results = await asyncio.gather(*(r.replicas.close() for r in revisions),
                                       *self._closing, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                logger.error("stopping replicas failed: %r", result)

    def status_json(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(row) for row in self.status()]


@contextlib.asynccontextmanager
async def running(core: Core) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``core``'s loop for the body of an ``async with``; leaving it, for whatever reason,
    stops the loop. (Stopping the replicas is ``close``, which the driver orders itself: the
    local stack drains its router first, while the replicas still serve.)"""
    task = asyncio.create_task(core.run(), name="control-core")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

