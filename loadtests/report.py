"""One self-contained HTML page per run: the verdict, the expectation table, and one figure.

The figure's panels share the time axis (seconds since the load started; phases shaded and
named), so a cause and its effect line up vertically:

1. load: the rate the scenario offers, the requests sent, answered ok and failed, per second;
2. per revision: the answers each revision served (stacked) and their errors, on the same
   requests/s scale as panel 1, with the route weights when the observer reports them;
3. replicas: desired, starting and ready per revision;
4. latency: p50 and p99 over a rolling 5 s window, and the latency bounds being judged;
5. events: scale decisions, rollout steps and verdicts, Kubernetes Events; a rollout's phase
   changes are also drawn across every panel.

Plots are drawn on a bare matplotlib Figure with the Agg canvas (no pyplot global state) and
embedded as base64 PNG, so the page is one file that opens anywhere, offline.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import yaml
from matplotlib import figure, ticker
from matplotlib.axes import Axes

from loadtests import expectations, latency, observe, record

LATENCY_WINDOW_S = 5
PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
           "tab:olive", "tab:cyan")
MAX_EVENT_ROWS = 300
"""Events listed under the figure; all of them are drawn."""


def render(run: record.Run, results: Sequence[expectations.Result],
           duration_scale: float = 1.0) -> str:
    """The report as one HTML document."""
    png = base64.b64encode(plot(run, results)).decode()
    passed = expectations.passed(list(results))
    scenario = run.scenario
    started = datetime.datetime.fromtimestamp(run.client.started_at).astimezone()
    sent = sum(s.sent for s in run.client.seconds)
    failed = sum(s.failed for s in run.client.seconds)
    problems = [p for s in run.samples for p in s.problems]
    events = run.events()
    scale = f", durations x {duration_scale:g}" if duration_scale != 1.0 else ""
    facts = [
        ("target", run.target),
        ("started", started.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("load", f"{scenario.seconds:.0f} s in {len(scenario.phases)} phases{scale}; "
                 f"{sent} requests sent, {failed} failed"),
        ("observed", f"{len(run.samples)} samples"
                     + (f", {len(problems)} reads failed (first: {problems[0]})"
                        if problems else "")),
    ]
    rows = "\n".join(
        f"<tr class='{r.outcome}'><td>{_e(r.expectation)}</td><td class='outcome'>"
        f"{_e(str(r.outcome).upper())}</td><td>{_e(_value(r.observed, r.unit))}</td>"
        f"<td>{_e(r.bound)}</td><td>{_e(r.reason)}</td></tr>" for r in results)
    listed = sorted([(run.t(e.at), e.kind, e.subject, e.text, e.warning)
                     for e in _changes_only(events)]
                    + [(c.t, "scale", name, f"desired {c.before} → {c.after}"
                        + (f" ({', '.join(c.conditions)})" if c.conditions else ""), False)
                       for name in run.revisions() for c in run.scale_changes(name)])
    event_rows = "\n".join(
        f"<tr{' class=warning' if warning else ''}><td>{t:.1f}</td><td>{_e(kind)}</td>"
        f"<td>{_e(subject)}</td><td>{_e(text)}</td></tr>"
        for t, kind, subject, text, warning in listed[:MAX_EVENT_ROWS])
    more = (f"<p>… and {len(listed) - MAX_EVENT_ROWS} more events (all are drawn).</p>"
            if len(listed) > MAX_EVENT_ROWS else "")
    document = yaml.safe_dump(scenario.model_dump(mode="json", by_alias=True,
                                                  exclude_defaults=True), sort_keys=False)
    verdict = "PASSED" if passed else "FAILED"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>sluice loadtest {_e(scenario.name)}: {verdict}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1240px;
        color: #222; padding: 0 16px; }}
h1 {{ font-size: 22px; margin-bottom: 4px; }}
.verdict {{ display: inline-block; padding: 2px 10px; border-radius: 4px; color: white;
            font-weight: 600; background: {'#2e7d32' if passed else '#c62828'}; }}
table {{ border-collapse: collapse; width: 100%; margin: 8px 0 20px; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left;
          vertical-align: top; }}
th {{ background: #f4f4f4; white-space: nowrap; }}
tr.fail td.outcome, tr.unknown td.outcome {{ color: #c62828; font-weight: 600; }}
tr.pass td.outcome {{ color: #2e7d32; font-weight: 600; }}
tr.warning td {{ background: #fff1f0; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: 2px 14px; }}
dt {{ font-weight: 600; }} dd {{ margin: 0; }}
img {{ width: 100%; height: auto; border: 1px solid #eee; }}
pre {{ background: #f7f7f7; padding: 10px; overflow-x: auto; }}
</style></head><body>
<h1>sluice loadtest: {_e(scenario.name)} <span class="verdict">{verdict}</span></h1>
<p>{_e(scenario.description)}</p>
<dl>{''.join(f'<dt>{_e(k)}</dt><dd>{_e(v)}</dd>' for k, v in facts)}</dl>
<h2>Expectations</h2>
<table><tr><th>expectation</th><th>outcome</th><th>observed</th><th>bound</th>
<th>reason</th></tr>
{rows}
</table>
<h2>What happened</h2>
<img alt="load, per-revision split, replicas, latency and events over time"
     src="data:image/png;base64,{png}">
<h2>Events</h2>
<table><tr><th>t (s)</th><th>kind</th><th>subject</th><th>what</th></tr>
{event_rows}
</table>
{more}
<details><summary>Scenario (as run)</summary><pre>{_e(document)}</pre></details>
</body></html>
"""


