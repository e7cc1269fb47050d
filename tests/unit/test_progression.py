"""The rollout state machine of policies/progression.py, call by call.

Time is the ``now`` each test passes; nothing sleeps. Unless a test says otherwise the policy has
three steps — 10 %, 50 %, 100 % — each of at least 30 s and 100 canary requests, the sequential
judge and a failure limit of 4, and the canary has the replicas it needs. Verdicts are made up:
what the judges rule is tested in test_judges.py.
"""

import dataclasses

import pytest

from policies import judges, progression, rollout

Outcome = judges.Outcome
Phase = progression.Phase
Kind = progression.ActionKind
Command = rollout.Command


def policy(judge="sequential", **fields):
    return rollout.RolloutPolicy(
        service="model", stable_revision="v1", canary_revision="v2",
        steps=[rollout.Step(weight=w) for w in (10, 50, 100)],
        analysis=rollout.Analysis(judge=judge), **fields)


def verdict(outcome, reason=None):
    finding = judges.Finding("errors", outcome, reason or f"made-up {outcome}")
    return judges.Verdict(rollout.Judge.SEQUENTIAL, outcome, (finding,))


PASS, FAIL, INCONCLUSIVE = (verdict(o) for o in Outcome)


def tick(state, now, given=PASS, *, requests=100, ready=1, needed=1, stable=4, command=None,
         the_policy=None):
    inputs = progression.RolloutInputs(now=now, verdict=given, canary_requests=requests,
                                    canary_ready=ready, canary_needed=needed, stable_ready=stable,
                                    command=command)
    return progression.advance(inputs, state, the_policy or policy())


def started(the_policy=None):
    """A rollout that entered its first step (10 %) at t = 0 with 4 stable replicas."""
    action, state = tick(progression.RolloutState(), 0.0, None, the_policy=the_policy)
    assert (action.kind, state.phase, state.canary_weight) == (Kind.SET_WEIGHTS,
                                                               Phase.PROGRESSING, 10)
    return state


def at_step(index, the_policy=None):
    """Progressing in step ``index`` since t = 0 (steps before it passed instantly)."""
    return dataclasses.replace(started(the_policy), step=index,
                               canary_weight=(10, 50, 100)[index])


# -- starting and stepping -----------------------------------------------------------------------

def test_the_first_step_waits_for_the_canary_replicas():
    action, state = tick(progression.RolloutState(), 0.0, None, ready=0, needed=2)
    assert (action.kind, action.stable_weight, action.canary_weight) == (
        Kind.WAIT_FOR_CAPACITY, 100, 0)
    assert (action.canary_replicas, state.phase) == (2, Phase.PENDING)
    assert action.reason == "0 of the 2 canary replicas 10 % needs are ready"
    action, state = tick(state, 5.0, None, ready=2, needed=2)
    assert (action.kind, action.stable_weight, action.canary_weight) == (Kind.SET_WEIGHTS, 90, 10)
    assert (state.phase, state.step, state.step_started_at) == (Phase.PROGRESSING, 0, 5.0)


@pytest.mark.parametrize(
    ("now", "requests", "given", "kind", "reason"),
    [
        pytest.param(20, 200, PASS, Kind.WAIT, "step 1 of 3 at 10 %: 20 of 30 s",
                     id="before-min-duration"),
        pytest.param(30, 60, PASS, Kind.WAIT, "step 1 of 3 at 10 %: 60 of 100 requests",
                     id="before-min-requests"),
        pytest.param(30, 100, INCONCLUSIVE, Kind.WAIT,
                     "step 1 of 3 at 10 %: inconclusive (errors: made-up inconclusive)",
                     id="inconclusive-holds"),
        pytest.param(30, 100, None, Kind.WAIT, "step 1 of 3 at 10 %: waiting for a verdict",
                     id="no-verdict-holds"),
        pytest.param(30, 100, PASS, Kind.SET_WEIGHTS, "step 2 of 3: 50 % to the canary",
                     id="pass-after-both-floors"),
    ],
)
def test_a_step_ends_on_a_pass_after_its_minimum_duration_and_requests(
        now, requests, given, kind, reason):
    action, _ = tick(started(), now, given, requests=requests)
    assert (action.kind, action.reason) == (kind, reason)
    assert action.canary_weight == (50 if kind is Kind.SET_WEIGHTS else 10)


