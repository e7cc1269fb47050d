"""What the router measures of streamed (LLM) responses, against what the reference model
server is told to do, and a canary rolled back on its time to first token alone.

The reference server streams one SSE event per token: the first after ``--latency`` (prefill),
the next every ``--token-delay`` (decode). The router's time to first byte must then be the
latency, and its time per chunk the token delay, within the histogram's resolution (~5 % wide
buckets). What sleeping, the server's own work and loopback add only ever lengthens a time, so
the configured delay bounds the router's figure from below, and what the client behind the
router saw (later, by definition) bounds it from above.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from loadtests import run, shapes
from tests.integration.conftest import MODEL_SERVER, service, stack_revision
from tests.integration.test_rollouts import Api, policy, until

pytestmark = pytest.mark.integration

STREAM = "/v2/models/model/generate_stream"
RESOLUTION = 0.05
"""Relative width of the router's histogram buckets."""


async def streamed(session: aiohttp.ClientSession, url: str, tokens: int) -> tuple[float, float]:
    """One streamed request read to its end; the client's own time to its first event and the
    mean time between its events."""
    started = time.monotonic()
    async with session.post(url + STREAM, json={"text_input": "x",
                                                "parameters": {"max_tokens": tokens}}) as answer:
        assert answer.status == 200
        events = [time.monotonic() - started async for line in answer.content
                  if line.startswith(b"data:")]
    assert len(events) == tokens
    return events[0], (events[-1] - events[0]) / (tokens - 1)


async def test_ttft_and_tokens_per_second_agree_with_the_servers_delays(start_router,
                                                                      start_model_server):
    latency_s, token_delay_s, tokens = 0.5, 0.05, 21
    server = start_model_server("--latency", str(latency_s), "--token-delay", str(token_delay_s))
    router = start_router(service({"name": "v1", "weight": 100, "endpoints": [server.url]}))
    async with aiohttp.ClientSession() as session:
        await streamed(session, router.url, tokens)  # a connection to the replica, pooled
        async with session.post(router.url + "/v2/models/model/infer",
                                json={"inputs": [{"name": "input-0", "shape": [1, 4],
                                                  "datatype": "FP32",
                                                  "data": [0.1, 0.2, 0.3, 0.4]}]}) as answer:
            assert answer.status == 200  # a plain JSON answer is no stream
        seen = [await streamed(session, router.url, tokens) for _ in range(10)]
    stats = (await router.stats())["v1"]["streams"]
    assert stats["inflight"] == 0
    assert stats["ttft_ms"]["count"] == 11
    client_first_ms = sorted(first for first, _ in seen)[len(seen) // 2] * 1000
    client_chunk_ms = sorted(gap for _, gap in seen)[len(seen) // 2] * 1000
    assert latency_s * 1000 <= stats["ttft_ms"]["min"]
    assert stats["ttft_ms"]["p50"] <= client_first_ms * (1 + RESOLUTION), (stats, seen)
    chunk_ms = stats["chunk_ms"]["p50"]
    assert token_delay_s * 1000 * (1 - RESOLUTION) <= chunk_ms
    assert chunk_ms <= client_chunk_ms * (1 + RESOLUTION), (stats, seen)
    # the rate over every stream: the inverse of the mean time per chunk
    assert 1000 / stats["chunks_per_s"] == pytest.approx(client_chunk_ms, rel=RESOLUTION)
    assert stats["chunks_per_s"] <= 1 / token_delay_s
    metrics = await _text(router.admin + "/metrics")
    assert 'sluice_router_time_to_first_byte_seconds_count{service="model",revision="v1"} 11' \
        in metrics
    assert 'sluice_router_time_per_chunk_seconds_bucket{service="model",revision="v1",' \
        'le="0.1"} 11' in metrics  # every stream's chunks came 50 ms apart: under 100 ms
    assert 'sluice_router_streams_inflight{service="model",revision="v1"} 0' in metrics


async def _text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        return await answer.text()


STREAM_TOKENS = 40
TOKEN_DELAY_S = 0.02
PREFILL_S = 0.1
"""Stable's first token after 100 ms, the canary's after 150 ms (50 % slower); their last
after ~0.88 s and ~0.93 s (6 % slower: within latency's 20 % tolerance)."""


async def test_a_canary_slower_to_its_first_token_is_rolled_back_on_ttft(start_stack, tmp_path):
    def streaming(name: str, weight: int, prefill_s: float, **scaling) -> dict:
        return stack_revision(
            name, weight, command=[*MODEL_SERVER, "--revision", name, "--latency",
                                   str(prefill_s), "--token-delay", str(TOKEN_DELAY_S)],
            metric="streams", target=20, **scaling)

    stack = start_stack([streaming("v1", 100, PREFILL_S, minReplicas=1, initialScale=1),
                         streaming("v2", 0, PREFILL_S * 1.5)])
    api = Api(stack)
    stack.wait_for(lambda rows: rows["v1"]["ready"] == 1)
    stop_file = tmp_path / "stop-load"
    load = asyncio.create_task(asyncio.to_thread(
        run.run_locust, stack.url, shapes.Constant(users=12), 150,
        env={"SLUICE_USER_RPS": "1", "SLUICE_STREAM_WEIGHT": "1", "SLUICE_V1_WEIGHT": "0",
             "SLUICE_V2_WEIGHT": "0", "SLUICE_STREAM_TOKENS": str(STREAM_TOKENS),
             "SLUICE_STOP_FILE": str(stop_file)}))
    try:
        await until(api.served, lambda served: served["v1"]["total"] >= 20, 30)
        document = policy(slo={"successRate": {"min": 99, "marginPoints": 2},
                               "latency": {"tolerancePercent": 20, "maxMs": 5000},
                               "ttft": {"tolerancePercent": 20, "maxMs": 5000}})
        status, body = api.start(document)
        assert status == 201, body
        ended = await api.wait(lambda r: r["phase"] in ("Promoted", "RolledBack", "Failed"),
                               within_s=120)
    finally:
        stop_file.touch()
        summary = await load
    assert summary.failures == 0, summary.status_codes
    assert ended["phase"] == "RolledBack", ended["reason"]
    assert "ttft: slower than stable by more than 20 %" in ended["reason"], ended["reason"]
    failed = next(v for v in ended["verdicts"] if v["outcome"] == "fail")
    findings = {f["metric"]: f for f in failed["findings"]}
    assert findings["ttft"]["outcome"] == "fail"
    assert findings["ttft"]["observed"] == pytest.approx(1.5, rel=0.15)
    assert findings["latency"]["outcome"] != "fail", findings["latency"]["reason"]
    assert api.weights() == {"v1": 100, "v2": 0}
