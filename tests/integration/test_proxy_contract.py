"""The proxy's contract with clients and replicas, over real sockets on loopback: the headers a
replica sees and a client gets back, what each replica failure becomes, limits, framing,
Expect: 100-continue, HTTP/1.0, and backpressure from a slow client.

Replicas are the reference model server (its /debug/headers echoes what it received) or
scripted ones (tests/integration/replicas.py) for what a healthy server never does.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import httptools
import pytest

from tests.integration import replicas
from tests.integration.conftest import INFER, PAYLOAD, raw_exchange, service

pytestmark = pytest.mark.integration

BOUNDED = aiohttp.ClientTimeout(total=30)
"""For requests whose answer depends on a router timeout: if it never fires, fail, not hang."""


def one(url, **extra):
    return service({"name": "v1", "weight": 100, "endpoints": [url], **extra})


class Responses:
    """httptools callbacks collecting each response's status, headers and body."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.all: list[dict] = []

    def feed(self, data: bytes) -> Responses:
        self.parser.feed_data(data)
        return self

    def on_message_begin(self) -> None:
        self.all.append({"status": None, "headers": {}, "body": b""})

    def on_header(self, name: bytes, value: bytes) -> None:
        self.all[-1]["headers"][name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.all[-1]["status"] = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.all[-1]["body"] += body


def received(body: bytes) -> dict[str, list[str]]:
    """What /debug/headers says the replica received: lowercase name -> values in order."""
    out: dict[str, list[str]] = {}
    for name, value in json.loads(body)["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


async def stats_raw(router) -> dict[str, dict]:
    async with aiohttp.ClientSession() as session, session.get(
            router.admin + "/stats?raw=1") as response:
        return {r["revision"]: r["raw"] for r in (await response.json())["revisions"]}


# headers


async def test_forwarded_for_is_appended_proto_set_and_request_id_kept_or_generated(
        start_router, start_model_server):
    server = start_model_server()
    router = start_router(one(server.url))
    async with aiohttp.ClientSession() as session:
        async def seen(**headers):
            async with session.get(router.url + "/debug/headers", headers=headers) as response:
                assert response.status == 200
                return received(await response.read())

        chained = await seen(**{"X-Forwarded-For": "203.0.113.7, 198.51.100.2",
                                "X-Forwarded-Proto": "https", "X-Request-Id": "kept-1"})
        fresh = [await seen(), await seen()]
    assert chained["x-forwarded-for"] == ["203.0.113.7, 198.51.100.2, 127.0.0.1"]
    assert chained["x-forwarded-proto"] == ["http"]  # set by the router, never the client's
    assert chained["x-request-id"] == ["kept-1"]
    for headers in fresh:
        assert headers["x-forwarded-for"] == ["127.0.0.1"]
        assert headers["x-forwarded-proto"] == ["http"]
        assert len(headers["x-request-id"]) == 1 and headers["x-request-id"][0]
    assert fresh[0]["x-request-id"] != fresh[1]["x-request-id"]


async def test_hop_by_hop_request_headers_do_not_reach_the_replica(
        start_router, start_model_server):
    server = start_model_server()
    router = start_router(one(server.url))
    answer = await raw_exchange(router.port, (
        b"GET /debug/headers HTTP/1.1\r\nHost: m\r\nConnection: close, X-Client-Hop\r\n"
        b"X-Client-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\n"
        b"Proxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\n"
        b"X-Kept: yes\r\n\r\n"))
    response = Responses().feed(answer).all[0]
    assert response["status"] == 200
    headers = received(response["body"])
    for hop in ("connection", "x-client-hop", "keep-alive", "te", "trailer",
                "proxy-authorization", "proxy-connection"):
        assert hop not in headers, hop
    assert headers["x-kept"] == ["yes"]


async def test_hop_by_hop_response_headers_do_not_reach_the_client(start_router):
    async def with_hops(head, reader, writer):
        # The standard hop-by-hop headers; the second answer also names one in Connection.
        named = b"/named " in head
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: keep-alive%s\r\n" % (
            b", X-Replica-Hop" if named else b"")
            + b"X-Replica-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n"
            b"Trailer: X-T\r\nUpgrade: h2c\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        return True

    async with replicas.Replica(with_hops) as replica:
        router = start_router(one(replica.url))
        answer = await raw_exchange(router.port, b"GET /plain HTTP/1.1\r\nHost: m\r\n\r\n"
                                                 b"GET /named HTTP/1.1\r\nHost: m\r\n"
                                                 b"Connection: close\r\n\r\n")
    plain, named = Responses().feed(answer).all
    for response in (plain, named):
        assert response["status"] == 200
        assert response["body"] == b"{}"
        for hop in ("keep-alive", "proxy-authenticate", "trailer", "upgrade"):
            assert hop not in response["headers"], hop
        assert response["headers"]["x-kept"] == "yes"
    assert plain["headers"]["x-replica-hop"] == "1"  # an ordinary header there
    assert "x-replica-hop" not in named["headers"]  # hop-by-hop once Connection names it
    assert "connection" not in plain["headers"]
    assert named["headers"]["connection"] == "close"  # the router's own, for this client


async def test_http10_without_host_gets_one_and_http11_without_host_is_400(
        start_router, start_model_server):
    server = start_model_server()
    router = start_router(one(server.url))
    old = Responses().feed(await raw_exchange(
        router.port, b"GET /debug/headers HTTP/1.0\r\n\r\n")).all[0]
    new = await raw_exchange(router.port, b"GET /debug/headers HTTP/1.1\r\n"
                                          b"Connection: close\r\n\r\n")
    assert old["status"] == 200
    assert received(old["body"])["host"] == [server.url.removeprefix("http://")]
    assert new.startswith(b"HTTP/1.1 400 ")
    assert (await server.requests())["count"] == 0  # /debug/headers is not inference


async def test_a_pin_that_is_not_utf8_is_400_without_a_traceback(start_router, start_model_server):
    server = start_model_server()
    router = start_router(one(server.url))
    answer = await raw_exchange(router.port, b"GET /v2/health/ready HTTP/1.1\r\nHost: m\r\n"
                                             b"X-Sluice-Revision: \xff\xfe\r\n"
                                             b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"X-Sluice-Revision" in answer
    unknown = await raw_exchange(router.port, b"GET /v2/health/ready HTTP/1.1\r\nHost: m\r\n"
                                              b"X-Sluice-Revision: v9\r\nConnection: close\r\n\r\n")
    assert unknown.startswith(b"HTTP/1.1 404 ")
    assert "Traceback" not in router.proc.output()


# replica failures and timeouts


async def test_a_replica_that_never_answers_is_504_after_the_first_byte_timeout(start_router):
    async with replicas.Replica(replicas.never_answer) as replica:
        router = start_router(one(replica.url), settings={"first_byte_timeout_s": 0.3,
                                                          "sweep_interval_s": 0.05})
        async with aiohttp.ClientSession(timeout=BOUNDED) as session, session.post(
                router.url + INFER, json=PAYLOAD) as response:
            assert response.status == 504
    assert (await stats_raw(router))["v1"]["by_code"] == {"504": 1}


async def test_a_response_that_stalls_is_cut_after_the_idle_timeout_and_counted_504(start_router):
    async with replicas.Replica(replicas.stall_mid_body) as replica:
        router = start_router(one(replica.url), settings={"idle_timeout_s": 0.3,
                                                          "sweep_interval_s": 0.05})
        async with aiohttp.ClientSession(timeout=BOUNDED) as session, session.post(
                router.url + INFER, json=PAYLOAD) as response:
            assert response.status == 200  # the head had gone out
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()  # 10 of 100 bytes, then the router cut it
    assert (await stats_raw(router))["v1"]["by_code"] == {"504": 1}


async def test_a_replica_that_closes_without_answering_is_502(start_router):
    async with replicas.Replica(replicas.close_at_once) as replica:
        router = start_router(one(replica.url))
        async with aiohttp.ClientSession() as session, session.post(
                router.url + INFER, json=PAYLOAD) as response:
            assert response.status == 502
        assert len(replica.heads) == 1  # it reached the replica: never retried elsewhere
    assert (await stats_raw(router))["v1"]["by_code"] == {"502": 1}


async def test_a_status_outside_100_to_599_is_502(start_router):
    async def bogus(head, reader, writer):
        writer.write(b"HTTP/1.1 799 Whatever\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        return True

    async with replicas.Replica(bogus) as replica:
        router = start_router(one(replica.url))
        async with aiohttp.ClientSession() as session, session.get(router.url + "/") as response:
            assert response.status == 502
    assert (await stats_raw(router))["v1"]["by_code"] == {"502": 1}
    assert "Traceback" not in router.proc.output()


# limits and framing


async def test_connections_over_max_connections_get_503_and_the_others_go_on(
        start_router, start_model_server):
    server = start_model_server()
    router = start_router(one(server.url), settings={"max_connections": 2})
    request = b"GET /v2/health/ready HTTP/1.1\r\nHost: m\r\n\r\n"
    kept = []
    for _ in range(2):  # answered once, so the router has certainly counted them
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        writer.write(request)
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200 ")
        kept.append((reader, writer))
    refused = await raw_exchange(router.port, request)
    assert refused.startswith(b"HTTP/1.1 503 ")
    assert b"Retry-After: 1\r\n" in refused
    for reader, writer in kept:
        writer.write(request)
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200 ")
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One response with a Content-Length, head and body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = int(replicas.header(head, b"content-length") or 0)
    return head + await asyncio.wait_for(reader.readexactly(length), 30)


async def test_a_slow_client_pauses_the_replica_and_the_router_memory_stays_flat(start_router):
    """128 MiB from a replica to a client that reads nothing at first: the router pauses the
    replica's socket (its own record: the backpressured gauge), the replica gets blocked after
    what the kernel buffers hold, and the router's peak RSS never grows by the body's size."""
    total = 128 * 1024 * 1024
    chunk = b"x" * (256 * 1024)
    sent = 0

    async def flood(head, reader, writer):
        nonlocal sent
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        for _ in range(total // len(chunk)):
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        return True

    async with replicas.Replica(flood) as replica:
        router = start_router(one(replica.url))
        before = memory(router.proc.pid)["VmRSS"]
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: m\r\n\r\n")
        paused = await wait_raw(router, lambda raw: raw["v1"]["backpressured"] == 1)
        assert paused["v1"]["inflight"] == 1
        assert sent < 64 * 1024 * 1024  # kernel buffers, not the body
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        got = 0
        while got < total:
            data = await asyncio.wait_for(reader.read(1 << 20), 30)
            assert data, f"stream ended after {got} bytes"
            got += len(data)
        writer.close()
    assert got == total
    assert memory(router.proc.pid)["VmHWM"] - before < 48 * 1024  # KiB: flat, not 128 MiB


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB, the kernel's record of the process's memory."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


async def wait_raw(router, predicate, within_s: float = 30.0) -> dict[str, dict]:
    """Poll /stats?raw=1 until predicate(raw per revision) holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        current = await stats_raw(router)
        if predicate(current):
            return current
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached; last raw stats: {current}")
        await asyncio.sleep(0.02)


# Expect: 100-continue


async def test_a_pipelined_request_gets_its_100_continue_on_its_turn(
        start_router, start_model_server):
    server = start_model_server()
    router = start_router(one(server.url))
    body = json.dumps({"instances": [[0.1, 0.2, 0.3, 0.4]]}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(b"GET /v2/health/ready HTTP/1.1\r\nHost: m\r\n\r\n"
                 b"POST /v1/models/model:predict HTTP/1.1\r\nHost: m\r\n"
                 b"Expect: 100-continue\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body))
    assert (await read_response(reader)).startswith(b"HTTP/1.1 200 ")  # the readiness answer
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    final = await read_response(reader)
    writer.close()
    assert final.startswith(b"HTTP/1.1 200 ")
    assert b"predictions" in final
