"""Load schedules for the autoscaler and rollout end-to-end tests, as pure functions of run time.

A schedule answers Locust's ``LoadTestShape.tick()`` question - "how many users now, spawned at
what rate, or stop?" - but takes the run time as an argument instead of reading the clock, so the
scenarios are unit-tested without Locust (tests/unit/test_shapes.py). This module must stay free
of Locust and gevent: importing Locust monkey-patches the importing process, and the test process
and run.py must not be patched. The one thin ``LoadTestShape`` that asks these schedules is in
locustfile.py, the only module that runs inside Locust.

Users map to request rate through ``constant_throughput``: every user sends at most
``SLUICE_USER_RPS`` requests per second, so ``rps = users * SLUICE_USER_RPS`` while responses are
faster than ``1 / SLUICE_USER_RPS`` (a slower backend lowers the rate: the load is closed-loop
per user). Example: 10 users at 3 requests/s each is a 30 RPS target.

Locust asks a shape about once a second and then spawns towards the answer at the returned
spawn rate, so times here are honoured at one-second granularity.

Scenarios, chosen by ``SLUICE_SHAPE`` with their parameters in the environment (`to_env` and
`from_env` are inverses, which is how run.py hands a schedule to the Locust process):

- ``RampFromZero``: 0 to ``SLUICE_USERS`` users linearly over ``SLUICE_RAMP_SECONDS``, then
  hold; exercises scale-from-zero and the router's cold-start buffer.
- ``Step``: no users for ``SLUICE_IDLE_SECONDS`` (the autoscaler scales to zero), then
  ``SLUICE_USERS`` at once for ``SLUICE_HOLD_SECONDS``, then stop; checks reaction and hysteresis.
- ``Constant``: ``SLUICE_USERS`` users throughout; the canary soak for SLO analysis.
- ``Phases``: a list of phases (``SLUICE_PHASES``, JSON), each holding a user count for a
  while, reached at once or by a linear ramp; what a scenario file's ``phases`` become
  (loadtests/scenario.py).

Every run also has a hard end, ``SLUICE_RUN_SECONDS`` (see `tick_at`), so a schedule that holds
forever still stops.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple


class Tick(NamedTuple):
    """Locust's tick contract: the total user count to reach, and users started per second."""

    users: int
    spawn_rate: float


@dataclass(frozen=True)
class RampFromZero:
    """0 users at t=0 rising linearly to `users` at `ramp_seconds`, then holding there."""

    users: int
    ramp_seconds: float

    def __post_init__(self) -> None:
        _require(self.users >= 1, "users must be at least 1")
        _require(self.ramp_seconds > 0, "ramp_seconds must be positive")

    def tick(self, run_time: float) -> Tick | None:
        # floor, not round: the user count never runs ahead of the straight line.
        users = min(self.users, math.floor(self.users * run_time / self.ramp_seconds))
        # The slope as the spawn rate keeps Locust's own spawning on the line between ticks.
        return Tick(users, spawn_rate=max(1.0, self.users / self.ramp_seconds))

    def to_env(self) -> dict[str, str]:
        return {"SLUICE_SHAPE": "RampFromZero", "SLUICE_USERS": str(self.users),
                "SLUICE_RAMP_SECONDS": str(self.ramp_seconds)}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RampFromZero:
        return cls(users=int(env["SLUICE_USERS"]), ramp_seconds=float(env["SLUICE_RAMP_SECONDS"]))


@dataclass(frozen=True)
class Step:
    """Nothing for `idle_seconds`, then `users` at once for `hold_seconds`, then the end."""

    idle_seconds: float
    users: int
    hold_seconds: float

    def __post_init__(self) -> None:
        _require(self.idle_seconds >= 0, "idle_seconds must not be negative")
        _require(self.users >= 1, "users must be at least 1")
        _require(self.hold_seconds > 0, "hold_seconds must be positive")

    def tick(self, run_time: float) -> Tick | None:
        if run_time < self.idle_seconds:
            return Tick(0, spawn_rate=1.0)
        if run_time < self.idle_seconds + self.hold_seconds:
            # All users within one second: a step, spread just enough that their
            # constant_throughput phases do not fire in lockstep.
            return Tick(self.users, spawn_rate=float(self.users))
        return None

    def to_env(self) -> dict[str, str]:
        return {"SLUICE_SHAPE": "Step", "SLUICE_IDLE_SECONDS": str(self.idle_seconds),
                "SLUICE_USERS": str(self.users), "SLUICE_HOLD_SECONDS": str(self.hold_seconds)}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Step:
        return cls(idle_seconds=float(env["SLUICE_IDLE_SECONDS"]), users=int(env["SLUICE_USERS"]),
                   hold_seconds=float(env["SLUICE_HOLD_SECONDS"]))


