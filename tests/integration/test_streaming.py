"""Bodies stream through the router both ways: token streams reach the client as produced."""

from __future__ import annotations

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


async def test_chunked_request_body_is_streamed_to_the_replica(start_router, start_model_server):
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
