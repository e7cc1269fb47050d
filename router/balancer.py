"""Endpoint choice and the per-revision wait queue.

One FIFO per revision holds every request that cannot go to an endpoint yet: while the revision
has no ready endpoint (scale from zero: *buffered*) and while every endpoint is at its
concurrency limit (*queued*). A request never overtakes one that is already waiting. Whenever
capacity appears (an endpoint finishes a request, or the route table adds endpoints) the head
of the queue is released, as many as the limits allow: the hard concurrency limit, or the
softer release pace (`release_concurrency`, from the scaling policy's target) when there is no
hard limit, so the first replica to become ready is not stampeded by a whole scale-from-zero
wave while the others start. The pace is where each endpoint starts, not where it must stay: an
answer that comes back about as fast as the endpoint's fastest says the server was not yet
queueing work, and lets one more in (twice as many per round trip, as TCP's slow start); a
slower one takes one back, never below the pace. So a server that takes any number drains a
wave in a few round trips, and one that works on a few at a time holds about that many.

Endpoint choice is least in-flight of two random choices (P2C): nearly as good as least-loaded
and O(1). The random source is injected.
"""

from __future__ import annotations

import collections
import math
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


SLOWER = 1.5
"""An answer within this many times the endpoint's fastest came from a server that was not yet
queueing work behind what it was doing; one slower than that, from one that was. A server that
works on p at a time answers the (p+1)th request in twice its service time."""


class Endpoint:
    """One replica: its in-flight count and its pool of idle keep-alive connections."""

    __slots__ = ("authority", "fastest_s", "host", "idle", "inflight", "learned", "port",
                 "removed", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.host, self.port = routing.parse_endpoint(url)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = f"{host}:{self.port}".encode()  # Host for HTTP/1.0 requests without
        self.inflight = 0
        self.fastest_s = math.inf  # its fastest answer while requests waited
        self.learned = 0  # requests it takes beyond the release pace without slowing
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
        return self._free_endpoint()

    def _free_endpoint(self) -> Endpoint | None:
        limit = self.limit
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

    def answered(self, endpoint: Endpoint, latency_s: float) -> None:
        """Learn from a successful answer, given while requests wait, how many the endpoint
        takes at once: one more if it came back about as fast as its fastest, one fewer (down
        to the pace) if slower."""
        if latency_s < endpoint.fastest_s:
            endpoint.fastest_s = latency_s
        if latency_s <= endpoint.fastest_s * SLOWER:
            endpoint.learned += 1
        elif endpoint.learned:
            endpoint.learned -= 1

    def release(self, now: float) -> None:
        """Hand queued requests to free endpoints, oldest first, as capacity allows: up to the
        release limit per endpoint (and what it has shown it takes beyond it), so endpoints
        that appear next get a share of a wave."""
        queue = self.queue
        while queue:
            # No pace means no limit either: the first free endpoint takes it.
            endpoint = self._roomiest() if self.release_limit else self._free_endpoint()
            if endpoint is None:
                return
            waiter = queue.popleft()
            self.stats.buffered -= 1
            self.stats.waited(now - waiter.enqueued_at)
            waiter.assign(endpoint)

    def _roomiest(self) -> Endpoint | None:
        """Of two random endpoints the one with more room under its release allowance; if it
        has none, the roomiest of all; None when every one is at its allowance."""
        endpoints = self.endpoints
        n = len(endpoints)
        if n == 0:
            return None
        room = self._room
        best = endpoints[0]
        if n > 1:
            i = self.rng.randrange(n)
            j = self.rng.randrange(n - 1)
            if j >= i:
                j += 1
            a, b = endpoints[i], endpoints[j]
            best = a if room(a) >= room(b) else b
        if room(best) <= 0:
            best = max(endpoints, key=room)
            if room(best) <= 0:
                return None
        return best

    def _room(self, endpoint: Endpoint) -> int:
        allowance = self.release_limit + endpoint.learned
        if self.limit and allowance > self.limit:
            allowance = self.limit
        return allowance - endpoint.inflight

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
