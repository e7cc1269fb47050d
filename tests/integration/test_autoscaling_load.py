"""Locust through `sluice up`: replicas follow the load, and no request fails on the way.

The counts are checked on the controller's own record, never on one sample taken under load:
its status is waited on until it holds, and every scaling decision it made is a line on its
console. Loads are closed-loop users (each has one request in flight at all times, as fast as
answers come), scaled on concurrency: the replicas a load needs then follow from the number of
users, not from a rate that a busy machine might not reach.

Step from idle on concurrency with a model that takes seconds to load: the requests held during
the cold start are a backlog to drain, not one more request in flight each, so once a replica
has served the controller keeps the replicas the load keeps busy, not one per held request.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import aiohttp
import pytest

from loadtests import run, shapes
from tests.integration.conftest import INFER, MODEL_SERVER, PAYLOAD, call, stack_revision

pytestmark = pytest.mark.integration

USERS, PER_REPLICA = 8, 2
EXPECTED = USERS // PER_REPLICA
"""Replicas for 8 requests in flight at 2 each: 4 for any measured concurrency in (6, 8], so
only an overhead of a third of each request's 200 ms outside the replicas could make it 3."""


STABLE_WINDOW_S = 10
HOLD = USERS * 5 * STABLE_WINDOW_S
"""Requests answered while the load holds once the count was reached: a stable window's worth
(8 users, 5 requests a second each), counted by the router."""


def served(stack) -> int:
    """Requests the router has answered for the revision: the load's own clock."""
    return call("GET", f"http://127.0.0.1:{stack.admin}/stats")[1]["revisions"][0][
        "requests"]["total"]


def decisions(console: str) -> list[tuple[int, int]]:
    """Every change of desired replicas the controller made, in order: (before, after)."""
    return [(int(a), int(b)) for a, b in re.findall(r"model/v1: (\d+) → (\d+) replicas",
                                                      console)]


async def test_step_load_drives_replicas_to_target_with_no_failed_request(start_stack, tmp_path):
    """From idle to USERS users: from zero, the revision reaches EXPECTED replicas (it may scale
    ahead while the load looks like a ramp, never far) and settles there while the load holds
    for more requests than a stable window of it serves; every request succeeds, including the
    first ones, which arrived at zero replicas and waited in the router's buffer."""
    stack = start_stack([stack_revision(
        command=[*MODEL_SERVER, "--latency", "0.2"], target=PER_REPLICA,
        stableWindowSeconds=STABLE_WINDOW_S, maxReplicas=10)])
    stop_file = tmp_path / "stop-load"
    load = asyncio.create_task(asyncio.to_thread(
        run.run_locust, stack.url, shapes.Step(idle_seconds=2, users=USERS, hold_seconds=150),
        160, env={"SLUICE_USER_RPS": "1000", "SLUICE_STOP_FILE": str(stop_file)}))
    try:
        await asyncio.to_thread(stack.wait_for, lambda s: s["v1"]["desired"] >= EXPECTED, 60)
        held_from = served(stack)
        await asyncio.to_thread(stack.wait_for, lambda s: served(stack) >= held_from + HOLD, 100)
        await asyncio.to_thread(stack.wait_for, lambda s: s["v1"]["ready"] == EXPECTED
                                and s["v1"]["desired"] == EXPECTED, 30)
        made = decisions(stack.proc.output())  # while the load still holds
    finally:
        stop_file.touch()
        summary = await load

    assert summary.failures == 0, summary.status_codes
    assert summary.requests >= HOLD and set(summary.status_codes) == {200}
    assert made[0][0] == 0, made  # it started from zero
    assert made[-1][1] == EXPECTED, made
    assert max(after for _, after in made) <= 2 * EXPECTED, made  # no runaway on the way
    assert stack.status()["v1"]["restarts"] == 0


