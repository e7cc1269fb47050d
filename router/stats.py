"""Per-revision measurements: request counts, arrival rate, in-flight, latency, buffer waits,
and for streamed responses (an LLM's tokens) time to first byte, chunks per second and streams
in flight.

A response is a stream when its Content-Type is text/event-stream or NDJSON (what LLM servers
send tokens as). Its time to first byte (TTFT) runs from the request's arrival at the router
(buffer wait included: what the client waits for its first token) to the first byte of the
body; its chunk rate is measured between the first and the last body chunk, as the mean time
per chunk of each stream (its inverse is tokens per second when the server sends one token per
chunk, as vLLM and TGI do). Both are histograms on the latency buckets.

Everything here is updated on the request path, so updates are a few integer operations: no
allocation, no locks (one event loop per worker). Reading builds a *raw* snapshot whose numbers
add up across worker processes (counts per exact status, histogram buckets, smallest and largest
latency, rates over the 1/6/60 s windows: `merge`); `summarize` turns a merged raw snapshot into
the figures people and the autoscaler use. The documents' shapes are `policies.wire`'s models.

Windows are measured on the loop's monotonic clock, which is the same clock in every process
on the machine, so workers' windows cover the same seconds, up to when each took its snapshot.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from policies import wire

WINDOWS_S = (1, 6, 60)
"""Rate and in-flight windows reported: Knative's panic (6 s) and stable (60 s) windows, and 1 s."""

_RING = 64  # per-second slots kept; > the longest window

PROMETHEUS_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
)


def _latency_bounds() -> tuple[float, ...]:
    # ~5 % wide log buckets from 50 µs to 20 min, plus the Prometheus bounds so those are exact.
    fine = [50e-6 * 1.05**i for i in range(int(math.log(1200 / 50e-6) / math.log(1.05)) + 1)]
    return tuple(sorted(set(fine) | set(PROMETHEUS_BUCKETS_S)))


LATENCY_BOUNDS_S = _latency_bounds()
"""Upper bounds of the latency histogram's buckets; quantiles are within ~5 % of the truth."""


