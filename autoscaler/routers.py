"""Talking to the routers: read their stats, publish route tables, follow their pokes.

The only place the autoscaler does HTTP to routers, over one ClientSession with timeouts on
every call. Several routers (one per worker host or replica) are added up per revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

Key = tuple[str, str]  # (service, revision)


@dataclass(frozen=True)
class RevisionLoad:
    """One revision's load as the routers see it, summed over routers."""

    rps: float
    """Arrivals per second over the last ~1 s (what the decider's rps metric reads)."""
    rps_6s: float
    concurrency: float
    """Mean requests in flight at replicas over the last ~1 s."""
    inflight: int
    buffered: int
    p99_ms: float | None
    requests: int
    errors: int


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

    def __add__(self, other: Counters) -> Counters:
        return Counters(self.requests + other.requests, self.errors + other.errors,
                        tuple(a + b for a, b in zip(self.latency_buckets,
                                                     other.latency_buckets, strict=True)),
                        self.latency_bounds_s)

    def __sub__(self, earlier: Counters) -> Counters:
        """The window between an earlier snapshot and this one. Any count going down means the
        router restarted in between: the window is everything since the restart."""
        if self.requests < earlier.requests or self.errors < earlier.errors or any(
                a < b for a, b in zip(self.latency_buckets, earlier.latency_buckets, strict=True)):
            return self
        return Counters(self.requests - earlier.requests, self.errors - earlier.errors,
                        tuple(a - b for a, b in zip(self.latency_buckets,
                                                     earlier.latency_buckets, strict=True)),
                        self.latency_bounds_s)


class RouterClient:
    TIMEOUT = aiohttp.ClientTimeout(total=5, connect=2)

    def __init__(self, admin_urls: list[str], token: str, session: aiohttp.ClientSession) -> None:
        self.admin_urls = admin_urls
        self._auth = {"Authorization": f"Bearer {token}"}
        self._session = session

    async def load(self) -> dict[Key, RevisionLoad]:
        """Every router's /stats, added up per revision; routers that fail are skipped."""
        answers = await asyncio.gather(*(self._get(url + "/stats") for url in self.admin_urls),
                                       return_exceptions=True)
        rows: dict[Key, list[dict[str, Any]]] = {}
        for answer in answers:
            if isinstance(answer, BaseException):
                continue
            for row in answer["revisions"]:
                rows.setdefault((row["service"], row["revision"]), []).append(row)
        return {key: _summed(parts) for key, parts in rows.items()}

    async def counters(self) -> dict[Key, Counters]:
        """Cumulative per-revision counters from every router, added up (for window deltas)."""
        answers = await asyncio.gather(
            *(self._get(url + "/stats?raw=1") for url in self.admin_urls))
        totals: dict[Key, Counters] = {}
        for answer in answers:
            bounds = tuple(answer["latency_bounds_s"])
            for row in answer["revisions"]:
                raw = row["raw"]
                counters = Counters(requests=sum(raw["by_class"]), errors=raw["by_class"][5],
                                    latency_buckets=tuple(raw["latency_buckets"]),
                                    latency_bounds_s=bounds)
                key = (row["service"], row["revision"])
                totals[key] = totals[key] + counters if key in totals else counters
        return totals

    async def publish(self, document: dict[str, Any]) -> None:
        """PUT the route table to every router; raises if any refuses it."""
        body = json.dumps(document)
        for url in self.admin_urls:
            async with self._session.put(url + "/routes", data=body, headers=self._auth,
                                         timeout=self.TIMEOUT) as response:
                if response.status != 200:
                    raise RuntimeError(f"router {url} refused the route table: "
                                       f"{response.status} {await response.text()}")

    async def pokes(self, on_poke: Callable[[dict[str, Any]], None]) -> None:
        """Call on_poke for every poke event from any router; reconnects; runs until cancelled."""
        await asyncio.gather(*(self._follow(url, on_poke) for url in self.admin_urls))

    async def _follow(self, url: str, on_poke: Callable[[dict[str, Any]], None]) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async for event in self._events(url):
                    on_poke(event)
            await asyncio.sleep(0.5)

    async def _events(self, url: str) -> AsyncIterator[dict[str, Any]]:
        timeout = aiohttp.ClientTimeout(connect=2, sock_read=60)  # heartbeats every 15 s
        async with self._session.get(url + "/events", timeout=timeout) as response:
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)

    async def _get(self, url: str) -> Any:
        async with self._session.get(url, timeout=self.TIMEOUT) as response:
            response.raise_for_status()
            return await response.json()


def _summed(rows: list[dict[str, Any]]) -> RevisionLoad:
    p99s = [r["latency_ms"]["p99"] for r in rows if r["latency_ms"]["p99"] is not None]
    return RevisionLoad(
        rps=sum(r["rps"]["1s"] for r in rows),
        rps_6s=sum(r["rps"]["6s"] for r in rows),
        concurrency=sum(r["inflight_avg"]["1s"] for r in rows),
        inflight=sum(r["inflight"] for r in rows),
        buffered=sum(r["buffered"] for r in rows),
        p99_ms=max(p99s) if p99s else None,
        requests=sum(r["requests"]["total"] for r in rows),
        errors=sum(r["requests"]["5xx"] for r in rows),
    )
