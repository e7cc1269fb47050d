"""Bodies stream through the router both ways: token streams reach the client as produced."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.integration.conftest import service

pytestmark = pytest.mark.integration


def one_revision(server):
    return service({"name": "v1", "weight": 100, "endpoints": [server.url]})


async def test_first_token_arrives_while_the_replica_is_still_streaming(
        start_router, start_model_server):
    server = start_model_server("--token-delay", "0.01")
    router = start_router(one_revision(server))
    body = {"text_input": "hello", "parameters": {"max_tokens": 100_000}}
    async with aiohttp.ClientSession() as session, session.post(
            router.url + "/v2/models/model/generate_stream", json=body) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        first = await response.content.readline()
        # The replica is still producing (100,000 tokens): the event was not held back.
        assert (await server.requests())["inflight"] == 1
        assert not response.content.at_eof()
    assert json.loads(first.removeprefix(b"data: "))["index"] == 0


async def test_a_whole_stream_arrives_in_order(start_router, start_model_server):
    server = start_model_server()
    router = start_router(one_revision(server))
    body = {"text_input": "hello", "parameters": {"max_tokens": 50}}
    async with aiohttp.ClientSession() as session, session.post(
            router.url + "/v2/models/model/generate_stream", json=body) as response:
        text = await response.text()
    events = [json.loads(line.removeprefix("data: ")) for line in text.splitlines() if line]
    assert [e["index"] for e in events] == list(range(50))
    assert events[-1]["finished"] is True


async def test_a_chunked_request_body_arrives_whole(start_router, start_model_server):
    server = start_model_server()
    router = start_router(one_revision(server))
    payload = json.dumps({"instances": [[0.1, 0.2, 0.3, 0.4]] * 200}).encode()

    async def chunks():
        for i in range(0, len(payload), 1000):
            yield payload[i:i + 1000]

    async with aiohttp.ClientSession() as session, session.post(
            router.url + "/v1/models/model:predict", data=chunks()) as response:
        assert response.status == 200
        assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert len((await response.json())["predictions"]) == 200


async def test_the_replica_gets_the_first_chunk_before_the_client_sends_the_last(
        start_router, start_model_server):
    """Full duplex through the router: the replica (/debug/echo) sends each piece of the body
    back as it arrives, and the client sends the last chunk only after it has read the first
    one back. A router that held the body until it was complete would never answer."""
    server = start_model_server()
    router = start_router(one_revision(server))
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(b"POST /debug/echo HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"b\r\nfirst-chunk\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert head.startswith(b"HTTP/1.1 200 ")
    echoed = await asyncio.wait_for(reader.readuntil(b"first-chunk"), 30)
    writer.write(b"a\r\nlast-chunk\r\n0\r\n\r\n")
    rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 30)
    writer.close()
    assert b"last-chunk" in rest
    assert b"last-chunk" not in echoed
