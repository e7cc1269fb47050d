"""A small reference model server that speaks the real KServe protocols.

sluice's tests, router latency benchmarks and the local demo need a backend that behaves like a
KServe model server without pulling in a serving stack. This one answers the KServe V1 and Open
Inference Protocol (V2) endpoints with a tiny deterministic numpy model, so a real KServe server
is a drop-in replacement for it, and it has knobs for the behaviour the autoscaler and router
must cope with: slow model loading, per-request latency, injected failures, a concurrency
limit, token streaming and a revision label.

Endpoints (``<name>`` is ``--model-name``; any other name is a 404):

    GET  /                                   KServe liveness
    GET  /v1/models                          {"models": [<name>]}
    GET  /v1/models/<name>                   {"name": ..., "ready": ...}, 503 until loaded
    POST /v1/models/<name>:predict           {"instances": [[f, f, f, f], ...]}
    GET  /v2                                 server metadata
    GET  /v2/health/live                     200 as soon as the listener is up
    GET  /v2/health/ready                    503 until the model is loaded
    GET  /v2/models/<name>                   model metadata
    GET  /v2/models/<name>/ready             503 until the model is loaded
    POST /v2/models/<name>/infer             {"inputs": [{"name", "shape": [n, 4], ...}]}
    POST /v2/models/<name>/generate_stream   SSE, one ``data: {...}`` event per token
    GET  /metrics                            Prometheus gauges shaped like vLLM's (below)
    GET  /debug/requests                     accounting for exactly-once tests
    POST /debug/reset                        clear that accounting
    *    /debug/headers                      the request as received: method, path, version
                                             and every header in order (proxy header tests)
    POST /debug/echo                         the request body streamed back as it arrives
                                             (full-duplex streaming tests)

Accounting: an inference request (predict, infer, generate_stream) is *admitted* once the model
is loaded and it fits under ``--max-concurrency``. Admitted requests are counted and their
``X-Request-Id`` recorded in arrival order; requests refused with 503 are not, because they did
no work and are safe for a router to retry elsewhere. Injected 500s and 400s are admitted.

Metrics, named and labelled (``model_name``) as vLLM's, so a query written for one scales the
other: ``vllm:num_requests_running`` (admitted and being worked on or streamed),
``vllm:num_requests_waiting`` (admitted, waiting for a ``--parallelism`` slot, as vLLM's
scheduler queue) and ``vllm:gpu_cache_usage_perc``, the KV-cache fraction in use, which grows
with the work in flight: running requests / ``--kv-cache-capacity``, at most 1 (a fraction,
despite the name, as vLLM's). For streamed responses ``--latency`` is the time to the first
token (prefill) and ``--token-delay`` the time between tokens (decode).

A client that leaves mid-request is not an error here: the handler stops quietly (a router
cutting a connection it gave up on must not fill this log with tracebacks).

Every knob is a flag and also an environment variable ``SLUICE_MS_<FLAG>`` (``--token-delay`` is
``SLUICE_MS_TOKEN_DELAY``); flags win over the environment. The port also falls back to ``PORT``.

Run: ``python3 examples/model_server.py --port 8000 --latency 0.01``. SIGTERM closes the
listener, lets in-flight requests finish (up to ``--drain-timeout``) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import os
import random
import signal
import sys
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web

FEATURES = 4
MAX_RECORDED_IDS = 100_000
MAX_STREAM_TOKENS = 1_000_000
DEFAULT_STREAM_TOKENS = 16
# Numeric OIP datatypes we accept on input; everything is computed in float32 regardless.
NUMERIC_DATATYPES = frozenset({
    "FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64",
    "UINT8", "UINT16", "UINT32", "UINT64",
})
VOCABULARY = (
    "the", "model", "serves", "tokens", "while", "sluice", "routes", "traffic", "and", "scales",
    "replicas", "under", "load", "with", "care", ".",
)
JSON_HEADERS = {"Content-Type": "application/json"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = "model"
    startup_delay: float = 0.0
    latency: float = 0.0
    latency_jitter: float = 0.0
    error_rate: float = 0.0
    max_concurrency: int = 0
    token_delay: float = 0.0
    parallelism: int = 0
    revision: str = ""
    drain_timeout: float = 30.0
    shutdown_delay: float = 0.0
    kv_cache_capacity: int = 8


class BadRequest(Exception):
    """The request body is not a valid request for this model; answered with 400."""


class LogisticModel:
    """Logistic regression over FEATURES inputs with fixed, seeded weights.

    Deterministic across processes and runs, so any two replicas (and the tests) agree on every
    number, and cheap: one matrix-vector product on weights allocated once.
    """

    def __init__(self, features: int = FEATURES, seed: int = 20240601) -> None:
        rng = np.random.default_rng(seed)
        self.features = features
        self.weights = rng.standard_normal(features).astype(np.float32)
        self.bias = np.float32(rng.standard_normal())

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Probabilities, shape (n,), float32, for float32 rows of shape (n, features)."""
        logits = rows @ self.weights
        logits += self.bias
        # float32 sigmoid is already 0 or 1 beyond +-30; clipping avoids exp() overflow warnings.
        np.clip(logits, -30.0, 30.0, out=logits)
        np.negative(logits, out=logits)
        np.exp(logits, out=logits)
        logits += 1.0
        return np.reciprocal(logits, out=logits)


