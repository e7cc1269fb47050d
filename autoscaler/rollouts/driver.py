"""The rollout driver: runs one RolloutPolicy per service inside the controller process.

The judging (policies/judges.py) and the state machine (policies/progression.py) are pure; this
is the shell around them, and it steers revisions only through the control core's public calls
(weights, floors, parking, stickiness), so it runs unchanged over any driver. Every
``analysis.interval_s``, and at once when a person sends a command:

1. observe: the routers' exact cumulative counters (requests, 5xx, latency and time-to-first-
   byte histograms) per revision; the window is the difference from the previous interval's.
   Custom metrics are queried from Prometheus. Counters the routers did not give, or a custom
   metric without a value, make the interval's verdict ``None``: the state machine counts it
   toward ``failureLimit`` (then pauses) and never rolls back on it. Counters that were not
   read are not lost: the next window covers both intervals.
2. judge: the sequential judge adds each interval to its running state; thresholds and compare
   judge the current step's window (counters since the step began), and the state machine acts
   on them only once the step's floors are met.
3. advance the state machine, with the replicas the canary has and needs for its next weight.
4. apply: publish both weights in one route table (a rollback moves the canary's share to
   stable in the same table), hold the replica floors, and park (hold at zero) the old stable
   after a promotion or the canary after a rollback when the policy says so. The revision left
   with all the traffic keeps its floor for one more stable window, until its decider has
   caught up with its new share.

A sequential *fail* proven on the routers' counts is acted on even when a custom metric had no
value; any other outcome with a source missing is no verdict. A person's promote is sized for
100 % at once.

Every verdict, a missing one included with the reason, is kept (the last
``rollout.HISTORY_LIMIT``) for the status API, with the findings' values, bounds and
statistics. Phase and step changes are logged, one line each. What the rollout must not forget
(the state machine's state, the judge's evidence, the counter windows) is its ``Memory``, saved
to the core's state store after every interval; ``Rollouts.start(..., resume=True)`` carries on
from it after a restart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoscaler.control import core, ports
from policies import judges, progression, rollout, scaling, validation

logger = logging.getLogger(__name__)

TRANSITIONS_LIMIT = 50
"""Phase and step changes kept for status; a rollout has at most 20 steps and a few pauses."""
COMMANDS_LIMIT = 8
"""Commands waiting for the driver at once; more is a person or script hammering the API."""
COMMAND_WAIT_S = 15.0
"""How long an API call waits for its command to be applied before answering 202."""


EventHook = Callable[[str, str, str], None]
"""``(reason, note, type)`` of something a person should see: a step, a verdict changing, a
promotion or a rollback (``type`` Normal or Warning). Kubernetes writes them as Events."""

ENDING_EVENTS = {progression.Phase.PROMOTED: ("Promoted", "Normal"),
                 progression.Phase.ROLLED_BACK: ("RolledBack", "Warning"),
                 progression.Phase.FAILED: ("Failed", "Warning"),
                 progression.Phase.PAUSED: ("Paused", "Normal")}


class RolloutError(Exception):
    """A request the rollouts refuse; nothing was changed. ``problems`` name field and reason."""

    def __init__(self, status: int, message: str, problems: list[validation.Problem]) -> None:
        super().__init__(message)
        self.status = status
        self.problems = problems

    @classmethod
    def field(cls, status: int, field: str, reason: str) -> RolloutError:
        return cls(status, f"{field}: {reason}", [{"field": field, "reason": reason}])


# -- pure helpers --------------------------------------------------------------------------------


def arm_window(window: ports.Counters | None) -> judges.ArmWindow:
    """One revision's counters over a window as the judges read them."""
    if window is None or window.requests == 0:
        return judges.ArmWindow(0, 0)
    ttft = (judges.Latencies.from_histogram(window.latency_bounds_s, window.ttft_buckets)
            if window.ttft_buckets else judges.Latencies.empty())
    return judges.ArmWindow(window.requests, window.errors, judges.Latencies.from_histogram(
        window.latency_bounds_s, window.latency_buckets), ttft)


