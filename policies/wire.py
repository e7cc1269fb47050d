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

    seconds: float = Field(ge=0, description="The window's length, its current second included.")
    arrivals: int = Field(ge=0, description="Requests that arrived in it.")
    inflight_area: float = Field(ge=0, description="Requests in flight times seconds, over it.")


class RawCounters(_Message):
    """One revision's counters, additive over workers and routers (``stats.merge``)."""

    by_class: list[int] = Field(min_length=STATUS_CLASSES, description=(
        "Requests answered per status class; index 0 holds 499 (the client left)."))
    inflight: int = Field(ge=0, description="Requests at a replica now.")
    buffered: int = Field(ge=0, description="Requests waiting for an endpoint now.")
    windows: dict[str, Window]
    latency_buckets: list[int] = Field(description=(
        "Requests per latency bucket; the bounds are Stats.latency_bounds_s, the last bucket "
        "is everything above the last bound."))
    latency_sum_s: float = Field(ge=0)
    latency_count: int = Field(ge=0)
    buffer_waits: int = Field(ge=0)
    buffer_wait_sum_s: float = Field(ge=0)
    buffer_wait_max_s: float = Field(ge=0)


class Latency(_Message):
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    count: int = 0


class RevisionStats(_Message):
    """One revision's figures in ``GET /stats``, merged over the router's workers."""

    service: str
    revision: str
    weight: int
    endpoints: int = Field(ge=0, description="Ready endpoints in the router's table.")
    requests: dict[str, int] = Field(description=(
        "Answered requests: 'total', '1xx'…'5xx' and '499'."))
    rps: dict[str, float] = Field(description="Arrivals per second over '1s', '6s' and '60s'.")
    inflight: int = Field(ge=0)
    inflight_avg: dict[str, float] = Field(description=(
        "Mean requests in flight at replicas over '1s', '6s' and '60s'."))
    latency_ms: Latency
    buffered: int = Field(ge=0)
    raw: RawCounters | None = Field(None, description="Only with ?raw=1.")


class Stats(_Message):
    """``GET /stats``: every revision the router serves, in table order."""

    revisions: list[RevisionStats]
    latency_bounds_s: list[float] | None = Field(None, description=(
        "Upper bounds of the raw latency buckets (seconds); only with ?raw=1."))


class Poke(_Message):
    """A revision with no endpoint got its first buffered request: start a replica now."""

    type: Literal["poke"] = "poke"
    service: str
    revision: str
    buffered: int = Field(1, ge=0, description="Requests buffered for it when it fired.")
    time: float = Field(description="Wall-clock seconds (Unix time) when the router fired it.")
