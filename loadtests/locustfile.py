"""Inference load through the router, recorded per revision, for the autoscaler and rollout tests.

Runs only inside Locust (``python -m locust -f loadtests/locustfile.py``, or `loadtests.run`),
from the repository root so that ``loadtests`` is importable. Importing Locust monkey-patches the
process with gevent, so nothing else in sluice may import this module.

Each user sends KServe V1 ``:predict`` and Open Inference Protocol V2 ``/infer`` requests for one
model, at most ``SLUICE_USER_RPS`` per second (``constant_throughput``; see shapes.py for how
users map to a request rate). Any non-2xx answer, or no answer, is a failure.

The router names the revision that served a request in ``X-Sluice-Revision``. Locust's own
statistics are per URL, but canary analysis needs them per revision, so a ``request`` event hook
keeps requests, failures, status codes and latencies per revision and, at test stop, writes them
as JSON to ``SLUICE_LOAD_SUMMARY`` (if set)::

    {"requests": 300, "failures": 2, "status_codes": {"200": 298, "500": 2},
     "latency_ms": {"p50": 1.9, "p90": 3.1, "p99": 7.4, "max": 9.0},
     "revisions": {"v1": {<the same fields>}, "v2": {...}}}

Requests answered without the header (the router's own 503/504, connection errors) are filed
under the revision ``"unknown"``. Latency is kept in 0.1 ms buckets, so memory stays bounded on
long soaks; percentiles are nearest-rank over those buckets.

Environment:

- ``SLUICE_MODEL`` (default ``model``): the model name in the request paths.
- ``SLUICE_V1_WEIGHT``, ``SLUICE_V2_WEIGHT`` (default 1 each): task weights of the two
  protocols; 0 leaves one out.
- ``SLUICE_USER_RPS`` (default 1): requests per second per user.
- ``SLUICE_USER_PACING`` (default ``constant``): ``constant`` sends each user's requests every
  ``1 / SLUICE_USER_RPS`` s (``constant_throughput``); ``poisson`` at exponential intervals of
  that mean, so that many users make Poisson arrivals, as independent clients do, and users a
  cold start held together do not stay in step afterwards (``poisson_throughput``).
- ``SLUICE_STICKY_USERS`` (``1`` to enable): send ``X-User-Id: user-<n>``, one key per user, for
  routes with ``sticky: {header: X-User-Id}``.
- ``SLUICE_SHAPE`` and its parameters, ``SLUICE_RUN_SECONDS``: the load schedule (shapes.py).
  Without ``SLUICE_SHAPE`` there is no shape class, and Locust's usual ``-u``/``-r``/
  ``--run-time`` or web UI drive the users.
- ``SLUICE_LOAD_SUMMARY``: where to write the JSON summary.
- ``SLUICE_LOAD_REQUESTS``: where to write every request as a JSON list of ``[start, ms,
  failed]`` (start in Unix seconds), for analyses by arrival time; it grows with the run, so
  it is for benchmark runs of minutes, not soaks.
- ``SLUICE_STOP_FILE``: the run stops (and writes its summary) at the first shape tick after
  this file exists, so a test can end the load when what it waits for has happened instead of
  guessing a duration; ``SLUICE_RUN_SECONDS`` stays the hard bound.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from locust import FastHttpUser, LoadTestShape, constant_throughput, events, task

from loadtests import shapes

MODEL = os.environ.get("SLUICE_MODEL", "model")
V1_WEIGHT = int(os.environ.get("SLUICE_V1_WEIGHT", "1"))
V2_WEIGHT = int(os.environ.get("SLUICE_V2_WEIGHT", "1"))
USER_RPS = float(os.environ.get("SLUICE_USER_RPS", "1"))
USER_PACING = os.environ.get("SLUICE_USER_PACING", "constant")
STICKY_USERS = os.environ.get("SLUICE_STICKY_USERS", "") == "1"
SUMMARY_PATH = os.environ.get("SLUICE_LOAD_SUMMARY")
REQUESTS_PATH = os.environ.get("SLUICE_LOAD_REQUESTS")
STOP_FILE = os.environ.get("SLUICE_STOP_FILE")

REVISION_HEADER = "X-Sluice-Revision"
UNKNOWN_REVISION = "unknown"
FEATURES = [0.1, 0.2, 0.3, 0.4]
V2_BODY = {"inputs": [{"name": "input-0", "shape": [1, len(FEATURES)], "datatype": "FP32",
                       "data": FEATURES}]}
PERCENTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99}

if V1_WEIGHT < 0 or V2_WEIGHT < 0 or V1_WEIGHT + V2_WEIGHT == 0:
    raise ValueError(f"SLUICE_V1_WEIGHT={V1_WEIGHT}, SLUICE_V2_WEIGHT={V2_WEIGHT}: "
                     "weights must be >= 0 and not both 0")

if USER_PACING not in ("constant", "poisson"):
    raise ValueError(f"SLUICE_USER_PACING={USER_PACING!r}: expected 'constant' or 'poisson'")

_user_numbers = itertools.count()


def poisson_throughput(requests_per_second: float) -> Callable[[Any], float]:
    """``constant_throughput`` with exponential intervals: each user's requests are due as a
    Poisson process of this rate, and one due while the previous is unanswered goes as soon as
    that is answered (no catching up)."""

    def wait_time(user: Any) -> float:
        now = time.perf_counter()
        due = getattr(user, "_sluice_due", now) + random.expovariate(requests_per_second)
        user._sluice_due = max(due, now)
        return max(0.0, due - now)

    return wait_time


class InferenceUser(FastHttpUser):
    """One client of the model, alternating between the protocols by the configured weights."""

    wait_time = (poisson_throughput(USER_RPS) if USER_PACING == "poisson"
                 else constant_throughput(USER_RPS))

    def on_start(self) -> None:
        self.headers = {"X-User-Id": f"user-{next(_user_numbers)}"} if STICKY_USERS else {}

    @task(V1_WEIGHT)
    def kserve_v1_predict(self) -> None:
        self._post(f"/v1/models/{MODEL}:predict", {"instances": [FEATURES]}, name="v1 predict")

    @task(V2_WEIGHT)
    def oip_v2_infer(self) -> None:
        self._post(f"/v2/models/{MODEL}/infer", V2_BODY, name="v2 infer")

    def _post(self, path: str, body: dict[str, Any], name: str) -> None:
        with self.client.post(path, json=body, headers=self.headers, name=name,
                              catch_response=True) as response:
            # Locust's default passes 3xx; a redirect is not an inference answer.
            if not 200 <= response.status_code < 300:
                response.failure(f"HTTP {response.status_code}")


class Scenario(LoadTestShape):
    """Locust's view of the schedule in SLUICE_SHAPE; all timing decisions are in shapes.py."""

    abstract = "SLUICE_SHAPE" not in os.environ

    def __init__(self) -> None:
        super().__init__()
        self.schedule = shapes.from_env(os.environ)
        self.run_seconds = float(os.environ.get("SLUICE_RUN_SECONDS", "inf"))

    def tick(self) -> shapes.Tick | None:
        if STOP_FILE and os.path.exists(STOP_FILE):
            return None
        return shapes.tick_at(self.schedule, self.get_run_time(), self.run_seconds)


