"""The control loop: collect, decide, act, publish; every tick, and at once on a poke.

Each tick reads the routers' stats, asks the pure decider (policies/decider.py) for each
revision's replica count, hands it to the actuator, and publishes the route table when it
changed. A router's poke (the first request buffered for a revision at zero) runs that
revision's decision immediately instead of waiting for the tick, so a replica start is
requested within milliseconds of the first request.

Publishing is its own task, woken whenever endpoints change (a replica became ready, one must
drain): a ready replica joins the routes at once, and a retiring one is signalled only after
every router has accepted a table without it, so no request is sent to a stopping replica.

A rollout (autoscaler/rollout_driver.py) steers a revision through three hooks: its weight
(``set_weights``, published at once as one table), a replica floor the decider's count is raised
to, and parking, which holds a revision at zero replicas whatever the decider wants
(``hold``). The decider keeps deciding underneath, so its state stays warm when a hold ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoscaler import config, gpus, replicas, routers
from policies import decider, routing, scaling

logger = logging.getLogger(__name__)

NO_LOAD = routers.RevisionLoad(rps=0.0, rps_6s=0.0, concurrency=0.0, inflight=0, buffered=0,
                               p99_ms=None, requests=0, errors=0)


@dataclass
class RevisionControl:
    service: str
    spec: config.RevisionSpec
    replicas: replicas.RevisionReplicas
    weight: int
    state: decider.DeciderState = field(default_factory=decider.DeciderState)
    decision: decider.ScalingDecision | None = None
    load: routers.RevisionLoad = NO_LOAD
    poke_to_start_ms: float | None = None
    """From the router's poke to a replica start requested, the last time a poke started one."""
    floor: int = 0
    """Replicas a rollout keeps at least; the decider's count is raised to it."""
    parked: str | None = None
    """Why a rollout holds this revision at zero replicas, whatever the decider wants; routers
    answer requests pinned to it with this reason instead of holding them for a replica."""

    def replicas_wanted(self, desired: int) -> int:
        """The decider's count with the rollout's hold applied."""
        return 0 if self.parked else max(desired, self.floor)