class RevisionStats:
    """Counters for one revision in one worker."""

    __slots__ = (
        "_area",
        "_arrivals",
        "_dispatched",
        "_last",
        "_sec",
        "buffer_wait_max_s",
        "buffer_wait_sum_s",
        "buffer_waits",
        "buffered",
        "by_code",
        "chunk_buckets",
        "chunk_time_sum_s",
        "inflight",
        "latency_buckets",
        "latency_count",
        "latency_max_s",
        "latency_min_s",
        "latency_sum_s",
        "stream_chunks",
        "stream_seconds",
        "streams",
        "ttft_buckets",
        "ttft_count",
        "ttft_max_s",
        "ttft_min_s",
        "ttft_sum_s",
    )

    def __init__(self, now: float) -> None:
        self.by_code = [0] * 600  # index = status (100-599; 499: the client left)
        self.inflight = 0
        self.buffered = 0
        self.latency_buckets = [0] * (len(LATENCY_BOUNDS_S) + 1)
        self.latency_sum_s = 0.0
        self.latency_count = 0
        self.latency_min_s = math.inf
        self.latency_max_s = 0.0
        self.buffer_waits = 0
        self.buffer_wait_sum_s = 0.0
        self.buffer_wait_max_s = 0.0
        self.streams = 0
        self.ttft_buckets = [0] * (len(LATENCY_BOUNDS_S) + 1)
        self.ttft_sum_s = 0.0
        self.ttft_count = 0
        self.ttft_min_s = math.inf
        self.ttft_max_s = 0.0
        self.chunk_buckets = [0] * (len(LATENCY_BOUNDS_S) + 1)
        self.chunk_time_sum_s = 0.0
        self.stream_chunks = 0
        self.stream_seconds = 0.0
        self._arrivals = [0] * _RING
        self._dispatched = [0] * _RING
        self._area = [0.0] * _RING
        self._sec = int(now)
        self._last = now

    def _advance(self, now: float) -> None:
        """Credit in-flight * elapsed time to the seconds it covers, opening new seconds."""
        sec = int(now)
        inflight = self.inflight
        if sec == self._sec:
            self._area[sec % _RING] += inflight * (now - self._last)
        else:
            self._area[self._sec % _RING] += inflight * (self._sec + 1 - self._last)
            for s in range(max(self._sec + 1, sec - _RING + 1), sec):
                self._area[s % _RING] = float(inflight)
                self._arrivals[s % _RING] = 0
                self._dispatched[s % _RING] = 0
            self._area[sec % _RING] = inflight * (now - sec)
            self._arrivals[sec % _RING] = 0
            self._dispatched[sec % _RING] = 0
            self._sec = sec
        self._last = now

    def arrived(self, now: float) -> None:
        """A request chose this revision (it may still wait in the buffer)."""
        self._advance(now)
        self._arrivals[self._sec % _RING] += 1

    def assigned(self, now: float, delta: int) -> None:
        """A request got (+1) or gave back (-1) an endpoint: in-flight at the replicas."""
        self._advance(now)
        self.inflight += delta
        if delta > 0:
            self._dispatched[self._sec % _RING] += delta

    def answered(self, status: int, latency_s: float) -> None:
        """A request ended with this status (100-599; 499: the client left) after latency_s."""
        self.by_code[status] += 1
        self.latency_buckets[bisect.bisect_left(LATENCY_BOUNDS_S, latency_s)] += 1
        self.latency_sum_s += latency_s
        self.latency_count += 1
        if latency_s > self.latency_max_s:
            self.latency_max_s = latency_s
        if latency_s < self.latency_min_s:
            self.latency_min_s = latency_s

    def first_byte(self, ttft_s: float) -> None:
        """A streamed response's first body byte arrived, ttft_s after the request did."""
        self.ttft_buckets[bisect.bisect_left(LATENCY_BOUNDS_S, ttft_s)] += 1
        self.ttft_sum_s += ttft_s
        self.ttft_count += 1
        if ttft_s > self.ttft_max_s:
            self.ttft_max_s = ttft_s
        if ttft_s < self.ttft_min_s:
            self.ttft_min_s = ttft_s

    def stream_ended(self, chunks: int, streaming_s: float) -> None:
        """A stream ended after ``chunks`` body chunks, ``streaming_s`` from its first to its
        last; each chunk after the first took streaming_s / (chunks - 1) on average."""
        self.streams -= 1
        if chunks > 1:
            per_chunk_s = streaming_s / (chunks - 1)
            self.chunk_buckets[bisect.bisect_left(LATENCY_BOUNDS_S, per_chunk_s)] += 1
            self.chunk_time_sum_s += per_chunk_s
            self.stream_chunks += chunks - 1
            self.stream_seconds += streaming_s

    def waited(self, wait_s: float) -> None:
        """A request left the buffer for an endpoint after waiting this long."""
        self.buffer_waits += 1
        self.buffer_wait_sum_s += wait_s
        if wait_s > self.buffer_wait_max_s:
            self.buffer_wait_max_s = wait_s

    def raw(self, now: float, backpressured: int = 0) -> dict[str, Any]:
        """Additive snapshot (`wire.RawCounters`); see `merge` and `summarize`. The worker
        counts `backpressured` (requests whose replica socket a slow client paused)."""
        self._advance(now)
        cur = self._sec % _RING
        windows = {}
        for w in WINDOWS_S:
            # The last w whole seconds, [sec - w, sec), the current partial one left out:
            # clients released together (a cold start's backlog) arrive in bursts, and a
            # count over 1 + a fraction of a second read 40 requests/s as 20 to 80 by phase.
            slots = [(cur - i) % _RING for i in range(1, w + 1)]
            windows[str(w)] = {
                "seconds": float(w),
                "arrivals": sum(self._arrivals[s] for s in slots),
                "dispatched": sum(self._dispatched[s] for s in slots),
                "inflight_area": sum(self._area[s] for s in slots),
            }
        by_code = {str(code): n for code, n in enumerate(self.by_code) if n}
        return {
            "by_class": by_class(by_code),
            "by_code": by_code,
            "inflight": self.inflight,
            "buffered": self.buffered,
            "backpressured": backpressured,
            "windows": windows,
            "latency_buckets": list(self.latency_buckets),
            "latency_sum_s": self.latency_sum_s,
            "latency_count": self.latency_count,
            "latency_min_s": self.latency_min_s if self.latency_count else None,
            "latency_max_s": self.latency_max_s if self.latency_count else None,
            "buffer_waits": self.buffer_waits,
            "buffer_wait_sum_s": self.buffer_wait_sum_s,
            "buffer_wait_max_s": self.buffer_wait_max_s,
            "streams": self.streams,
            "ttft_buckets": list(self.ttft_buckets),
            "ttft_sum_s": self.ttft_sum_s,
            "ttft_count": self.ttft_count,
            "ttft_min_s": self.ttft_min_s if self.ttft_count else None,
            "ttft_max_s": self.ttft_max_s if self.ttft_count else None,
            "chunk_buckets": list(self.chunk_buckets),
            "chunk_time_sum_s": self.chunk_time_sum_s,
            "stream_chunks": self.stream_chunks,
            "stream_seconds": self.stream_seconds,
        }


