"""What the routers and the controller say to each other, as models both ends validate.

- The route table the controller PUTs to ``/routes``: :class:`policies.routing.RouteTable`.
- A stats snapshot, ``GET /stats`` (``?raw=1`` adds the additive counters): :class:`Stats`.
- A poke, one line of ``GET /events``: :class:`Poke`.

The router builds these documents and the controller parses them with the models here, so a
field renamed on one side fails a test on the other instead of reading as zero. Stats and pokes
ignore fields they do not know (a newer router may report more); the route table forbids them
(a typo in a table must not be dropped silently).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

STATUS_CLASSES = 6
"""``by_class`` has one slot per status class: 1xx to 5xx at their index, and 499 (the client
left) at index 0."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Window(_Message):
    """Additive totals over one trailing window (1, 6 or 60 s)."""

    seconds: float = Field(ge=0, description=(
        "The window's length: its whole seconds up to the current one, which is left out."))
    arrivals: float = Field(ge=0, description=(
        "Requests that arrived in it. A whole number from one worker; merged over workers whose "
        "windows end a few milliseconds apart, each worker's count is scaled to the longest "
        "window first, so rates add up exactly and the sum may be fractional."))
    inflight_area: float = Field(ge=0, description=(
        "Requests in flight times seconds, over it (scaled like arrivals when merged)."))
    dispatched: float = Field(0.0, ge=0, description=(
        "Requests sent to a replica in it, retries and released waiters included (scaled like "
        "arrivals when merged)."))


class RawCounters(_Message):
    """One revision's counters, additive over workers and routers (``stats.merge``)."""

    by_class: list[int] = Field(min_length=STATUS_CLASSES, description=(
        "Requests answered per status class; index 0 holds 499 (the client left)."))
    by_code: dict[str, int] = Field(default_factory=dict, description=(
        "Requests answered per exact status ('200', '500', '503'; '499': the client left), "
        "only the statuses seen. Additive like by_class, which it refines: a 503 the router "
        "answered (buffer full, shutting down) is not a 500 the replica answered."))
    inflight: int = Field(ge=0, description="Requests at a replica now.")
    buffered: int = Field(ge=0, description="Requests waiting for an endpoint now.")
    backpressured: int = Field(0, ge=0, description=(
        "Requests whose replica socket is paused now because their client reads slower than "
        "the replica sends (a gauge, like inflight)."))
    windows: dict[str, Window]
    latency_buckets: list[int] = Field(description=(
        "Requests per latency bucket; the bounds are Stats.latency_bounds_s, the last bucket "
        "is everything above the last bound."))
    latency_sum_s: float = Field(ge=0)
    latency_count: int = Field(ge=0)
    latency_min_s: float | None = Field(None, ge=0, description=(
        "Smallest latency observed (seconds); None before the first answer. Merged as the "
        "smallest of the workers'. Quantiles are clamped to [min, max]."))
    latency_max_s: float | None = Field(None, ge=0, description=(
        "Largest latency observed (seconds); None before the first answer. Merged as the "
        "largest of the workers'."))
    buffer_waits: int = Field(ge=0)
    buffer_wait_sum_s: float = Field(ge=0)
    buffer_wait_max_s: float = Field(ge=0)
    streams: int = Field(0, ge=0, description=(
        "Streamed responses (text/event-stream, NDJSON) in flight now (a gauge)."))
    ttft_buckets: list[int] = Field(default_factory=list, description=(
        "Streamed responses per time-to-first-byte bucket (the latency bounds), from arrival "
        "at the router to the body's first byte. Empty from a router that predates them."))
    ttft_sum_s: float = Field(0.0, ge=0)
    ttft_count: int = Field(0, ge=0)
    ttft_min_s: float | None = Field(None, ge=0)
    ttft_max_s: float | None = Field(None, ge=0)
    chunk_buckets: list[int] = Field(default_factory=list, description=(
        "Finished streams per mean time between body chunks (the latency bounds): one token's "
        "time when a server sends a token per chunk."))
    chunk_time_sum_s: float = Field(0.0, ge=0, description=(
        "Sum of the finished streams' mean times between chunks (the histogram's sum)."))
    stream_chunks: int = Field(0, ge=0, description=(
        "Body chunks of finished streams after each one's first; over stream_seconds, chunks "
        "(tokens) per second while streaming."))
    stream_seconds: float = Field(0.0, ge=0, description=(
        "Seconds finished streams spent from their first chunk to their last."))