def _changes_only(events: Sequence[observe.Event]) -> list[observe.Event]:
    """The events, less each verdict that has the outcome of the one before it: a verdict
    comes every analysis interval, and the table is for a person (the figure has them all)."""
    kept, previous = [], None
    for event in events:
        if event.kind == "verdict":
            outcome = event.text.split(" ", 1)[0]
            if outcome == previous:
                continue
            previous = outcome
        kept.append(event)
    return kept


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _value(value: float | str | None, unit: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return f"{value:g} {unit}".strip()


# -- the figure ----------------------------------------------------------------------------------


def plot(run: record.Run, results: Sequence[expectations.Result]) -> bytes:
    """The five panels as PNG bytes."""
    buffer = io.BytesIO()
    drawing(run, results).savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def drawing(run: record.Run, results: Sequence[expectations.Result]) -> figure.Figure:
    """The five panels on one Figure (Agg, no pyplot)."""
    fig = figure.Figure(figsize=(12, 15), layout="constrained")
    grid = fig.add_gridspec(5, 1, height_ratios=[3, 3, 3, 3, 1.6])
    load = fig.add_subplot(grid[0])
    split, replicas, delay, strip = (fig.add_subplot(grid[i], sharex=load) for i in range(1, 5))
    colours = dict(zip(run.revisions(), itertools.cycle(PALETTE), strict=False))
    seconds = run.client.seconds
    t = np.array([s.t for s in seconds], dtype=float)

    _load_panel(load, run, t)
    _split_panel(split, run, t, colours)
    top = max(load.get_ylim()[1], split.get_ylim()[1])  # the same scale: the two are compared
    load.set_ylim(0, top)
    split.set_ylim(0, top)
    _replicas_panel(replicas, run, colours)
    _latency_panel(delay, run, t)
    _events_panel(strip, run, colours)

    start = min(0.0, *(run.t(s.at) for s in run.samples[:1]))
    for axes in (load, split, replicas, delay, strip):
        _phases(axes, run, label=axes is load)
        _rollout_lines(axes, run)
        axes.set_xlim(start, run.end + 0.5)
        axes.grid(True, axis="both", color="0.9", linewidth=0.6)
        if axes is not strip:
            axes.tick_params(labelbottom=False)
    strip.set_xlabel("seconds since the load started")
    failed = [r.expectation for r in results if not r.passed]
    title = (f"{run.scenario.name}: " + ("every expectation met" if not failed
                                          else f"failed: {', '.join(failed)}"))
    fig.suptitle(title, fontsize=12, color="black" if not failed else "#c62828")
    return fig


def smoothing_s(run: record.Run) -> int:
    """Seconds rates are averaged over. A user sends every 1/rpsPerUser s, so one-second counts
    alternate (1.5 rps: 1, 2, 1, 2 requests a user) unless a bin spans whole cycles; and users
    whose sends fall near a second's edge move across it with any jitter. Two seconds at least,
    and two of a user's cycles."""
    return max(2, math.ceil(2 / run.scenario.users.rps_per_user - 1e-9))


def _mean(values: Sequence[float], width: int) -> np.ndarray:
    """The trailing mean over `width` seconds (fewer at the start)."""
    sums = np.cumsum(np.insert(np.asarray(values, dtype=float), 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - width)
    means: np.ndarray = (sums[ends] - sums[starts]) / (ends - starts)
    return means


def _per_second(axes: Axes, t: np.ndarray, values: Sequence[float], width: int,
                **style: Any) -> None:
    """A rate per second, averaged over `width` s, drawn over its whole second."""
    if len(t):
        rates = _mean(values, width)
        axes.step(np.append(t, t[-1] + 1), np.append(rates, rates[-1]), where="post", **style)


def _load_panel(axes: Axes, run: record.Run, t: np.ndarray) -> None:
    seconds = run.client.seconds
    corners: list[tuple[float, float]] = []
    start, previous = 0.0, 0.0
    for phase in run.scenario.phases:  # straight lines between the schedule's corners
        rate = phase.users * run.scenario.users.rps_per_user
        corners += [(start, previous), (start + phase.ramp_seconds, rate)]
        start, previous = start + phase.seconds, rate
    corners += [(start, previous), (start, 0.0)]
    axes.plot(*zip(*corners, strict=True), color="0.35", linestyle="--", linewidth=1.2,
              label="offered (scenario)")
    width = smoothing_s(run)
    _per_second(axes, t, [s.ok for s in seconds], width, color="tab:green", linewidth=2.2,
                alpha=0.8, label="answered ok")
    _per_second(axes, t, [s.sent for s in seconds], width, color="tab:blue", linewidth=1.0,
                label="sent")
    _per_second(axes, t, [s.failed for s in seconds], width, color="tab:red", linewidth=1.4,
                label="failed")
    axes.set_ylabel("requests/s")
    axes.set_title(f"load offered and served (client, mean over {width} s)", loc="left",
                   fontsize=10)
    axes.legend(loc="upper right", fontsize=8, ncol=4)


def _split_panel(axes: Axes, run: record.Run, t: np.ndarray,
                 colours: dict[str, str]) -> None:
    seconds = run.client.seconds
    names = [name for name in run.client.revisions if name != "unknown"]
    width = smoothing_s(run)
    if names:
        edges = np.append(t, t[-1] + 1)
        served = [np.append(_mean([s.revisions.get(name, (0, 0))[0] for s in seconds], width),
                            0.0) for name in names]
        axes.stackplot(edges, served, step="post", colors=[colours[n] for n in names],
                       alpha=0.55, labels=[f"{n} ok" for n in names])
    for name in run.client.revisions:
        errors = [s.revisions.get(name, (0, 0))[1] for s in seconds]
        if any(errors):
            _per_second(axes, t, errors, width, color=colours.get(name, "tab:red"),
                        linestyle=":", linewidth=1.8, label=f"{name} failed")
    axes.set_ylabel("requests/s")
    axes.set_title(f"per revision: answers served and failed (by X-Sluice-Revision, mean over "
                   f"{width} s); same scale as above", loc="left", fontsize=10)
    weights = axes.twinx()
    series = {name: [(time, s.weight) for time, s in run.states(name) if s.weight is not None]
              for name in run.revisions()}
    # Weights are drawn when they moved (a rollout); constant ones are only clutter.
    drawn = any(len({w for _, w in points}) > 1 for points in series.values())
    for name, points in series.items():
        if drawn and points:
            xs, ys = zip(*points, strict=True)
            weights.step(xs, ys, where="post", color=colours.get(name, "0.3"), linewidth=1.2,
                         linestyle="-.", label=f"{name} weight")
    if drawn:
        weights.set_ylim(0, 105)
        weights.set_ylabel("route weight (%)")
        handles = axes.get_legend_handles_labels()
        extra = weights.get_legend_handles_labels()
        axes.legend(handles[0] + extra[0], handles[1] + extra[1], loc="upper right",
                    fontsize=8, ncol=4)
    else:
        weights.set_axis_off()
        if names:
            axes.legend(loc="upper right", fontsize=8, ncol=4)


def _replicas_panel(axes: Axes, run: record.Run, colours: dict[str, str]) -> None:
    highest = 1
    for name in run.revisions():
        states = run.states(name)
        if not any(s.desired or s.ready or s.starting for _, s in states):
            continue  # a revision that never had a replica (a canary at rest) is only clutter
        times = [time for time, _ in states]
        colour = colours.get(name, "0.3")
        for attribute, style, width in (("desired", "-", 1.8), ("starting", ":", 1.2),
                                        ("ready", "--", 1.4)):
            values = [getattr(s, attribute) for _, s in states]
            if all(v is None for v in values):
                continue
            values = [np.nan if v is None else v for v in values]
            axes.step(times, values, where="post", color=colour, linestyle=style,
                      linewidth=width, label=f"{name} {attribute}")
            highest = max(highest, int(np.nanmax(values)) if not np.all(np.isnan(values)) else 0)
        policy = run.policies.get(name)
        if policy is not None and policy.max_replicas:
            axes.axhline(policy.max_replicas, color=colour, linewidth=0.8, alpha=0.6)
            axes.annotate(f"{name} maxReplicas {policy.max_replicas}",
                          (0.005, policy.max_replicas), xycoords=("axes fraction", "data"),
                          ha="left", va="bottom", fontsize=7, color=colour)
            highest = max(highest, policy.max_replicas)
    axes.set_ylim(0, highest + 1)
    axes.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    axes.set_ylabel("replicas")
    axes.set_title("replicas: desired (solid), starting (dotted), ready (dashed)", loc="left",
                   fontsize=10)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper right", fontsize=8, ncol=3)


def _latency_panel(axes: Axes, run: record.Run, t: np.ndarray) -> None:
    windows = record.rolling(run.client.seconds, LATENCY_WINDOW_S)
    for fraction, colour, label in ((0.5, "tab:blue", "p50"), (0.99, "tab:red", "p99")):
        values = [latency.quantile(h, fraction) for h in windows]
        axes.step(t, [np.nan if v is None else v for v in values], where="post",
                  color=colour, linewidth=1.3, label=f"{label} ({LATENCY_WINDOW_S} s window)")
    for expectation in run.scenario.expectations:
        spec = expectation.spec
        if expectation.kind == "latency":
            start, end = run.window(getattr(spec, "phase", None),
                                    getattr(spec, "after_seconds", 0.0))
            bound = getattr(spec, "max_ms", 0.0)
            axes.hlines(bound, start, min(end, run.end), colors="tab:red", linestyles=":",
                        linewidth=1.2)
            axes.annotate(f"bound p{getattr(spec, 'quantile', 0.99) * 100:g} <= {bound:g} ms",
                          (start, bound), fontsize=7, color="tab:red", va="bottom")
    axes.set_yscale("log")
    axes.set_ylabel("latency (ms, log)")
    axes.set_title("latency at the client, all answers", loc="left", fontsize=10)
    axes.legend(loc="upper right", fontsize=8, ncol=2)


def _events_panel(axes: Axes, run: record.Run, colours: dict[str, str]) -> None:
    rows: list[str] = []

    def row(label: str) -> int:
        if label not in rows:
            rows.append(label)
        return rows.index(label)

    for name in run.revisions():
        for change in run.scale_changes(name):
            y = row(f"scale {name}")
            axes.scatter([change.t], [y], marker="^" if change.after > change.before else "v",
                         color=colours.get(name, "0.3"), s=36, zorder=3)
            axes.annotate(str(change.after), (change.t, y), xytext=(0, 5),
                          textcoords="offset points", fontsize=6, ha="center")
    for event in run.events():
        y = row(event.kind if event.kind in ("rollout", "verdict") else "kubernetes")
        colour = "tab:red" if event.warning else (
            "tab:green" if event.text.startswith(("pass", "Promoted")) else "0.45")
        axes.scatter([run.t(event.at)], [y], marker="D" if event.kind == "rollout" else "o",
                     color=colour, s=22, zorder=3)
    axes.set_yticks(range(len(rows)), rows, fontsize=8)
    axes.set_ylim(-0.7, max(0.7, len(rows) - 0.3))
    axes.set_title("events: scale decisions (▲▼ with the new count), rollout steps (◆), "
                   "verdicts (● green pass, red fail)", loc="left", fontsize=10)


def _phases(axes: Axes, run: record.Run, label: bool) -> None:
    start = 0.0
    for index, phase in enumerate(run.scenario.phases):
        end = start + phase.seconds
        if index % 2:
            axes.axvspan(start, end, color="0.5", alpha=0.07, linewidth=0)
        axes.axvline(start, color="0.6", linewidth=0.7)
        if label:
            axes.annotate(f"{phase.name} ({phase.users} users)", (start, 1.0),
                          xycoords=("data", "axes fraction"), xytext=(3, -12),
                          textcoords="offset points", fontsize=8, color="0.3")
        start = end
    axes.axvline(start, color="0.6", linewidth=0.7)


def _rollout_lines(axes: Axes, run: record.Run) -> None:
    for event in run.events():
        if event.kind == "rollout":
            axes.axvline(run.t(event.at), color="tab:red" if event.warning else "tab:purple",
                         linewidth=0.8, linestyle="--", alpha=0.7)
    if run.rollout_started_at is not None:
        axes.axvline(run.t(run.rollout_started_at), color="tab:purple", linewidth=1.2)


def as_json(run: record.Run, results: Sequence[expectations.Result]) -> dict[str, Any]:
    """The results for CI: the verdict and each expectation's observed value and bound."""
    return {"scenario": run.scenario.name, "passed": expectations.passed(list(results)),
            "results": [{"expectation": r.expectation, "outcome": str(r.outcome),
                         "observed": r.observed, "bound": r.bound, "unit": r.unit,
                         "reason": r.reason} for r in results]}