def by_class(by_code: dict[str, int]) -> list[int]:
    """Counts per status class: 1xx to 5xx at their index, 499 (the client left) at index 0."""
    classes = [0] * wire.STATUS_CLASSES
    for code, count in by_code.items():
        classes[0 if code == "499" else int(code) // 100] += count
    return classes


def merge(raws: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the raw snapshots of the same revision from several workers.

    Counts, histogram buckets and in-flight add up. Windows are rates: each worker's window ends
    when it took its snapshot, so two workers' windows differ by milliseconds, or by a whole
    second when the snapshots straddle a second. Each worker's arrivals and in-flight area are
    scaled to the longest window before they are added, so the merged rate is the sum of the
    workers' rates (adding raw areas over unequal windows would undercount the shorter one).
    """
    by_code: dict[str, int] = {}
    for raw in raws:
        for code, count in raw["by_code"].items():
            by_code[code] = by_code.get(code, 0) + count
    windows = {}
    for key in raws[0]["windows"]:
        parts = [raw["windows"][key] for raw in raws]
        seconds = max(w["seconds"] for w in parts)
        windows[key] = {
            "seconds": seconds,
            "arrivals": sum(w["arrivals"] * seconds / w["seconds"] for w in parts if w["seconds"]),
            "dispatched": sum(
                w["dispatched"] * seconds / w["seconds"] for w in parts if w["seconds"]),
            "inflight_area": sum(
                w["inflight_area"] * seconds / w["seconds"] for w in parts if w["seconds"]),
        }
    mins = [raw["latency_min_s"] for raw in raws if raw["latency_min_s"] is not None]
    maxes = [raw["latency_max_s"] for raw in raws if raw["latency_max_s"] is not None]
    ttft_mins = [raw["ttft_min_s"] for raw in raws if raw["ttft_min_s"] is not None]
    ttft_maxes = [raw["ttft_max_s"] for raw in raws if raw["ttft_max_s"] is not None]
    return {
        "by_class": by_class(by_code),
        "by_code": by_code,
        "windows": windows,
        "latency_buckets": [sum(b) for b in zip(*(r["latency_buckets"] for r in raws),
                                                 strict=True)],
        "latency_min_s": min(mins) if mins else None,
        "latency_max_s": max(maxes) if maxes else None,
        **{key: [sum(b) for b in zip(*(r[key] for r in raws), strict=True)]
           for key in ("ttft_buckets", "chunk_buckets")},
        "ttft_min_s": min(ttft_mins) if ttft_mins else None,
        "ttft_max_s": max(ttft_maxes) if ttft_maxes else None,
        **{key: sum(raw[key] for raw in raws)
           for key in ("inflight", "buffered", "backpressured", "latency_sum_s", "latency_count",
                       "buffer_waits", "buffer_wait_sum_s", "streams", "ttft_sum_s",
                       "ttft_count", "chunk_time_sum_s", "stream_chunks", "stream_seconds")},
        "buffer_wait_max_s": max(raw["buffer_wait_max_s"] for raw in raws),
    }


def quantile(buckets: list[int], q: float, lowest: float | None = None,
             highest: float | None = None) -> float | None:
    """The q-quantile (seconds) from histogram buckets, interpolated inside its bucket and
    clamped to the smallest and largest observation when they are known: interpolation alone
    can put p99 of one 3.95 s request at 4.1 s, above anything that happened."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    value = LATENCY_BOUNDS_S[-1]
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            lower = LATENCY_BOUNDS_S[i - 1] if i > 0 else 0.0
            upper = LATENCY_BOUNDS_S[i] if i < len(LATENCY_BOUNDS_S) else lower
            value = lower + (upper - lower) * (rank - seen) / count
            break
        seen += count
    if highest is not None:
        value = min(value, highest)
    if lowest is not None:
        value = max(value, lowest)
    return value


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """The public per-revision figures of GET /stats."""
    by_class_ = raw["by_class"]
    buckets = raw["latency_buckets"]
    windows = raw["windows"]
    lowest, highest = raw["latency_min_s"], raw["latency_max_s"]

    def per_window(value: str) -> dict[str, float]:
        return {f"{k}s": round(w[value] / w["seconds"], 3) if w["seconds"] > 0 else 0.0
                for k, w in windows.items()}

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds * 1000, 3)

    waits = raw["buffer_waits"]
    chunk_buckets = raw["chunk_buckets"]
    streamed = raw["stream_seconds"]
    return {
        "requests": {
            "total": sum(by_class_),
            **{f"{c}xx": by_class_[c] for c in range(1, wire.STATUS_CLASSES)},
            "499": by_class_[0],
        },
        "rps": per_window("arrivals"),
        "inflight": raw["inflight"],
        "inflight_avg": per_window("inflight_area"),
        "dispatched": per_window("dispatched"),
        "latency_ms": {**{f"p{round(q * 100)}": ms(quantile(buckets, q, lowest, highest))
                          for q in (0.5, 0.9, 0.99)},
                       "min": ms(lowest), "max": ms(highest), "count": raw["latency_count"]},
        "buffered": raw["buffered"],
        "cold_start_waits": {
            "count": waits,
            "mean_s": round(raw["buffer_wait_sum_s"] / waits, 4) if waits else None,
            "max_s": round(raw["buffer_wait_max_s"], 4),
        },
        "streams": {
            "inflight": raw["streams"],
            "ttft_ms": {**{f"p{round(q * 100)}": ms(quantile(raw["ttft_buckets"], q,
                                                             raw["ttft_min_s"],
                                                             raw["ttft_max_s"]))
                           for q in (0.5, 0.9, 0.99)},
                        "min": ms(raw["ttft_min_s"]), "max": ms(raw["ttft_max_s"]),
                        "count": raw["ttft_count"]},
            "chunk_ms": {f"p{round(q * 100)}": ms(quantile(chunk_buckets, q))
                         for q in (0.5, 0.9, 0.99)},
            "chunks_per_s": round(raw["stream_chunks"] / streamed, 3) if streamed > 0 else None,
        },
    }
