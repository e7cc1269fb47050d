"""Per-revision measurements: request counts, arrival rate, in-flight, latency, buffer waits.

Everything here is updated on the request path, so updates are a few integer operations: no
allocation, no locks (one event loop per worker). Reading builds a *raw* snapshot whose numbers
add up across worker processes (counts, histogram buckets, in-flight areas over the same
windows); `summarize` turns a merged raw snapshot into the figures people and the autoscaler use.

Windows are measured on the loop's monotonic clock, which is the same clock in every process
on the machine, so workers' windows line up and can be summed.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

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
        "_last",
        "_sec",
        "buffer_wait_max_s",
        "buffer_wait_sum_s",
        "buffer_waits",
        "buffered",
        "by_class",
        "inflight",
        "latency_buckets",
        "latency_count",
        "latency_sum_s",
    )

    def __init__(self, now: float) -> None:
        self.by_class = [0] * 7  # index = status // 100; slot 0 holds 499 (client gone)
        self.inflight = 0
        self.buffered = 0
        self.latency_buckets = [0] * (len(LATENCY_BOUNDS_S) + 1)
        self.latency_sum_s = 0.0
        self.latency_count = 0
        self.buffer_waits = 0
        self.buffer_wait_sum_s = 0.0
        self.buffer_wait_max_s = 0.0
        self._arrivals = [0] * _RING
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
            self._area[sec % _RING] = inflight * (now - sec)
            self._arrivals[sec % _RING] = 0
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

    def answered(self, status: int, latency_s: float) -> None:
        """A request ended with this status (499: the client left) after latency_s."""
        self.by_class[0 if status == 499 else status // 100] += 1
        self.latency_buckets[bisect.bisect_left(LATENCY_BOUNDS_S, latency_s)] += 1
        self.latency_sum_s += latency_s
        self.latency_count += 1

    def waited(self, wait_s: float) -> None:
        """A request left the buffer for an endpoint after waiting this long."""
        self.buffer_waits += 1
        self.buffer_wait_sum_s += wait_s
        if wait_s > self.buffer_wait_max_s:
            self.buffer_wait_max_s = wait_s

    def raw(self, now: float) -> dict[str, Any]:
        """Additive snapshot; see `merge` and `summarize`."""
        self._advance(now)
        cur = self._sec % _RING
        partial = now - self._sec
        windows = {}
        for w in WINDOWS_S:
            # The last w whole seconds plus the current partial one: [sec - w, now].
            slots = [(cur - i) % _RING for i in range(w + 1)]
            windows[str(w)] = {
                "seconds": w + partial,
                "arrivals": sum(self._arrivals[s] for s in slots),
                "inflight_area": sum(self._area[s] for s in slots),
            }
        return {
            "by_class": list(self.by_class),
            "inflight": self.inflight,
            "buffered": self.buffered,
            "windows": windows,
            "latency_buckets": list(self.latency_buckets),
            "latency_sum_s": self.latency_sum_s,
            "latency_count": self.latency_count,
            "buffer_waits": self.buffer_waits,
            "buffer_wait_sum_s": self.buffer_wait_sum_s,
            "buffer_wait_max_s": self.buffer_wait_max_s,
        }


def merge(raws: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the raw snapshots of the same revision from several workers."""
    first, rest = raws[0], raws[1:]
    out: dict[str, Any] = {
        "by_class": list(first["by_class"]),
        "latency_buckets": list(first["latency_buckets"]),
        "windows": {k: dict(v) for k, v in first["windows"].items()},
    }
    for key in ("inflight", "buffered", "latency_sum_s", "latency_count", "buffer_waits",
                "buffer_wait_sum_s", "buffer_wait_max_s"):
        out[key] = first[key]
    for raw in rest:
        out["by_class"] = [a + b for a, b in zip(out["by_class"], raw["by_class"], strict=True)]
        out["latency_buckets"] = [
            a + b for a, b in zip(out["latency_buckets"], raw["latency_buckets"], strict=True)]
        for k, window in raw["windows"].items():
            mine = out["windows"][k]
            mine["arrivals"] += window["arrivals"]
            mine["inflight_area"] += window["inflight_area"]
            mine["seconds"] = max(mine["seconds"], window["seconds"])
        for key in ("inflight", "buffered", "latency_sum_s", "latency_count", "buffer_waits",
                    "buffer_wait_sum_s"):
            out[key] += raw[key]
        out["buffer_wait_max_s"] = max(out["buffer_wait_max_s"], raw["buffer_wait_max_s"])
    return out


def quantile(buckets: list[int], q: float) -> float | None:
    """The q-quantile (seconds) from histogram buckets, interpolated inside its bucket."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            lower = LATENCY_BOUNDS_S[i - 1] if i > 0 else 0.0
            upper = LATENCY_BOUNDS_S[i] if i < len(LATENCY_BOUNDS_S) else lower
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return LATENCY_BOUNDS_S[-1]


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """The public per-revision figures of GET /stats."""
    by_class = raw["by_class"]
    buckets = raw["latency_buckets"]
    windows = raw["windows"]

    def per_window(value: str) -> dict[str, float]:
        return {f"{k}s": round(w[value] / w["seconds"], 3) if w["seconds"] > 0 else 0.0
                for k, w in windows.items()}

    def ms(q: float) -> float | None:
        value = quantile(buckets, q)
        return None if value is None else round(value * 1000, 3)

    waits = raw["buffer_waits"]
    return {
        "requests": {
            "total": sum(by_class),
            **{f"{c}xx": by_class[c] for c in range(1, 6)},
            "499": by_class[0],
        },
        "rps": per_window("arrivals"),
        "inflight": raw["inflight"],
        "inflight_avg": per_window("inflight_area"),
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99),
                       "count": raw["latency_count"]},
        "buffered": raw["buffered"],
        "cold_start_waits": {
            "count": waits,
            "mean_s": round(raw["buffer_wait_sum_s"] / waits, 4) if waits else None,
            "max_s": round(raw["buffer_wait_max_s"], 4),
        },
    }