def since(now: ports.Counters | None, before: ports.Counters | None) -> ports.Counters | None:
    """What a revision served between two snapshots; all of it if it was not in the earlier
    one, None if it is not in the later one."""
    if now is None:
        return None
    return now if before is None else now - before


@dataclass(frozen=True)
class Arms:
    """The canary's and stable's cumulative counters at one moment, at one router."""

    canary: ports.Counters | None = None
    stable: ports.Counters | None = None

    def restarted_since(self, earlier: Arms) -> bool:
        return any(now is not None and before is not None and now.restarted_since(before)
                   for now, before in ((self.canary, earlier.canary),
                                       (self.stable, earlier.stable)))


Snapshot = dict[str, Arms]
"""Each router's arms, by its admin URL."""


@dataclass(frozen=True)
class Windows:
    """What canary and stable served between two snapshots, summed over the routers in both."""

    canary: ports.Counters | None
    stable: ports.Counters | None
    restarted: tuple[str, ...]
    """Routers whose counts went down: restarted in between, their windows left out."""


def windows(now: Snapshot, before: Snapshot) -> Windows:
    """The windows between two snapshots. A router new since ``before`` is left out (its
    counts start the next window); one that restarted is left out and named."""
    canary: ports.Counters | None = None
    stable: ports.Counters | None = None
    restarted = []
    for router, arms in now.items():
        earlier = before.get(router)
        if earlier is None:
            continue
        if arms.restarted_since(earlier):
            restarted.append(router)
            continue
        canary = _added(canary, since(arms.canary, earlier.canary))
        stable = _added(stable, since(arms.stable, earlier.stable))
    return Windows(canary, stable, tuple(restarted))


def _added(total: ports.Counters | None, more: ports.Counters | None) -> ports.Counters | None:
    if more is None:
        return total
    return more if total is None else total + more


@dataclass(frozen=True)
class Memory:
    """What a rollout must not forget when its controller restarts: kept in the state store
    (a Rollout's status on Kubernetes) after every interval, and resumed from."""

    state: progression.RolloutState = dataclasses.field(default_factory=progression.RolloutState)
    judged: judges.SequentialState = dataclasses.field(default_factory=judges.SequentialState)
    """The sequential judge's running statistics: a resumed rollout keeps its evidence."""
    last: Snapshot | None = None
    """The counters the next window starts from."""
    step_base: Snapshot = dataclasses.field(default_factory=dict)
    """The counters at the start of the current step (the fixed-horizon judges' window)."""
    started_at: float | None = None
    """When the first interval ran, on the controller's clock."""
    weights_before: dict[str, int] = dataclasses.field(default_factory=dict)
    """The service's weights when the rollout started: what ``Rollouts.restore`` gives back."""


def canary_needed(weight: int, service_demand: float, policy: scaling.ScalingPolicy) -> int:
    """Ready replicas the canary needs to carry `weight` % of the service's demand (in its
    policy's metric, summed over the service's revisions), as its decider would size them;
    at least 1 for any weight, and never more than its maxReplicas."""
    if weight <= 0:
        return 0
    if policy.metric_kind is scaling.MetricKind.CUSTOM:
        needed = 1  # its signal is not the routers' load: its own decider will size it
    else:
        needed = max(1, scaling.replicas_for(service_demand * weight / 100, policy))
    ceiling = policy.replica_ceiling
    return needed if ceiling is None else min(needed, ceiling)


def finding_json(finding: judges.Finding) -> dict[str, Any]:
    return {
        "metric": finding.metric, "outcome": str(finding.outcome), "reason": finding.reason,
        "observed": finding.observed, "baseline": finding.baseline, "bound": finding.bound,
        "unit": finding.unit, "statistic": finding.statistic, "p_value": finding.p_value,
        "likelihood_ratio": finding.likelihood_ratio,
        "interval": list(finding.interval) if finding.interval else None,
        "canary_samples": finding.canary_samples, "stable_samples": finding.stable_samples,
    }


def parse_policy(data: Any) -> rollout.RolloutPolicy:
    """``rollout.parse_document``, refused as a RolloutError(400) naming each field."""
    try:
        return rollout.parse_document(data)
    except validation.Invalid as error:
        raise RolloutError(400, "invalid rollout", error.problems) from None


