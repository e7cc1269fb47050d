"""Custom signals end to end: `sluice up`, the real Prometheus server scraping the real reference
model servers (through the file_sd file the stack keeps), Locust load, the controller's status.

The signal is vLLM's KV-cache gauge as the reference server exposes it: running requests /
``--kv-cache-capacity``. Each request holds its replica ``--latency`` seconds, so Locust's rate
sets the work in flight, and the AverageValue policy asks for ceil(ready x average / target)
replicas. The count is judged on the controller's own record: every status row says the value
the last decision used, the replicas ready at that decision and the count asked for; on each
plateau every count is within one of the formula on the values of the decisions over the stable
window before it (the policy's window: one sample of a gauge is noise the decider averages away).
Waiting is on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import subprocess
import sys
import time

import pytest
import yaml

from loadtests import run, shapes
from tests.integration.conftest import MODEL_SERVER, ROOT, stack_revision
from tests.integration.prometheus import Prometheus

pytestmark = pytest.mark.integration

STABLE_S = 6
"""The policy's stable window; its panic window is half of it, longer than a local replica's
start, so the decider releases replicas as soon as the load allows (it keeps them longer for
models slower to start)."""
CAPACITY = 4
"""Running requests that fill a replica's simulated KV cache."""
TARGET = 0.5
"""Cache fraction per replica: two requests running on each."""
LATENCY_S = 0.4
QUERY = 'avg(avg_over_time(vllm:gpu_cache_usage_perc{revision="$revision"}[5s]))'
"""vLLM's gauge, as people query a gauge: its last 5 s per replica, so one scrape's sample of
requests coming and going is not the load; the average is over the replicas."""


def signal_revision(name: str = "v1", weight: int = 100, query: str = QUERY, **policy) -> dict:
    return stack_revision(
        name, weight, command=[*MODEL_SERVER, "--latency", str(LATENCY_S),
                               "--kv-cache-capacity", str(CAPACITY)],
        **{"metric": "custom:kv-cache", "target": TARGET, "stableWindowSeconds": STABLE_S,
           "panicWindowPercentage": 50,
           "scaleToZeroGraceSeconds": 0, "maxReplicas": 8,
           "signal": {"query": query, "type": "AverageValue", "lagSeconds": 6,
                      "timeoutSeconds": 1}, **policy})


@pytest.fixture
def signal_stack(tmp_path, start_stack):
    """A stack whose replicas a real Prometheus scrapes; (stack, prometheus)."""
    servers: list[Prometheus] = []

    def start(revisions: list[dict]):
        targets = tmp_path / "targets.json"
        prometheus = Prometheus(tmp_path, [], file_sd=targets)
        servers.append(prometheus)
        stack = start_stack(revisions, controller={
            "prometheus_url": prometheus.url, "prometheus_targets_file": str(targets)})
        return stack, prometheus

    yield start
    for server in servers:
        server.close()


class Record:
    """The controller's status rows of one revision, polled until stopped: (time, row)."""

    def __init__(self, stack, revision: str = "v1") -> None:
        self.rows: list[tuple[float, dict]] = []
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._poll(stack, revision))

    async def _poll(self, stack, revision: str) -> None:
        while not self._stop.is_set():
            row = (await asyncio.to_thread(stack.status))[revision]
            self.rows.append((time.monotonic(), row))
            await asyncio.sleep(0.25)

    async def until(self, predicate, within_s: float = 90.0) -> dict:
        deadline = time.monotonic() + within_s
        while not (self.rows and predicate(self.rows[-1][1])):
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached; last rows: {self.rows[-5:]}")
            await asyncio.sleep(0.1)
        return self.rows[-1][1]

    def between(self, start: float, end: float) -> list[dict]:
        return [row for at, row in self.rows if start <= at < end]

    async def stop(self) -> None:
        self._stop.set()
        await self._task


def decisions(record: Record) -> list[tuple[float, float]]:
    """(first seen, ready x value) of each decision the rows show. While the count is held (the
    signal's lag after the ready count changed) the rows repeat the last decision's inputs, and
    the decider's stable window holds one sample per decision, not one per row."""
    seen: list[tuple[float, float]] = []
    last = None
    for at, row in record.rows:
        used = (row["signal"], row["signal_ready"])
        if row["signal"] is not None and used != last:
            seen.append((at, row["signal_ready"] * row["signal"]))
        last = used
    return seen


def judge_plateau(record: Record, start: float, end: float) -> int:
    """Every count asked for between ``start`` and ``end`` is within one of HPA's AverageValue
    formula, ceil(ready x value / target), on the values of the decisions over the stable window
    before the last decision; the formula's median over the plateau."""
    expected = []
    made = decisions(record)
    for at, row in record.rows:
        if not start <= at < end:
            continue
        last = max(t for t, _ in made if t <= at)
        window = [total for t, total in made if last - STABLE_S < t <= last]
        formula = math.ceil(statistics.fmean(window) / TARGET - 1e-9)
        expected.append(formula)
        assert abs(row["desired"] - formula) <= 1, (at - start, row, formula, window)
    assert len(expected) >= 10
    return statistics.median_low(expected)


