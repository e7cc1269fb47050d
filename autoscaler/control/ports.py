"""What the control core talks to: one narrow interface per kind of I/O, and the data it moves.

The core (control/core.py) decides for every setting sluice runs in; a driver supplies these:

=================  ============================  ==========================  ===================
interface          local (sluice up)             Kubernetes                  simulation
=================  ============================  ==========================  ===================
Replicas           processes (local/replicas)    a Deployment's /scale+pods  a fluid replica set
Capacity           the stack's GPU indices       nodes and pods' requests    the trace's GPUs
LoadSource         the routers' /stats, pokes    the router pods' /stats     the trace
SignalSource       Prometheus (custom signals)   the same                    the trace's signal
RoutePublisher     PUT /routes to the router     PUT /routes to router pods  nothing
StateStore         memory                        the custom resources' status  memory
=================  ============================  ==========================  ===================

Rollouts read the routers' exact counters through CounterSource and custom metrics through
MetricSource. Every method that does I/O is a coroutine with a timeout of its own; the ones the
core calls on its hot path (``scale``, ``counts``) are plain calls that only schedule work, so a
poke decides and asks for a replica without awaiting anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from policies import routing, scaling, wire

Key = tuple[str, str]
"""(service, revision): a revision's name everywhere in the controller."""


@dataclass(frozen=True)
class RevisionTarget:
    """One revision as a driver declares it: what the core scales and routes."""

    service: str
    revision: str
    policy: scaling.ScalingPolicy
    weight: int = 100
    """Its share of the service's traffic until a rollout sets another."""
    concurrency: int = 0
    """Most requests in flight per replica, enforced by the routers; 0 = no limit."""
    namespace: str = ""
    """Its Kubernetes namespace ("" elsewhere): what ``$namespace`` in a signal's query is."""

    @property
    def key(self) -> Key:
        return (self.service, self.revision)


@dataclass(frozen=True)
class ReplicaCounts:
    ready: int = 0
    """Serving: in the route table."""
    starting: int = 0
    """Asked for and not yet ready (Pending, pulling, loading the model, probed)."""


@dataclass(frozen=True)
class RevisionLoad:
    """One revision's load as the routers see it, summed over routers."""

    rps: float = 0.0
    """Arrivals per second over the last ~1 s (what the decider's rps metric reads)."""
    rps_6s: float = 0.0
    concurrency: float = 0.0
    """Mean requests in flight at replicas over the last ~1 s."""
    dispatched: float | None = None
    """Requests sent to replicas per second over the same second as ``concurrency``; None
    when a router does not count them."""
    inflight: int = 0
    buffered: int = 0
    streams: int = 0
    """Streamed responses (an LLM's generations) in flight now."""
    p99_ms: float | None = None
    """Over the last minute or so; None when nothing was answered in it."""
    requests: int = 0
    errors: int = 0

    def metric(self, kind: scaling.MetricKind) -> float:
        """The value a policy on ``kind`` scales on; custom signals are not the routers'."""
        if kind is scaling.MetricKind.RPS:
            return self.rps
        if kind is scaling.MetricKind.CONCURRENCY:
            return self.concurrency
        if kind is scaling.MetricKind.STREAMS:
            return float(self.streams)
        return 0.0


NO_LOAD = RevisionLoad()


@dataclass(frozen=True)
class Counters:
    """Cumulative outcome counts of one revision; subtract two to get a window's."""

    requests: int
    """Requests answered (any status, 499 included)."""
    errors: int
    """Answered 5xx (the router's own 502/503/504 included: the client saw them)."""
    latency_buckets: tuple[int, ...]
    latency_bounds_s: tuple[float, ...]
    """Upper bounds of the buckets; the last bucket is everything above the last bound."""
    ttft_buckets: tuple[int, ...] = ()
    """Streamed responses per time-to-first-byte bucket (the latency bounds); empty from a
    router that does not measure them."""

    def __add__(self, other: Counters) -> Counters:
        return Counters(self.requests + other.requests, self.errors + other.errors,
                        tuple(a + b for a, b in zip(self.latency_buckets,
                                                     other.latency_buckets, strict=True)),
                        self.latency_bounds_s, _added(self.ttft_buckets, other.ttft_buckets))

    def __sub__(self, earlier: Counters) -> Counters:
        """The window between an earlier snapshot and this one. Any count going down means the
        router restarted in between: the window is everything since the restart."""
        if self.restarted_since(earlier):
            return self
        return Counters(self.requests - earlier.requests, self.errors - earlier.errors,
                        tuple(a - b for a, b in zip(self.latency_buckets,
                                                     earlier.latency_buckets, strict=True)),
                        self.latency_bounds_s,
                        tuple(a - b for a, b in zip(self.ttft_buckets, earlier.ttft_buckets,
                                                     strict=True))
                        if earlier.ttft_buckets else self.ttft_buckets)

    def restarted_since(self, earlier: Counters) -> bool:
        return self.requests < earlier.requests or self.errors < earlier.errors or any(
            a < b for a, b in zip(self.latency_buckets, earlier.latency_buckets, strict=True)
        ) or len(self.ttft_buckets) < len(earlier.ttft_buckets) or any(
            a < b for a, b in zip(self.ttft_buckets, earlier.ttft_buckets, strict=False))


