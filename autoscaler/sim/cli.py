"""``sluice simulate``: replay a request-rate trace against a scaling policy in simulated time.

A policy's cost and its queueing under a burst can be seen in seconds, before it meets a
cluster, next to Knative's KPA, an HPA and a perfect-foresight oracle on the very same trace
(autoscaler/sim/model.py says how the replicas and the queue are modelled).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import pydantic
import yaml

from autoscaler.sim import model, report, traces
from policies import scaling, validation

UsageError = model.UsageError


def load_policy_file(path: Path, trace: traces.Trace | None = None) -> scaling.ScalingPolicy:
    """A policy the simulator can replay ``trace`` against: on requests (rps, concurrency,
    streams) for a request-rate trace, on a custom signal for a custom-signal trace."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a policy is a mapping of fields, got {type(data).__name__}")
    try:
        policy = scaling.load_policy(data)
    except pydantic.ValidationError as exc:
        raise UsageError(f"{path}: invalid policy\n{validation.describe(exc)}") from None
    signal_trace = trace is not None and trace.signal is not None
    if signal_trace and policy.metric_kind is not scaling.MetricKind.CUSTOM:
        raise UsageError(f"{path}: invalid policy for the simulator\nmetric: a custom-signal "
                         f"trace replays a signal, so the policy must scale on 'custom:<name>', "
                         f"got {policy.metric!r}")
    if not signal_trace and policy.metric_kind is scaling.MetricKind.CUSTOM:
        raise UsageError(f"{path}: invalid policy for the simulator\nmetric: the simulator "
                         f"replays request rates, so the policy must scale on 'rps', "
                         f"'concurrency' or 'streams' (or use a custom-signal trace, "
                         f"t,rps,signal), got {policy.metric!r}")
    return policy


def load_trace(name: str, seed: int) -> traces.Trace:
    if name in traces.BUNDLED:
        return traces.bundled(name, seed)
    if not name.endswith(".csv"):
        raise UsageError(f"unknown trace {name!r}: use one of {', '.join(traces.BUNDLED)} or a "
                         "FILE.csv with columns t,rps")
    try:
        return traces.load_csv(Path(name))
    except traces.TraceError as exc:
        raise UsageError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(
        prog="sluice simulate", description="Replay a request-rate trace against a scaling "
        "policy, next to Knative's KPA, an HPA and a perfect-foresight oracle.")
    parse.add_argument("--policy", type=Path, required=True,
                       help="ScalingPolicy YAML (metric: rps, concurrency or streams with a "
                       "service time, or custom:<name> for a custom-signal trace), e.g. "
                       "examples/policies/cpu.yaml")
    parse.add_argument("--trace", required=True, help=f"one of {', '.join(traces.BUNDLED)}, "
                       "or FILE.csv with columns t,rps (or t,rps,signal: a custom-signal "
                       "trace)")
    parse.add_argument("--plot", type=Path, help="draw load, ready capacity and replicas to PNG")
    parse.add_argument("--json", action="store_true", help="print the results as JSON")
    parse.add_argument("--tick", type=int, choices=(1, 2), default=1,
                       help="seconds between sluice's decisions (default 1; the KPA ticks 2)")
    parse.add_argument("--capacity", type=_positive, help="requests/s one ready replica serves "
                       "(default: the policy's target * targetUtilization)")
    parse.add_argument("--cold-start", type=_non_negative, help="seconds from start to ready "
                       f"(default: the trace's; {traces.CPU_COLD_START_S:g} for CSV traces)")
    parse.add_argument("--gpus", type=_non_negative_int,
                       help="GPU inventory (default: the trace's; none for CSV traces)")
    parse.add_argument("--seed", type=int, default=traces.DEFAULT_SEED,
                       help="seed of the bundled traces' noise")
    parse.add_argument("--service-time", type=_service_time, help="seconds a request is in "
                       "flight at a replica, up to 1 (needed for a concurrency policy; default: "
                       "the trace's)")
    parse.add_argument("--from-zero", action="store_true", help="the revision idles at zero "
                       "replicas before the trace (default: the trace's; warm for CSV traces)")
    return parse


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        trace = load_trace(args.trace, args.seed)
        policy = load_policy_file(args.policy, trace)
        if args.from_zero:
            trace = dataclasses.replace(trace, from_zero=True)
        replicas = model.replica_model(trace, policy, args.capacity, args.cold_start,
                                       args.gpus, args.service_time)
    except UsageError as exc:
        print(f"sluice simulate: {exc}", file=sys.stderr)
        return 2
    runs = model.simulate(trace, policy, replicas, args.tick)
    if args.plot:
        try:
            from autoscaler.sim import plots  # matplotlib loads only when asked for

            plots.plot(trace, replicas, runs, args.plot)
        except OSError as exc:
            print(f"sluice simulate: cannot write {args.plot}: {exc.strerror}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(report.report(trace, replicas, runs), indent=2))
    else:
        print(report.describe(trace, replicas))
        print(report.table(runs))
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {text}")
    return value


def _service_time(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be > 0 and ≤ 1, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {text}")
    return value
