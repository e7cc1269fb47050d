"""The simulator's picture: load, ready capacity and replicas over time, one panel per scaler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import figure

from autoscaler.sim import model, traces


def plot(trace: traces.Trace, replica_model: model.ReplicaModel, runs: dict[str, model.Run],
         path: Path) -> None:
    """Load, ready capacity and replicas over time, one panel per scaler. A bare Figure renders
    PNG with Agg and leaves pyplot's global state alone."""
    fig = figure.Figure(figsize=(11, 2.3 * len(runs)), layout="constrained")
    loads = [fig.add_subplot(len(runs), 1, index + 1) for index in range(len(runs))]
    counts = [load.twinx() for load in loads]
    seconds = np.arange(trace.duration_s)
    for load, replicas, (name, result) in zip(loads, counts, runs.items(), strict=True):
        load.plot(seconds, trace.rps, color="0.55", linewidth=0.6, label="load (rps)")
        per_replica = (replica_model.capacity_rps if trace.signal is None else
                       1.0 / (trace.signal * (replica_model.service_s or 1.0)))
        capacity = np.asarray(result.series.ready) * per_replica
        load.step(seconds, capacity, where="post",
                  color="tab:blue", linewidth=1.0, label="ready capacity (rps)")
        load.fill_between(seconds, 0, 1, where=result.series.violated, step="post",
                          color="tab:red", alpha=0.25, transform=load.get_xaxis_transform(),
                          linewidth=0, label="SLO violated (waits > 1 s)")
        load.set_ylim(bottom=0)
        load.set_xlim(0, trace.duration_s)
        load.set_ylabel("requests/s")
        m = result.metrics
        load.set_title(f"{name}: {m.replica_seconds:,.0f} replica-s, {m.slo_violation_s} s "
                       f"SLO violated, p99 delay {m.p99_delay_s:.1f} s, {m.scale_events} scale "
                       "events", fontsize=9, loc="left")
        replicas.step(seconds, result.series.desired, where="post", color="tab:orange",
                      linewidth=0.8, label="replicas asked for")
        replicas.step(seconds, result.series.ready, where="post", color="tab:green",
                      linewidth=0.8, linestyle="--", label="replicas ready")
        replicas.set_ylim(bottom=0)
        replicas.set_ylabel("replicas")
    loads[-1].set_xlabel(f"seconds into the {trace.name} trace")
    handles = [*loads[0].get_legend_handles_labels()[0],
               *counts[0].get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize=8)
    fig.savefig(path, dpi=90)
