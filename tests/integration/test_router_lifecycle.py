"""The router's processes: several workers behind one admin API, and SIGTERM's drain.

Waits are on the router's own record (its stats, /readyz, what a replica received), never on
elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import signal
import socket

import aiohttp
import pytest

from router import main
from tests.integration import replicas
from tests.integration.conftest import INFER, PAYLOAD, service, wait_until_refused

pytestmark = pytest.mark.integration

ROUNDS = 40
"""Requests on fresh connections where the kernel spreads them over the workers
(SO_REUSEPORT): the chance that one worker gets none is 2**-39."""


def revision(name, weight=100, endpoints=()):
    return {"name": name, "weight": weight, "endpoints": list(endpoints)}


async def raw_stats(router) -> dict:
    async with aiohttp.ClientSession() as session, session.get(
            router.admin + "/stats?raw=1") as response:
        return await response.json()


async def raw_stats_until(router, predicate, within_s: float = 30.0) -> dict:
    """Poll /stats?raw=1 until predicate(document) holds; fail with the last one after within_s."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not predicate(document := await raw_stats(router)):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached; last raw stats: {document}")
        await asyncio.sleep(0.05)
    return document


# starting without a table (on Kubernetes the controller publishes the first one)


@pytest.mark.parametrize("workers", [1, 2])
async def test_without_a_table_it_is_not_ready_and_answers_503_until_one_is_published(
        start_router, start_model_server, workers):
    replica = start_model_server()
    router = start_router(None, workers=workers)
    async with aiohttp.ClientSession() as session:
        async with session.get(router.admin + "/readyz") as ready:
            assert ready.status == 503
        async with session.post(router.url + INFER, json=PAYLOAD) as early:
            assert early.status == 503 and "Retry-After" in early.headers
            assert "no route table yet" in (await early.json())["error"]
        assert (await router.put_routes(service(revision("v1", 100, [replica.url])))).status \
            == 200
        async with session.get(router.admin + "/readyz") as ready:
            assert ready.status == 200
        async with session.post(router.url + INFER, json=PAYLOAD) as served:
            assert served.status == 200


# several workers


async def test_a_route_put_reaches_every_worker(start_router, start_model_server):
    old = start_model_server("--revision", "old")
    new = start_model_server("--revision", "new")
    router = start_router(service(revision("v1", endpoints=[old.url])), workers=2)
    assert [w["generation"] for w in (await raw_stats(router))["workers"]] == [1, 1]
    assert (await router.put_routes(service(revision("v1", endpoints=[new.url])))).status == 200
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        served = []
        for _ in range(ROUNDS):
            async with session.post(router.url + INFER, json=PAYLOAD) as response:
                assert response.status == 200
                served.append(response.headers["X-Model-Revision"])
    assert served == ["new"] * ROUNDS
    workers = (await raw_stats(router))["workers"]
    assert [w["generation"] for w in workers] == [2, 2]
    assert all(w["requests"] > 0 for w in workers)  # both served the new table


async def test_a_poke_from_any_worker_reaches_the_admin_events(start_router):
    cold = [f"r{i}" for i in range(20)]
    router = start_router(service(revision("warm"), *(revision(r, 0) for r in cold)), workers=2)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async with session.get(router.admin + "/events") as events:
            assert await events.content.readline() == b"\n"  # subscribed
            # Each on a new connection: the kernel picks the worker.
            pending = [asyncio.create_task(session.post(
                router.url + INFER, json=PAYLOAD, headers={"X-Sluice-Revision": name}))
                for name in cold]
            poked = []
            with contextlib.suppress(TimeoutError):  # heartbeats would keep a reader waiting
                async with asyncio.timeout(30):
                    while len(poked) < len(cold):
                        line = await events.content.readline()
                        if line.strip():
                            poked.append(json.loads(line)["revision"])
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    assert sorted(poked) == sorted(cold)


