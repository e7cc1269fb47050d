"""The rollout state machine: which weights the canary and stable get, interval by interval.

Purely computational, like the replica decider: ``advance(inputs, state, policy)`` takes one
analysis interval's observations (the time, the latest verdict, the replicas that are ready, a
person's command), the state the previous call returned and the :mod:`policies.rollout` policy,
and returns the action and the next state. The driver in the autoscaler judges the canary
(:mod:`policies.judges`), calls this, and applies the action: publishes the weights, keeps the
replica floors, scales revisions to zero.

Phases::

    Pending ─capacity for step 0─▶ Progressing(0) ─PASS─▶ … ─▶ Progressing(last, 100 %) ─▶ Promoted
       │                                  │ FAIL or abort ─▶ RolledBack (traffic back to stable)
       │                                  │ maximum duration ─▶ Failed (traffic back to stable)
       └──── pause / metric source fails failureLimit times in a row ─▶ Paused ─resume─▶ (back)

- A step ends when it has lasted its minimum duration, the canary has served its minimum
  requests in it, and the verdict is *pass*. The last step (100 %) has no stable traffic to
  compare with, so its floors and a verdict that is not *fail* end it: that is promotion.
- *fail* rolls back at once with the sequential judge, whose every look is covered by alpha;
  the fixed-horizon judges (thresholds, compare) are acted on only once the step's floors are
  met, when their one look is due.
- Missing data is never a failure: an interval without a verdict (the metric source did not
  answer) holds the step; ``failureLimit`` of them in a row pause the rollout with the reason,
  and the first verdict after that resumes it (the step starts over).
- A canary that still has traffic is rolled back on a sequential *fail* even while paused:
  a pause stops the rollout moving forward, never the protection.
- *inconclusive* holds the step; the rollout's maximum duration bounds the wait.
- A person may promote (the canary gets 100 % as soon as it has the replicas, skipping the
  remaining analysis), abort (rolled back), pause and resume (the step starts over: its floors
  count again; paused time is not counted towards the maximum duration).

Capacity safety, the lesson of KServe #5983:

- a weight increase waits until the canary has the ready replicas the new weight needs
  (``inputs.canary_needed``; the action asks for them one step ahead, so they are usually
  there when the step ends);
- stable keeps at least the replicas it had when the rollout started until the rollout ends;
  the old stable is scaled to zero only in Promoted, which is entered with the canary carrying
  100 % on enough ready replicas;
- rollback moves the canary's share back to stable in the same action, whatever the canary's
  state: stable's capacity never shrank.

The state is plain data (policies/codec.py writes it as JSON), so a Rollout's status can hold
it and a restarted controller resumes the rollout where it was.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from policies import judges, rollout


class Phase(enum.StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED)


@dataclass(frozen=True)
class RolloutInputs:
    """One interval's observations, collected by the driver."""

    now: float
    """Seconds on a monotonic clock; never decreases from one call to the next."""
    verdict: judges.Verdict | None
    """The latest verdict; None when the metric source could not be read."""
    canary_requests: int = 0
    """Requests the canary served since the previous call."""
    canary_ready: int = 0
    """The canary's ready replicas."""
    canary_needed: int = 0
    """Ready replicas the canary needs to carry ``next_canary_weight(state, policy)``."""
    stable_ready: int = 0
    """Stable's ready replicas; the first call's count is held as stable's floor."""
    command: rollout.Command | None = None

    def __post_init__(self) -> None:
        if min(self.canary_requests, self.canary_ready, self.canary_needed,
               self.stable_ready) < 0:
            raise ValueError(f"negative observation in {self}")


@dataclass(frozen=True)
class RolloutState:
    """What a rollout remembers between intervals; start with ``RolloutState()``. Persist it in
    the Rollout's status to survive restarts."""

    phase: Phase = Phase.PENDING
    step: int = 0
    """Index of the current step (Progressing, or Paused after Progressing)."""
    canary_weight: int = 0
    started_at: float | None = None
    """When the rollout started, moved later by the time spent paused."""
    step_started_at: float = 0.0
    step_requests: int = 0
    """Canary requests served since the step started."""
    source_failures: int = 0
    """Intervals in a row without a verdict while progressing."""
    stable_floor: int = 0
    """Stable's ready replicas when the rollout started, held until it ends."""
    promoting: bool = False
    """A person asked to promote; waits only for the canary's capacity."""
    source_paused: bool = False
    """Paused because the metric source failed ``failureLimit`` times, not by a person: the
    next verdict resumes it."""
    paused_at: float | None = None
    reason: str = ""
    """Why the rollout is in its phase, or why it waits."""