class Latency(_Message):
    """Milliseconds since the router started; quantiles never fall outside [min, max]."""

    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    min: float | None = None
    max: float | None = None
    count: int = 0


class ColdStartWaits(_Message):
    """Requests that waited in the buffer for an endpoint (at zero, or behind a limit)."""

    count: int = Field(0, ge=0)
    mean_s: float | None = Field(None, ge=0, description="None before the first wait.")
    max_s: float = Field(0.0, ge=0)


class TimeQuantiles(_Message):
    """Milliseconds; None before the first observation."""

    p50: float | None = None
    p90: float | None = None
    p99: float | None = None


class StreamTimes(TimeQuantiles):
    min: float | None = None
    max: float | None = None
    count: int = 0


class Streams(_Message):
    """Streamed responses (an LLM's tokens), merged over the router's workers."""

    inflight: int = Field(0, ge=0, description="Streams in flight now.")
    ttft_ms: StreamTimes = Field(StreamTimes(), description=(
        "Time to first byte since the router started, from arrival at the router (buffer "
        "wait included) to the body's first byte."))
    chunk_ms: TimeQuantiles = Field(TimeQuantiles(), description=(
        "Mean time between body chunks, one value per finished stream (a token's time when "
        "each chunk is a token)."))
    chunks_per_s: float | None = Field(None, ge=0, description=(
        "Chunks (tokens) per second while streaming, over every finished stream."))


class RevisionStats(_Message):
    """One revision's figures in ``GET /stats``, merged over the router's workers."""

    service: str
    revision: str
    weight: int
    endpoints: int = Field(ge=0, description="Ready endpoints in the router's table.")
    requests: dict[str, int] = Field(description=(
        "Answered requests: 'total', '1xx' to '5xx' and '499' (the client left)."))
    rps: dict[str, float] = Field(description="Arrivals per second over '1s', '6s' and '60s'.")
    inflight: int = Field(ge=0)
    inflight_avg: dict[str, float] = Field(description=(
        "Mean requests in flight at replicas over '1s', '6s' and '60s'."))
    dispatched: dict[str, float] | None = Field(None, description=(
        "Requests sent to replicas per second over '1s', '6s' and '60s': with inflight_avg over "
        "the same seconds, the time a request spends at a replica (Little's law). None from a "
        "router that does not count them."))
    latency_ms: Latency
    buffered: int = Field(ge=0)
    cold_start_waits: ColdStartWaits = ColdStartWaits()
    streams: Streams = Streams()
    raw: RawCounters | None = Field(None, description="Only with ?raw=1.")


class WorkerState(_Message):
    """One data-plane process of a router (``--workers N``)."""

    generation: int = Field(ge=0, description=(
        "Route tables it has applied, the one it started with included: the same in every "
        "worker once a PUT has reached them all."))
    requests: int = Field(ge=0, description=(
        "Requests it answered for the revisions in its current table."))


class Stats(_Message):
    """``GET /stats``: every revision the router serves, in table order."""

    revisions: list[RevisionStats]
    latency_bounds_s: list[float] | None = Field(None, description=(
        "Upper bounds of the raw latency buckets (seconds); only with ?raw=1."))
    workers: list[WorkerState] | None = Field(None, description=(
        "Each worker process, in a fixed order; only with ?raw=1."))


class Poke(_Message):
    """A revision with no endpoint got its first buffered request: start a replica now."""

    type: Literal["poke"] = "poke"
    service: str
    revision: str
    buffered: int = Field(1, ge=0, description="Requests buffered for it when it fired.")
    time: float = Field(description="Wall-clock seconds (Unix time) when the router fired it.")
