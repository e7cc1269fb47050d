"""The router as a real process in front of real model-server processes, over real HTTP.

Covered: scale-from-zero buffering (exactly once, FIFO within the concurrency limit), overflow,
deadline, client disconnect, weights, stickiness, pinning, poke events, connect retry, upstream
reset mid-response, route validation, body and header limits, slow clients, malformed HTTP,
pipelining, several workers and graceful shutdown. Streaming is in test_streaming.py.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal

import aiohttp
import httptools
import pytest

from tests import procs
from tests.integration import replicas
from tests.integration.conftest import INFER, PAYLOAD, raw_exchange, service

pytestmark = pytest.mark.integration


def revision(name, weight=100, endpoints=(), concurrency=0, **extra):
    return {"name": name, "weight": weight, "endpoints": list(endpoints),
            "concurrency": concurrency, **extra}


async def infer(session, router, request_id=None, **headers):
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    async with session.post(router.url + INFER, json=PAYLOAD, headers=headers) as response:
        await response.read()
        return response


async def test_scale_from_zero_serves_every_buffered_request_once_in_order(
        start_router, start_model_server):
    router = start_router(service(revision("v1", concurrency=4), buffer={"depth": 1000}))
    ids = [f"req-{i:03d}" for i in range(500)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = []
        for i, request_id in enumerate(ids):  # enqueue one by one so the order is known
            tasks.append(asyncio.create_task(infer(session, router, request_id)))
            await router.wait_for(lambda s, n=i + 1: s["v1"]["buffered"] == n)
        server = start_model_server("--revision", "v1")
        response = await router.put_routes(service(
            revision("v1", endpoints=[server.url], concurrency=4), buffer={"depth": 1000}))
        assert response.status == 200
        responses = await asyncio.gather(*tasks)

    assert [r.status for r in responses] == [200] * 500
    seen = await server.requests()
    assert seen["count"] == 500
    assert sorted(seen["ids"]) == ids  # every request exactly once
    for position, request_id in enumerate(seen["ids"]):  # FIFO within the concurrency limit
        assert abs(position - ids.index(request_id)) < 4
    assert seen["max_inflight"] <= 4
    stats = (await router.stats())["v1"]
    assert stats["requests"]["2xx"] == 500
    assert stats["buffered"] == 0
    assert stats["cold_start_waits"]["count"] == 500


async def test_a_wave_at_zero_is_released_at_the_policy_pace_so_later_replicas_share_it(
        start_router):
    """40 requests wait at zero; with release_concurrency 4 and no hard limit the first ready
    replica takes 4, the next one published takes 4 more, and the rest wait for answers.
    Without the pace the first replica took all 40 (issue 12: 496 of 1,000 at once)."""
    gate = asyncio.Event()
    paced = {"release_concurrency": 4, "concurrency": 0}
    async with replicas.Replica(replicas.held_until(gate)) as first, \
            replicas.Replica(replicas.held_until(gate)) as second:
        router = start_router(service(revision("v1", **paced)))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            waiting = [asyncio.create_task(infer(session, router)) for _ in range(40)]
            await router.wait_for(lambda s: s["v1"]["buffered"] == 40)
            await router.put_routes(service(revision("v1", endpoints=[first.url], **paced)))
            one = (await router.stats())["v1"]  # the release happened inside the PUT
            await router.put_routes(service(revision(
                "v1", endpoints=[first.url, second.url], **paced)))
            two = (await router.stats())["v1"]
            gate.set()
            statuses = [r.status for r in await asyncio.gather(*waiting)]
        assert (one["inflight"], one["buffered"]) == (4, 36)
        assert (two["inflight"], two["buffered"]) == (8, 32)
        assert statuses == [200] * 40
        assert len(first.heads) + len(second.heads) == 40
        assert len(second.heads) >= 4


@pytest.mark.parametrize(("parallelism", "most"), [(1_000, range(16, 61)), (1, range(1, 4))])
async def test_the_release_pace_grows_to_what_a_replica_takes_without_slowing(
        start_router, parallelism, most):
    """60 requests wait at zero, paced at 1 in flight. A replica that works on any number at
    once answers as fast at every load, and the pace doubles each round trip (the wave drains
    in ~6 instead of 60); one that works on 1 at a time answers slower once 2 wait inside it,
    and the pace stays within 1 of what it takes."""
    server = replicas.WorksOn(parallelism, 0.05)
    paced = {"release_concurrency": 1, "concurrency": 0}
    async with replicas.Replica(server) as replica:
        router = start_router(service(revision("v1", **paced)))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            waiting = [asyncio.create_task(infer(session, router)) for _ in range(60)]
            await router.wait_for(lambda s: s["v1"]["buffered"] == 60)
            await router.put_routes(service(revision("v1", endpoints=[replica.url], **paced)))
            statuses = [r.status for r in await asyncio.gather(*waiting)]
    assert statuses == [200] * 60
    assert server.most in most


async def test_buffer_overflow_gets_503_with_retry_after_at_once(start_router):
    router = start_router(service(revision("v1"), buffer={"depth": 3}))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        held = [asyncio.create_task(infer(session, router)) for _ in range(3)]
        await router.wait_for(lambda s: s["v1"]["buffered"] == 3)
        overflow = await asyncio.gather(*(infer(session, router) for _ in range(2)))
        assert [r.status for r in overflow] == [503, 503]
        assert all(r.headers["Retry-After"] == "1" for r in overflow)
        assert (await router.stats())["v1"]["buffered"] == 3
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)


async def test_buffered_past_the_deadline_gets_504(start_router):
    router = start_router(service(revision("v1"), buffer={"timeout_s": 0.3}),
                          settings={"sweep_interval_s": 0.05})
    async with aiohttp.ClientSession() as session:
        response = await infer(session, router)
    assert response.status == 504
    assert (await router.stats())["v1"]["buffered"] == 0


async def test_client_that_leaves_the_buffer_is_499_and_never_forwarded(
        start_router, start_model_server):
    router = start_router(service(revision("v1")))
    _, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Request-Id: gone\r\n"
                 b"Content-Length: 2\r\n\r\n{}")
    await router.wait_for(lambda s: s["v1"]["buffered"] == 1)
    writer.close()
    stats = await router.wait_for(lambda s: s["v1"]["requests"]["499"] == 1)
    assert stats["v1"]["buffered"] == 0
    assert stats["v1"]["requests"]["5xx"] == 0

    server = start_model_server()
    await router.put_routes(service(revision("v1", endpoints=[server.url])))
    async with aiohttp.ClientSession() as session:
        assert (await infer(session, router, "kept")).status == 200
    assert (await server.requests())["ids"] == ["kept"]


async def test_poke_event_on_first_buffered_request(start_router):
    router = start_router(service(revision("cold")))
    async with aiohttp.ClientSession() as session, session.get(router.admin + "/events") as events:
        await events.content.readline()  # subscribed
        request = asyncio.create_task(infer(session, router))
        line = b"\n"
        while not line.strip():
            line = await asyncio.wait_for(events.content.readline(), 10)
        event = json.loads(line)
        request.cancel()
    assert event["type"] == "poke"
    assert (event["service"], event["revision"]) == ("model", "cold")


async def test_weights_split_traffic_within_one_percent(start_router, start_model_server):
    v1 = start_model_server("--revision", "v1")
    v2 = start_model_server("--revision", "v2")
    router = start_router(service(revision("v1", 90, [v1.url]), revision("v2", 10, [v2.url])))
    async with aiohttp.ClientSession() as session:
        served = collections.Counter()
        for _ in range(1000):
            response = await infer(session, router)
            assert response.status == 200
            served[response.headers["X-Model-Revision"]] += 1
    assert abs(served["v2"] / 1000 - 0.10) <= 0.01
    assert (await v2.requests())["count"] == served["v2"]


async def test_sticky_users_stay_and_a_weight_change_moves_only_some(
        start_router, start_model_server):
    v1 = start_model_server("--revision", "v1")
    v2 = start_model_server("--revision", "v2")
    sticky = {"sticky": {"header": "X-User"}}
    router = start_router(service(revision("v1", 90, [v1.url]), revision("v2", 10, [v2.url]),
                                  **sticky))

    async def assignment(session):
        placed = {}
        for user in range(200):
            seen = {(await infer(session, router, **{"X-User": f"u{user}"}))
                    .headers["X-Sluice-Revision"] for _ in range(3)}
            assert len(seen) == 1, f"user u{user} flipped between {seen}"
            placed[user] = seen.pop()
        return placed

    async with aiohttp.ClientSession() as session:
        before = await assignment(session)
        await router.put_routes(service(revision("v1", 50, [v1.url]),
                                        revision("v2", 50, [v2.url]), **sticky))
        after = await assignment(session)
    moved = [u for u in before if before[u] != after[u]]
    assert all(before[u] == "v1" and after[u] == "v2" for u in moved)  # nobody moves back
    assert 0.25 < len(moved) / 200 < 0.55  # about the 40 % that must move


async def test_pin_header_reaches_a_weight_zero_revision(start_router, start_model_server):
    v1 = start_model_server("--revision", "v1")
    dark = start_model_server("--revision", "dark")
    router = start_router(service(revision("v1", 100, [v1.url]), revision("dark", 0, [dark.url])))
    async with aiohttp.ClientSession() as session:
        pinned = await infer(session, router, **{"X-Sluice-Revision": "dark"})
        unpinned = [await infer(session, router) for _ in range(20)]
        unknown = await infer(session, router, **{"X-Sluice-Revision": "v9"})
    assert pinned.headers["X-Model-Revision"] == "dark"
    assert {r.headers["X-Model-Revision"] for r in unpinned} == {"v1"}
    assert unknown.status == 404


async def test_connect_failure_is_retried_on_another_endpoint(start_router, start_model_server):
    server = start_model_server()
    dead = f"http://127.0.0.1:{procs.free_port()}"
    router = start_router(service(revision("v1", endpoints=[dead, server.url])))
    async with aiohttp.ClientSession() as session:
        statuses = [(await infer(session, router)).status for _ in range(20)]
    assert statuses == [200] * 20
    assert (await server.requests())["count"] == 20


async def test_upstream_reset_mid_response_cuts_the_client_and_spares_others(
        start_router, start_model_server):
    async def half_answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        writer.transport.abort()

    broken = await asyncio.start_server(half_answer, "127.0.0.1", 0)
    broken_url = f"http://127.0.0.1:{broken.sockets[0].getsockname()[1]}"
    healthy = start_model_server()
    router = start_router(service(revision("broken", 100, [broken_url]),
                                  revision("healthy", 0, [healthy.url])))
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientPayloadError):
                await infer(session, router)
            ok = await infer(session, router, **{"X-Sluice-Revision": "healthy"})
    finally:
        broken.close()
    assert ok.status == 200
    stats = await router.stats()
    assert stats["broken"]["requests"]["5xx"] == 1


async def test_invalid_route_update_is_rejected_and_the_old_table_keeps_serving(
        start_router, start_model_server):
    server = start_model_server()
    good = service(revision("v1", endpoints=[server.url]))
    router = start_router(good)
    bad = service(revision("v1", weight=150, endpoints=[server.url]))
    async with aiohttp.ClientSession() as session:
        async with session.put(router.admin + "/routes", json=bad,
                               headers={"Authorization": "Bearer test-admin-token"}) as response:
            assert response.status == 400
            problems = (await response.json())["problems"]
        async with session.put(router.admin + "/routes", json=good) as unauthenticated:
            assert unauthenticated.status == 401
        async with session.get(router.admin + "/routes") as current:
            assert (await current.json())["services"]["model"]["revisions"][0]["weight"] == 100
        assert (await infer(session, router)).status == 200
    assert problems == [{"field": "services.model.revisions.0.weight",
                         "reason": "Input should be less than or equal to 100"}]


async def test_oversized_bodies_get_413_and_never_reach_a_replica(
        start_router, start_model_server):
    server = start_model_server()
    router = start_router(service(revision("v1", endpoints=[server.url])),
                          settings={"max_body_bytes": 1024})
    big = b"x" * 2048
    declared = await raw_exchange(
        router.port, b"POST /v1/models/model:predict HTTP/1.1\r\nHost: m\r\n"
        b"Content-Length: 2048\r\n\r\n" + big)
    chunked = await raw_exchange(
        router.port, b"POST /v1/models/model:predict HTTP/1.1\r\nHost: m\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n800\r\n" + big + b"\r\n0\r\n\r\n")
    assert declared.startswith(b"HTTP/1.1 413 ")
    assert chunked.startswith(b"HTTP/1.1 413 ")
    async with aiohttp.ClientSession() as session:
        assert (await infer(session, router, "small")).status == 200
    assert (await server.requests())["ids"] == ["small"]


@pytest.mark.parametrize(("data", "status"), [
    pytest.param(b"GARBAGE\r\n\r\n", 400, id="not-http"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: m\r\nContent-Length: 3\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400,
                 id="content-length-and-chunked"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: m\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"
                 b"abcd", 400, id="duplicate-content-length"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: m\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431,
                 id="oversized-headers"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: m\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                 501, id="websocket-upgrade"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"zz\r\nabc\r\n0\r\n\r\n", 400, id="bad-chunk-size"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabcXY0\r\n\r\n", 400, id="chunk-longer-than-its-size"),
])
async def test_malformed_requests_get_4xx_and_others_are_served(
        start_router, start_model_server, data, status):
    server = start_model_server()
    router = start_router(service(revision("v1", endpoints=[server.url])))
    answer = await raw_exchange(router.port, data)
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    async with aiohttp.ClientSession() as session:
        assert (await infer(session, router)).status == 200
    assert (await server.requests())["count"] == 1


async def test_slow_client_is_dropped_with_408_while_others_are_served(
        start_router, start_model_server):
    server = start_model_server()
    router = start_router(service(revision("v1", endpoints=[server.url])),
                          settings={"header_timeout_s": 0.5, "sweep_interval_s": 0.05})
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: m\r\nX-Slow: ")  # and never the rest
    async with aiohttp.ClientSession() as session:
        assert (await infer(session, router)).status == 200
    answer = await asyncio.wait_for(reader.read(), 30)  # returns when the router closes
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_pipelined_requests_are_answered_in_order(start_router, start_model_server):
    server = start_model_server()
    router = start_router(service(revision("v1", endpoints=[server.url])))
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(b"GET /debug/headers HTTP/1.1\r\nHost: m\r\nX-Request-Id: first\r\n\r\n"
                 b"POST /debug/headers HTTP/1.1\r\nHost: m\r\nX-Request-Id: second\r\n"
                 b"Content-Length: 2\r\n\r\n{}"
                 b"GET /debug/headers HTTP/1.1\r\nHost: m\r\nX-Request-Id: third\r\n"
                 b"Connection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()

    class Responses:
        def __init__(self):
            self.bodies = []

        def on_message_begin(self):
            self.bodies.append(b"")

        def on_body(self, body):
            self.bodies[-1] += body

    responses = Responses()
    httptools.HttpResponseParser(responses).feed_data(data)
    answered = [(json.loads(body)["method"], dict(json.loads(body)["headers"])["X-Request-Id"])
                for body in responses.bodies]
    assert answered == [("GET", "first"), ("POST", "second"), ("GET", "third")]


async def test_several_workers_share_the_port_and_count_every_request(
        start_router, start_model_server):
    server = start_model_server()
    router = start_router(service(revision("v1", endpoints=[server.url])), workers=2)
    before = (await router.stats())["v1"]["requests"]["total"]  # the readiness probe's
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        statuses = await asyncio.gather(*(infer(session, router) for _ in range(300)))
    assert all(r.status == 200 for r in statuses)
    stats = await router.stats()
    assert stats["v1"]["requests"]["total"] - before == 300
    assert (await server.requests())["count"] == 300


async def test_sigterm_finishes_in_flight_requests_before_exit(start_router, start_model_server):
    server = start_model_server("--latency", "1.0")
    router = start_router(service(revision("v1", endpoints=[server.url])))
    async with aiohttp.ClientSession() as session:
        pending = asyncio.create_task(infer(session, router))
        await router.wait_for(lambda s: s["v1"]["inflight"] == 1)
        router.proc.popen.send_signal(signal.SIGTERM)
        response = await pending
    assert response.status == 200
    assert router.proc.wait(30) == 0


async def test_h2c_upgrade_offer_is_declined_and_the_connection_goes_on(
        start_router, start_model_server):
    server = start_model_server()
    router = start_router(service(revision("v1", endpoints=[server.url])))
    answer = await raw_exchange(
        router.port, b"GET /v2/health/live HTTP/1.1\r\nHost: m\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        b"GET /v2/health/ready HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert b"101" not in answer.split(b"\r\n", 1)[0]


async def test_unavailable_revision_fails_waiting_and_new_requests_at_once(start_router):
    router = start_router(service(revision("v1")))
    async with aiohttp.ClientSession() as session:
        waiting = asyncio.create_task(infer(session, router))
        await router.wait_for(lambda s: s["v1"]["buffered"] == 1)
        reason = "replicas of v1 cannot start: exit code 127"
        unavailable = service({**revision("v1"), "unavailable": reason})
        assert (await router.put_routes(unavailable)).status == 200
        async with session.post(router.url + INFER, json=PAYLOAD) as fresh:
            assert fresh.status == 503
            assert (await fresh.json())["error"] == reason
        assert (await waiting).status == 503


async def test_raw_stats_carry_the_exact_latency_histogram(start_router, start_model_server):
    server = start_model_server()
    router = start_router(service(revision("v1", endpoints=[server.url])))
    async with aiohttp.ClientSession() as session:
        for _ in range(30):
            assert (await infer(session, router)).status == 200
        async with session.get(router.admin + "/stats?raw=1") as response:
            body = await response.json()
    raw = body["revisions"][0]["raw"]
    assert len(raw["latency_buckets"]) == len(body["latency_bounds_s"]) + 1
    assert sum(raw["latency_buckets"]) == raw["latency_count"] == sum(raw["by_class"])
