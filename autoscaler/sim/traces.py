"""Request-rate traces for the simulator: the bundled shapes, and a user's CSV.

A trace is the number of requests arriving in each second. The bundled ones are deterministic
generators: a rate curve with Poisson arrivals drawn from a seeded numpy generator, so a run is
reproducible and the noise is the noise real traffic has at that rate. Each names the replica
model it is meant for (cold start, GPU inventory) and the example policy it is benchmarked with.

CSV traces have a header ``t,rps`` and one row per change of rate: ``rps`` holds from ``t``
until the next row's ``t``, the last row for one second. Times are seconds, increasing.

A *custom-signal* trace has a third column, ``t,rps,signal``: what one request in flight adds
to a replica's custom signal (its KV-cache fraction, say; 0.05 is 5 % of a replica's cache), so
a GPU policy on ``metric: custom:<name>`` can be tuned offline. Requests are then in flight
``REQUEST_S`` (a generation), a replica holds signal up to 1 (a full cache), and what it serves
per second follows: 1 / (signal x REQUEST_S) requests (autoscaler/sim/model.py). The bundled
``gpu-kv`` is one.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

DEFAULT_SEED = 20240611
CPU_COLD_START_S = 10.0
"""Pod start plus model load of a small CPU model server."""
REQUEST_S = 8.0
"""Seconds an LLM request is in flight in a custom-signal trace: a generation's decode."""
MAX_TRACE_S = 7 * 24 * 3600
"""A week of seconds: the longest CSV trace accepted, so a typo in ``t`` fails clearly."""

Rates = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Trace:
    name: str
    rps: Rates
    """Requests arriving in second i."""
    description: str
    cold_start_s: float = CPU_COLD_START_S
    """Seconds from a replica's start (its GPUs granted) to ready."""
    gpu_inventory: int | None = None
    """GPUs this revision's replicas may use in total; None when not GPU-bound."""
    policy: str = "cpu.yaml"
    """The example policy (examples/policies/) the trace is benchmarked with."""
    from_zero: bool = False
    """The revision has idled at zero replicas before the trace, instead of serving the trace's
    starting rate with the replicas it needs: the policy must allow zero (minReplicas: 0)."""
    service_s: float | None = None
    """Seconds a request is in flight at a replica, for a trace benchmarked with a policy on
    concurrency; None for rps."""
    signal: Rates | None = None
    """A custom-signal trace's signal per request in flight, each second (module docstring);
    None for a request-rate trace."""

    @property
    def duration_s(self) -> int:
        return len(self.rps)


class TraceError(ValueError):
    """A CSV trace that cannot be read; the message names the line and column."""


def steady(seed: int) -> Trace:
    rate = np.full(1800, 1000.0)
    return Trace("steady", _arrivals(rate, seed), "1000 rps for 30 min (Poisson)")


def step(seed: int) -> Trace:
    rate = np.concatenate([np.full(600, 400.0), np.full(1200, 1600.0), np.full(600, 400.0)])
    return Trace("step", _arrivals(rate, seed), "400 → 1600 rps at 10 min, back at 30 min")


def spike(seed: int) -> Trace:
    rate = np.full(2400, 300.0)
    rate[600:660] = 2400.0
    rate[1500:1530] = 1500.0
    return Trace("spike", _arrivals(rate, seed),
                 "300 rps with an 8x spike for 60 s at 10 min and a 5x one for 30 s at 25 min")


def diurnal(seed: int) -> Trace:
    t = np.arange(7200)
    rate = 1100.0 - 900.0 * np.cos(2 * np.pi * t / 7200)
    return Trace("diurnal", _arrivals(rate, seed),
                 "a day compressed into 2 h: 200 rps at night, 2000 rps at noon")


def bursty(seed: int) -> Trace:
    """Bursts arrive as a Poisson process (one every 3 min on average), each multiplying the
    rate by 1.5-3 for 10-60 s."""
    rng = np.random.default_rng(seed)
    rate = np.full(2400, 800.0)
    at = rng.exponential(180.0)
    while at < len(rate):
        length = int(rng.integers(10, 61))
        rate[int(at):int(at) + length] *= rng.uniform(1.5, 3.0)
        at += length + rng.exponential(180.0)
    return Trace("bursty", _arrivals(rate, seed + 1),
                 "800 rps with bursts of 1.5-3x for 10-60 s, one every 3 min on average")


def gpu(seed: int) -> Trace:
    """An LLM's morning: quiet, a ramp over 20 min, a burst, a slow decline. Replicas take
    120 s to load the model; 40 GPUs hold 20 two-GPU replicas, enough for the peak."""
    rate = np.concatenate([
        np.full(300, 4.0),
        np.linspace(4.0, 24.0, 1200),
        np.full(900, 24.0),
        np.full(240, 32.0),
        np.linspace(24.0, 8.0, 960),
    ])
    return Trace("gpu", _arrivals(rate, seed),
                 "LLM traffic 4 → 24 rps over 20 min, a 32 rps burst for 4 min, decline to 8",
                 cold_start_s=120.0, gpu_inventory=40, policy="gpu.yaml")


SCALE_TO_ZERO_POLICY = "cpu-scale-to-zero.yaml"
"""The example policy of the traces that start from zero: cpu.yaml with minReplicas 0."""

def zero_step(seed: int) -> Trace:
    """A revision idle at zero replicas gets 600 rps at once for 10 min, then nothing for long
    enough to scale to zero again: the first cold start's backlog, with the load behind it."""
    rate = np.concatenate([np.zeros(60), np.full(600, 600.0), np.zeros(240)])
    return Trace("zero-step", _arrivals(rate, seed),
                 "idle at zero replicas, 600 rps at 1 min for 10 min, idle again",
                 policy=SCALE_TO_ZERO_POLICY, from_zero=True)


