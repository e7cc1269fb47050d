"""sluice's Locust users: inference load through the router, recorded per revision.

This is the public Locust API of loadtests/: `sluice loadtest` runs it headless for a scenario
file, and the same file works from Locust's own web UI for exploring::

    SLUICE_SCENARIO=loadtests/scenarios/step.yaml locust -f loadtests/locustfile.py \
        --host http://127.0.0.1:8080          # then open http://localhost:8089

With ``SLUICE_SCENARIO`` the scenario decides everything below (its users and phases; the
duration scale from ``SLUICE_DURATION_SCALE``); without it the environment variables do, and
without ``SLUICE_SHAPE`` either, Locust's usual ``-u``/``-r``/``--run-time`` or the web UI drive
the users. Your own locustfile can import `InferenceUser` and subclass it.

Runs only inside Locust, from the repository root or with sluice installed so that
``loadtests`` is importable. Importing Locust monkey-patches the process with gevent, so nothing
else in sluice may import this module.

Each user sends, by task weight, KServe V1 ``:predict``, Open Inference Protocol V2 ``/infer``
and streamed ``/generate_stream`` (server-sent events, one per token) requests for one model, at
most ``SLUICE_USER_RPS`` per second (``constant_throughput``; see shapes.py for how users map
to a request rate). Any non-2xx answer, no answer, or a stream that ends before its last token
is a failure. A streamed request's latency is to its last token; the time to its first token is
kept apart (``first_token_ms`` in the summary).

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

The summary also has a ``timeline`` for `sluice loadtest`'s judge and report (record.py reads
it): per second since the test started, the requests sent (as they are sent), answered ok or
failed, per revision, the failures by reason (the HTTP status, or the exception's class when
there was no answer), and a latency histogram (latency.py; by completion time), plus when the
first request was sent and the first 2xx came back.

Environment:

- ``SLUICE_SCENARIO``: a scenario file (loadtests/scenario.py), which sets all of the below.
- ``SLUICE_MODEL`` (default ``model``): the model name in the request paths.
- ``SLUICE_V1_WEIGHT``, ``SLUICE_V2_WEIGHT`` (default 1 each), ``SLUICE_STREAM_WEIGHT``
  (default 0): task weights of the three kinds of request; 0 leaves one out.
- ``SLUICE_STREAM_TOKENS`` (default 16): ``max_tokens`` of a streamed request.
- ``SLUICE_REQUEST_TIMEOUT`` (seconds, default 60): a request taking longer fails.
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
- ``SLUICE_STARTED_FILE``: written with the wall-clock start time when the test starts, so the
  caller knows when t = 0 was (a canary scenario starts its rollout relative to it).

A run with a shape also stops at the first tick after the process that started Locust is gone
(`sluice loadtest` killed): load nobody reads is not sent on.
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

from loadtests import latency, scenario, shapes

if os.environ.get("SLUICE_SCENARIO"):
    # The scenario wins over variables set before, as a file chosen on purpose should.
    try:
        os.environ.update(scenario.load(
            os.environ["SLUICE_SCENARIO"],
            float(os.environ.get("SLUICE_DURATION_SCALE", "1"))).locust_env())
    except (scenario.ScenarioError, ValueError) as error:
        raise SystemExit(f"SLUICE_SCENARIO={os.environ['SLUICE_SCENARIO']} is invalid:\n"
                         f"{error}") from None

MODEL = os.environ.get("SLUICE_MODEL", "model")
V1_WEIGHT = int(os.environ.get("SLUICE_V1_WEIGHT", "1"))
V2_WEIGHT = int(os.environ.get("SLUICE_V2_WEIGHT", "1"))
STREAM_WEIGHT = int(os.environ.get("SLUICE_STREAM_WEIGHT", "0"))
STREAM_TOKENS = int(os.environ.get("SLUICE_STREAM_TOKENS", "16"))
REQUEST_TIMEOUT_S = float(os.environ.get("SLUICE_REQUEST_TIMEOUT", "60"))
USER_RPS = float(os.environ.get("SLUICE_USER_RPS", "1"))
USER_PACING = os.environ.get("SLUICE_USER_PACING", "constant")
STICKY_USERS = os.environ.get("SLUICE_STICKY_USERS", "") == "1"
SUMMARY_PATH = os.environ.get("SLUICE_LOAD_SUMMARY")
REQUESTS_PATH = os.environ.get("SLUICE_LOAD_REQUESTS")
STOP_FILE = os.environ.get("SLUICE_STOP_FILE")
STARTED_FILE = os.environ.get("SLUICE_STARTED_FILE")

REVISION_HEADER = "X-Sluice-Revision"
UNKNOWN_REVISION = "unknown"
FEATURES = [0.1, 0.2, 0.3, 0.4]
V2_BODY = {"inputs": [{"name": "input-0", "shape": [1, len(FEATURES)], "datatype": "FP32",
                       "data": FEATURES}]}
PERCENTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99}

if min(V1_WEIGHT, V2_WEIGHT, STREAM_WEIGHT) < 0 or V1_WEIGHT + V2_WEIGHT + STREAM_WEIGHT == 0:
    raise ValueError(f"SLUICE_V1_WEIGHT={V1_WEIGHT}, SLUICE_V2_WEIGHT={V2_WEIGHT}, "
                     f"SLUICE_STREAM_WEIGHT={STREAM_WEIGHT}: weights must be >= 0 and not all 0")

if USER_PACING not in ("constant", "poisson"):
    raise ValueError(f"SLUICE_USER_PACING={USER_PACING!r}: expected 'constant' or 'poisson'")

_user_numbers = itertools.count()
PARENT = os.getppid()


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
    """One client of the model, choosing between the protocols by the configured weights."""

    wait_time = (poisson_throughput(USER_RPS) if USER_PACING == "poisson"
                 else constant_throughput(USER_RPS))
    network_timeout = REQUEST_TIMEOUT_S
    connection_timeout = REQUEST_TIMEOUT_S

    def on_start(self) -> None:
        self.headers = {"X-User-Id": f"user-{next(_user_numbers)}"} if STICKY_USERS else {}

    @task(V1_WEIGHT)
    def kserve_v1_predict(self) -> None:
        self._post(f"/v1/models/{MODEL}:predict", {"instances": [FEATURES]}, name="v1 predict")

    @task(V2_WEIGHT)
    def oip_v2_infer(self) -> None:
        self._post(f"/v2/models/{MODEL}/infer", V2_BODY, name="v2 infer")

    @task(STREAM_WEIGHT)
    def oip_v2_generate_stream(self) -> None:
        body = {"text_input": "sluice", "parameters": {"max_tokens": STREAM_TOKENS}}
        recorder.sending()
        started = time.perf_counter()
        with self.client.post(f"/v2/models/{MODEL}/generate_stream", json=body, stream=True,
                              headers=self.headers, name="v2 generate_stream",
                              catch_response=True) as response:
            if not 200 <= response.status_code < 300:
                response.failure(f"HTTP {response.status_code}")
                return
            first_token_ms, tokens, finished = None, 0, False
            # geventhttpclient's response: readline returns each line as it arrives, where
            # Locust's iter_content waits for a whole chunk, the whole stream if it is short.
            raw = response._response
            try:
                while line := raw.readline(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    if first_token_ms is None:
                        first_token_ms = (time.perf_counter() - started) * 1000
                    tokens += 1
                    finished = bool(json.loads(line[5:]).get("finished"))
            except Exception as error:  # a broken stream is a failed request, not a crash
                response.failure(f"stream broken after {tokens} tokens: {error!r}")
            else:
                if not finished:
                    response.failure(f"stream ended after {tokens} tokens, unfinished")
            # Locust timed the headers only; a stream's latency is to its last token.
            response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            response.request_meta["context"]["first_token_ms"] = first_token_ms

    def _post(self, path: str, body: dict[str, Any], name: str) -> None:
        recorder.sending()
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
        if os.getppid() != PARENT:
            return None  # whoever started this run is gone: nobody is left to read it
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
        for latency_ms, count in sorted(self.latency_buckets.items()):
            seen += count
            if seen >= rank:
                return latency_ms
        return None

    def quantiles(self) -> dict[str, float | None]:
        found = {name: self.percentile(fraction) for name, fraction in PERCENTILES.items()}
        found["max"] = max(self.latency_buckets, default=None)
        return found

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "failures": self.failures,
                "status_codes": {str(code): n for code, n in sorted(self.status_codes.items())},
                "latency_ms": self.quantiles()}


class Second:
    """One second of the timeline."""

    __slots__ = ("failed", "failures", "latency", "ok", "revisions", "sent")

    def __init__(self) -> None:
        self.sent = self.ok = self.failed = 0
        self.revisions: collections.defaultdict[str, list[int]] = (
            collections.defaultdict(lambda: [0, 0]))
        self.latency: collections.Counter[int] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()
        """Failed answers by reason (failure_reason)."""


class Timeline:
    """Per second since the test started: requests sent, counted as they are sent; answers,
    per revision, and their latency by completion time (the JSON that record.Client reads)."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.seconds: collections.defaultdict[int, Second] = collections.defaultdict(Second)
        self.first_sent_at: float | None = None
        self.first_ok_at: float | None = None

    def sending(self, at: float) -> None:
        """A request is about to be sent: counted now, so one never answered still counts."""
        self.seconds[self._second(at)].sent += 1
        if self.first_sent_at is None:
            self.first_sent_at = at

    def add(self, start_time: float, response_time_ms: float, revision: str,
            failure: str | None) -> None:
        """An answer; ``failure`` is why it failed (failure_reason), None when it did not."""
        failed = failure is not None
        done = start_time + response_time_ms / 1000
        second = self.seconds[self._second(done)]
        second.failed += failed
        second.ok += not failed
        if failure is not None:
            second.failures[failure] += 1
        second.revisions[revision][failed] += 1
        second.latency[latency.bucket(response_time_ms)] += 1
        if not failed and (self.first_ok_at is None or done < self.first_ok_at):
            self.first_ok_at = done

    def _second(self, at: float) -> int:
        return max(0, int(at - self.started_at))

    def as_json(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "first_sent_at": self.first_sent_at,
                "first_ok_at": self.first_ok_at,
                "seconds": [{"t": t, "sent": s.sent, "ok": s.ok, "failed": s.failed,
                             "revisions": dict(s.revisions),
                             "latency": {str(k): n for k, n in sorted(s.latency.items())},
                             **({"failures": dict(sorted(s.failures.items()))}
                                if s.failures else {})}
                            for t, s in sorted(self.seconds.items())]}


