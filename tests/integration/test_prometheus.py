"""The Prometheus metric source against the real Prometheus server scraping a real router."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from autoscaler.control import ports
from autoscaler.sources import prometheus
from tests import procs
from tests.integration.conftest import INFER, PAYLOAD, service
from tests.integration.prometheus import Prometheus

pytestmark = pytest.mark.integration


async def reading_when(source, expr, predicate, within_s=30.0):
    """Query until predicate(reading) holds (Prometheus scrapes every second); the last one."""
    deadline = time.monotonic() + within_s
    reading = await source.query(expr)
    for _ in range(int(within_s / 0.2)):
        if predicate(reading) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
        reading = await source.query(expr)
    return reading


@pytest.fixture
def stack(tmp_path, start_router, start_model_server):
    server = start_model_server()
    router = start_router(service({"name": "v1", "weight": 100, "endpoints": [server.url]}))
    prom = Prometheus(tmp_path, [f"127.0.0.1:{router.admin_port}"])
    yield router, prom
    prom.close()


async def test_promql_reads_the_routers_exact_counts(stack):
    router, prom = stack
    async with aiohttp.ClientSession() as session:
        for _ in range(25):
            async with session.post(router.url + INFER, json=PAYLOAD) as response:
                assert response.status == 200
    source = prometheus.PrometheusSource(prom.url)
    query = 'sum(sluice_router_requests_total{revision="v1",code=~"2.."})'
    reading = await reading_when(source, query, lambda r: r.value == 25)
    assert reading == ports.Reading(25.0)


@pytest.mark.parametrize(("expr", "problem"), [
    pytest.param("sum(no_such_metric)", "no data", id="no-data"),
    pytest.param("sluice_router_request_duration_seconds_bucket", "series; aggregate it",
                 id="many-series"),
    pytest.param("sum(rate(", "did not answer", id="bad-promql"),
])
async def test_no_usable_value_is_none_with_the_reason(stack, expr, problem):
    _, prom = stack
    source = prometheus.PrometheusSource(prom.url)
    await reading_when(source, "sum(up)", lambda r: r.value == 1)  # scraped at least once
    reading = await source.query(expr)
    assert reading.value is None
    assert problem in reading.problem


async def test_unreachable_prometheus_is_none_not_an_error():
    source = prometheus.PrometheusSource(f"http://127.0.0.1:{procs.free_port()}", timeout_s=2)
    reading = await source.query("sum(up)")
    assert reading.value is None
    assert "did not answer" in reading.problem
