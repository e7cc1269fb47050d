"""The admin API: routes, stats, metrics, poke events and health, on its own listener.

Reads are open (the listener is loopback by default); writes need ``Authorization: Bearer
$SLUICE_ADMIN_TOKEN`` (that scheme, that token) and are refused when no token is configured.
The documents are `policies.wire`'s models, the contract with the controller. A route document is
validated before anything changes: an invalid one gets 400 naming each field and reason, and
the table that was serving keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
from aiohttp import web

from policies import routing, validation, wire
from router import control as control_
from router import stats

CONTROL = web.AppKey("control", control_.Control)
TOKEN = web.AppKey("token", str)
STREAMS = web.AppKey("streams", set)

MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
EVENT_QUEUE = 1000
"""Poke events buffered per subscriber; a subscriber that falls further behind loses events."""
HEARTBEAT_S = 15.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def workers_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except control_.WorkerUnavailable as error:
        return web.json_response({"error": str(error)}, status=503, headers={"Retry-After": "1"})


def make_app(control: control_.Control, token: str | None) -> web.Application:
    app = web.Application(client_max_size=MAX_DOCUMENT_BYTES, middlewares=[workers_unavailable])
    app[CONTROL] = control
    app[TOKEN] = token or ""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/routes", get_routes)
    app.router.add_put("/routes", put_routes)
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/events", get_events)
    _track_streams(app)
    return app


def _track_streams(app: web.Application) -> None:
    """End open /events streams at shutdown; they would otherwise hold it for a heartbeat."""
    app[STREAMS] = set()

    async def end_streams(app: web.Application) -> None:
        for task in app[STREAMS]:
            task.cancel()

    app.on_shutdown.append(end_streams)


def worker_app(control: control_.LocalControl) -> web.Application:
    """The internal API a worker process serves on its private unix socket."""
    app = web.Application(client_max_size=MAX_DOCUMENT_BYTES)
    app[CONTROL] = control

    async def put(request: web.Request) -> web.Response:
        control.worker.apply(routing.load(await request.json()))
        return web.json_response({"generation": control.worker.generation})

    async def raw(request: web.Request) -> web.Response:
        return web.json_response(control.worker.raw_stats())

    app.router.add_put("/routes", put)
    app.router.add_get("/raw", raw)
    app.router.add_get("/events", get_events)
    _track_streams(app)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready = request.app[CONTROL].ready()
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def get_routes(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROL].document().model_dump(mode="json"))


def authorized(header: str, token: str) -> bool:
    """True for ``Bearer <token>`` exactly (the scheme is case-insensitive, RFC 9110 11.1).

    aiohttp decodes header bytes that are not UTF-8 as surrogates; they are compared as the
    bytes that came (a mismatch), not re-encoded strictly (a 500)."""
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        return False
    offered = credentials.strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(offered, token.encode())


async def put_routes(request: web.Request) -> web.Response:
    token = request.app[TOKEN]
    if not token:
        return _error(403, "route writes are disabled: start the router with SLUICE_ADMIN_TOKEN")
    if not authorized(request.headers.get("Authorization", ""), token):
        return _error(401, "a valid bearer token is required: Authorization: Bearer <token>")
    try:
        document = routing.load(await request.json())
    except json.JSONDecodeError as error:
        return _error(400, f"the body is not JSON: {error}")
    except UnicodeDecodeError:
        return _error(400, "the body is not UTF-8")
    except pydantic.ValidationError as error:
        return web.json_response(
            {"error": "invalid route table; the previous one keeps serving",
             "problems": validation.problems(error)}, status=400)
    await request.app[CONTROL].apply(document)
    return web.json_response({"applied": True})


async def get_stats(request: web.Request) -> web.Response:
    """Per revision figures (`wire.Stats`); ``?raw=1`` adds the additive counters and latency
    histogram (bucket bounds in ``latency_bounds_s``) that canary analysis compares window by
    window."""
    snapshot = await stats_snapshot(request.app[CONTROL])
    if request.query.get("raw") == "1":
        return web.json_response(snapshot.model_dump(mode="json"))
    return web.json_response(snapshot.model_dump(mode="json", exclude={
        "latency_bounds_s": True, "workers": True, "revisions": {"__all__": {"raw"}}}))


async def stats_snapshot(control: control_.Control) -> wire.Stats:
    """Every revision in table order: weight, endpoints, and its stats merged over workers."""
    raws: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    endpoints: dict[tuple[str, str], int] = {}
    workers = []
    for worker in await control.raw_stats():
        for entry in worker["revisions"]:
            key = (entry["service"], entry["revision"])
            raws[key].append(entry["raw"])
            endpoints[key] = entry["endpoints"]
        workers.append(wire.WorkerState(generation=worker["generation"], requests=sum(
            sum(entry["raw"]["by_code"].values()) for entry in worker["revisions"])))
    revisions = []
    for service, spec in control.document().services.items():
        for revision in spec.revisions:
            key = (service, revision.name)
            if key in raws:
                merged = stats.merge(raws[key])
                revisions.append(wire.RevisionStats.model_validate({
                    "service": service, "revision": revision.name, "weight": revision.weight,
                    "endpoints": endpoints[key], "raw": merged, **stats.summarize(merged)}))
    return wire.Stats(revisions=revisions, latency_bounds_s=list(stats.LATENCY_BOUNDS_S),
                      workers=workers)


async def get_metrics(request: web.Request) -> web.Response:
    snapshot = await stats_snapshot(request.app[CONTROL])
    revisions = [(f'service="{r.service}",revision="{r.revision}"', r, r.raw)
                 for r in snapshot.revisions if r.raw is not None]
    lines = [
        "# HELP sluice_router_requests_total Requests answered, by exact status "
        "(499: the client left).",
        "# TYPE sluice_router_requests_total counter",
    ]
    for labels, _, raw in revisions:
        lines += [f'sluice_router_requests_total{{{labels},code="{code}"}} {count}'
                  for code, count in sorted(raw.by_code.items())]
    histograms: list[tuple[str, str, Callable[[wire.RawCounters], tuple[list[int], float]]]] = [
        ("request_duration_seconds", "Time from arrival to last byte.",
         lambda raw: (raw.latency_buckets, raw.latency_sum_s)),
        ("time_to_first_byte_seconds", "Streamed responses (SSE, NDJSON): time from arrival "
         "to the body's first byte (an LLM's first token).",
         lambda raw: (raw.ttft_buckets, raw.ttft_sum_s)),
        ("time_per_chunk_seconds", "Finished streams: mean time between body chunks (a "
         "token's time when each chunk is a token).",
         lambda raw: (raw.chunk_buckets, raw.chunk_time_sum_s)),
    ]
    for name, help_, histogram in histograms:
        lines += [f"# HELP sluice_router_{name} {help_}",
                  f"# TYPE sluice_router_{name} histogram"]
        for labels, _, raw in revisions:
            buckets, total = histogram(raw)
            lines += _histogram(f"sluice_router_{name}", labels, buckets, total)
    series: list[tuple[str, str, str, Callable[[wire.RevisionStats, wire.RawCounters], Any]]] = [
        ("inflight_requests", "gauge", "Requests at a replica now.", lambda r, _: r.inflight),
        ("buffered_requests", "gauge", "Requests waiting for an endpoint now.",
         lambda r, _: r.buffered),
        ("backpressured_requests", "gauge",
         "Requests whose replica socket is paused now because the client reads slower.",
         lambda _, raw: raw.backpressured),
        ("endpoints", "gauge", "Ready endpoints in the route table.", lambda r, _: r.endpoints),
        ("weight", "gauge", "Traffic weight in the route table.", lambda r, _: r.weight),
        ("buffer_waits_total", "counter", "Requests that waited for an endpoint.",
         lambda _, raw: raw.buffer_waits),
        ("buffer_wait_seconds_total", "counter", "Time requests waited for an endpoint.",
         lambda _, raw: raw.buffer_wait_sum_s),
        ("streams_inflight", "gauge", "Streamed responses (SSE, NDJSON) in flight now.",
         lambda _, raw: raw.streams),
        ("stream_chunks_total", "counter", "Body chunks of finished streams after each one's "
         "first; rate() of it over rate(stream_seconds_total) is chunks (tokens) per second.",
         lambda _, raw: raw.stream_chunks),
        ("stream_seconds_total", "counter",
         "Seconds finished streams spent from their first chunk to their last.",
         lambda _, raw: raw.stream_seconds),
    ]
    for name, kind, help_, value in series:
        lines += [f"# HELP sluice_router_{name} {help_}", f"# TYPE sluice_router_{name} {kind}"]
        lines += [f"sluice_router_{name}{{{labels}}} {value(r, raw)}"
                  for labels, r, raw in revisions]
    lines += ["# HELP sluice_router_event_subscribers Open GET /events streams (pokes reach "
              "these).", "# TYPE sluice_router_event_subscribers gauge",
              f"sluice_router_event_subscribers {len(request.app[STREAMS])}"]
    return web.Response(text="\n".join(lines) + "\n",
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def _histogram(name: str, labels: str, buckets: list[int], total: float) -> list[str]:
    """A Prometheus histogram from the fine buckets, at the Prometheus bounds (which are among
    them, so the counts are exact)."""
    lines, cumulative = [], 0
    bounds = iter(stats.PROMETHEUS_BUCKETS_S)
    bound = next(bounds, None)
    for upper, count in zip(stats.LATENCY_BOUNDS_S, buckets, strict=False):
        cumulative += count
        if bound is not None and upper == bound:
            lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
            bound = next(bounds, None)
    count = sum(buckets)
    return [*lines, f'{name}_bucket{{{labels},le="+Inf"}} {count}',
            f"{name}_sum{{{labels}}} {total}", f"{name}_count{{{labels}}} {count}"]


async def get_events(request: web.Request) -> web.StreamResponse:
    """Poke events (`wire.Poke`) as newline-delimited JSON, as they happen; a blank line every
    15 s. A subscriber that left is noticed at the next write and dropped without a trace."""
    queue: asyncio.Queue[wire.Poke] = asyncio.Queue(EVENT_QUEUE)

    def listener(event: wire.Poke) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(event)

    unsubscribe = request.app[CONTROL].subscribe(listener)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    task = asyncio.current_task()
    request.app[STREAMS].add(task)
    try:
        await response.prepare(request)
        await response.write(b"\n")  # headers out now: a subscriber knows it is subscribed
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                await response.write(b"\n")
                continue
            await response.write(event.model_dump_json().encode() + b"\n")
    except (asyncio.CancelledError, ConnectionError):  # shutting down, or the subscriber left
        return response
    finally:
        request.app[STREAMS].discard(task)
        unsubscribe()


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)
