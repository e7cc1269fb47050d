"""Locust through the real router to real model servers, driven by loadtests.run.run_locust.

Covered: a constant-rate run paces at most users x per-user rate, all requests successful,
split over both revisions by the route weights and counted per revision from X-Sluice-Revision
as the router counted them; streamed generate requests are read to their last token, with the
time to the first one kept apart, and the per-second timeline adds up to the same counts;
failed answers are counted as failures with their status code and revision;
a Step run ends by itself before the run's hard end; Locust stops when the process that started
it dies; non-loopback hosts are refused before anything starts; and the harness never imports
Locust into the calling process. The schedules'
timing is unit-tested in tests/unit/test_shapes.py.

Not covered here: RampFromZero against a scale-from-zero revision and sticky users, which need
the autoscaler and belong to its end-to-end tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from loadtests import run, shapes
from tests.integration.conftest import ROOT, call, service

pytestmark = pytest.mark.integration

USERS = 10
USER_RPS = 3.0
SECONDS = 6.0


def revision(name: str, weight: int, url: str) -> dict:
    return {"name": name, "weight": weight, "endpoints": [url]}


def test_constant_rate_is_delivered_and_counted_per_revision(start_model_server, start_router):
    stable = start_model_server("--revision", "v1")
    canary = start_model_server("--revision", "v2")
    router = start_router(service(revision("v1", 80, stable.url), revision("v2", 20, canary.url)))

    summary = run.run_locust(router.url, shapes.Constant(USERS), SECONDS,
                             env={"SLUICE_USER_RPS": str(USER_RPS)})

    # The pace is a ceiling (the last tick lands up to a second late); a busy machine only
    # sends less, so what was sent is checked against the router's count, not against a rate.
    assert USERS <= summary.requests <= USERS * USER_RPS * (SECONDS + 1)
    assert summary.failures == 0
    assert summary.status_codes == {200: summary.requests}
    assert set(summary.revisions) == {"v1", "v2"}
    assert sum(summary.requests_by_revision.values()) == summary.requests
    routed = {r["revision"]: r["requests"]["total"]
              for r in call("GET", router.admin + "/stats")[1]["revisions"]}
    for name, counted in summary.requests_by_revision.items():
        # Every request Locust counted was answered by the router; the router also counts
        # those cut at the end of the run (at most one a user in flight).
        assert counted <= routed[name] <= counted + USERS, (summary.revisions, routed)
    # Smooth weighting makes 80/20 exact to within a request per revision, at the router.
    assert routed["v2"] == pytest.approx((routed["v1"] + routed["v2"]) * 0.2, abs=1)
    assert 0 < summary.p50_ms <= summary.p99_ms


def test_streamed_generate_requests_are_read_to_the_last_token(start_model_server,
                                                               start_router, tmp_path):
    tokens, token_delay_s = 20, 0.01
    server = start_model_server("--revision", "v1", "--token-delay", str(token_delay_s))
    router = start_router(service(revision("v1", 100, server.url)))
    path = tmp_path / "summary.json"

    summary = run.run_locust(router.url, shapes.Constant(3), 3.0, summary_path=path, env={
        "SLUICE_USER_RPS": "2", "SLUICE_V1_WEIGHT": "0", "SLUICE_V2_WEIGHT": "0",
        "SLUICE_STREAM_WEIGHT": "1", "SLUICE_STREAM_TOKENS": str(tokens)})

    assert summary.requests > 0
    assert summary.failures == 0, summary.status_codes
    assert summary.revisions["v1"].requests == summary.requests
    document = json.loads(path.read_text())
    # A stream's latency is to its last token, after (tokens - 1) delays; the first token is
    # timed as it arrives, most of that production time earlier.
    production_ms = (tokens - 1) * token_delay_s * 1000
    assert summary.p50_ms >= production_ms
    assert document["first_token_ms"]["p50"] < summary.p50_ms - production_ms / 2
    seconds = document["timeline"]["seconds"]
    assert sum(s["ok"] for s in seconds) == summary.requests
    assert sum(s["revisions"].get("v1", [0, 0])[0] for s in seconds) == summary.requests
    # Counted when sent: the streams the end of the run cut short are sent, never answered.
    assert 0 <= sum(s["sent"] for s in seconds) - summary.requests <= 3


def test_failed_answers_are_counted_with_their_revision(start_model_server, start_router):
    broken = start_model_server("--revision", "v1", "--error-rate", "1.0")
    router = start_router(service(revision("v1", 100, broken.url)))
    step = shapes.Step(idle_seconds=1, users=5, hold_seconds=2)

    # The step ends at 3 s, well before the hard end: the shape stops the run by itself.
    summary = run.run_locust(router.url, step, seconds=20, env={"SLUICE_USER_RPS": "4"})

    assert 0 < summary.requests <= step.users * 4 * (step.hold_seconds + 1)
    assert summary.failures == summary.requests
    assert summary.failure_ratio == 1.0
    assert summary.status_codes == {500: summary.requests}
    assert summary.revisions["v1"].failures == summary.requests


@pytest.mark.parametrize("host", [
    "http://10.0.0.1:8080", "http://192.168.1.1", "http://example.com", "http://localhost:8080",
    "http://[::1]:8080", "ftp://127.0.0.1", "127.0.0.1:8080",
])
def test_only_loopback_hosts_are_accepted(host):
    with pytest.raises(ValueError, match="host"):
        run.run_locust(host, shapes.Constant(1), 1.0)


def test_locust_stops_when_whoever_started_it_dies(start_model_server):
    server = start_model_server()
    starter = subprocess.Popen(
        [sys.executable, "-c", "import sys; from loadtests import run, shapes; "
         "run.locust(sys.argv[1], shapes.Constant(2), 120.0)", server.url], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while _admitted(server) == 0:  # Locust is sending
            assert time.monotonic() < deadline, "Locust never sent a request"
            time.sleep(0.2)
        [locust] = Path(f"/proc/{starter.pid}/task/{starter.pid}/children").read_text().split()
    finally:
        starter.kill()
        starter.wait()
    # The shape's next tick sees its parent gone and ends the run, long before its 120 s.
    deadline = time.monotonic() + 30
    try:
        while _state(locust) != "Z":
            assert time.monotonic() < deadline, "Locust outlived its parent"
            time.sleep(0.2)
    finally:
        if _state(locust) != "Z":
            os.kill(int(locust), signal.SIGKILL)


def _admitted(server) -> int:
    with urllib.request.urlopen(f"{server.url}/debug/requests", timeout=5) as answer:
        return json.load(answer)["count"]


def _state(pid: str) -> str:
    """The process's state letter; Z (a zombie) also when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_the_harness_does_not_bring_locust_into_its_caller():
    """Importing Locust gevent-patches the importer; run.py must stay usable from pytest."""
    check = ("import sys, loadtests.run, loadtests.shapes; "
             "sys.exit(sorted({'locust', 'gevent'} & set(sys.modules)) or None)")
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True, timeout=60)