def failure_reason(status: int, exception: Any) -> str:
    """Why a request failed, for people reading a run: its HTTP status, or the exception's
    class when there was no answer (ConnectionResetError, ...). The class, not its message:
    few distinct values, and nothing of the request in it."""
    if status:
        return str(status)
    return type(exception).__name__ if exception is not None else "no answer"


class Recorder:
    """What the request hook has seen since the test started."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = Outcomes()
        self.by_revision: collections.defaultdict[str, Outcomes] = (
            collections.defaultdict(Outcomes))
        self.first_tokens = Outcomes()
        self.timeline = Timeline(time.time())
        self.requests: list[tuple[float, float, bool]] = []

    def sending(self) -> None:
        self.timeline.sending(time.time())

    def record(self, response: Any, response_time: float, exception: Any,
               start_time: float | None, context: dict[str, Any]) -> None:
        headers = getattr(response, "headers", None) or {}
        revision = headers.get(REVISION_HEADER) or UNKNOWN_REVISION
        status = getattr(response, "status_code", 0) or 0
        failed = exception is not None
        self.total.add(status, response_time, failed)
        self.by_revision[revision].add(status, response_time, failed)
        if start_time is None:
            start_time = time.time() - response_time / 1000
        self.timeline.add(start_time, response_time, revision,
                          failure_reason(status, exception) if failed else None)
        if context.get("first_token_ms") is not None:
            self.first_tokens.add(status, context["first_token_ms"], failed)
        if REQUESTS_PATH:
            self.requests.append((start_time, response_time, failed))

    def write(self, path: Path) -> None:
        summary = self.total.as_json()
        summary["revisions"] = {name: outcomes.as_json()
                                for name, outcomes in sorted(self.by_revision.items())}
        if self.first_tokens.requests:
            summary["first_token_ms"] = self.first_tokens.quantiles()
        summary["timeline"] = self.timeline.as_json()
        # Written whole, then renamed: a reader never sees half a summary.
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(summary, indent=2) + "\n")
        partial.replace(path)


recorder = Recorder()


@events.test_start.add_listener
def _reset(**_kwargs: Any) -> None:
    # A web-UI session can start several tests in one process; each gets its own summary.
    recorder.reset()
    if STARTED_FILE:
        partial = Path(STARTED_FILE + ".partial")
        partial.write_text(f"{recorder.timeline.started_at!r}\n")
        partial.replace(STARTED_FILE)


@events.request.add_listener
def _record(response_time: float, response: Any = None, exception: Any = None,
            start_time: float | None = None, context: dict[str, Any] | None = None,
            **_kwargs: Any) -> None:
    recorder.record(response, response_time, exception, start_time, context or {})


@events.test_stop.add_listener
def _write_summary(**_kwargs: Any) -> None:
    if SUMMARY_PATH:
        recorder.write(Path(SUMMARY_PATH))
    if REQUESTS_PATH:
        Path(REQUESTS_PATH).write_text(json.dumps(recorder.requests))
