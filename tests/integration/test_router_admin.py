"""The router's admin API and command line as a controller or an operator meets them: route
writes and their token, /stats and /events as `policies.wire` documents, /metrics as Prometheus
parses it, and a bad command line as a one-line error.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from policies import wire
from tests.integration.conftest import INFER, PAYLOAD, ROOT, TOKEN, raw_exchange, service

pytestmark = pytest.mark.integration


def revision(name, weight=100, endpoints=(), **extra):
    return {"name": name, "weight": weight, "endpoints": list(endpoints), **extra}


async def get_json(url: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.json()


def put_request(authorization: bytes) -> bytes:
    body = b'{"services": {"model": {"revisions": [{"name": "v2", "weight": 100}]}}}'
    return (b"PUT /routes HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n"
            b"Authorization: " + authorization + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


# route writes


@pytest.mark.parametrize("authorization", [
    pytest.param(TOKEN.encode(), id="token-without-bearer"),
    pytest.param(b"Basic " + TOKEN.encode(), id="other-scheme"),
    pytest.param(b"Bearer " + TOKEN.encode() + b"\xff", id="not-utf8"),
    pytest.param(b"Bearer \xc3\x28", id="invalid-utf8-only"),
    pytest.param(b"Bearer", id="scheme-only"),
])
async def test_route_writes_without_exactly_bearer_and_the_token_get_401(
        start_router, authorization):
    router = start_router(service(revision("v1")))
    answer = await raw_exchange(router.admin_port, put_request(authorization))
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert (await get_json(router.admin + "/routes"))["services"]["model"]["revisions"][0][
        "name"] == "v1"
    accepted = await raw_exchange(router.admin_port, put_request(b"bearer " + TOKEN.encode()))
    assert accepted.startswith(b"HTTP/1.1 200 ")  # the scheme's case does not matter
    assert "Traceback" not in router.proc.output()


# documents


async def test_stats_and_events_are_wire_documents_with_nothing_the_models_drop(
        start_router, start_model_server):
    """The controller parses with policies.wire: every field the router sends must be in the
    models (a field they do not know would be dropped without a word), in every shape."""
    server = start_model_server()
    router = start_router(service(revision("warm", 100, [server.url]), revision("cold", 0)))
    async with aiohttp.ClientSession() as session:
        empty = [await get_json(router.admin + "/stats"),
                 await get_json(router.admin + "/stats?raw=1")]
        for _ in range(3):
            async with session.post(router.url + INFER, json=PAYLOAD) as response:
                assert response.status == 200
        async with session.get(router.admin + "/events") as events:
            assert await events.content.readline() == b"\n"  # subscribed
            waiting = asyncio.create_task(session.post(
                router.url + INFER, json=PAYLOAD, headers={"X-Sluice-Revision": "cold"}))
            poke = await asyncio.wait_for(events.content.readline(), 30)
            busy = [await get_json(router.admin + "/stats"),
                    await get_json(router.admin + "/stats?raw=1")]
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
    for document in [*empty, *busy]:
        parsed = wire.Stats.model_validate(document)
        assert parsed.model_dump(mode="json", exclude_unset=True) == document
    event = wire.Poke.model_validate_json(poke)
    assert event.model_dump(mode="json", exclude_unset=True) == json.loads(poke)
    assert (event.service, event.revision, event.buffered) == ("model", "cold", 1)
    raw = wire.Stats.model_validate(busy[1])
    warm = raw.revisions[0]
    assert warm.raw is not None and warm.raw.by_code == {"200": 3}
    assert warm.latency_ms.min is not None and warm.latency_ms.max is not None
    assert warm.latency_ms.min <= warm.latency_ms.p50 <= warm.latency_ms.p99 <= warm.latency_ms.max


async def test_metrics_parse_and_agree_with_the_raw_stats(start_router, start_model_server):
    good = start_model_server()
    bad = start_model_server("--error-rate", "1.0")
    router = start_router(service(revision("good", 100, [good.url]), revision("bad", 0, [bad.url]),
                                  revision("cold", 0), buffer={"depth": 0}))
    async with aiohttp.ClientSession() as session:
        for pin, count in (("good", 5), ("bad", 3), ("cold", 2)):
            for _ in range(count):
                async with session.post(router.url + INFER, json=PAYLOAD,
                                        headers={"X-Sluice-Revision": pin}) as response:
                    await response.read()
        async with session.get(router.admin + "/metrics") as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            exposition = await response.text()
    raw = {r["revision"]: r["raw"] for r in
           (await get_json(router.admin + "/stats?raw=1"))["revisions"]}
    bounds = (await get_json(router.admin + "/stats?raw=1"))["latency_bounds_s"]
    families = {f.name: f for f in text_string_to_metric_families(exposition)}

    codes = {(s.labels["revision"], s.labels["code"]): s.value
             for s in families["sluice_router_requests"].samples
             if s.name == "sluice_router_requests_total"}
    assert codes == {("good", "200"): 5, ("bad", "500"): 3, ("cold", "503"): 2}
    assert codes == {(name, code): count for name, r in raw.items()
                     for code, count in r["by_code"].items()}

    histogram = families["sluice_router_request_duration_seconds"]
    assert histogram.type == "histogram"
    for name, r in raw.items():
        samples = [s for s in histogram.samples if s.labels["revision"] == name]
        buckets = sorted((float(s.labels["le"]), s.value) for s in samples
                         if s.name.endswith("_bucket"))
        counts = [value for _, value in buckets]
        assert counts == sorted(counts), f"{name}: not cumulative"
        assert buckets[-1] == (float("inf"), r["latency_count"])
        for le, value in buckets[:-1]:
            assert value == sum(n for bound, n in zip(bounds, r["latency_buckets"], strict=False)
                                if bound <= le), f"{name} le={le}"
        total = {s.name: s.value for s in samples if not s.name.endswith("_bucket")}
        assert total["sluice_router_request_duration_seconds_count"] == r["latency_count"]
        assert total["sluice_router_request_duration_seconds_sum"] == pytest.approx(
            r["latency_sum_s"])
    assert r["latency_count"] == 2  # cold: the two 503s count too
    gauges = {f.name: f for f in families.values() if f.type == "gauge"}
    assert {"sluice_router_inflight_requests", "sluice_router_buffered_requests",
            "sluice_router_backpressured_requests", "sluice_router_event_subscribers"} <= set(
        gauges)


# events


async def test_a_subscriber_that_leaves_leaves_no_traceback(start_router):
    router = start_router(service(revision("v1", 100), revision("v2", 0)))
    async with aiohttp.ClientSession() as session:
        leaving = await session.get(router.admin + "/events")
        assert await leaving.content.readline() == b"\n"
        async with session.get(router.admin + "/events") as staying:
            assert await staying.content.readline() == b"\n"
            await wait_for_subscribers(router, 2)
            leaving.close()  # its handler learns at its next write: this poke
            request = asyncio.create_task(session.post(router.url + INFER, json=PAYLOAD))
            assert b"poke" in await asyncio.wait_for(staying.content.readline(), 30)
            await wait_for_subscribers(router, 1)  # the leaver's handler has ended
            request.cancel()
            await asyncio.gather(request, return_exceptions=True)
    output = router.proc.output()
    assert "Traceback" not in output and "ConnectionResetError" not in output, output


async def wait_for_subscribers(router, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(1500):
            async with session.get(router.admin + "/metrics") as response:
                families = {f.name: f for f in text_string_to_metric_families(
                    await response.text())}
            if families["sluice_router_event_subscribers"].samples[0].value == count:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"never {count} subscribers")


# command line


@pytest.mark.parametrize(("args", "names"), [
    pytest.param(["--set", "header_timeout_s=abc"], ["header_timeout_s", "'abc'", "number"],
                 id="not-a-number"),
    pytest.param(["--set", "max_connections=1.5"], ["max_connections", "whole number"],
                 id="not-an-integer"),
    pytest.param(["--set", "idle_timeout_s=-1"], ["idle_timeout_s", ">= 0"], id="negative"),
    pytest.param(["--set", "idle_timeout_s=nan"], ["idle_timeout_s", ">= 0"], id="nan"),
    pytest.param(["--set", "bogus=1"], ["bogus", "unknown setting"], id="unknown-setting"),
    pytest.param(["--set", "header_timeout_s"], ["FIELD=VALUE"], id="no-value"),
    pytest.param(["--listen", "localhost"], ["--listen", "localhost", "HOST:PORT"],
                 id="listen-without-port"),
    pytest.param(["--admin-listen", "127.0.0.1:99999"], ["--admin-listen", "99999"],
                 id="port-out-of-range"),
    pytest.param(["--workers", "0"], ["--workers", "at least 1"], id="no-workers"),
])
def test_a_bad_command_line_is_one_line_naming_the_value_and_exit_2(tmp_path, args, names):
    config = tmp_path / "routes.yaml"
    config.write_text("services: {model: {revisions: [{name: v1}]}}\n")
    done = subprocess.run([sys.executable, "-m", "autoscaler.cli", "router", "--config",
                           str(config), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sluice router: ")
    for name in names:
        assert name in lines[0]
