"""Talking to the routers: read their stats, publish route tables, follow their pokes.

The only place the controller does HTTP to routers, over one ClientSession with a timeout on
every call. Several routers (a router's replicas on Kubernetes) are added up per revision. It
is the LoadSource, RoutePublisher and CounterSource of control/ports.py; the documents it reads
are parsed with the wire models (policies/wire.py) the routers write them with.

The set of routers may change while it runs (router pods come and go): ``set_routers``. A
router may front some services only (on Kubernetes, one InferenceService's); it is sent only
their part of the route table.

The p99 it reports is over the last ``P99_WINDOW_S``, from the difference of each router's
cumulative latency histogram now and a minute ago (a router that restarted counts from its
start), not over the router's lifetime: a cold start a while ago must not dominate it for good.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pydantic

from autoscaler.control import ports
from policies import judges, routing, wire

logger = logging.getLogger(__name__)

RECONNECT_S = 0.5
"""Pause before following a router's events again after the stream broke."""
P99_WINDOW_S = 60.0
"""Seconds the reported p99 latency covers."""

Histograms = dict[ports.Key, tuple[int, ...]]


@dataclass(frozen=True)
class Router:
    admin_url: str
    """The router's admin API, http://host:port."""
    token: str
    """Its write token (the router's SLUICE_ADMIN_TOKEN); never logged."""
    services: frozenset[str] | None = None
    """The services it fronts; None: every service."""

    def part(self, table: routing.RouteTable) -> routing.RouteTable | None:
        """What of ``table`` this router serves; None when none of its services is in it."""
        if self.services is None:
            return table
        mine = {name: s for name, s in table.services.items() if name in self.services}
        return routing.RouteTable(services=mine) if mine else None