async def test_replicas_retired_under_load_never_cost_a_request(start_stack, tmp_path):
    """Load swings between 12 and 4 clients, each with one request in flight all the time, on
    a concurrency target of 2: the revision scales between ~6 and ~2 replicas, again and
    again, behind a router with two workers. A retiring replica leaves every worker's table
    before it is signalled: each replica, when its SIGTERM comes, asks the router whether it
    is still listed (tests/integration/sigterm_witness.py), and none is; no request is sent to
    one that is stopping, so every request is answered 200 across every scale-down."""
    witness = ["{python}", str(Path(__file__).parent / "sigterm_witness.py"),
               str(tmp_path / "stack.yaml"), "{port}", "--"]
    stack = start_stack([stack_revision(
        command=[*witness, *MODEL_SERVER, "--latency", "0.02"], target=2, minReplicas=1,
        initialScale=1, maxReplicas=6, stableWindowSeconds=6, scaleToZeroGraceSeconds=0)],
        tick_s=0.5, router={"workers": 2})
    assert stack.file == tmp_path / "stack.yaml"
    stack.wait_for(lambda s: s["v1"]["ready"] == 1)
    statuses: dict[int, int] = {}
    active = 0
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        while not stop.is_set():
            if index >= active:
                await asyncio.sleep(0.05)
                continue
            async with session.post(stack.url + INFER, json=PAYLOAD) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1

    def witnessed() -> list[str]:
        return [(stack.run_dir / name).read_text() for name in os.listdir(stack.run_dir)
                if name.startswith("model-v1-")]

    def stopped() -> int:
        return sum("sigterm while listed" in log for log in witnessed())

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        clients = [asyncio.create_task(client(session, i)) for i in range(12)]
        try:
            for _ in range(6):  # bounded; three swings usually retire enough
                active = 12
                await asyncio.to_thread(stack.wait_for, lambda s: s["v1"]["ready"] >= 5, 60)
                active = 4
                await asyncio.to_thread(stack.wait_for, lambda s: s["v1"]["desired"] <= 2, 60)
                if stopped() >= 8:
                    break
        finally:
            stop.set()
            await asyncio.gather(*clients)

    logs = witnessed()
    assert stopped() >= 8, "scaled down fewer replicas than the test needs"
    assert not [log for log in logs if "sigterm while listed: yes" in log]
    assert set(statuses) == {200}, statuses


def test_step_from_zero_on_concurrency_keeps_what_the_load_needs_not_the_backlog(start_stack):
    """40 users at 1 request/s of 20 ms keep about 0.8 in flight: one replica at one in flight
    each, two at peaks. Before any replica has served, the weight of a request is unknown and
    40 arrivals a second might be 40 in flight: the controller guesses so (8 replicas, the
    policy's most). The 40 requests held while the first replica loads its model (2 s) used to
    count as 40 in flight through the stable window (60 s): 8 replicas held for a minute. Now
    the first measurement replaces the guess, and the count is what the load needs."""
    stack = start_stack([stack_revision(
        command=[*MODEL_SERVER, "--latency", "0.02", "--startup-delay", "2"], maxReplicas=8)])
    step = shapes.Step(idle_seconds=1, users=40, hold_seconds=20)
    summary = run.run_locust(stack.url, step, 21, env={"SLUICE_USER_RPS": "1",
                                                       "SLUICE_USER_PACING": "poisson"})

    held = call("GET", f"http://127.0.0.1:{stack.admin}/stats")[1]["revisions"][0][
        "cold_start_waits"]["count"]
    assert held >= 20, "the first replica's cold start held a backlog"
    assert summary.failures == 0, summary.status_codes
    made = decisions(stack.proc.output())  # every count asked for, in order, under the load
    peak = max(range(len(made)), key=lambda i: made[i][1])
    guess = made[peak][1]
    assert guess > 2, ("no guess was made before a replica served", made)
    # Straight down from the guess once measured, and never back to it: what the load needs
    # from then on (one or two replicas here, more while a busy machine slows the replicas).
    after = [to for _, to in made[peak + 1:]]
    down_at = next((i for i, count in enumerate(after) if count <= guess // 2), None)
    assert down_at is not None, ("the guess was held", made)
    assert after[:down_at] == sorted(after[:down_at], reverse=True), made
    assert max(after[down_at:]) < guess, made
