"""A locust step load through `sluice up`: replicas follow the load and no request fails.

Step from idle to X requests per second on an rps policy with target T per replica (target
utilization 1): by the end of the hold, which is longer than the stable window plus a cold
start, the revision runs ceil(X / T) ± 1 replicas, and every request succeeded, including the
first ones, which arrived at zero replicas and waited in the router's buffer.

Step from idle on concurrency with a model that takes seconds to load: the requests held during
the cold start are a backlog to drain, not one more request in flight each, so the controller
starts the replicas the load keeps busy, not one per held request.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from loadtests import run, shapes
from tests.integration.conftest import MODEL_SERVER, stack_revision

pytestmark = pytest.mark.integration

TARGET_RPS = 10
USERS, USER_RPS = 20, 2  # X = 40 requests per second
STABLE_WINDOW_S = 10


async def test_step_load_drives_replicas_to_target_with_no_failed_request(start_stack):
    stack = start_stack([stack_revision(
        command=[*MODEL_SERVER, "--latency", "0.02"], metric="rps", target=TARGET_RPS,
        stableWindowSeconds=STABLE_WINDOW_S, maxReplicas=10)])
    step = shapes.Step(idle_seconds=2, users=USERS, hold_seconds=28)
    seen: list[dict] = []

    async def watch(done: asyncio.Event) -> None:
        while not done.is_set():
            seen.append((await asyncio.to_thread(stack.status))["v1"])
            await asyncio.sleep(0.5)

    done = asyncio.Event()
    watcher = asyncio.create_task(watch(done))
    summary = await asyncio.to_thread(run.run_locust, stack.url, step, 30,
                                      env={"SLUICE_USER_RPS": str(USER_RPS)})
    done.set()
    await watcher

    expected = math.ceil(USERS * USER_RPS / TARGET_RPS)
    assert summary.requests > 0.8 * USERS * USER_RPS * 28
    assert summary.failures == 0, summary.status_codes
    assert seen[0]["ready"] == 0  # it started from zero
    assert abs(seen[-1]["ready"] - expected) <= 1, seen[-1]
    assert abs(seen[-1]["desired"] - expected) <= 1, seen[-1]
    assert max(s["desired"] for s in seen) <= 2 * expected  # no runaway while it ramped


def test_step_from_zero_on_concurrency_starts_what_the_load_needs_not_the_backlog(start_stack):
    """40 users at 1 request/s of 20 ms keep about 0.8 in flight: one replica at one in flight
    each, two at peaks. The 40 requests held while the first replica loads its model (2 s) used
    to count as 40 in flight, and all 8 replicas were started within the first seconds."""
    stack = start_stack([stack_revision(
        command=[*MODEL_SERVER, "--latency", "0.02", "--startup-delay", "2"], maxReplicas=8)])
    step = shapes.Step(idle_seconds=1, users=40, hold_seconds=20)
    summary = run.run_locust(stack.url, step, 21, env={"SLUICE_USER_RPS": "1",
                                                       "SLUICE_USER_PACING": "poisson"})

    started = sorted(Path(stack.run_dir).glob("model-v1-*.log"))  # one per replica started
    assert summary.requests > 0.8 * 40 * 20
    assert summary.failures == 0, summary.status_codes
    assert 1 <= len(started) <= 4, started