class ActionKind(enum.StrEnum):
    SET_WEIGHTS = "SetWeights"
    """The weights changed: publish them."""
    WAIT_FOR_CAPACITY = "WaitForCapacity"
    """A weight increase is due but the canary lacks ready replicas; they are asked for."""
    WAIT = "Wait"
    """Nothing changes this interval."""
    DONE = "Done"
    """The rollout has ended; the action is its final, idempotent state."""


@dataclass(frozen=True)
class RolloutAction:
    """The state the driver makes true: weights, replica floors, scale-to-zero."""

    kind: ActionKind
    stable_weight: int
    canary_weight: int
    canary_replicas: int
    """Ready replicas to keep the canary at, at least (those ``next_canary_weight`` needs);
    0 once the rollout has ended and the canary is left to its scaling policy."""
    stable_replicas: int
    """Replicas to keep stable at, at least, while the rollout runs; 0 once it has ended."""
    scale_old_stable_to_zero: bool = False
    scale_canary_to_zero: bool = False
    reason: str = ""


def next_canary_weight(state: RolloutState, policy: rollout.RolloutPolicy) -> int:
    """The weight the canary gets next: the driver sizes ``canary_needed`` for it."""
    if state.phase is Phase.PROMOTED or state.promoting:
        return rollout.FULL_WEIGHT
    if state.phase.terminal:
        return 0
    if state.phase is Phase.PENDING or (state.phase is Phase.PAUSED and state.canary_weight == 0):
        return policy.steps[0].weight
    return policy.steps[min(state.step + 1, len(policy.steps) - 1)].weight


def advance(
    inputs: RolloutInputs, state: RolloutState, policy: rollout.RolloutPolicy
) -> tuple[RolloutAction, RolloutState]:
    """One interval of the rollout. Pure; the driver applies the action."""
    if state.phase.terminal:
        return _final(state, policy), state
    if state.started_at is None:
        state = dataclasses.replace(state, started_at=inputs.now, step_started_at=inputs.now,
                                    stable_floor=inputs.stable_ready)
    state = _observed(state, inputs)

    match inputs.command:
        case rollout.Command.ABORT:
            return _ended(state, Phase.ROLLED_BACK, "aborted by a person", policy)
        case rollout.Command.PAUSE if state.phase is not Phase.PAUSED or state.source_paused:
            state = _paused(state, inputs.now, "paused by a person")
        case rollout.Command.RESUME if state.phase is Phase.PAUSED:
            state = _resumed(state, inputs.now)
        case rollout.Command.PROMOTE:
            if state.phase is Phase.PAUSED:
                state = _resumed(state, inputs.now)
            state = dataclasses.replace(state, promoting=True, reason="promotion asked for")
    if state.phase is Phase.PAUSED and state.source_paused and inputs.verdict is not None:
        state = _resumed(state, inputs.now)
    if state.phase is Phase.PAUSED:
        verdict = inputs.verdict
        if (verdict is not None and verdict.outcome is judges.Outcome.FAIL
                and state.canary_weight and policy.analysis.judge.looks_continuously):
            return _ended(state, Phase.ROLLED_BACK, verdict.reason, policy)
        return _holding(state, inputs, ActionKind.WAIT, state.reason), state

    assert state.started_at is not None
    if inputs.now - state.started_at > policy.max_duration_s:
        return _ended(state, Phase.FAILED,
                      f"not promoted within maxDurationSeconds ({policy.max_duration_s:g} s)",
                      policy)
    if state.source_failures >= policy.analysis.failure_limit:
        state = _paused(state, inputs.now, f"the metric source did not answer "
                        f"{state.source_failures} analyses in a row (failureLimit "
                        f"{policy.analysis.failure_limit}); resumes when it answers",
                        source=True)
        return _holding(state, inputs, ActionKind.WAIT, state.reason), state

    verdict = inputs.verdict if state.phase is Phase.PROGRESSING else None
    floors = _floors(state, inputs.now, policy)
    acted_on = verdict is not None and (
        policy.analysis.judge.looks_continuously or floors is None)
    if verdict is not None and acted_on and verdict.outcome is judges.Outcome.FAIL:
        return _ended(state, Phase.ROLLED_BACK, verdict.reason, policy)

    waiting = _waiting_for(state, verdict if acted_on else None, floors, policy)
    if waiting:
        return _holding(state, inputs, ActionKind.WAIT, waiting), state
    target = next_canary_weight(state, policy)
    if inputs.canary_ready < inputs.canary_needed:
        reason = (f"{inputs.canary_ready} of the {inputs.canary_needed} canary replicas "
                  f"{target} % needs are ready")
        state = dataclasses.replace(state, reason=reason)
        return _holding(state, inputs, ActionKind.WAIT_FOR_CAPACITY, reason), state
    last = state.phase is Phase.PROGRESSING and state.step == len(policy.steps) - 1
    if state.promoting or last:
        promoted = dataclasses.replace(state, canary_weight=rollout.FULL_WEIGHT)
        return _ended(promoted, Phase.PROMOTED, "promotion asked for" if state.promoting else
                      "every step passed", policy)
    step = 0 if state.phase is Phase.PENDING else state.step + 1
    state = dataclasses.replace(
        state, phase=Phase.PROGRESSING, step=step, canary_weight=target,
        step_started_at=inputs.now, step_requests=0,
        reason=f"step {step + 1} of {len(policy.steps)}: {target} % to the canary")
    return _holding(state, inputs, ActionKind.SET_WEIGHTS, state.reason), state