async def test_merged_inflight_and_rates_are_what_the_workers_did_together(start_router):
    held = 8
    gate = asyncio.Event()
    async with replicas.Replica(replicas.held_until(gate)) as replica:
        router = start_router(service(revision("v1", endpoints=[replica.url])), workers=2)
        before = (await raw_stats(router))["revisions"][0]["raw"]["windows"]["60"]["arrivals"]
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as session:
            waiting = [asyncio.create_task(session.post(router.url + INFER, json=PAYLOAD))
                       for _ in range(held)]
            await replica.wait_for(held)
            # Once the held requests cover the whole 1 s window, its average is exactly them.
            stats = await router.wait_for(lambda s: s["v1"]["inflight_avg"]["1s"] == held)
            assert stats["v1"]["inflight"] == held
            gate.set()
            assert [(await w).status for w in waiting] == [200] * held
            for _ in range(ROUNDS):
                async with session.post(router.url + INFER, json=PAYLOAD) as response:
                    assert response.status == 200
        # A window holds whole seconds: the requests just sent count once their second closed.
        document = await raw_stats_until(
            router, lambda d: d["revisions"][0]["raw"]["windows"]["60"]["arrivals"] - before
            >= held + ROUNDS)
    workers = document["workers"]
    assert all(w["requests"] > 0 for w in workers)  # both took part
    v1 = document["revisions"][0]
    window = v1["raw"]["windows"]["60"]
    assert window["arrivals"] - before == held + ROUNDS
    assert v1["rps"]["60s"] == round(window["arrivals"] / window["seconds"], 3)
    assert v1["requests"]["2xx"] == sum(w["requests"] for w in workers)


# SIGTERM


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_refuses_new_connections_and_serves_what_is_buffered_if_it_can(
        start_router, start_model_server, workers):
    router = start_router(service(revision("v1")), workers=workers,
                          settings={"drain_timeout_s": 60})
    async with aiohttp.ClientSession() as session:
        buffered = asyncio.create_task(session.post(router.url + INFER, json=PAYLOAD))
        await router.wait_for(lambda s: s["v1"]["buffered"] == 1)
        router.proc.signal(signal.SIGTERM)
        await wait_until_refused(router.port)
        async with session.get(router.admin + "/readyz") as ready:
            assert ready.status == 503
        server = start_model_server()  # an endpoint published during the drain
        assert (await router.put_routes(service(revision("v1", endpoints=[server.url])))
                ).status == 200
        response = await buffered
        assert response.status == 200
    assert router.proc.wait(60) == 0
    assert (await server.requests())["count"] == 1


async def test_what_is_left_at_the_drain_timeout_is_answered_503(start_router):
    async with replicas.Replica(replicas.never_answer) as replica:
        router = start_router(service(revision("v1", 100, [replica.url]), revision("cold", 0)),
                              settings={"drain_timeout_s": 0.5})
        async with aiohttp.ClientSession() as session:
            at_replica = asyncio.create_task(session.post(router.url + INFER, json=PAYLOAD))
            in_buffer = asyncio.create_task(session.post(
                router.url + INFER, json=PAYLOAD, headers={"X-Sluice-Revision": "cold"}))
            await replica.wait_for(1)
            await router.wait_for(lambda s: s["cold"]["buffered"] == 1)
            router.proc.signal(signal.SIGTERM)
            for task in (at_replica, in_buffer):
                response = await task
                assert response.status == 503
                assert response.headers["Retry-After"] == "1"
                assert (await response.json())["error"] == "the router is shutting down"
        assert router.proc.wait(30) == 0


def test_the_port_workers_share_is_held_from_its_choice_until_they_listen():
    """Without --listen's port the router picks one for its workers: no other program may take
    it meanwhile (a plain bind is refused), while a worker binding it with SO_REUSEPORT, as
    each does, listens on it and gets its connections."""
    reserved = main.reserve_port("127.0.0.1")
    port = reserved.getsockname()[1]
    try:
        with socket.socket() as other, pytest.raises(OSError) as refused:
            other.bind(("127.0.0.1", port))
        assert refused.value.errno == errno.EADDRINUSE
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
            worker.listen()
            worker.settimeout(5)
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                accepted, _ = worker.accept()
                accepted.close()
    finally:
        reserved.close()