async def test_an_average_value_signal_follows_a_step_up_and_back_down(signal_stack):
    stack, _ = signal_stack([signal_revision(minReplicas=1, initialScale=1)])
    record = Record(stack)
    await record.until(lambda row: row["ready"] == 1)
    # 40 users at 0.7 requests/s: 28 requests/s x 0.4 s, 11 running, ~3 caches: 6 replicas;
    # then 6 users: 1.7 running, under half a cache: 1. Users start over a ramp at a rate
    # whose period is not the scrape's, so a 1 s gauge does not alias their rhythm.
    users, user_rps = 40, 0.7
    high_s, low_s = 60.0, 50.0
    load = shapes.Phases(phases=(shapes.Phase(users=users, seconds=high_s, ramp_seconds=10),
                                 shapes.Phase(users=6, seconds=low_s)))
    started = time.monotonic()
    summary = await asyncio.to_thread(run.run_locust, stack.url, load, high_s + low_s + 10,
                                      env={"SLUICE_USER_RPS": str(user_rps)})
    await record.stop()
    assert summary.failures == 0, summary.status_codes
    settle_s = 25.0  # the ramp or the step, a stable window and a cold start
    high = judge_plateau(record, started + settle_s + 5, started + high_s)
    low = judge_plateau(record, started + high_s + settle_s, started + high_s + low_s)
    assert high >= 4, "the step up was followed"
    assert low <= 2, "and the step down"
    assert max(row["desired"] for row in record.between(started, started + high_s)) <= 8


async def test_prometheus_gone_holds_the_replicas_says_why_and_they_follow_again(signal_stack):
    stack, prometheus = signal_stack([signal_revision(minReplicas=1, initialScale=1)])
    record = Record(stack)
    stop_file = stack.run_dir.parent / "stop-load"
    load = asyncio.create_task(asyncio.to_thread(
        run.run_locust, stack.url,
        shapes.Phases(phases=(shapes.Phase(users=30, seconds=140, ramp_seconds=10),)), 150,
        env={"SLUICE_USER_RPS": "0.7", "SLUICE_STOP_FILE": str(stop_file)}))
    try:
        loaded = await record.until(lambda row: row["desired"] >= 3 and row["ready"] >= 3
                                    and row["signal"] is not None)
        prometheus.stop()
        missing = await record.until(lambda row: any(
            c.startswith("SignalMissing") for c in row["conditions"]))
        assert any("did not answer" in c for c in missing["conditions"]), missing
        held_at = missing["desired"]
        assert held_at >= loaded["desired"] - 1
    finally:
        stop_file.touch()  # the load is gone; with the signal gone too, nothing may go down
        summary = await load
    assert summary.failures == 0, summary.status_codes
    outage_rows = len(record.rows)
    await record.until(lambda row: len(record.rows) >= outage_rows + 40)  # ten seconds of rows
    during = [row for _, row in record.rows[outage_rows:]]
    assert all(row["desired"] == held_at for row in during), [r["desired"] for r in during]
    assert all(any(c.startswith("SignalMissing") for c in row["conditions"]) for row in during)

    prometheus.start()
    back = await record.until(lambda row: not any(
        c.startswith("SignalMissing") for c in row["conditions"]))
    assert back["signal"] is not None
    await record.until(lambda row: row["desired"] == 1)  # idle now, and it sees so: down
    await record.stop()


async def test_an_empty_or_nan_result_holds_the_count_while_a_good_signal_scales_to_zero(
        signal_stack):
    stack, _ = signal_stack([
        signal_revision("v1", 100, minReplicas=0, initialScale=2),
        signal_revision("v2", 0, minReplicas=0, initialScale=2,
                        query=QUERY.replace('"$revision"', '"$revision",model_name="absent"')),
        signal_revision("v3", 0, minReplicas=0, initialScale=2, query=f"{QUERY} * NaN"),
    ])
    stack.wait_for(lambda rows: all(rows[name]["ready"] == 2 for name in ("v1", "v2", "v3")))
    rows = stack.wait_for(lambda rows: rows["v1"]["desired"] == 0)  # idle: the good one goes
    for name, problem in (("v2", "no data for"), ("v3", "is NaN")):
        assert rows[name]["desired"] == 2, rows[name]
        assert any(c.startswith("SignalMissing: kv-cache: ") and problem in c
                   for c in rows[name]["conditions"]), rows[name]["conditions"]
    assert not any(c.startswith("SignalMissing") for c in rows["v1"]["conditions"])


def test_an_invalid_query_is_refused_when_the_stack_is_applied(tmp_path):
    file = tmp_path / "stack.yaml"
    file.write_text(yaml.safe_dump({
        "controller": {"prometheus_url": "http://127.0.0.1:9"},
        "services": {"model": {"revisions": [
            signal_revision(query='avg(kv{revision="$revision"')]}}}))
    result = subprocess.run([sys.executable, "-m", "autoscaler.cli", "up", "-f", str(file)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "services.model.revisions.0.scaling.signal.query: not valid PromQL" in result.stderr