# -- one rollout ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """One interval's measurements: the verdict for the state machine and what it rests on."""

    verdict: judges.Verdict | None
    judged: judges.Verdict | None
    """What the judge said, also when ``verdict`` is None because a metric had no value."""
    canary_requests: int
    problems: tuple[str, ...]
    """Why there is no verdict: the routers or Prometheus did not answer."""


class RolloutDriver:
    """One rollout: its policy, its state, its interval loop and what it recorded."""

    def __init__(self, policy: rollout.RolloutPolicy, control: core.Core,
                 counters: ports.CounterSource, metrics: ports.MetricSource | None,
                 memory: Memory | None = None, wall: Callable[[], float] = time.time,
                 on_event: EventHook | None = None) -> None:
        self.policy = policy
        self.on_event = on_event
        self.control = control
        self.counters = counters
        self.metrics = metrics
        self.clock = control.clock
        self.wall = wall
        self.memory = memory or Memory()
        self.action: progression.RolloutAction | None = None
        self.created_at = wall()
        self.verdicts: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=rollout.HISTORY_LIMIT)
        self.transitions: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=TRANSITIONS_LIMIT)
        self.first_interval = asyncio.Event()
        """Set once the first interval is applied: the API answers a start with its result."""
        self._commands: collections.deque[
            tuple[rollout.Command, asyncio.Future[None]]] = collections.deque()
        self._wake = asyncio.Event()

    @property
    def state(self) -> progression.RolloutState:
        return self.memory.state

    @property
    def service(self) -> str:
        return self.policy.service

    @property
    def _canary(self) -> ports.Key:
        return (self.policy.service, self.policy.canary_revision)

    @property
    def _stable(self) -> ports.Key:
        return (self.policy.service, self.policy.stable_revision)

    def _remember(self, **changes: Any) -> None:
        self.memory = dataclasses.replace(self.memory, **changes)
        self.control.store.save(ports.StateKey.rollout(self.service), self.memory)

    # the loop

    async def run(self) -> None:
        """Interval after interval until the rollout ends; commands wake it early."""
        interval = self.policy.analysis.interval_s
        next_at = self.clock()
        try:
            while not self.state.phase.terminal:
                command, done = self._commands.popleft() if self._commands else (None, None)
                try:
                    await self.interval(command)
                    if command is not None:  # answer once the routers serve its weights
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.control.published(), COMMAND_WAIT_S)
                except Exception as error:  # a bug must not stop the loop
                    logger.exception("rollout %s: interval failed", self.service)
                    if done is not None and not done.done():
                        done.set_exception(error)
                finally:
                    self.first_interval.set()
                    if done is not None and not done.done():
                        done.set_result(None)
                if self._commands:
                    continue
                next_at = max(next_at + interval, self.clock())
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), next_at - self.clock())
        finally:
            for _, done in self._commands:
                done.cancel()
            self._commands.clear()
        await self._settle()

    async def _settle(self) -> None:
        """Release the floor ``apply`` left on the revision that has all the traffic, after
        its stable window: its decider's count was sized for its old share and catches up only
        over that window. A new rollout of the service cancels this first."""
        survivor = self._survivor()
        key = (self.policy.service, survivor)
        await asyncio.sleep(self.control.policy(key).stable_window_s)
        if self.control.has(key):
            self.control.hold(self.policy.service, survivor, floor=0)

    def _survivor(self) -> str:
        """The revision that has all the traffic once the rollout has ended."""
        if self.state.phase is progression.Phase.PROMOTED:
            return self.policy.canary_revision
        return self.policy.stable_revision

    async def command(self, command: rollout.Command) -> bool:
        """Hand a person's command to the next interval, which runs at once; True once it has
        been applied, False if it is still queued after COMMAND_WAIT_S."""
        if self.state.phase.terminal:
            raise RolloutError.field(409, "service", f"the rollout of {self.service} has ended "
                                     f"({self.state.phase}); start a new one")
        if len(self._commands) >= COMMANDS_LIMIT:
            raise RolloutError.field(409, "command", f"{COMMANDS_LIMIT} commands are already "
                                     "waiting; try again once they are applied")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commands.append((command, done))
        self._wake.set()
        finished, _ = await asyncio.wait({done}, timeout=COMMAND_WAIT_S)
        if not finished:
            return False
        if done.cancelled():
            raise RolloutError.field(409, "command", f"not applied: the rollout ended first "
                                     f"({self.state.phase})")
        if done.exception() is not None:
            raise RolloutError.field(500, "command", "not applied: the analysis interval "
                                     "failed (see the controller's log); try again")
        return True

    async def interval(self, command: rollout.Command | None = None) -> None:
        """Observe, judge, advance, apply: one analysis interval."""
        now = self.clock()
        if self.memory.started_at is None:
            self._remember(started_at=now)
        before = self.state
        try:
            observation = await self.observe(before)
        except Exception as error:  # judged nothing; the state machine still runs its clock
            logger.exception("rollout %s: observing failed", self.service)
            observation = Observation(None, None, 0, (f"observing failed: {error!r}"[:500],))
        self._record_verdict(now, before, observation)
        inputs = progression.RolloutInputs(
            now=now, verdict=observation.verdict, canary_requests=observation.canary_requests,
            canary_ready=self.control.ready(self._canary),
            stable_ready=self.control.ready(self._stable),
            canary_needed=self._canary_needed(
                rollout.FULL_WEIGHT if command is rollout.Command.PROMOTE
                else progression.next_canary_weight(before, self.policy)),
            command=command)
        self.action, state = progression.advance(inputs, before, self.policy)
        moved = before.started_at is None or (state.phase, state.step, state.canary_weight) != (
            before.phase, before.step, before.canary_weight)
        self._remember(state=state, **({"step_base": self.memory.last or {}} if moved else {}))
        self.apply(self.action)
        if moved:
            self._record_transition(now)

    # observing and judging

    async def observe(self, state: progression.RolloutState) -> Observation:
        problems: list[str] = []
        try:
            counters = await self.counters.counters()
        except Exception as error:  # any router not answering: no verdict; the window waits
            now = None
            problems.append(f"routers did not answer: {error!r}"[:500])
        else:
            now = {router: Arms(mine.get(self._canary), mine.get(self._stable))
                   for router, mine in counters.items()}
        previous = self.memory.last
        if now is not None:
            self._remember(last=now)
        if state.phase.terminal or state.canary_weight == 0:
            return Observation(None, None, 0, ())  # nothing to judge: the canary has no traffic
        if now is None or previous is None:
            problems.append("no earlier counters to take a window from")
            return Observation(None, None, 0, tuple(problems))
        window = windows(now, previous)
        if window.restarted:
            # A restarted router's counts start over: this interval's window is not whole, so
            # it is not judged, and the step's window starts again at that router.
            base = {**self.memory.step_base, **{r: now[r] for r in window.restarted}}
            self._remember(step_base=base)
            problems.append(f"router {', '.join(window.restarted)} restarted; its counts "
                            "start over, so this interval is not judged")
            return Observation(None, None, 0, tuple(problems))
        canary_requests = window.canary.requests if window.canary is not None else 0
        custom, missing = await self._custom_metrics()
        problems += missing
        deciding = max(1, progression.next_canary_weight(state, self.policy))
        if self.policy.analysis.judge is rollout.Judge.SEQUENTIAL:
            judged, sequential = judges.sequential(
                judges.Window(arm_window(window.canary), arm_window(window.stable), custom,
                              deciding), self.memory.judged, self.policy)
            self._remember(judged=sequential)
        else:
            step = windows(now, self.memory.step_base)
            judge = (judges.thresholds if self.policy.analysis.judge is rollout.Judge.THRESHOLDS
                     else judges.compare)
            judged = judge(judges.Window(arm_window(step.canary), arm_window(step.stable),
                                         custom, deciding), self.policy)
        # A source that did not answer leaves its metrics inconclusive, but what the routers'
        # counts prove still stands: a fail is acted on, anything else waits for all sources.
        verdict = judged if not problems or judged.outcome is judges.Outcome.FAIL else None
        return Observation(verdict, judged, canary_requests, tuple(problems))

    async def _custom_metrics(self) -> tuple[dict[str, float | None], list[str]]:
        metrics = self.policy.slo.custom
        if not metrics:
            return {}, []
        if self.metrics is None:  # refused at start; kept as a reason, never as a failure
            return {}, ["no Prometheus is configured (controller.prometheus_url)"]
        source = self.metrics
        readings = await asyncio.gather(*(source.query(m.query) for m in metrics))
        values = {m.name: r.value for m, r in zip(metrics, readings, strict=True)}
        problems = [f"{m.name}: {r.problem or 'no value'}"[:500]
                    for m, r in zip(metrics, readings, strict=True) if r.value is None]
        return values, problems

    def _canary_needed(self, weight: int) -> int:
        policy = self.control.policy(self._canary)
        demand = self.control.service_demand(self.service, policy.metric_kind)
        return canary_needed(weight, demand, policy)

    # acting

    def apply(self, action: progression.RolloutAction) -> None:
        """Make the action true in the controller: weights (one table), floors, parking."""
        policy, control = self.policy, self.control
        control.set_weights(policy.service, {policy.stable_revision: action.stable_weight,
                                             policy.canary_revision: action.canary_weight})
        if action.kind is not progression.ActionKind.DONE:
            control.hold(policy.service, policy.canary_revision, floor=action.canary_replicas)
            control.hold(policy.service, policy.stable_revision, floor=action.stable_replicas)
            if policy.stickiness is not None:
                control.set_sticky(policy.service, policy.stickiness)
            return
        control.set_sticky(policy.service, None)
        # The revision left with all the traffic keeps the replicas it had for the rollout
        # (stable's floor after a rollback, what 100 % needs after a promotion) until _settle:
        # dropping the floor with the weight change would retire ready replicas as it moves.
        survivor = self._survivor()
        settled = (self._canary_needed(rollout.FULL_WEIGHT)
                   if survivor == policy.canary_revision else self.state.stable_floor)
        floors = {survivor: max(settled, control.floor((policy.service, survivor)))}
        control.hold(policy.service, policy.canary_revision,
                     floor=floors.get(policy.canary_revision, 0),
                     parked=self._parked(policy.canary_revision)
                     if action.scale_canary_to_zero else None)
        control.hold(policy.service, policy.stable_revision,
                     floor=floors.get(policy.stable_revision, 0),
                     parked=self._parked(policy.stable_revision)
                     if action.scale_old_stable_to_zero else None)

    def _parked(self, revision: str) -> str:
        """Why ``revision`` is held at zero once the rollout has ended: the reason routers give
        requests pinned to it, so a sentence a client can read."""
        state = self.state
        if state.phase is progression.Phase.PROMOTED:
            why = f"{self.policy.canary_revision} was promoted in its place"
        elif state.phase is progression.Phase.ROLLED_BACK:
            why = f"its rollout was rolled back ({state.reason})"
        else:
            why = f"its rollout failed ({state.reason})"
        return f"revision {revision} is parked at zero replicas: {why}"

    # recording

    def _elapsed(self, now: float) -> float:
        started = self.memory.started_at
        return round(now - (started if started is not None else now), 3)

    def _record_verdict(self, now: float, state: progression.RolloutState,
                        observation: Observation) -> None:
        if observation.judged is None and not observation.problems:
            return  # nothing judged, nothing missing: the canary had no traffic to judge
        judged = observation.judged
        if observation.verdict is not None:
            outcome, reason = str(observation.verdict.outcome), observation.verdict.reason
        else:
            outcome, reason = "missing", "; ".join(observation.problems)
        last = self.verdicts[-1] if self.verdicts else None
        if last is None or last["outcome"] != outcome or (
                outcome == "missing" and last["reason"] != reason):  # why data is missing
            logger.info("rollout %s: verdict %s at %d %% (%s)", self.service, outcome,
                        state.canary_weight, reason)
            self._event("Verdict", f"{outcome} at {state.canary_weight} %: {reason}",
                        "Warning" if outcome == str(judges.Outcome.FAIL) else "Normal")
        self.verdicts.append({
            "at": self.wall(), "elapsed_s": self._elapsed(now), "step": state.step + 1,
            "canary_weight": state.canary_weight, "outcome": outcome, "reason": reason,
            "judged": str(judged.outcome) if judged else None,
            "findings": [finding_json(f) for f in judged.findings] if judged else [],
        })

    def _record_transition(self, now: float) -> None:
        state = self.state
        entry = {"at": self.wall(), "elapsed_s": self._elapsed(now), "phase": str(state.phase),
                 "step": state.step + 1, "canary_weight": state.canary_weight,
                 "reason": state.reason}
        self.transitions.append(entry)
        logger.info("rollout %s: %s, step %d/%d, %s at %d %% (%s)", self.service, state.phase,
                    state.step + 1, len(self.policy.steps), self.policy.canary_revision,
                    state.canary_weight, state.reason)
        reason, kind = ENDING_EVENTS.get(state.phase, ("Step", "Normal"))
        self._event(reason, f"step {state.step + 1}/{len(self.policy.steps)}, "
                    f"{self.policy.canary_revision} at {state.canary_weight} %: {state.reason}",
                    kind)

    def _event(self, reason: str, note: str, kind: str) -> None:
        if self.on_event is not None:
            self.on_event(reason, note, kind)

    def status(self, verdicts: int = 10) -> dict[str, Any]:
        state, policy = self.state, self.policy
        now = self.clock()
        action = self.action
        return {
            "service": policy.service, "stable_revision": policy.stable_revision,
            "canary_revision": policy.canary_revision, "phase": str(state.phase),
            "step": state.step + 1 if state.phase is not progression.Phase.PENDING else 0,
            "steps": len(policy.steps), "canary_weight": state.canary_weight,
            "stable_weight": rollout.FULL_WEIGHT - state.canary_weight,
            "action": str(action.kind) if action else None,
            "reason": state.reason or (action.reason if action else ""),
            "judge": str(policy.analysis.judge), "interval_s": policy.analysis.interval_s,
            "created_at": self.created_at,
            "elapsed_s": self._elapsed(now) if not state.phase.terminal else (
                self.transitions[-1]["elapsed_s"] if self.transitions else 0.0),
            "verdicts": list(self.verdicts)[-verdicts:] if verdicts > 0 else [],
            "transitions": list(self.transitions),
        }