def test_requests_count_over_the_whole_step():
    state = started()
    for now in (5, 10, 15):
        action, state = tick(state, now, PASS, requests=30)
    assert (action.kind, state.step_requests) == (Kind.WAIT, 90)
    action, state = tick(state, 30, PASS, requests=10)
    assert (action.kind, action.canary_weight, state.step_requests) == (Kind.SET_WEIGHTS, 50, 0)


def test_a_weight_increase_waits_for_ready_canary_replicas():
    action, state = tick(started(), 30, PASS, ready=1, needed=5)
    assert (action.kind, action.canary_weight, action.canary_replicas) == (
        Kind.WAIT_FOR_CAPACITY, 10, 5)
    assert action.reason == "1 of the 5 canary replicas 50 % needs are ready"
    action, state = tick(state, 35, PASS, ready=5, needed=5)
    assert (action.kind, action.canary_weight) == (Kind.SET_WEIGHTS, 50)


def test_every_step_to_promotion():
    state = started()
    for now, weight in ((30, 50), (60, 100)):
        action, state = tick(state, now, PASS)
        assert (action.kind, action.stable_weight, action.canary_weight) == (
            Kind.SET_WEIGHTS, 100 - weight, weight)
        assert action.stable_replicas == 4  # stable keeps its capacity until promotion
    action, state = tick(state, 90, INCONCLUSIVE)  # at 100 % there is no stable to compare with
    assert (state.phase, state.reason) == (Phase.PROMOTED, "every step passed")
    assert action == progression.RolloutAction(Kind.DONE, 0, 100, canary_replicas=0,
                                            stable_replicas=0, scale_old_stable_to_zero=True,
                                            reason="every step passed")


def test_promotion_waits_for_the_canary_to_carry_everything():
    action, state = tick(at_step(2), 30, INCONCLUSIVE, ready=3, needed=4)
    assert (action.kind, action.canary_weight, action.stable_replicas) == (
        Kind.WAIT_FOR_CAPACITY, 100, 4)
    action, state = tick(state, 35, INCONCLUSIVE, ready=4, needed=4)
    assert state.phase is Phase.PROMOTED


def test_promotion_may_keep_the_old_stable():
    the_policy = policy(promotion=rollout.Promotion(old_stable="keep"))
    action, _ = tick(at_step(2, the_policy), 30, PASS, the_policy=the_policy)
    assert (action.kind, action.scale_old_stable_to_zero) == (Kind.DONE, False)


def test_stable_keeps_the_replicas_it_started_with():
    action, state = tick(started(), 5, PASS, stable=1)
    assert (state.stable_floor, action.stable_replicas) == (4, 4)


def test_the_canary_is_asked_for_the_next_weights_replicas_ahead():
    action, _ = tick(started(), 5, PASS, ready=1, needed=3)
    assert (action.kind, action.canary_replicas) == (Kind.WAIT, 3)


@pytest.mark.parametrize(
    ("state", "weight"),
    [
        pytest.param(progression.RolloutState(), 10, id="pending-first-step"),
        pytest.param(at_step(0), 50, id="progressing-next-step"),
        pytest.param(at_step(2), 100, id="last-step-itself"),
        pytest.param(dataclasses.replace(at_step(0), promoting=True), 100, id="promoting"),
        pytest.param(progression.RolloutState(phase=Phase.ROLLED_BACK), 0, id="rolled-back"),
        pytest.param(progression.RolloutState(phase=Phase.PROMOTED), 100, id="promoted"),
    ],
)
def test_next_canary_weight(state, weight):
    assert progression.next_canary_weight(state, policy()) == weight