def as_feature_rows(values: Any, shape: Any = None) -> np.ndarray:
    """Validate JSON numbers as an (n, FEATURES) float32 matrix, optionally reshaping flat data."""
    try:
        array = np.asarray(values)
    except ValueError as error:  # ragged nesting
        raise BadRequest(f"not a rectangular array of numbers: {error}") from None
    # Reject strings, nulls and nested objects rather than let numpy coerce "1.5" to 1.5.
    if array.dtype.kind not in "biuf":
        raise BadRequest("values must be numbers")
    if shape is not None:
        if (not isinstance(shape, list) or len(shape) != 2
                or not all(isinstance(dim, int) and dim >= 0 for dim in shape)):
            raise BadRequest(f"shape must be [n, {FEATURES}], got {shape!r}")
        if array.size != shape[0] * shape[1]:
            raise BadRequest(f"shape {shape} does not match {array.size} data values")
        array = array.reshape(shape)
    if array.ndim != 2 or array.shape[1] != FEATURES:
        raise BadRequest(f"expected rows of {FEATURES} features, got shape {list(array.shape)}")
    with np.errstate(over="ignore"):  # out-of-range values become inf and are rejected below
        rows = array.astype(np.float32)
    if not np.isfinite(rows).all():
        raise BadRequest("values must be finite float32 numbers")
    return rows


def rows_from_v1(payload: dict[str, Any]) -> np.ndarray:
    instances = payload.get("instances")
    if not isinstance(instances, list):
        raise BadRequest('body must have "instances": a list of feature rows')
    return as_feature_rows(instances)


def rows_from_v2(payload: dict[str, Any]) -> np.ndarray:
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest('body must have "inputs": a list with exactly one tensor')
    tensor = inputs[0]
    if tensor.get("datatype") not in NUMERIC_DATATYPES:
        raise BadRequest(f"unsupported datatype {tensor.get('datatype')!r}")
    if "data" not in tensor or "shape" not in tensor:
        raise BadRequest('the input tensor needs "shape" and "data"')
    return as_feature_rows(tensor["data"], tensor["shape"])


def stream_request(payload: dict[str, Any]) -> tuple[str, int]:
    """The prompt and token count of a generate request (Triton's generate extension shape)."""
    prompt = payload.get("text_input", "")
    parameters = payload.get("parameters") or {}
    if not isinstance(prompt, str) or not isinstance(parameters, dict):
        raise BadRequest('"text_input" must be a string and "parameters" an object')
    max_tokens = parameters.get("max_tokens", payload.get("max_tokens", DEFAULT_STREAM_TOKENS))
    if (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
            or not 1 <= max_tokens <= MAX_STREAM_TOKENS):
        raise BadRequest(f"max_tokens must be an integer in 1..{MAX_STREAM_TOKENS}")
    return prompt, max_tokens


def token_at(prompt_hash: int, index: int) -> str:
    return VOCABULARY[(prompt_hash + 7 * index) % len(VOCABULARY)]