class RouterClient:
    TIMEOUT = aiohttp.ClientTimeout(total=5, connect=2)
    EVENTS_TIMEOUT = aiohttp.ClientTimeout(connect=2, sock_read=60)
    """The events stream sends a heartbeat every 15 s; a minute of silence is a dead router."""

    def __init__(self, routers: list[Router], session: aiohttp.ClientSession,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.routers = list(routers)
        self._session = session
        self._clock = clock
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._following: set[str] = set()
        """Routers whose poke stream is open now."""
        self._on_poke: ports.PokeHandler | None = None
        self._histories: dict[str, collections.deque[tuple[float, Histograms]]] = {}
        """Per router: (time, cumulative latency histograms) over the last P99_WINDOW_S,
        and the one just before it."""

    @property
    def admin_urls(self) -> list[str]:
        return [router.admin_url for router in self.routers]

    def set_routers(self, routers: list[Router]) -> None:
        """These routers now; follow the new ones' pokes, drop the gone ones'."""
        self.routers = list(routers)
        if self._on_poke is not None:
            self._follow_all(self._on_poke)

    async def load(self) -> dict[ports.Key, ports.RevisionLoad]:
        """Every router's /stats, added up per revision; routers that fail are skipped."""
        answers = await asyncio.gather(*(self._stats(url, raw=True) for url in self.admin_urls),
                                       return_exceptions=True)
        now = self._clock()
        rows: dict[ports.Key, list[wire.RevisionStats]] = {}
        recent: dict[ports.Key, list[int]] = {}
        bounds: list[float] = []
        for url, answer in zip(self.admin_urls, answers, strict=True):
            if isinstance(answer, BaseException):
                continue
            bounds = answer.latency_bounds_s or bounds
            for row in answer.revisions:
                rows.setdefault((row.service, row.revision), []).append(row)
            for key, buckets in self._window(url, now, answer).items():
                summed = recent.setdefault(key, [0] * len(buckets))
                summed[:] = [a + b for a, b in zip(summed, buckets, strict=True)]
        for gone in set(self._histories) - set(self.admin_urls):
            del self._histories[gone]
        return {key: _summed(parts, _p99_ms(bounds, recent.get(key)))
                for key, parts in rows.items()}

    def _window(self, url: str, now: float, stats: wire.Stats) -> Histograms:
        """Each revision's latency histogram over the last P99_WINDOW_S at this router."""
        current = {(row.service, row.revision): tuple(row.raw.latency_buckets)
                   for row in stats.revisions if row.raw is not None}
        history = self._histories.setdefault(url, collections.deque())
        history.append((now, current))
        while len(history) > 2 and now - history[1][0] >= P99_WINDOW_S:
            history.popleft()
        base = history[0][1]
        window = {}
        for key, buckets in current.items():
            before = base.get(key, ())
            window[key] = tuple(a - b for a, b in zip(buckets, before, strict=True)) if (
                before and all(a >= b for a, b in zip(buckets, before, strict=True))
            ) else buckets  # new to this router, or it restarted: all it has counted
        return window

    async def counters(self) -> dict[str, dict[ports.Key, ports.Counters]]:
        """Cumulative per-revision counters of each router, by its admin URL (for window
        deltas: a router that restarted is seen by its own counts going down); raises if any
        router does not answer."""
        urls = self.admin_urls
        answers = await asyncio.gather(*(self._stats(url, raw=True) for url in urls))
        snapshot: dict[str, dict[ports.Key, ports.Counters]] = {}
        for url, answer in zip(urls, answers, strict=True):
            bounds = tuple(answer.latency_bounds_s or ())
            mine = snapshot[url] = {}
            for row in answer.revisions:
                raw = row.raw
                if raw is None:
                    raise ValueError("a router sent stats without the raw counters asked for")
                mine[(row.service, row.revision)] = ports.Counters(
                    requests=sum(raw.by_class), errors=raw.by_class[5],
                    latency_buckets=tuple(raw.latency_buckets), latency_bounds_s=bounds,
                    ttft_buckets=tuple(raw.ttft_buckets))
        return snapshot

    async def publish(self, table: routing.RouteTable) -> None:
        """PUT each router its part of the route table, all at once; raises if any refuses."""
        await asyncio.gather(*(self.publish_to(router, table) for router in self.routers))

    async def publish_to(self, router: Router, table: routing.RouteTable) -> None:
        part = router.part(table)
        if part is None:
            return
        headers = {"Authorization": f"Bearer {router.token}", "Content-Type": "application/json"}
        async with self._session.put(router.admin_url + "/routes", data=part.model_dump_json(),
                                     timeout=self.TIMEOUT, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"router {router.admin_url} refused the route table: "
                                   f"{response.status} {(await response.text())[:500]}")

    async def pokes(self, on_poke: ports.PokeHandler) -> None:
        """Call on_poke for every poke event from any router; reconnects; runs until
        cancelled, following routers as ``set_routers`` adds and removes them."""
        self._on_poke = on_poke
        self._follow_all(on_poke)
        try:
            await asyncio.Event().wait()
        finally:
            for task in self._followers.values():
                task.cancel()
            await asyncio.gather(*self._followers.values(), return_exceptions=True)
            self._followers.clear()
            self._on_poke = None

    def _follow_all(self, on_poke: ports.PokeHandler) -> None:
        for url in set(self._followers) - set(self.admin_urls):
            self._followers.pop(url).cancel()
        for url in self.admin_urls:
            if url not in self._followers:
                self._followers[url] = asyncio.create_task(self._follow(url, on_poke))

    async def _follow(self, url: str, on_poke: ports.PokeHandler) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self._session.get(url + "/events",
                                             timeout=self.EVENTS_TIMEOUT) as response:
                    self._following.add(url)
                    async for line in response.content:
                        if not line.strip():
                            continue
                        try:
                            poke = wire.Poke.model_validate_json(line)
                        except pydantic.ValidationError:
                            logger.warning("router %s sent an event that is not a poke: %.200r",
                                           url, line)
                            continue
                        on_poke(poke)
            self._following.discard(url)
            await asyncio.sleep(RECONNECT_S)

    async def subscribed(self, timeout_s: float) -> bool:
        """Wait until every router's poke stream is open (False if not within ``timeout_s``):
        a poke fired before that is lost."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not set(self.admin_urls) <= self._following:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def _stats(self, url: str, *, raw: bool) -> wire.Stats:
        async with self._session.get(url + ("/stats?raw=1" if raw else "/stats"),
                                     timeout=self.TIMEOUT) as response:
            response.raise_for_status()
            return wire.Stats.model_validate_json(await response.read())


def _p99_ms(bounds: list[float], buckets: list[int] | None) -> float | None:
    if not buckets or len(buckets) != len(bounds) + 1:
        return None
    p99 = judges.Latencies.from_histogram(bounds, buckets).quantile(0.99)
    return None if p99 is None else round(p99 * 1000, 3)


def _dispatched(rows: list[wire.RevisionStats]) -> float | None:
    """Requests sent to replicas per second, summed; None if a router does not count them."""
    counted = [r.dispatched for r in rows if r.dispatched is not None]
    return sum(d.get("1s", 0.0) for d in counted) if len(counted) == len(rows) else None


def _summed(rows: list[wire.RevisionStats], p99_ms: float | None) -> ports.RevisionLoad:
    return ports.RevisionLoad(
        rps=sum(r.rps.get("1s", 0.0) for r in rows),
        rps_6s=sum(r.rps.get("6s", 0.0) for r in rows),
        concurrency=sum(r.inflight_avg.get("1s", 0.0) for r in rows),
        dispatched=_dispatched(rows),
        inflight=sum(r.inflight for r in rows),
        buffered=sum(r.buffered for r in rows),
        streams=sum(r.streams.inflight for r in rows),
        p99_ms=p99_ms,
        requests=sum(r.requests.get("total", 0) for r in rows),
        errors=sum(r.requests.get("5xx", 0) for r in rows),
    )