# -- failing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ready", [0, 5], ids=["canary-down", "canary-up"])
def test_rollback_sends_the_canarys_share_to_stable_at_once(ready):
    action, state = tick(at_step(1), 3, verdict(Outcome.FAIL, "error rate 5 % vs 0.5 %"),
                         ready=ready, needed=5)
    assert (state.phase, state.reason) == (Phase.ROLLED_BACK, "errors: error rate 5 % vs 0.5 %")
    assert action == progression.RolloutAction(Kind.DONE, 100, 0, canary_replicas=0,
                                            stable_replicas=0, scale_canary_to_zero=True,
                                            reason="errors: error rate 5 % vs 0.5 %")


def test_rollback_may_keep_the_canary_for_debugging():
    the_policy = policy(rollback=rollout.Rollback(canary="keep"))
    action, _ = tick(started(the_policy), 5, FAIL, the_policy=the_policy)
    assert (action.canary_weight, action.scale_canary_to_zero) == (0, False)


def test_a_fixed_horizon_judge_is_heard_only_at_the_end_of_the_step():
    the_policy = policy(judge="compare")
    state = started(the_policy)
    action, state = tick(state, 10, FAIL, the_policy=the_policy)
    assert (action.kind, state.phase) == (Kind.WAIT, Phase.PROGRESSING)
    action, state = tick(state, 30, FAIL, the_policy=the_policy)
    assert state.phase is Phase.ROLLED_BACK


def test_a_verdict_before_the_canary_has_traffic_is_ignored():
    action, state = tick(progression.RolloutState(), 0, FAIL, ready=0, needed=1)
    assert (action.kind, state.phase) == (Kind.WAIT_FOR_CAPACITY, Phase.PENDING)


def test_missing_data_pauses_after_the_failure_limit_and_never_rolls_back():
    state = started()
    for now in (5, 10, 15):
        action, state = tick(state, now, None)
        assert (action.kind, action.canary_weight, state.phase) == (
            Kind.WAIT, 10, Phase.PROGRESSING)
    action, state = tick(state, 20, None)
    assert (state.phase, action.canary_weight, action.stable_weight) == (Phase.PAUSED, 10, 90)
    assert state.reason == ("the metric source did not answer 4 analyses in a row "
                            "(failureLimit 4); resumes when it answers")
    for now in range(25, 4000, 25):  # paused, it waits for the source, not for maxDuration
        action, state = tick(state, now, None)
    assert (state.phase, action.kind, action.canary_weight) == (Phase.PAUSED, Kind.WAIT, 10)
    action, state = tick(state, 4000, INCONCLUSIVE)  # the source is back
    assert (state.phase, state.step_started_at, action.canary_weight) == (
        Phase.PROGRESSING, 4000, 10)


@pytest.mark.parametrize("command", [None, Command.PAUSE], ids=["source-outage", "person"])
def test_a_paused_canary_with_traffic_is_still_rolled_back_on_a_fail(command):
    state = started()
    if command is None:
        for now in (5, 10, 15, 20):
            _, state = tick(state, now, None)
    else:
        _, state = tick(state, 20, INCONCLUSIVE, command=command)
    assert state.phase is Phase.PAUSED
    action, state = tick(state, 25, FAIL)
    assert (state.phase, action.stable_weight, action.canary_weight) == (
        Phase.ROLLED_BACK, 100, 0)


def test_a_person_pausing_during_a_source_outage_keeps_it_paused():
    state = started()
    for now in (5, 10, 15, 20):
        _, state = tick(state, now, None)
    _, state = tick(state, 25, None, command=Command.PAUSE)
    _, state = tick(state, 30, PASS)
    assert (state.phase, state.reason) == (Phase.PAUSED, "paused by a person")


