"""The simulator's results as a table, Markdown and JSON."""

from __future__ import annotations

import dataclasses
from typing import Any

from autoscaler.sim import model, traces


def report(trace: traces.Trace, replica_model: model.ReplicaModel,
           runs: dict[str, model.Run]) -> dict[str, Any]:
    return {
        "trace": {"name": trace.name, "description": trace.description,
                  "duration_s": trace.duration_s},
        "replica_model": dataclasses.asdict(replica_model),
        "results": {name: dataclasses.asdict(r.metrics) for name, r in runs.items()},
    }


def describe(trace: traces.Trace, replica_model: model.ReplicaModel) -> str:
    gpus = (f", {replica_model.gpus_per_replica} GPUs each out of "
            f"{replica_model.gpu_inventory}" if replica_model.gpu_inventory is not None else "")
    return (f"{trace.name}: {trace.description}; {trace.duration_s} s. Replicas serve "
            f"{replica_model.capacity_rps:g} rps each and start in "
            f"{replica_model.cold_start_s:g} s{gpus}.")


COLUMNS = ("scaler", "replica-s", "vs oracle", "SLO-violation s", "vs KPA", "queued s",
           "mean delay s", "p99 delay s", "scale events")


def rows(runs: dict[str, model.Run]) -> list[tuple[str, ...]]:
    """One row per scaler under COLUMNS; cost is compared with the oracle's, SLO-violation
    seconds with the KPA's."""
    oracle, kpa = runs["oracle"].metrics, runs["kpa"].metrics
    return [
        (name, f"{m.replica_seconds:,.0f}", ratio(m.replica_seconds, oracle.replica_seconds),
         f"{m.slo_violation_s}", ratio(m.slo_violation_s, kpa.slo_violation_s),
         f"{m.queued_s}", f"{m.mean_delay_s:.2f}", f"{m.p99_delay_s:.2f}", f"{m.scale_events}")
        for name, m in ((name, run.metrics) for name, run in runs.items())
    ]


def table(runs: dict[str, model.Run]) -> str:
    lines = [COLUMNS, *rows(runs)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.rjust(width) if i else cell.ljust(width)
                  for i, (cell, width) in enumerate(zip(line, widths, strict=True)))
        for line in lines)


def ratio(value: float, baseline: float) -> str:
    if baseline:
        return f"{value / baseline:.2f}"
    return "—" if value == 0 else "∞"




def markdown(runs: dict[str, model.Run]) -> str:
    return "\n".join(["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
                      *("| " + " | ".join(row) + " |" for row in rows(runs))])
