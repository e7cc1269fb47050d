"""Load schedules as pure functions of run time (loadtests/shapes.py), without Locust.

Covered: ramp values along and after the ramp, the ramp never running ahead of its line, step
timing at both edges, Constant, Phases (steps, ramps up and down, the end), the hard end of a
run (tick_at), the environment round trip that carries a schedule into the Locust process, and
parameter validation. The Locust side (the thin
LoadTestShape and real traffic) is in tests/integration/test_loadtests.py.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtests import shapes
from loadtests.shapes import Constant, Phase, Phases, RampFromZero, Step, Tick


@pytest.mark.parametrize(("run_time", "users"), [
    pytest.param(0.0, 0, id="start"),
    pytest.param(0.49, 0, id="before-the-first-user"),
    pytest.param(0.5, 1, id="first-user"),
    pytest.param(2.5, 5, id="halfway"),
    pytest.param(4.99, 9, id="just-before-the-top"),
    pytest.param(5.0, 10, id="top"),
    pytest.param(600.0, 10, id="holding"),
])
def test_ramp_rises_linearly_then_holds(run_time, users):
    assert RampFromZero(users=10, ramp_seconds=5).tick(run_time) == Tick(users, spawn_rate=2.0)


def test_a_slow_ramp_still_spawns_a_user_per_second():
    assert RampFromZero(users=3, ramp_seconds=30).tick(12.0) == Tick(1, spawn_rate=1.0)


@given(st.integers(1, 1000), st.floats(0.1, 3600), st.floats(0, 7200))
def test_ramp_never_runs_ahead_of_its_line_nor_past_its_top(users, ramp_seconds, run_time):
    tick = RampFromZero(users, ramp_seconds).tick(run_time)
    assert tick is not None
    assert 0 <= tick.users <= min(users, users * run_time / ramp_seconds)


@pytest.mark.parametrize(("run_time", "expected"), [
    pytest.param(0.0, Tick(0, 1.0), id="idle-at-start"),
    pytest.param(4.99, Tick(0, 1.0), id="idle-until-the-step"),
    pytest.param(5.0, Tick(8, 8.0), id="step-up"),
    pytest.param(14.99, Tick(8, 8.0), id="holding"),
    pytest.param(15.0, None, id="stop-after-the-hold"),
    pytest.param(60.0, None, id="stays-stopped"),
])
def test_step_idles_jumps_holds_and_stops(run_time, expected):
    assert Step(idle_seconds=5, users=8, hold_seconds=10).tick(run_time) == expected


def test_a_step_without_idle_starts_at_once():
    assert Step(idle_seconds=0, users=3, hold_seconds=1).tick(0.0) == Tick(3, 3.0)


@pytest.mark.parametrize("run_time", [0.0, 1.0, 3600.0])
def test_constant_never_ends_by_itself(run_time):
    assert Constant(users=4).tick(run_time) == Tick(4, 4.0)


@pytest.mark.parametrize(("schedule", "run_time", "expected"), [
    pytest.param(Constant(4), 9.99, Tick(4, 4.0), id="constant-before-the-end"),
    pytest.param(Constant(4), 10.0, None, id="constant-at-the-end"),
    pytest.param(RampFromZero(10, 60), 10.0, None, id="ramp-cut-short"),
    pytest.param(Step(2, 5, 3), 5.0, None, id="step-ends-before-the-run-does"),
])
def test_every_run_ends_at_its_run_seconds(schedule, run_time, expected):
    assert shapes.tick_at(schedule, run_time, run_seconds=10.0) == expected


PHASES = Phases((Phase(5, 0), Phase(10, 20), Phase(10, 4, ramp_seconds=8), Phase(4, 10, 4)))


@pytest.mark.parametrize(("run_time", "expected", "users"), [
    pytest.param(0.0, Tick(0, 1.0), 0.0, id="idle"),
    pytest.param(5.0, Tick(20, 20.0), 20.0, id="step-up-at-once"),
    pytest.param(14.99, Tick(20, 20.0), 20.0, id="holding"),
    pytest.param(15.0, Tick(20, 2.0), 20.0, id="ramp-down-starts-at-the-old-count"),
    pytest.param(19.0, Tick(12, 2.0), 12.0, id="ramp-down-halfway"),
    pytest.param(19.5, Tick(11, 2.0), 11.0, id="ramp-down-on-its-line"),
    pytest.param(19.75, Tick(11, 2.0), 10.5, id="ramp-down-never-below-its-line"),
    pytest.param(23.0, Tick(4, 16.0), 4.0, id="ramp-done-holds"),
    pytest.param(26.0, Tick(5, 1.5), 5.5, id="ramp-up-from-the-previous-count"),
    pytest.param(26.5, Tick(6, 1.5), 6.25, id="ramp-up-never-above-its-line"),
    pytest.param(29.0, None, None, id="the-end"),
])
def test_phases_step_and_ramp_between_counts_then_end(run_time, expected, users):
    assert PHASES.tick(run_time) == expected
    assert PHASES.users_at(run_time) == users
    assert PHASES.seconds == 29


@pytest.mark.parametrize(("build", "message"), [
    pytest.param(lambda: Phases(()), "at least one phase", id="no-phase"),
    pytest.param(lambda: Phase(0, 3), "seconds must be positive", id="empty-phase"),
    pytest.param(lambda: Phase(5, -1), "users must not be negative", id="negative-users"),
    pytest.param(lambda: Phase(5, 3, ramp_seconds=6), "ramp_seconds", id="ramp-past-its-phase"),
])
def test_phases_that_describe_no_load_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("schedule", [
    RampFromZero(users=10, ramp_seconds=2.5), Step(idle_seconds=0, users=1, hold_seconds=7.5),
    Constant(users=12), PHASES,
], ids=lambda schedule: type(schedule).__name__)
def test_a_schedule_survives_the_trip_through_the_environment(schedule):
    assert shapes.from_env(schedule.to_env()) == schedule


@pytest.mark.parametrize("env", [
    pytest.param({}, id="no-shape"),
    pytest.param({"SLUICE_SHAPE": "Spike", "SLUICE_USERS": "3"}, id="unknown-shape"),
])
def test_an_unknown_shape_is_refused(env):
    with pytest.raises(ValueError, match="SLUICE_SHAPE"):
        shapes.from_env(env)


@pytest.mark.parametrize(("build", "parameter"), [
    pytest.param(lambda: RampFromZero(users=0, ramp_seconds=5), "users", id="ramp-to-nobody"),
    pytest.param(lambda: RampFromZero(users=5, ramp_seconds=0), "ramp_seconds",
                 id="instant-ramp"),
    pytest.param(lambda: Step(idle_seconds=-1, users=5, hold_seconds=5), "idle_seconds",
                 id="negative-idle"),
    pytest.param(lambda: Step(idle_seconds=1, users=5, hold_seconds=0), "hold_seconds",
                 id="empty-step"),
    pytest.param(lambda: Constant(users=0), "users", id="constant-nobody"),
])
def test_parameters_that_describe_no_load_are_refused(build, parameter):
    with pytest.raises(ValueError, match=f"^{parameter} must"):
        build()
