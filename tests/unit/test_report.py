"""The loadtest report (loadtests/report.py) from a made-up canary run, without a browser.

Covered: one self-contained HTML page with the verdict, every result's observed value, bound
and reason, the events, and the figure as an embedded PNG; text from the scenario escaped; the
panels on one time axis, with the two requests/s panels on the same scale; no pyplot state.
Whether a browser shows it all is checked by hand (README: a headless Chromium screenshot).
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

from loadtests import expectations, latency, observe, record, report, scenario
from policies import scaling

ROOT = Path(__file__).resolve().parents[2]
T0 = 2_000_000.0


def canary_run() -> record.Run:
    plan = scenario.parse({
        "name": "canary", "description": "v2 <takes> over & is judged",
        "phases": [{"name": "steady", "seconds": 30, "users": 20}],
        "rollout": {"startAtSeconds": 5, "policy": {
            "service": "model", "stableRevision": "v1", "canaryRevision": "v2"}},
        "expectations": [{"rollout": {"phase": "Promoted", "withinSeconds": 20}},
                         {"latency": {"maxMs": 100}}],
    })
    seconds = [{"t": t, "sent": 20, "ok": 19 + (t < 12), "failed": int(t >= 12),
                "revisions": {"v1": [20 - min(t, 20), 0], "v2": [min(t, 20) - 1 + (t < 12),
                                                                 int(t >= 12)]},
                "latency": {str(latency.bucket(20 + t)): 20}} for t in range(30)]
    client = record.Client.from_summary({"timeline": {"started_at": T0, "seconds": seconds}})
    samples = []
    for t in range(-1, 31):
        weight = 0 if t < 6 else 20 if t < 14 else 0
        phase = "Progressing" if 5 <= t < 14 else "RolledBack" if t >= 14 else None
        samples.append(observe.Sample(
            at=T0 + t,
            revisions={"v1": observe.RevisionState(2, 2, 0, 100 - weight),
                       "v2": observe.RevisionState(1 if 5 <= t < 16 else 0,
                                                   1 if 7 <= t < 16 else 0, 0, weight)},
            router=None,
            rollout=None if phase is None else observe.RolloutState(phase, 1, 3, weight, "why"),
            events=(observe.Event(T0 + 14, "rollout", "v2", "RolledBack: errors <b>", True),)
            if t == 14 else ()))
    policy = scaling.load_policy({"metric": "rps", "target": 10, "maxReplicas": 4})
    return record.Run(plan, client, tuple(samples), {"v1": policy, "v2": policy},
                      rollout_started_at=T0 + 5, target="http://127.0.0.1:1")


def test_the_page_has_the_verdict_the_table_the_events_and_an_embedded_figure():
    run = canary_run()
    results = expectations.judge(run)
    page = report.render(run, results, duration_scale=0.5)

    assert "<title>sluice loadtest canary: FAILED</title>" in page
    for result in results:
        assert report._e(result.reason) in page
        assert report._e(result.bound) in page
    assert "observed RolledBack 9.0 s after the start" in page
    assert "v2 &lt;takes&gt; over &amp; is judged" in page  # the file's text, escaped
    assert "RolledBack: errors &lt;b&gt;" in page
    assert "durations x 0.5" in page
    [png] = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n")
    assert "http" not in page.replace("http://127.0.0.1:1", "")  # nothing fetched from elsewhere


def test_panels_share_the_time_axis_and_the_rate_panels_their_scale():
    run = canary_run()
    fig = report.drawing(run, expectations.judge(run))
    panels = {axes.get_title(loc="left").split(" ")[0]: axes for axes in fig.axes
              if axes.get_title(loc="left")}

    assert list(panels) == ["load", "per", "replicas:", "latency", "events:"]
    assert len({axes.get_xlim() for axes in panels.values()}) == 1
    assert panels["load"].get_ylim() == panels["per"].get_ylim()
    assert panels["load"].get_ylim()[1] >= 20  # the offered rate fits
    assert panels["replicas:"].get_ylim()[1] > 4  # maxReplicas is drawn
    assert fig.get_suptitle().startswith("canary: failed: rollout")


def test_rendering_leaves_pyplot_alone():
    check = ("import sys; from tests.unit.test_report import canary_run; "
             "from loadtests import expectations, report; run = canary_run(); "
             "report.render(run, expectations.judge(run)); "
             "sys.exit('matplotlib.pyplot' in sys.modules)")
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True, timeout=120)
