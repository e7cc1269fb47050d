"""One load test run as data: what the client saw each second and what the observer sampled.

`Client` is the locustfile's timeline (its JSON summary's ``timeline``): per second of the run,
requests sent (as they are sent) and answered, ok or failed, per revision (``X-Sluice-Revision``),
and a latency histogram (by completion time). `Run` joins it with the observer's samples on one
clock: seconds since the load started (``t``), from wall-clock times taken on this machine.
Pure: the judge (expectations.py) and the report (report.py) read a Run; nothing here waits,
reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtests import latency, observe, scenario
from policies import scaling


@dataclass(frozen=True)
class Second:
    """What the client saw in one second of the run, [t, t + 1)."""

    t: int
    sent: int = 0
    ok: int = 0
    failed: int = 0
    revisions: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """Revision -> (ok, failed) answers."""
    latency: Mapping[int, int] = field(default_factory=dict)
    """Latency histogram (latency.py) of the answers, ok or failed."""
    failures: Mapping[str, int] = field(default_factory=dict)
    """Failed answers by reason: the HTTP status, or the exception's class with no answer."""

    @property
    def answered(self) -> int:
        return self.ok + self.failed


@dataclass(frozen=True)
class Client:
    started_at: float
    """Wall-clock time the load started (Locust's test start): t = 0."""
    seconds: tuple[Second, ...]
    """Every second from 0 to the last answer, none missing."""
    first_sent_at: float | None = None
    first_ok_at: float | None = None
    """When the first request was sent and the first 2xx answer arrived (wall clock)."""

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> Client:
        """From the locustfile's JSON summary (see locustfile.Recorder.write)."""
        timeline = summary["timeline"]
        by_t = {row["t"]: Second(
            t=row["t"], sent=row["sent"], ok=row["ok"], failed=row["failed"],
            revisions={name: (ok, failed) for name, (ok, failed) in row["revisions"].items()},
            latency={int(index): count for index, count in row["latency"].items()},
            failures=dict(row.get("failures", {})))
            for row in timeline["seconds"]}
        last = max(by_t, default=-1)
        return cls(started_at=timeline["started_at"],
                   seconds=tuple(by_t.get(t, Second(t)) for t in range(last + 1)),
                   first_sent_at=timeline.get("first_sent_at"),
                   first_ok_at=timeline.get("first_ok_at"))

    def between(self, start: float, end: float) -> list[Second]:
        """The seconds that lie within [start, end) of the run (partial seconds included
        when at least half of them is inside)."""
        return [s for s in self.seconds if start <= s.t + 0.5 < end]

    @property
    def revisions(self) -> list[str]:
        return sorted({name for s in self.seconds for name in s.revisions})


@dataclass(frozen=True)
class ScaleChange:
    t: float
    before: int
    after: int
    conditions: tuple[str, ...] = ()

    def __str__(self) -> str:
        why = f" ({', '.join(self.conditions)})" if self.conditions else ""
        return f"{self.before} -> {self.after} at {self.t:.1f} s{why}"


@dataclass(frozen=True)
class Run:
    scenario: scenario.Scenario
    client: Client
    samples: tuple[observe.Sample, ...]
    policies: Mapping[str, scaling.ScalingPolicy]
    rollout_started_at: float | None = None
    """Wall clock, when the scenario started its rollout."""
    target: str = ""
    """What was loaded and observed, for the report: the host and the observer."""

    def t(self, wall: float) -> float:
        return wall - self.client.started_at

    @property
    def end(self) -> float:
        """The last t anything was seen: the last answer or the last sample."""
        last_sample = self.t(self.samples[-1].at) if self.samples else 0.0
        return max(float(len(self.client.seconds)), last_sample)

    def window(self, phase: str | None, after_seconds: float = 0.0) -> tuple[float, float]:
        """[start, end) of a phase (or the run) in t, less its first `after_seconds`. The whole
        run ends at the last answer, so answers after the load's end count."""
        start, end = self.scenario.window(phase)
        if phase is None:
            end = max(end, float(len(self.client.seconds)))
        return start + after_seconds, end

    def states(self, revision: str) -> list[tuple[float, observe.RevisionState]]:
        """The revision's state in each sample that reported it, by t."""
        return [(self.t(s.at), s.revisions[revision]) for s in self.samples
                if revision in s.revisions]

    def scale_changes(self, revision: str) -> list[ScaleChange]:
        """Every change of the replicas asked for between samples, with the conditions the
        controller gave with it (why: ScalingAhead, Panicking, CapacityLimited...)."""
        changes = []
        previous: int | None = None
        for t, state in self.states(revision):
            if state.desired is None:
                continue
            if previous is not None and state.desired != previous:
                changes.append(ScaleChange(t, previous, state.desired, state.conditions))
            previous = state.desired
        return changes

    def events(self) -> list[observe.Event]:
        """Every event the observer reported, in time order."""
        return sorted((e for s in self.samples for e in s.events), key=lambda e: e.at)

    def revisions(self) -> list[str]:
        """Every revision seen by the client or the observer, in name order."""
        names = set(self.client.revisions) | {name for s in self.samples for name in s.revisions}
        names.discard("unknown")
        return sorted(names)

    def router_totals(self) -> tuple[int, int] | None:
        """Requests the router answered for the service between the first and the last sample
        that reported its counts, and the 5xx among them; None without two such samples."""
        counted = [s.router for s in self.samples if s.router is not None]
        if len(counted) < 2:
            return None
        first, last = counted[0], counted[-1]

        def delta(attribute: str) -> int:
            return sum(getattr(last[name], attribute)
                       - getattr(first.get(name), attribute, 0) for name in last)

        return delta("requests"), delta("errors")


def rolling(seconds: Sequence[Second], width: int) -> list[dict[int, int]]:
    """Each second's latency histogram merged with the `width - 1` before it."""
    return [latency.merged(s.latency for s in seconds[max(0, i - width + 1):i + 1])
            for i in range(len(seconds))]
