"""One data-plane process: the listening socket, the route table, and the sweeper.

The worker owns every piece of runtime state the request path touches. Timeouts are not timers
per request: one sweeper pass per `sweep_interval_s` checks connection and exchange deadlines,
queue heads and idle pools, which costs the request path one float store instead of a timer
handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from policies import routing, wire
from router import balancer, proxy, stats, table
from router.settings import RouterSettings

PokeListener = Callable[[wire.Poke], None]


class Worker:
    def __init__(self, settings: RouterSettings, document: routing.RouteTable,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time
        self.rng = rng or random.Random()
        self.clients: set[proxy.ClientConnection] = set()
        self.active: set[proxy.Exchange] = set()
        self.backends: dict[tuple[str, str], balancer.RevisionBackend] = {}
        self.draining = False
        self._settled = asyncio.Event()
        self.generation = 0
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listeners: list[PokeListener] = []
        self._rid_prefix = f"{os.getpid():x}{self.rng.getrandbits(24):06x}-".encode()
        self._rid = itertools.count(1)
        self.table: table.Table
        self.has_table = False
        """Whether a table with a service has been applied: until then it is not ready."""
        self.apply(document)

    # request-path helpers

    def request_id(self) -> bytes:
        return self._rid_prefix + b"%x" % next(self._rid)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def poke(self, backend: balancer.RevisionBackend) -> None:
        """The first request buffered for a revision with no endpoint: tell subscribers now."""
        event = wire.Poke(service=backend.service, revision=backend.name,
                          buffered=backend.stats.buffered, time=time.time())
        for listener in list(self._listeners):
            listener(event)

    def subscribe(self, listener: PokeListener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # route table

    def apply(self, document: routing.RouteTable) -> None:
        """Swap in a validated table; endpoints, pools, queues and stats carry over by name."""
        now = self.now()
        kept: dict[tuple[str, str], balancer.RevisionBackend] = {}

        def backend_for(service: str, spec: routing.Service,
                        revision: routing.Revision) -> balancer.RevisionBackend:
            key = (service, revision.name)
            backend = self.backends.get(key) or balancer.RevisionBackend(
                service, revision.name, stats.RevisionStats(now), self.rng)
            backend.configure(revision.concurrency, revision.release_concurrency)
            backend.depth = spec.buffer.depth
            backend.timeout_s = spec.buffer.timeout_s
            backend.unavailable = revision.unavailable
            old = {e.url: e for e in backend.endpoints}
            backend.endpoints = [old.pop(url) if url in old else balancer.Endpoint(url)
                                 for url in revision.endpoints]
            for gone in old.values():
                gone.removed = True
                gone.close_idle()
            kept[key] = backend
            return backend

        new_table = table.Table(document, backend_for)
        self.has_table = bool(document.services)
        dropped = [b for key, b in self.backends.items() if key not in kept]
        self.backends = kept
        self.table = new_table
        self.generation += 1
        for backend in kept.values():
            backend.release(now)  # endpoints may have appeared
            if backend.unavailable and not backend.endpoints:
                backend.reject_all(503, backend.unavailable)
        for backend in dropped:  # its waiters choose again in the new table
            waiters = list(backend.queue)
            backend.queue.clear()
            for endpoint in backend.endpoints:
                endpoint.removed = True
                endpoint.close_idle()
            for waiter in waiters:
                assert isinstance(waiter, proxy.Exchange)
                waiter.enqueued_at = 0.0
                waiter.dispatch(now)

    def raw_stats(self) -> dict[str, Any]:
        now = self.now()
        backpressured: dict[balancer.RevisionBackend, int] = {}
        for exchange in self.active:  # the transports' own state, not our flags
            conn = exchange.upstream
            if conn is not None and conn.transport is not None \
                    and not conn.transport.is_reading() and exchange.backend is not None:
                backpressured[exchange.backend] = backpressured.get(exchange.backend, 0) + 1
        return {
            "generation": self.generation,
            "revisions": [
                {"service": b.service, "revision": b.name, "endpoints": len(b.endpoints),
                 "raw": b.stats.raw(now, backpressured.get(b, 0))}
                for b in self.backends.values()
            ],
        }

    # lifecycle

    async def start(self, sock: Any = None) -> None:
        settings = self.settings
        if sock is not None:
            self.server = await self.loop.create_server(
                lambda: proxy.ClientConnection(self), sock=sock, backlog=4096)
        else:
            self.server = await self.loop.create_server(
                lambda: proxy.ClientConnection(self), settings.host, settings.port,
                reuse_port=settings.workers > 1, backlog=4096)
        self.spawn(self._sweep_forever())

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            self.sweep(self.now())

    def sweep(self, now: float) -> None:
        for client in [c for c in self.clients if c.deadline < now]:
            client.timed_out()
        for exchange in [e for e in self.active if e.deadline < now]:
            exchange.timed_out()
        stale = now - self.settings.upstream_keepalive_s
        for backend in list(self.backends.values()):
            backend.expire(now)
            for endpoint in backend.endpoints:
                if endpoint.idle and (endpoint.idle[0].idle_since < stale
                                      or any(c.closed for c in endpoint.idle)):
                    keep = [c for c in endpoint.idle if not c.closed and c.idle_since >= stale]
                    for conn in endpoint.idle:
                        if conn not in keep:
                            conn.close()
                    endpoint.idle[:] = keep

    def exchange_done(self) -> None:
        """Called after every request while draining, to notice the last one."""
        if not self.busy():
            self._settled.set()

    def busy(self) -> bool:
        return bool(self.active) or any(b.queue for b in self.backends.values()) or any(
            c.current is not None for c in self.clients)

    async def drain(self) -> None:
        """Stop accepting, finish what is in flight or buffered (up to the drain timeout: the
        table can still change, so buffered requests are served if endpoints appear), then
        answer what is left 503. A response already under way cannot change its status: it is
        cut, so the client sees it incomplete."""
        self.draining = True
        if self.server is not None:
            self.server.close()
        for client in list(self.clients):
            if client.current is None and client.reading is None:
                client.close()
        if self.busy():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), self.settings.drain_timeout_s)
        reason = "the router is shutting down"
        for backend in self.backends.values():
            backend.reject_all(503, reason)
        for client in list(self.clients):
            exchange = client.current
            if exchange is not None:  # at a replica, or connecting to one
                exchange.answer(503, reason)
            client.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for backend in self.backends.values():
            for endpoint in backend.endpoints:
                endpoint.close_idle()
