"""Endpoint choice and the per-revision wait queue.

One FIFO per revision holds every request that cannot go to an endpoint yet: while the revision
has no ready endpoint (scale from zero: *buffered*) and while every endpoint is at its
concurrency limit (*queued*). A request never overtakes one that is already waiting. Whenever
capacity appears (an endpoint finishes a request, or the route table adds endpoints) the head
of the queue is released, as many as the limits allow: the hard concurrency limit, or the
softer release pace (`release_concurrency`, from the scaling policy's target) when there is no
hard limit, so the first replica to become ready is not stampeded by a whole scale-from-zero
wave while the others start.

Endpoint choice is least in-flight of two random choices (P2C): nearly as good as least-loaded
and O(1). The random source is injected.
"""

from __future__ import annotations

import collections
import random
from typing import TYPE_CHECKING, Protocol

from policies import routing

if TYPE_CHECKING:
    from router import stats, upstream


class Waiter(Protocol):
    """What the queue holds: a request that can be given an endpoint or turned away."""

    enqueued_at: float

    def assign(self, endpoint: Endpoint) -> None: ...

    def reject(self, status: int, reason: str) -> None: ...


class Endpoint:
    """One replica: its in-flight count and its pool of idle keep-alive connections."""

    __slots__ = ("authority", "host", "idle", "inflight", "port", "removed", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.host, self.port = routing.parse_endpoint(url)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = f"{host}:{self.port}".encode()  # Host for HTTP/1.0 requests without
        self.inflight = 0
        self.idle: list[upstream.UpstreamConnection] = []
        self.removed = False

    def close_idle(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class RevisionBackend:
    """A revision's endpoints, concurrency limit, wait queue and stats; survives table swaps."""

    __slots__ = ("depth", "endpoints", "limit", "name", "queue", "release_limit",
                 "revision_header", "rng", "service", "stats", "timeout_s", "unavailable")

    def __init__(self, service: str, name: str, stats_: stats.RevisionStats,
                 rng: random.Random) -> None:
        self.service = service
        self.name = name
        self.stats = stats_
        self.rng = rng
        self.endpoints: list[Endpoint] = []
        self.limit = 0
        self.release_limit = 0
        self.depth = 0
        self.timeout_s = 300.0
        self.unavailable: str | None = None
        self.queue: collections.deque[Waiter] = collections.deque()
        self.revision_header = b"X-Sluice-Revision: " + name.encode() + b"\r\n"

    def configure(self, concurrency: int, release_concurrency: int) -> None:
        """The hard per-endpoint limit, and the pace of releases from the queue: the smaller
        of the two that are set (0 = not set)."""
        self.limit = concurrency
        self.release_limit = min((n for n in (concurrency, release_concurrency) if n), default=0)

    def pick(self) -> Endpoint | None:
        """An endpoint with a free slot, or None (no endpoint, all full, or others waiting)."""
        if self.queue:
            return None
        return self._free_endpoint(self.limit)

    def _free_endpoint(self, limit: int) -> Endpoint | None:
        endpoints = self.endpoints
        n = len(endpoints)
        if n == 0:
            return None
        if n == 1:
            best = endpoints[0]
        else:
            i = self.rng.randrange(n)
            j = self.rng.randrange(n - 1)
            if j >= i:
                j += 1
            a, b = endpoints[i], endpoints[j]
            best = a if a.inflight <= b.inflight else b
        if limit and best.inflight >= limit:
            best = min(endpoints, key=_inflight)
            if best.inflight >= limit:
                return None
        return best

    def enqueue(self, waiter: Waiter) -> bool:
        """Queue a request; False when the queue is full (the caller answers 503)."""
        if len(self.queue) >= self.depth:
            return False
        self.queue.append(waiter)
        self.stats.buffered += 1
        return True

    def leave(self, waiter: Waiter) -> None:
        """A queued request gave up (client gone); O(n), but only on disconnects."""
        try:
            self.queue.remove(waiter)
        except ValueError:
            return
        self.stats.buffered -= 1

    def release(self, now: float) -> None:
        """Hand queued requests to free endpoints, oldest first, as capacity allows: up to the
        release limit per endpoint, so endpoints that appear next get a share of a wave."""
        queue = self.queue
        limit = self.release_limit
        while queue:
            endpoint = self._free_endpoint(limit)
            if endpoint is None:
                return
            waiter = queue.popleft()
            self.stats.buffered -= 1
            self.stats.waited(now - waiter.enqueued_at)
            waiter.assign(endpoint)

    def expire(self, now: float) -> None:
        """Answer 504 to queued requests past the deadline (FIFO: they are at the head)."""
        queue = self.queue
        deadline = now - self.timeout_s
        while queue and queue[0].enqueued_at <= deadline:
            waiter = queue.popleft()
            self.stats.buffered -= 1
            waiter.reject(504, f"no endpoint of revision {self.name} became free in time")

    def reject_all(self, status: int, reason: str) -> None:
        while self.queue:
            waiter = self.queue.popleft()
            self.stats.buffered -= 1
            waiter.reject(status, reason)


def _inflight(endpoint: Endpoint) -> int:
    return endpoint.inflight