def _added(ours: tuple[int, ...], theirs: tuple[int, ...]) -> tuple[int, ...]:
    """Two histograms added; one that is empty (not measured) adds nothing."""
    if not ours or not theirs:
        return ours or theirs
    return tuple(a + b for a, b in zip(ours, theirs, strict=True))


class Replicas(Protocol):
    """The replicas of one revision, kept at ``desired`` by the driver."""

    @property
    def desired(self) -> int: ...

    @property
    def failure(self) -> str | None:
        """Why replicas fail to start or keep crashing (a sentence for people), or None."""

    @property
    def restarts(self) -> int: ...

    def counts(self) -> ReplicaCounts: ...

    def endpoints(self) -> list[str]:
        """Ready replicas as http://host:port, the ones the routers may send to."""

    def scale(self, desired: int) -> None:
        """Start or retire replicas toward ``desired``; returns at once, the driver acts."""

    def take_cold_starts(self) -> tuple[float, ...]:
        """Seconds from start to ready of the replicas that became ready since the last call."""

    def released(self, listed: frozenset[str]) -> None:
        """Every router has accepted a table whose endpoints for this revision are ``listed``:
        stop the retiring replicas not among them."""

    async def close(self) -> None:
        """The revision leaves the core (or the controller stops): stop what this started."""


class Capacity(Protocol):
    def free_gpus(self, target: RevisionTarget) -> int | None:
        """Free units of the policy's GPU resource this revision's new replicas could use, net
        of its Pending ones; None when it needs none or it is unknown."""


PokeHandler = Callable[[wire.Poke], None]


class LoadSource(Protocol):
    async def load(self) -> Mapping[Key, RevisionLoad]:
        """Every revision's load, added up over the routers that answered."""

    async def pokes(self, on_poke: PokeHandler) -> None:
        """Call ``on_poke`` for each poke from any router, until cancelled."""


class RoutePublisher(Protocol):
    async def publish(self, table: routing.RouteTable) -> None:
        """Make every router serve ``table``; raises if one did not accept it."""


class CounterSource(Protocol):
    async def counters(self) -> Mapping[str, Mapping[Key, Counters]]:
        """Every router's cumulative counters per revision, by router (its admin URL): a
        window is the sum of each router's difference, and a router's restart shows as its
        own counts going down. Raises when one did not answer (the window would undercount)."""


@dataclass(frozen=True)
class Reading:
    value: float | None
    """The query's single value, or None when there is no usable value."""
    problem: str | None = None
    """Why there is no value: unreachable, an error from the source, no data, NaN."""


class MetricSource(Protocol):
    async def query(self, expr: str) -> Reading: ...


@dataclass(frozen=True)
class SignalQuery:
    """One revision's custom signal, ready to send: its query with the revision's names in."""

    query: str
    timeout_s: float


class SignalSource(Protocol):
    async def signals(self, queries: Mapping[Key, SignalQuery]) -> Mapping[Key, Reading]:
        """Every revision's signal, each queried once, concurrently (a bounded number at a
        time), each within its timeout. Never raises: a query without a usable value (no
        answer, an error, no data, NaN, a stale sample) is a Reading saying why."""


@dataclass(frozen=True)
class StateKey:
    """Whose state: a revision's decider (``scaling``) or a service's rollout (``rollout``)."""

    kind: str
    service: str
    revision: str = ""

    @classmethod
    def scaling(cls, key: Key) -> StateKey:
        return cls("scaling", *key)

    @classmethod
    def rollout(cls, service: str) -> StateKey:
        return cls("rollout", service)


T = TypeVar("T")


class StateStore(Protocol):
    """Where decision state lives between ticks and across restarts. States are frozen
    dataclasses; a store that persists them writes them with policies/codec.py."""

    def load(self, key: StateKey, kind: type[T]) -> T | None:
        """The ``kind`` saved under ``key``, or None (nothing saved, or not a ``kind``)."""

    def save(self, key: StateKey, state: object) -> None:
        """Keep ``state`` under ``key``; a store may write it later or coalesce writes."""

    def drop(self, key: StateKey) -> None: ...


class MemoryStore:
    """A StateStore in this process: what the local stack and the simulator use."""

    def __init__(self) -> None:
        self.saved: dict[StateKey, object] = {}

    def load(self, key: StateKey, kind: type[T]) -> T | None:
        state = self.saved.get(key)
        return state if isinstance(state, kind) else None

    def save(self, key: StateKey, state: object) -> None:
        self.saved[key] = state

    def drop(self, key: StateKey) -> None:
        self.saved.pop(key, None)