def test_a_verdict_resets_the_count_of_missing_data():
    state = started()
    for now, given in ((5, None), (10, None), (15, None), (20, INCONCLUSIVE), (25, None)):
        _, state = tick(state, now, given)
    assert (state.phase, state.source_failures) == (Phase.PROGRESSING, 1)


def test_exceeding_the_maximum_duration_fails_back_to_stable():
    the_policy = policy(max_duration_s=600)
    action, state = tick(started(the_policy), 601, INCONCLUSIVE, the_policy=the_policy)
    assert (state.phase, action.stable_weight, action.canary_weight) == (Phase.FAILED, 100, 0)
    assert state.reason == "not promoted within maxDurationSeconds (600 s)"


# -- a person's commands ---------------------------------------------------------------------------

def test_pause_holds_and_resume_starts_the_step_over():
    action, state = tick(started(), 25, PASS, command=Command.PAUSE)
    assert (state.phase, action.kind, action.canary_weight, state.reason) == (
        Phase.PAUSED, Kind.WAIT, 10, "paused by a person")
    action, state = tick(state, 100, PASS)  # no progress while paused
    assert (state.phase, action.canary_weight) == (Phase.PAUSED, 10)
    action, state = tick(state, 400, PASS, command=Command.RESUME)
    assert (state.phase, state.step_started_at, state.started_at) == (
        Phase.PROGRESSING, 400, 375)  # the 375 s paused do not count towards maxDuration
    assert action.kind is Kind.WAIT  # the step's floors count again from the resume
    action, state = tick(state, 430, PASS)
    assert (action.kind, action.canary_weight) == (Kind.SET_WEIGHTS, 50)


def test_resume_while_pending_returns_to_pending():
    _, state = tick(progression.RolloutState(), 0, None, ready=0, command=Command.PAUSE)
    assert state.phase is Phase.PAUSED
    _, state = tick(state, 5, None, ready=0, command=Command.RESUME)
    assert state.phase is Phase.PENDING


@pytest.mark.parametrize("ready", [4, 1], ids=["capacity-ready", "capacity-short"])
def test_promote_skips_the_analysis_but_not_the_capacity(ready):
    action, state = tick(started(), 5, INCONCLUSIVE, ready=ready, needed=4,
                         command=Command.PROMOTE)
    if ready < 4:
        assert (action.kind, action.canary_weight, action.canary_replicas) == (
            Kind.WAIT_FOR_CAPACITY, 10, 4)
        assert progression.next_canary_weight(state, policy()) == 100
        action, state = tick(state, 10, INCONCLUSIVE, ready=4, needed=4)
    assert (state.phase, action.canary_weight, state.reason) == (
        Phase.PROMOTED, 100, "promotion asked for")


def test_promote_while_paused():
    _, state = tick(started(), 5, PASS, command=Command.PAUSE)
    _, state = tick(state, 10, None, command=Command.PROMOTE)
    assert state.phase is Phase.PROMOTED


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(progression.RolloutState(), id="pending"),
        pytest.param(at_step(1), id="progressing"),
        pytest.param(dataclasses.replace(at_step(1), phase=Phase.PAUSED, paused_at=1.0),
                     id="paused"),
    ],
)
def test_abort_rolls_back_from_any_live_phase(state):
    action, state = tick(state, 5, PASS, command=Command.ABORT)
    assert (state.phase, action.stable_weight, action.canary_weight, state.reason) == (
        Phase.ROLLED_BACK, 100, 0, "aborted by a person")


@pytest.mark.parametrize("phase", [Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED])
def test_an_ended_rollout_stays_ended(phase):
    state = progression.RolloutState(
        phase=phase, canary_weight=100 if phase is Phase.PROMOTED else 0, reason="over")
    first, _ = tick(state, 5, PASS)
    for command in Command:
        action, after = tick(state, 10, FAIL, command=command)
        assert (action, after) == (first, state)


def test_negative_observations_are_rejected():
    with pytest.raises(ValueError):
        progression.RolloutInputs(now=0, verdict=None, canary_ready=-1)