def _observed(state: RolloutState, inputs: RolloutInputs) -> RolloutState:
    """Count the step's requests and the metric source's failures."""
    if state.phase is not Phase.PROGRESSING:
        return state
    return dataclasses.replace(
        state, step_requests=state.step_requests + inputs.canary_requests,
        source_failures=state.source_failures + 1 if inputs.verdict is None else 0)


def _floors(state: RolloutState, now: float, policy: rollout.RolloutPolicy) -> str | None:
    """What the current step still needs before it may end (duration, requests), or None."""
    if state.phase is not Phase.PROGRESSING:
        return None
    step = policy.steps[state.step]
    elapsed = now - state.step_started_at
    missing = []
    if elapsed < step.min_duration_s:
        missing.append(f"{elapsed:g} of {step.min_duration_s:g} s")
    if state.step_requests < step.min_requests:
        missing.append(f"{state.step_requests} of {step.min_requests} requests")
    return ", ".join(missing) or None


def _waiting_for(
    state: RolloutState,
    verdict: judges.Verdict | None,
    floors: str | None,
    policy: rollout.RolloutPolicy,
) -> str | None:
    """Why the rollout cannot move to the next weight yet, or None when it can."""
    if state.promoting or state.phase is Phase.PENDING:
        return None
    where = (f"step {state.step + 1} of {len(policy.steps)} at {state.canary_weight} %")
    if floors:
        return f"{where}: {floors}"
    if verdict is None:
        return f"{where}: waiting for a verdict"
    last = state.step == len(policy.steps) - 1
    if verdict.outcome is judges.Outcome.PASS or last:
        return None
    return f"{where}: {verdict.outcome} ({verdict.reason})"


def _paused(state: RolloutState, now: float, reason: str, source: bool = False) -> RolloutState:
    return dataclasses.replace(state, phase=Phase.PAUSED, paused_at=now, reason=reason,
                               source_paused=source)


def _resumed(state: RolloutState, now: float) -> RolloutState:
    """Back to where the pause began; the step starts over and the pause does not count."""
    assert state.started_at is not None and state.paused_at is not None
    return dataclasses.replace(
        state, phase=Phase.PROGRESSING if state.canary_weight else Phase.PENDING,
        started_at=state.started_at + (now - state.paused_at), paused_at=None,
        step_started_at=now, step_requests=0, source_failures=0, source_paused=False,
        reason="resumed")


def _holding(
    state: RolloutState, inputs: RolloutInputs, kind: ActionKind, reason: str
) -> RolloutAction:
    return RolloutAction(kind, rollout.FULL_WEIGHT - state.canary_weight, state.canary_weight,
                         canary_replicas=inputs.canary_needed, stable_replicas=state.stable_floor,
                         reason=reason)


def _ended(
    state: RolloutState, phase: Phase, reason: str, policy: rollout.RolloutPolicy
) -> tuple[RolloutAction, RolloutState]:
    if phase is not Phase.PROMOTED:
        state = dataclasses.replace(state, canary_weight=0)
    state = dataclasses.replace(state, phase=phase, promoting=False, paused_at=None,
                                reason=reason)
    return _final(state, policy), state


def _final(state: RolloutState, policy: rollout.RolloutPolicy) -> RolloutAction:
    promoted = state.phase is Phase.PROMOTED
    return RolloutAction(
        ActionKind.DONE, rollout.FULL_WEIGHT - state.canary_weight, state.canary_weight,
        canary_replicas=0, stable_replicas=0,
        scale_old_stable_to_zero=(
            promoted and policy.promotion.old_stable is rollout.AfterPromotion.SCALE_TO_ZERO),
        scale_canary_to_zero=(
            not promoted and policy.rollback.canary is rollout.AfterRollback.SCALE_TO_ZERO),
        reason=state.reason)