def zero_bursts(seed: int) -> Trace:
    """Bursts of 100-1000 rps lasting 3-10 min, each after 3-8 min of nothing: every gap is
    longer than the stable window and the grace period, so every burst starts from zero."""
    return Trace("zero-bursts", _arrivals(_bursts_from_zero(seed), seed + 1),
                 "bursts of 100-1000 rps for 3-10 min, each after 3-8 min idle at zero replicas",
                 policy=SCALE_TO_ZERO_POLICY, from_zero=True)


def zero_concurrency(seed: int) -> Trace:
    """zero-bursts' bursts on a policy that scales on requests in flight: each request is in
    flight 100 ms, so a replica aiming for 7 in flight serves 70 rps, as on the rps traces; the
    first burst meets a revision that has never served, the later ones one that has."""
    return Trace("zero-concurrency", _arrivals(_bursts_from_zero(seed), seed + 1),
                 "zero-bursts' load, scaled on requests in flight (100 ms each)",
                 policy="concurrency-scale-to-zero.yaml", from_zero=True, service_s=0.1)


def _bursts_from_zero(seed: int) -> Rates:
    rng = np.random.default_rng(seed)
    rate = np.zeros(3600)
    at = rng.uniform(30.0, 120.0)
    while at < len(rate):
        length = int(rng.integers(180, 601))
        rate[int(at):int(at) + length] = rng.uniform(100.0, 1000.0)
        at += length + rng.uniform(180.0, 480.0)
    return rate


def gpu_kv(seed: int) -> Trace:
    """An LLM whose requests change shape: chat (5 % of a replica's KV cache each) at 3 rps
    rising to 4, then 20 min of long-document requests (15 % each: three times the cache at
    the same rate), then chat again. The request rate hardly moves, and requests in flight
    only as much: a replica holds 20 chat requests but 6 long ones, which only the cache
    signal shows. Replicas load the model for 120 s; 40 GPUs hold 20 two-GPU replicas."""
    rate = np.concatenate([np.full(600, 3.0), np.linspace(3.0, 4.0, 600), np.full(1800, 4.0)])
    signal = np.concatenate([np.full(1200, 0.05), np.full(1200, 0.15), np.full(600, 0.05)])
    return Trace("gpu-kv", _arrivals(rate, seed),
                 "LLM traffic 3 → 4 rps; requests use 5 % of a replica's KV cache, 15 % for "
                 "20 min of long documents, then 5 % again",
                 cold_start_s=120.0, gpu_inventory=40, policy="gpu-kv.yaml", signal=signal)


BUNDLED: dict[str, Callable[[int], Trace]] = {
    "step": step, "spike": spike, "diurnal": diurnal, "bursty": bursty, "gpu": gpu,
    "steady": steady, "gpu-kv": gpu_kv, "zero-step": zero_step, "zero-bursts": zero_bursts,
    "zero-concurrency": zero_concurrency,
}
"""The bundled traces by name."""
CONTROL = "steady"
"""The trace a scaler should not move on: its target is no scale events."""


def bundled(name: str, seed: int = DEFAULT_SEED) -> Trace:
    return BUNDLED[name](seed)


def load_csv(path: Path) -> Trace:
    """Read a ``t,rps`` CSV into per-second arrivals; TraceError says what is wrong and where."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror}") from None
    rows = csv.reader(text.splitlines())
    header = [name.strip() for name in next(rows, [])]
    if header not in (["t", "rps"], ["t", "rps", "signal"]):
        raise TraceError(f"{path}:1: the header must be 't,rps' or 't,rps,signal', got "
                         f"{','.join(header)!r}")
    changes: list[tuple[float, float]] = []
    signals: list[tuple[float, float]] = []
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise TraceError(f"{path}:{line}: expected {len(header)} columns "
                             f"({','.join(header)}), got {len(row)}")
        t = _number(path, line, "t", row[0])
        rps = _number(path, line, "rps", row[1])
        if changes and t <= changes[-1][0]:
            raise TraceError(f"{path}:{line}: t must increase, got {t:g} after "
                             f"{changes[-1][0]:g}")
        if t > MAX_TRACE_S:
            raise TraceError(f"{path}:{line}: t must be at most {MAX_TRACE_S} s, got {t:g}")
        changes.append((t, rps))
        if len(row) == 3:
            signal = _number(path, line, "signal", row[2])
            if signal <= 0:
                raise TraceError(f"{path}:{line}: signal must be above 0 (what a request in "
                                 f"flight adds), got {signal:g}")
            signals.append((t, signal))
    if not changes:
        raise TraceError(f"{path}: no rows after the header")
    return Trace(path.stem, _held(changes), f"{path.name}: {len(changes)} rows",
                 signal=_held(signals) if signals else None)


def _number(path: Path, line: int, column: str, cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise TraceError(f"{path}:{line}: {column} must be a number, got {cell.strip()!r}") \
            from None
    if not math.isfinite(value) or value < 0:
        raise TraceError(f"{path}:{line}: {column} must be a non-negative number, got {value:g}")
    return value


def _held(changes: list[tuple[float, float]]) -> Rates:
    """Per-second rates from (t, rps) change points, each held until the next; time starts at
    the first row."""
    start = changes[0][0]
    ends = [t - start for t, _ in changes[1:]] + [changes[-1][0] - start + 1]
    seconds = np.arange(math.ceil(ends[-1]))
    which = np.searchsorted(np.array(ends), seconds, side="right")
    return np.array([rps for _, rps in changes], dtype=np.float64)[which]


def _arrivals(rate: Rates, seed: int) -> Rates:
    return np.random.default_rng(seed).poisson(rate).astype(np.float64)