class Outcomes:
    """Counts and a latency histogram for one revision, or for all of them."""

    def __init__(self) -> None:
        self.requests = 0
        self.failures = 0
        self.status_codes: collections.Counter[int] = collections.Counter()
        self.latency_buckets: collections.Counter[float] = collections.Counter()

    def add(self, status: int, latency_ms: float, failed: bool) -> None:
        self.requests += 1
        self.failures += failed
        self.status_codes[status] += 1
        self.latency_buckets[round(latency_ms, 1)] += 1

    def percentile(self, fraction: float) -> float | None:
        rank = math.ceil(fraction * self.requests)
        seen = 0
        for latency, count in sorted(self.latency_buckets.items()):
            seen += count
            if seen >= rank:
                return latency
        return None

    def as_json(self) -> dict[str, Any]:
        latency = {name: self.percentile(fraction) for name, fraction in PERCENTILES.items()}
        latency["max"] = max(self.latency_buckets, default=None)
        return {"requests": self.requests, "failures": self.failures,
                "status_codes": {str(code): n for code, n in sorted(self.status_codes.items())},
                "latency_ms": latency}


class Recorder:
    """What the request hook has seen since the test started."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = Outcomes()
        self.by_revision: collections.defaultdict[str, Outcomes] = (
            collections.defaultdict(Outcomes))
        self.requests: list[tuple[float, float, bool]] = []

    def record(self, response: Any, response_time: float, exception: Any) -> None:
        headers = getattr(response, "headers", None) or {}
        revision = headers.get(REVISION_HEADER) or UNKNOWN_REVISION
        status = getattr(response, "status_code", 0) or 0
        failed = exception is not None
        self.total.add(status, response_time, failed)
        self.by_revision[revision].add(status, response_time, failed)
        if REQUESTS_PATH:
            self.requests.append((time.time() - response_time / 1000, response_time, failed))

    def write(self, path: Path) -> None:
        summary = self.total.as_json()
        summary["revisions"] = {name: outcomes.as_json()
                                for name, outcomes in sorted(self.by_revision.items())}
        # Written whole, then renamed: a reader never sees half a summary.
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(summary, indent=2) + "\n")
        partial.replace(path)


recorder = Recorder()


@events.test_start.add_listener
def _reset(**_kwargs: Any) -> None:
    # A web-UI session can start several tests in one process; each gets its own summary.
    recorder.reset()


@events.request.add_listener
def _record(response_time: float, response: Any = None, exception: Any = None,
            **_kwargs: Any) -> None:
    recorder.record(response, response_time, exception)


@events.test_stop.add_listener
def _write_summary(**_kwargs: Any) -> None:
    if SUMMARY_PATH:
        recorder.write(Path(SUMMARY_PATH))
    if REQUESTS_PATH:
        Path(REQUESTS_PATH).write_text(json.dumps(recorder.requests))