@dataclass(frozen=True)
class Constant:
    """`users` users from the start until the run's end."""

    users: int

    def __post_init__(self) -> None:
        _require(self.users >= 1, "users must be at least 1")

    def tick(self, run_time: float) -> Tick | None:
        # Spread over one second for the same reason as Step.
        return Tick(self.users, spawn_rate=float(self.users))

    def to_env(self) -> dict[str, str]:
        return {"SLUICE_SHAPE": "Constant", "SLUICE_USERS": str(self.users)}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Constant:
        return cls(users=int(env["SLUICE_USERS"]))


@dataclass(frozen=True)
class Phase:
    """`users` users for `seconds`; reached by a linear ramp over the phase's first
    `ramp_seconds` from the previous phase's count (0 before the first), or at once."""

    seconds: float
    users: int
    ramp_seconds: float = 0.0

    def __post_init__(self) -> None:
        _require(self.seconds > 0, "seconds must be positive")
        _require(self.users >= 0, "users must not be negative")
        _require(0 <= self.ramp_seconds <= self.seconds,
                 "ramp_seconds must be between 0 and the phase's seconds")


@dataclass(frozen=True)
class Phases:
    """The phases one after another, then the end."""

    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        _require(len(self.phases) >= 1, "at least one phase is needed")

    @property
    def seconds(self) -> float:
        return sum(phase.seconds for phase in self.phases)

    def users_at(self, run_time: float) -> float | None:
        """The user count asked for at `run_time` (fractional along a ramp), or None once
        every phase has ended."""
        found = self._phase_at(run_time)
        if found is None:
            return None
        phase, previous, into = found
        if into < phase.ramp_seconds:
            return previous + (phase.users - previous) * into / phase.ramp_seconds
        return float(phase.users)

    def tick(self, run_time: float) -> Tick | None:
        found = self._phase_at(run_time)
        if found is None:
            return None
        phase, previous, into = found
        if into < phase.ramp_seconds:
            # On the line between the counts, never past it: floor going up, ceil going down.
            users = previous + (phase.users - previous) * into / phase.ramp_seconds
            count = math.floor(users) if phase.users > previous else math.ceil(users)
            return Tick(count, spawn_rate=max(1.0, abs(phase.users - previous)
                                              / phase.ramp_seconds))
        # At once: every user within one second, as in Step.
        return Tick(phase.users, spawn_rate=max(1.0, float(abs(phase.users - previous))))

    def _phase_at(self, run_time: float) -> tuple[Phase, int, float] | None:
        """The phase running at `run_time`, the previous phase's users and the time into it."""
        start, previous = 0.0, 0
        for phase in self.phases:
            if run_time < start + phase.seconds:
                return phase, previous, run_time - start
            start, previous = start + phase.seconds, phase.users
        return None

    def to_env(self) -> dict[str, str]:
        return {"SLUICE_SHAPE": "Phases", "SLUICE_PHASES": json.dumps(
            [[phase.seconds, phase.users, phase.ramp_seconds] for phase in self.phases])}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Phases:
        return cls(tuple(Phase(float(seconds), int(users), float(ramp))
                         for seconds, users, ramp in json.loads(env["SLUICE_PHASES"])))


Schedule = RampFromZero | Step | Constant | Phases
SCHEDULES: dict[str, type[Schedule]] = {
    cls.__name__: cls for cls in (RampFromZero, Step, Constant, Phases)}


def from_env(env: Mapping[str, str]) -> Schedule:
    """The schedule named by SLUICE_SHAPE, with its parameters from the same environment."""
    name = env.get("SLUICE_SHAPE", "")
    if name not in SCHEDULES:
        raise ValueError(f"SLUICE_SHAPE={name!r}; expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[name].from_env(env)


def tick_at(schedule: Schedule, run_time: float, run_seconds: float) -> Tick | None:
    """The schedule's tick, but None (stop) from `run_seconds` on whatever the schedule says.

    This is the run's hard bound. Locust's own ``--run-time`` cannot be one: with a shape class
    in headless mode it is ignored, and its timer would only start once the shape had ended.
    """
    if run_time >= run_seconds:
        return None
    return schedule.tick(run_time)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