# -- every service's rollout ---------------------------------------------------------------------


class Rollouts:
    """The rollouts of the core's services: at most one running per service."""

    def __init__(self, control: core.Core, counters: ports.CounterSource,
                 metrics: ports.MetricSource | None = None,
                 metrics_missing: str = "no metric source is configured",
                 on_event: Callable[[str, str, str, str], None] | None = None) -> None:
        self.control = control
        self.counters = counters
        self.metrics = metrics
        self.on_event = on_event
        """``(service, reason, note, type)`` for every driver's events."""
        self.metrics_missing = metrics_missing
        """Why a rollout with custom metrics is refused when there is no metric source."""
        self.drivers: dict[str, RolloutDriver] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        """Each service's latest driver task, running or settling."""

    def get(self, service: str) -> RolloutDriver:
        driver = self.drivers.get(service)
        if driver is None:
            raise RolloutError.field(404, "service", f"no rollout for service {service!r}")
        return driver

    async def start(self, data: Any, resume: bool = False, wait: bool = True) -> RolloutDriver:
        """Check a policy against the core and start it; RolloutError changes nothing. With
        ``resume``, a rollout of the service whose memory the state store holds carries on
        from it (its step, weights and evidence) instead of starting over."""
        policy = parse_policy(data)
        memory = None
        if resume:
            memory = self.control.store.load(ports.StateKey.rollout(policy.service), Memory)
        if memory is None or memory.state.phase.terminal:
            self._check(policy)
            memory = Memory(weights_before=self._weights(policy.service))
        driver = self._driver(policy, memory)
        self.drivers[policy.service] = driver  # no await since _check: no race with another
        settling = self._running.pop(policy.service, None)
        if settling is not None:  # an ended rollout holding a floor: the new one takes over
            settling.cancel()
        task = asyncio.create_task(driver.run(), name=f"rollout-{policy.service}")
        self._running[policy.service] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        logger.info("rollout %s: started, %s → %s in %d steps", policy.service,
                    policy.stable_revision, policy.canary_revision, len(policy.steps))
        if wait:  # the API answers a start with the first interval's result
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(driver.first_interval.wait(), COMMAND_WAIT_S)
        return driver

    def _driver(self, policy: rollout.RolloutPolicy, memory: Memory | None) -> RolloutDriver:
        hook = self.on_event
        on_event = (None if hook is None else
                    lambda reason, note, kind: hook(policy.service, reason, note, kind))
        return RolloutDriver(policy, self.control, self.counters, self.metrics, memory,
                             on_event=on_event)

    def adopt(self, data: Any, memory: Memory) -> RolloutDriver:
        """A rollout that ended before this controller started (its memory from the state
        store): its final weights and parking hold again, nothing runs."""
        policy = parse_policy(data)
        if not memory.state.phase.terminal:
            raise ValueError("adopt() takes an ended rollout; resume a running one with start()")
        driver = self._driver(policy, memory)
        self.drivers[policy.service] = driver
        driver.apply(progression.advance(
            progression.RolloutInputs(now=self.control.clock(), verdict=None), memory.state,
            policy)[0])
        return driver

    def forget(self, service: str) -> None:
        """The rollout's resource is gone: stop it where it is (weights stay as they are)."""
        self.drivers.pop(service, None)
        task = self._running.pop(service, None)
        if task is not None:
            task.cancel()

    def _check(self, policy: rollout.RolloutPolicy) -> None:
        names = self.control.revisions_of(policy.service)
        if not names:
            raise RolloutError.field(400, "service", f"no service {policy.service!r} (services:"
                                     f" {', '.join(self.control.services())})")
        for field, name in (("stableRevision", policy.stable_revision),
                            ("canaryRevision", policy.canary_revision)):
            if name not in names:
                raise RolloutError.field(400, field, f"no revision {name!r} in service "
                                         f"{policy.service!r} (revisions: {', '.join(names)})")
        if policy.slo.custom and self.metrics is None:
            raise RolloutError.field(400, "slo.custom", self.metrics_missing)
        running = self.drivers.get(policy.service)
        if running is not None and not running.state.phase.terminal:
            raise RolloutError.field(409, "service", f"a rollout of {policy.service!r} to "
                                     f"{running.policy.canary_revision} is {running.state.phase};"
                                     " promote or abort it first")
        weights = {name: self.control.weight((policy.service, name)) for name in names}
        others = [f"{name} ({weight})" for name, weight in weights.items()
                  if weight and name not in (policy.stable_revision, policy.canary_revision)]
        if others:
            raise RolloutError.field(409, "service", "the service's traffic must be on "
                                     "stableRevision and canaryRevision only; also weighted: "
                                     + ", ".join(others))
        if weights[policy.stable_revision] == 0:
            raise RolloutError.field(409, "stableRevision", f"{policy.stable_revision} has "
                                     "weight 0: the stable revision must be the one serving")

    async def restore(self, service: str) -> dict[str, int]:
        """After a rollout of ``service`` ended (aborted, rolled back, failed or promoted): give
        its revisions the weights they had before it started and park none, without
        restarting anything. Returns the weights, once the routers serve them."""
        driver = self.get(service)
        if not driver.state.phase.terminal:
            raise RolloutError.field(409, "service", f"the rollout of {service} is "
                                     f"{driver.state.phase}: promote or abort it first")
        settling = self._running.pop(service, None)
        if settling is not None:  # its floor on the survivor goes with it
            settling.cancel()
        weights = {name: weight for name, weight in driver.memory.weights_before.items()
                   if self.control.has((service, name))}
        for name in self.control.revisions_of(service):
            self.control.hold(service, name, floor=0, parked=None)
        self.control.set_weights(service, weights)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.control.published(), COMMAND_WAIT_S)
        logger.info("rollout %s: restored the weights from before it: %s", service,
                    ", ".join(f"{name} {weight} %" for name, weight in weights.items()))
        return weights

    def _weights(self, service: str) -> dict[str, int]:
        return {name: self.control.weight((service, name))
                for name in self.control.revisions_of(service)}

    def status(self, verdicts: int = 10) -> list[dict[str, Any]]:
        return [driver.status(verdicts) for driver in self.drivers.values()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
