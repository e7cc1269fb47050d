"""The rollout driver when a source fails: a FAIL the routers' counts prove is acted on while
Prometheus is down, and a pause the outage caused ends by itself once Prometheus answers.

The driver runs over the real control core; its routers and Prometheus are fakes (the counter
and metric sources of control/ports.py), stepped one interval at a time on an injected clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoscaler.control import core, ports
from autoscaler.rollouts import driver
from policies import scaling

SERVICE, STABLE, CANARY = "model", "v1", "v2"
BOUNDS = (0.01, 0.1)
"""Every request takes 10 to 100 ms: latency is the same on both arms, only errors differ."""
PER_INTERVAL = {STABLE: 400, CANARY: 100}


@dataclass
class Replicas:
    """Replicas that are ready as soon as they are asked for."""

    desired: int = 0
    failure: str | None = None
    restarts: int = 0

    def counts(self) -> ports.ReplicaCounts:
        return ports.ReplicaCounts(ready=self.desired)

    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{9000 + i}" for i in range(self.desired)]

    def scale(self, desired: int) -> None:
        self.desired = desired

    def take_cold_starts(self) -> tuple[float, ...]:
        return ()

    def released(self, listed: frozenset[str]) -> None:
        pass

    async def close(self) -> None:
        pass


class NoGpus:
    def free_gpus(self, target: ports.RevisionTarget) -> int | None:
        return None


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


class Routers:
    """One router's cumulative counters: every interval each arm serves PER_INTERVAL more
    requests, of which ``canary_errors`` per hundred of the canary's are 5xx."""

    def __init__(self, canary_errors: int) -> None:
        self.canary_errors = canary_errors
        self.intervals = 0

    async def counters(self) -> dict[str, dict[ports.Key, ports.Counters]]:
        self.intervals += 1

        def arm(revision: str, errors_per_100: int) -> ports.Counters:
            served = PER_INTERVAL[revision] * self.intervals
            return ports.Counters(served, served * errors_per_100 // 100, (0, served, 0),
                                  BOUNDS)

        return {"http://router": {(SERVICE, STABLE): arm(STABLE, 0),
                                  (SERVICE, CANARY): arm(CANARY, self.canary_errors)}}


class Prometheus:
    """A metric source that is down (no value, the reason why) or answers 1."""

    def __init__(self) -> None:
        self.down = True
        self.queries = 0

    async def query(self, expr: str) -> ports.Reading:
        self.queries += 1
        if self.down:
            return ports.Reading(None, "Prometheus at http://127.0.0.1:9 did not answer")
        return ports.Reading(1.0)


POLICY = {
    "service": SERVICE, "stableRevision": STABLE, "canaryRevision": CANARY,
    "steps": [{"weight": w, "minDurationSeconds": 1, "minRequests": 1} for w in (20, 50, 100)],
    "analysis": {"intervalSeconds": 1, "failureLimit": 3},
    "slo": {"successRate": {"min": 99, "marginPoints": 2},
            "custom": [{"name": "router-up", "query": "sum(up)", "min": 1}]},
}


def rollout(canary_errors: int) -> tuple[driver.RolloutDriver, core.Core, Clock, Prometheus]:
    clock = Clock()
    control = core.Core(capacity=NoGpus(), clock=clock)
    policy = scaling.load_policy({"metric": "rps", "target": 100, "minReplicas": 1})
    for name, weight in ((STABLE, 100), (CANARY, 0)):
        control.upsert(ports.RevisionTarget(SERVICE, name, policy, weight), Replicas())
    control.step({})  # the decider's first count: minReplicas, ready at once
    prometheus = Prometheus()
    run = driver.RolloutDriver(driver.parse_policy(POLICY), control, Routers(canary_errors),
                               prometheus)
    return run, control, clock, prometheus


async def intervals(run: driver.RolloutDriver, clock: Clock, count: int) -> None:
    for _ in range(count):
        clock.now += 1.0
        await run.interval()


async def test_a_fail_proven_on_the_routers_counts_rolls_back_while_prometheus_is_down():
    run, control, clock, prometheus = rollout(canary_errors=20)
    await intervals(run, clock, 1)
    assert run.state.canary_weight == 20

    await intervals(run, clock, 1)  # 20 of 100 canary requests failed, none of stable's

    assert str(run.state.phase) == "RolledBack", run.state
    assert "error" in run.state.reason
    decisive = run.verdicts[-1]
    assert decisive["outcome"] == "fail"
    findings = {f["metric"]: f for f in decisive["findings"]}
    assert findings["errors"]["outcome"] == "fail"
    assert findings["router-up"]["observed"] is None and prometheus.queries == 1  # no answer
    assert (control.weight((SERVICE, STABLE)), control.weight((SERVICE, CANARY))) == (100, 0)


async def test_a_pause_for_a_source_outage_ends_by_itself_when_the_source_answers():
    run, control, clock, prometheus = rollout(canary_errors=0)
    await intervals(run, clock, 4)  # to 20 %, then three intervals with no verdict

    assert str(run.state.phase) == "Paused", run.state
    assert "did not answer 3 analyses in a row" in run.state.reason
    assert [v["outcome"] for v in run.verdicts][-3:] == ["missing"] * 3
    assert control.weight((SERVICE, CANARY)) == 20, "held, neither moved on nor rolled back"
    await intervals(run, clock, 3)
    assert str(run.state.phase) == "Paused", "no verdict yet: still paused"

    prometheus.down = False
    await intervals(run, clock, 1)

    assert (str(run.state.phase), run.state.reason) == ("Progressing", "resumed")
    assert run.verdicts[-1]["outcome"] != "missing"
    await intervals(run, clock, 10)
    assert str(run.state.phase) == "Promoted", run.state