class Controller:
    def __init__(self, stack: config.LocalStack, router_client: routers.RouterClient,
                 pool: gpus.GpuPool,
                 replicas_for: Callable[[str, config.RevisionSpec], replicas.RevisionReplicas]
                 ) -> None:
        self.stack = stack
        self.routers = router_client
        self.pool = pool
        self.clock = asyncio.get_running_loop().time
        self._dirty = asyncio.Event()
        self._published: dict[str, Any] | None = None
        self.sticky: dict[str, routing.Sticky] = {}
        """A rollout's stickiness, in force while it runs, over the service's own."""
        self.revisions = {
            (name, spec.name): RevisionControl(name, spec, replicas_for(name, spec), spec.weight)
            for name, service in stack.services.items() for spec in service.revisions
        }

    def endpoints_changed(self) -> None:
        self._dirty.set()

    async def run(self) -> None:
        """Tick, publish and follow pokes until cancelled."""
        self._dirty.set()
        await asyncio.gather(self._tick_forever(), self._publish_forever(),
                             self.routers.pokes(self.on_poke))

    async def _tick_forever(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.stack.controller.tick_s)

    async def tick(self) -> None:
        loads = await self.routers.load()
        for key, revision in self.revisions.items():
            revision.load = loads.get(key, revision.load)
            self._decide(revision)

    def on_poke(self, event: dict[str, Any]) -> None:
        revision = self.revisions.get((event.get("service", ""), event.get("revision", "")))
        if revision is None:
            return
        starting = revision.replicas.count(replicas.State.STARTING)
        self._decide(revision, buffered=max(1, int(event.get("buffered", 1))))
        poked_at = event.get("time")
        if revision.replicas.count(replicas.State.STARTING) > starting and isinstance(
                poked_at, int | float):
            revision.poke_to_start_ms = round((time.time() - poked_at) * 1000, 2)

    def _decide(self, revision: RevisionControl, buffered: int = 0) -> None:
        policy = revision.spec.scaling
        load = revision.load
        value = {scaling.MetricKind.RPS: load.rps,
                 scaling.MetricKind.CONCURRENCY: load.concurrency}.get(policy.metric_kind, 0.0)
        pool = revision.replicas
        inputs = decider.ScalingInputs(
            now=self.clock(), value=value, buffered=max(load.buffered, buffered),
            in_flight=load.inflight, arrivals=load.rps, ready=pool.count(replicas.State.READY),
            starting=pool.count(replicas.State.STARTING),
            free_gpus=self.pool.free if pool.gpus_per_replica else None,
            cold_starts=pool.take_cold_starts())
        revision.decision, revision.state = decider.decide(inputs, revision.state, policy)
        pool.scale(revision.replicas_wanted(revision.decision.desired))

    def set_weights(self, service: str, weights: dict[str, int]) -> None:
        """Give revisions of `service` these weights and publish them at once, in one table:
        no router ever sees one revision's new weight without the others'."""
        rows = [self.revisions[(service, name)] for name in weights]  # KeyError before changes
        for row, weight in zip(rows, weights.values(), strict=True):
            row.weight = weight
        self._dirty.set()

    def hold(self, service: str, revision: str, floor: int = 0,
             parked: str | None = None) -> None:
        """Keep at least `floor` replicas of a revision, or none while `parked`; applied now,
        not at the next tick, so a canary's replicas start as soon as a rollout asks."""
        row = self.revisions[(service, revision)]
        if (row.floor, row.parked) == (floor, parked):
            return
        row.floor, row.parked = floor, parked
        row.replicas.scale(row.replicas_wanted(row.replicas.desired if row.decision is None
                                               else row.decision.desired))
        self._dirty.set()  # a parked revision's reason is in the route table

    async def _publish_forever(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                document = self.document()
                if document != self._published:
                    await self.routers.publish(document)
                    self._published = document
                for revision in self.revisions.values():
                    revision.replicas.stop_drained()
            except Exception:  # routers restarting or unreachable: keep the replicas, retry
                logger.exception("publishing routes failed; retrying")
                await asyncio.sleep(0.5)
                self._dirty.set()

    def document(self) -> dict[str, Any]:
        """The route table: weights, ready endpoints, and why a revision cannot start."""
        services: dict[str, Any] = {}
        for name, spec in self.stack.services.items():
            rows = [self.revisions[(name, r.name)] for r in spec.revisions]
            services[name] = {
                "revisions": [{
                    "name": row.spec.name, "weight": row.weight,
                    "endpoints": row.replicas.endpoints(),
                    "concurrency": row.spec.concurrency,
                    "unavailable": row.replicas.failure or row.parked,
                } for row in rows],
                "buffer": {"depth": max(r.spec.scaling.buffer_depth for r in rows),
                           "timeout_s": max(r.spec.scaling.buffer_timeout_s for r in rows)},
            }
            sticky = self.sticky.get(name, spec.sticky)
            if sticky is not None:
                services[name]["sticky"] = sticky.model_dump(exclude_none=True)
        return {"services": services}

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for (service, name), revision in self.revisions.items():
            decision, load, pool = revision.decision, revision.load, revision.replicas
            conditions = sorted(str(c) for c in decision.conditions) if decision else []
            if pool.failure:
                conditions.append(f"ReplicaFailed: {pool.failure}")
            if revision.parked:
                conditions.append(f"Parked: {revision.parked}")
            elif revision.floor:
                conditions.append(f"RolloutFloor: {revision.floor}")
            rows.append({
                "service": service, "name": name, "weight": revision.weight,
                "desired": pool.desired, "ready": pool.count(replicas.State.READY),
                "starting": pool.count(replicas.State.STARTING), "restarts": pool.restarts,
                "rps": round(load.rps_6s, 2), "inflight": load.inflight,
                "p99_ms": load.p99_ms, "buffered": load.buffered, "conditions": conditions,
                "poke_to_start_ms": revision.poke_to_start_ms,
            })
        return rows

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.gather(*(r.replicas.stop_all() for r in self.revisions.values()))
