"""The autoscaler's router client against a real router: load, counters, publish, pokes."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from autoscaler.sources import routers
from policies import routing
from tests.integration.conftest import INFER, PAYLOAD, TOKEN, service

pytestmark = pytest.mark.integration


async def subscribed(session, router) -> None:
    """Until the router counts one /events subscriber (its own gauge in /metrics)."""
    for _ in range(1500):
        async with session.get(router.admin + "/metrics") as response:
            if "\nsluice_router_event_subscribers 1\n" in await response.text():
                return
        await asyncio.sleep(0.02)
    raise AssertionError("the client never subscribed to /events")


def revision(name, weight, endpoints=()):
    return {"name": name, "weight": weight, "endpoints": list(endpoints)}


async def test_counter_windows_are_exact_per_revision(start_router, start_model_server):
    good = start_model_server()
    bad = start_model_server("--error-rate", "1.0")
    router = start_router(service(revision("stable", 0, [good.url]),
                                  revision("canary", 0, [bad.url])))
    async with aiohttp.ClientSession() as session:
        client = routers.RouterClient([routers.Router(router.admin, TOKEN)], session)
        before = await client.counters()
        for arm, count in (("stable", 30), ("canary", 7)):
            for _ in range(count):
                async with session.post(router.url + INFER, json=PAYLOAD,
                                        headers={"X-Sluice-Revision": arm}) as response:
                    await response.read()
        after = await client.counters()
    assert list(after) == [router.admin]  # by router: a router's restart is its own
    stable = after[router.admin][("model", "stable")] - before[router.admin][("model", "stable")]
    canary = after[router.admin][("model", "canary")] - before[router.admin][("model", "canary")]
    assert (stable.requests, stable.errors) == (30, 0)
    assert (canary.requests, canary.errors) == (7, 7)
    assert sum(stable.latency_buckets) == 30
    assert len(stable.latency_buckets) == len(stable.latency_bounds_s) + 1


async def test_publish_then_poke_reaches_the_subscriber(start_router):
    router = start_router(service(revision("v1", 100)))
    pokes: list[dict] = []
    poked = asyncio.Event()

    def on_poke(event):
        pokes.append(event)
        poked.set()

    async with aiohttp.ClientSession() as session:
        client = routers.RouterClient([routers.Router(router.admin, TOKEN)], session)
        await client.publish(routing.load(service(revision("v1", 100), revision("v2", 0))))
        follower = asyncio.create_task(client.pokes(on_poke))
        await subscribed(session, router)  # a poke fired before that would be missed
        request = asyncio.create_task(session.post(
            router.url + INFER, json=PAYLOAD, headers={"X-Sluice-Revision": "v2"}))
        await asyncio.wait_for(poked.wait(), 30)
        for task in (request, follower):
            task.cancel()
        await asyncio.gather(request, follower, return_exceptions=True)
    assert (pokes[0].service, pokes[0].revision) == ("model", "v2")


async def test_load_reports_p99_over_the_recent_window_not_the_lifetime(start_router,
                                                                        start_model_server):
    slow = start_model_server("--latency", "1")
    fast = start_model_server()
    router = start_router(service(revision("v1", 100, [slow.url])))
    clock = [1000.0]
    async with aiohttp.ClientSession() as session:
        client = routers.RouterClient([routers.Router(router.admin, TOKEN)], session,
                                      clock=lambda: clock[0])

        async def requests(count: int) -> None:
            for _ in range(count):
                async with session.post(router.url + INFER, json=PAYLOAD) as response:
                    assert response.status == 200

        await client.load()
        await requests(3)  # a slow start, as a cold start would be
        slow_start = (await client.load())[("model", "v1")].p99_ms
        await client.publish(routing.load(service(revision("v1", 100, [fast.url]))))
        clock[0] += routers.P99_WINDOW_S + 1  # the slow requests are out of the window
        await client.load()
        await requests(50)
        clock[0] += 1
        recent = (await client.load())[("model", "v1")].p99_ms
        clock[0] += routers.P99_WINDOW_S + 1
        idle = (await client.load())[("model", "v1")].p99_ms

    assert slow_start is not None and slow_start >= 900
    # Over the lifetime, the 3 slow requests of 53 would be the p99; in the recent window only
    # fast ones count (half a second apart from the slow: no busy machine closes that gap).
    assert recent is not None and recent < slow_start - 500
    assert idle is None  # nothing answered in the window: no figure, not an old one