@web.middleware
async def client_gone_quietly(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A handler cut off by its client (ConnectionError reading the body or writing the answer)
    ends without a traceback; aiohttp drops the connection."""
    try:
        return await handler(request)
    except ConnectionError:
        return web.Response(status=499)  # never sent: the connection is gone


def error_response(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": message}), headers=JSON_HEADERS)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), headers=JSON_HEADERS)


class ModelServer:
    """The aiohttp application plus the state its handlers share: readiness and accounting."""

    def __init__(self, settings: Settings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.model = LogisticModel()
        self.rng = rng or random.Random()
        self.ready = False
        self.inflight = 0
        self.max_inflight = 0
        self.admitted = 0
        self.rejected = 0
        self.request_ids: collections.deque[str] = collections.deque(maxlen=MAX_RECORDED_IDS)
        self.slots = (asyncio.Semaphore(settings.parallelism) if settings.parallelism
                      else contextlib.nullcontext())
        self.working = 0  # in the simulated work now
        self.waiting = 0  # admitted, waiting for a --parallelism slot

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[client_gone_quietly])
        if self.settings.revision:
            app.on_response_prepare.append(self._add_revision_header)
        app.add_routes([
            web.get("/", self.root),
            web.get("/v1/models", self.list_models),
            web.get("/v1/models/{name}", self.model_status_v1),
            web.post("/v1/models/{name}:predict", self.predict_v1),
            web.get("/v2", self.server_metadata),
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.server_ready),
            web.get("/v2/models/{name}", self.model_metadata),
            web.get("/v2/models/{name}/ready", self.model_ready_v2),
            web.post("/v2/models/{name}/infer", self.infer_v2),
            web.post("/v2/models/{name}/generate_stream", self.generate_stream),
            web.get("/debug/requests", self.debug_requests),
            web.post("/debug/reset", self.debug_reset),
            web.route("*", "/debug/headers", self.debug_headers),
            web.post("/debug/echo", self.debug_echo),
            web.get("/metrics", self.metrics),
        ])
        return app

    async def load_model(self, on_ready: Callable[[], None] | None = None) -> None:
        """Stand-in for loading weights: readiness stays 503 for --startup-delay seconds."""
        if self.settings.startup_delay > 0:
            await asyncio.sleep(self.settings.startup_delay)
        self.ready = True
        if on_ready is not None:
            on_ready()

    async def _add_revision_header(self, request: web.Request,
                                   response: web.StreamResponse) -> None:
        response.headers["X-Model-Revision"] = self.settings.revision

    # health and metadata

    async def root(self, request: web.Request) -> web.Response:
        return json_response({"status": "alive"})

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def server_ready(self, request: web.Request) -> web.Response:
        return json_response({"ready": self.ready}, 200 if self.ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response({"name": "sluice-model-server", "version": "1", "extensions": []})

    async def list_models(self, request: web.Request) -> web.Response:
        return json_response({"models": [self.settings.model_name]})

    async def model_status_v1(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name != self.settings.model_name:
            return self._unknown_model(name)
        return json_response({"name": name, "ready": self.ready}, 200 if self.ready else 503)

    async def model_ready_v2(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name != self.settings.model_name:
            return self._unknown_model(name)
        return json_response({"name": name, "ready": self.ready}, 200 if self.ready else 503)

    async def model_metadata(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name != self.settings.model_name:
            return self._unknown_model(name)
        return json_response({
            "name": name,
            "versions": [self.settings.revision] if self.settings.revision else [],
            "platform": "sluice-reference-numpy",
            "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, FEATURES]}],
            "outputs": [{"name": "output-0", "datatype": "FP32", "shape": [-1]}],
        })

    # inference

    async def predict_v1(self, request: web.Request) -> web.Response:
        refusal = self._admit(request)
        if refusal is not None:
            return refusal
        try:
            rows = rows_from_v1(await self._read_json(request))
            failure = await self._simulate_work()
            if failure is not None:
                return failure
            return json_response({"predictions": self.model.predict(rows).tolist()})
        except BadRequest as error:
            return error_response(400, str(error))
        finally:
            self.inflight -= 1

    async def infer_v2(self, request: web.Request) -> web.Response:
        refusal = self._admit(request)
        if refusal is not None:
            return refusal
        try:
            payload = await self._read_json(request)
            rows = rows_from_v2(payload)
            failure = await self._simulate_work()
            if failure is not None:
                return failure
            predictions = self.model.predict(rows)
            return json_response({
                "model_name": self.settings.model_name,
                "model_version": self.settings.revision or None,
                "id": self._response_id(request, payload),
                "outputs": [{"name": "output-0", "shape": [len(predictions)], "datatype": "FP32",
                             "data": predictions.tolist()}],
            })
        except BadRequest as error:
            return error_response(400, str(error))
        finally:
            self.inflight -= 1

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        refusal = self._admit(request)
        if refusal is not None:
            return refusal
        try:
            payload = await self._read_json(request)
            prompt, max_tokens = stream_request(payload)
            failure = await self._simulate_work()
            if failure is not None:
                return failure
            return await self._stream_tokens(request, payload, prompt, max_tokens)
        except BadRequest as error:
            return error_response(400, str(error))
        finally:
            self.inflight -= 1

    async def _stream_tokens(self, request: web.Request, payload: dict[str, Any], prompt: str,
                             max_tokens: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # ask intermediaries not to buffer the stream either
        })
        await response.prepare(request)
        prompt_hash = zlib.crc32(prompt.encode())
        request_id = self._response_id(request, payload)
        try:
            for index in range(max_tokens):
                if index and self.settings.token_delay > 0:
                    await asyncio.sleep(self.settings.token_delay)
                event = {
                    "model_name": self.settings.model_name,
                    "id": request_id,
                    "index": index,
                    "text_output": token_at(prompt_hash, index),
                    "finished": index == max_tokens - 1,
                }
                # Each write goes straight to the transport as one chunk: the client sees every
                # token as it is produced, not when the stream ends.
                await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away; there is nobody left to stream to
        return response

    # shared request plumbing

    def _admit(self, request: web.Request) -> web.Response | None:
        """Refuse (404/503) or admit an inference request; admitted ones count as in flight."""
        name = request.match_info["name"]
        if name != self.settings.model_name:
            return self._unknown_model(name)
        if not self.ready:
            return error_response(503, f"model {name!r} is not ready")
        limit = self.settings.max_concurrency
        if limit and self.inflight >= limit:
            self.rejected += 1
            return error_response(503, f"over capacity: {limit} requests in flight")
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        self.admitted += 1
        request_id = request.headers.get("X-Request-Id")
        if request_id is not None:
            self.request_ids.append(request_id)
        return None

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        try:
            payload = json.loads(await request.read())
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
            raise BadRequest(f"body is not valid JSON: {error}") from None
        if not isinstance(payload, dict):
            raise BadRequest("body must be a JSON object")
        return payload

    async def _simulate_work(self) -> web.Response | None:
        """Sleep the configured latency (at most --parallelism at once), then maybe fail;
        returns the failure response if so."""
        delay = self.settings.latency
        if self.settings.latency_jitter > 0:
            delay = max(0.0, delay + self.rng.uniform(-1.0, 1.0) * self.settings.latency_jitter)
        if delay > 0:
            self.waiting += 1
            async with self.slots:
                self.waiting -= 1
                self.working += 1
                try:
                    await asyncio.sleep(delay)
                finally:
                    self.working -= 1
        if self.settings.error_rate > 0 and self.rng.random() < self.settings.error_rate:
            return error_response(500, "injected failure (--error-rate)")
        return None

    @staticmethod
    def _response_id(request: web.Request, payload: dict[str, Any]) -> str:
        body_id = payload.get("id")
        if isinstance(body_id, str):
            return body_id
        return request.headers.get("X-Request-Id") or uuid.uuid4().hex

    @staticmethod
    def _unknown_model(name: str) -> web.Response:
        return error_response(404, f"model {name!r} not found")

    # metrics

    async def metrics(self, request: web.Request) -> web.Response:
        running = self.inflight - self.waiting
        usage = min(1.0, running / self.settings.kv_cache_capacity)
        name = self.settings.model_name.replace("\\", "\\\\").replace('"', '\\"')
        labels = f'{{model_name="{name}"}}'
        gauges = (
            ("num_requests_running", "Requests admitted and being worked on or streamed.",
             running),
            ("num_requests_waiting", "Requests admitted and waiting for a --parallelism slot.",
             self.waiting),
            ("gpu_cache_usage_perc", "KV-cache fraction in use (running / --kv-cache-capacity, "
             "at most 1).", usage),
        )
        lines = []
        for name, help_, value in gauges:
            lines += [f"# HELP vllm:{name} {help_}", f"# TYPE vllm:{name} gauge",
                      f"vllm:{name}{labels} {value}"]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    # debug accounting

    async def debug_requests(self, request: web.Request) -> web.Response:
        return json_response({
            "count": self.admitted,
            "ids": list(self.request_ids),
            "inflight": self.inflight,
            "working": self.working,
            "waiting": self.waiting,
            "max_inflight": self.max_inflight,
            "rejected": self.rejected,
        })

    async def debug_headers(self, request: web.Request) -> web.Response:
        await request.read()
        return json_response({
            "method": request.method,
            "path": request.path_qs,
            "version": f"{request.version.major}.{request.version.minor}",
            "headers": [[name.decode("latin-1"), value.decode("latin-1")]
                        for name, value in request.raw_headers],
        })

    async def debug_echo(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        async for chunk in request.content.iter_any():
            await response.write(chunk)  # each piece back as soon as it arrived
        await response.write_eof()
        return response

    async def debug_reset(self, request: web.Request) -> web.Response:
        self.request_ids.clear()
        self.admitted = 0
        self.rejected = 0
        self.max_inflight = self.inflight
        return json_response({"reset": True})


# command line


def _env(name: str, fallback: str) -> str:
    return os.environ.get(f"SLUICE_MS_{name}", fallback)


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text}")
    return value


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    # argparse runs `type` on string defaults too, so a bad env var is reported like a bad flag.
    parser = argparse.ArgumentParser(
        description="Reference KServe V1 / Open Inference Protocol V2 model server for sluice.",
        epilog="Every flag can also be set as SLUICE_MS_<FLAG>, e.g. SLUICE_MS_TOKEN_DELAY=0.01.")
    parser.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=_port, default=_env("PORT", os.environ.get("PORT", "8000")),
                        help="0 picks a free port (reported in the ready line)")
    parser.add_argument("--model-name", default=_env("MODEL_NAME", "model"))
    parser.add_argument("--startup-delay", type=_non_negative_float,
                        default=_env("STARTUP_DELAY", "0"),
                        help="seconds of simulated model loading; readiness is 503 until done")
    parser.add_argument("--latency", type=_non_negative_float, default=_env("LATENCY", "0"),
                        help="seconds added to every inference request")
    parser.add_argument("--latency-jitter", type=_non_negative_float,
                        default=_env("LATENCY_JITTER", "0"),
                        help="latency varies uniformly by +- this many seconds (floored at 0)")
    parser.add_argument("--error-rate", type=_fraction, default=_env("ERROR_RATE", "0"),
                        help="fraction of admitted inference requests answered with 500")
    parser.add_argument("--max-concurrency", type=_non_negative_int,
                        default=_env("MAX_CONCURRENCY", "0"),
                        help="inference requests beyond this many in flight get 503 (0: no limit)")
    parser.add_argument("--token-delay", type=_non_negative_float, default=_env("TOKEN_DELAY", "0"),
                        help="seconds between streamed tokens")
    parser.add_argument("--parallelism", type=_non_negative_int, default=_env("PARALLELISM", "0"),
                        help="inference requests worked on at once; the others wait inside the "
                             "server, as behind one GPU or the GIL (0: no limit)")
    parser.add_argument("--revision", default=_env("REVISION", ""),
                        help="label sent back in an X-Model-Revision header on every response")
    parser.add_argument("--kv-cache-capacity", type=_positive_int,
                        default=_env("KV_CACHE_CAPACITY", "8"),
                        help="running requests that fill the simulated KV cache: "
                             "vllm:gpu_cache_usage_perc is running / this, at most 1")
    parser.add_argument("--drain-timeout", type=_non_negative_float,
                        default=_env("DRAIN_TIMEOUT", "30"),
                        help="seconds in-flight requests get to finish after SIGTERM")
    parser.add_argument("--shutdown-delay", type=_non_negative_float,
                        default=_env("SHUTDOWN_DELAY", "0"),
                        help="seconds it keeps serving after SIGTERM (not ready) before it "
                             "closes, as a preStop sleep gives a pod: time for the routers to "
                             "drop it from their tables")
    args = parser.parse_args(argv)
    return Settings(**vars(args))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def serve(settings: Settings) -> None:
    """Listen at once (so probes see 503 while loading), serve until SIGTERM/SIGINT, drain."""
    server = ModelServer(settings)
    runner = web.AppRunner(server.make_app(), access_log=None,
                           shutdown_timeout=settings.drain_timeout)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise SystemExit(f"cannot listen on {settings.host}:{settings.port}: {error}") from None
    host, port = runner.addresses[0][:2]
    url_host = f"[{host}]" if ":" in host else host

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The wall-clock moment it became ready, for measuring what a cold start costs after it.
    loading = asyncio.create_task(server.load_model(lambda: log(
        f"ready on http://{url_host}:{port} at {datetime.datetime.now(datetime.UTC).isoformat()}")))
    await stop.wait()

    loading.cancel()
    server.ready = False
    if settings.shutdown_delay:
        log(f"stopping in {settings.shutdown_delay:g} s: serving, not ready, meanwhile")
        await asyncio.sleep(settings.shutdown_delay)
    log(f"stopping: draining {server.inflight} in-flight request(s)")
    # Closes the listener first, then waits up to drain_timeout for in-flight handlers.
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(settings))


if __name__ == "__main__":
    main()
