"""The admin API: routes, stats, metrics, poke events and health, on its own listener.

Reads are open (the listener is loopback by default); writes need ``Authorization: Bearer
$SLUICE_ADMIN_TOKEN`` and are refused when no token is configured. A route document is
validated before anything changes: an invalid one gets 400 naming each field and reason, and
the table that was serving keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pydantic
from aiohttp import web

from policies import routing, validation
from router import control as control_
from router import stats

CONTROL = web.AppKey("control", control_.Control)
TOKEN = web.AppKey("token", str)
STREAMS = web.AppKey("streams", set)

MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
EVENT_QUEUE = 1000
"""Poke events buffered per subscriber; a subscriber that falls further behind loses events."""
HEARTBEAT_S = 15.0


def make_app(control: control_.Control, token: str | None) -> web.Application:
    app = web.Application(client_max_size=MAX_DOCUMENT_BYTES)
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


async def put_routes(request: web.Request) -> web.Response:
    token = request.app[TOKEN]
    if not token:
        return _error(403, "route writes are disabled: start the router with SLUICE_ADMIN_TOKEN")
    offered = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if not hmac.compare_digest(offered.encode(), token.encode()):
        return _error(401, "a valid bearer token is required")
    try:
        document = routing.load(await request.json())
    except json.JSONDecodeError as error:
        return _error(400, f"the body is not JSON: {error}")
    except pydantic.ValidationError as error:
        return web.json_response(
            {"error": "invalid route table; the previous one keeps serving",
             "problems": validation.problems(error)}, status=400)
    await request.app[CONTROL].apply(document)
    return web.json_response({"applied": True})


async def get_stats(request: web.Request) -> web.Response:
    """Per revision figures; ``?raw=1`` adds the additive counters and latency histogram
    (bucket bounds in ``latency_bounds_s``) that canary analysis compares window by window."""
    revisions = await _revisions(request.app[CONTROL])
    body: dict[str, Any] = {"revisions": revisions}
    if request.query.get("raw") == "1":
        body["latency_bounds_s"] = stats.LATENCY_BOUNDS_S
    else:
        for revision in revisions:
            del revision["raw"]
    return web.json_response(body)


async def _revisions(control: control_.Control) -> list[dict[str, Any]]:
    """Per revision (in table order): weight, endpoints and merged, summarized stats."""
    raws: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    endpoints: dict[tuple[str, str], int] = {}
    for worker in await control.raw_stats():
        for entry in worker["revisions"]:
            key = (entry["service"], entry["revision"])
            raws[key].append(entry["raw"])
            endpoints[key] = entry["endpoints"]
    out = []
    for service, spec in control.document().services.items():
        for revision in spec.revisions:
            key = (service, revision.name)
            if key in raws:
                merged = stats.merge(raws[key])
                out.append({"service": service, "revision": revision.name,
                            "weight": revision.weight, "endpoints": endpoints[key],
                            "raw": merged, **stats.summarize(merged)})
    return out


async def get_metrics(request: web.Request) -> web.Response:
    lines = [
        "# HELP sluice_router_requests_total Requests answered by status class (499: client left).",
        "# TYPE sluice_router_requests_total counter",
    ]
    revisions = await _revisions(request.app[CONTROL])
    for r in revisions:
        labels = f'service="{r["service"]}",revision="{r["revision"]}"'
        for code, count in r["requests"].items():
            if code != "total":
                lines.append(f'sluice_router_requests_total{{{labels},code="{code}"}} {count}')
    lines += ["# HELP sluice_router_request_duration_seconds Time from arrival to last byte.",
              "# TYPE sluice_router_request_duration_seconds histogram"]
    for r in revisions:
        labels = f'service="{r["service"]}",revision="{r["revision"]}"'
        raw = r["raw"]
        cumulative = 0
        bounds = iter(stats.PROMETHEUS_BUCKETS_S)
        bound = next(bounds, None)
        for upper, count in zip(stats.LATENCY_BOUNDS_S, raw["latency_buckets"], strict=False):
            cumulative += count
            if bound is not None and upper == bound:
                lines.append(f'sluice_router_request_duration_seconds_bucket{{{labels},'
                             f'le="{bound}"}} {cumulative}')
                bound = next(bounds, None)
        lines += [
            f'sluice_router_request_duration_seconds_bucket{{{labels},le="+Inf"}} '
            f'{raw["latency_count"]}',
            f"sluice_router_request_duration_seconds_sum{{{labels}}} {raw['latency_sum_s']}",
            f"sluice_router_request_duration_seconds_count{{{labels}}} {raw['latency_count']}",
        ]
    series: list[tuple[str, str, str, Callable[[dict[str, Any]], Any]]] = [
        ("inflight_requests", "gauge", "Requests at a replica now.", lambda r: r["inflight"]),
        ("buffered_requests", "gauge", "Requests waiting for an endpoint now.",
         lambda r: r["buffered"]),
        ("endpoints", "gauge", "Ready endpoints in the route table.", lambda r: r["endpoints"]),
        ("weight", "gauge", "Traffic weight in the route table.", lambda r: r["weight"]),
        ("buffer_waits_total", "counter", "Requests that waited for an endpoint.",
         lambda r: r["raw"]["buffer_waits"]),
        ("buffer_wait_seconds_total", "counter", "Time requests waited for an endpoint.",
         lambda r: r["raw"]["buffer_wait_sum_s"]),
    ]
    for name, kind, help_, value in series:
        lines += [f"# HELP sluice_router_{name} {help_}", f"# TYPE sluice_router_{name} {kind}"]
        lines += [f'sluice_router_{name}{{service="{r["service"]}",revision="{r["revision"]}"}} '
                  f"{value(r)}" for r in revisions]
    return web.Response(text="\n".join(lines) + "\n",
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def get_events(request: web.Request) -> web.StreamResponse:
    """Poke events as newline-delimited JSON, as they happen; a blank line every 15 s."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(EVENT_QUEUE)

    def listener(event: dict[str, Any]) -> None:
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
            await response.write(json.dumps(event).encode() + b"\n")
    except asyncio.CancelledError:
        return response
    finally:
        request.app[STREAMS].discard(task)
        unsubscribe()


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)
