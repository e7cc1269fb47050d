"""When the local stack probes a starting replica and restarts what crashed: pure schedules."""

from __future__ import annotations

import contextlib
import random
import socket

import pytest

from autoscaler.local import children, replicas, stack

DEFAULT = stack.Readiness()
REFUSED, NOT_READY = replicas.Probe.REFUSED, replicas.Probe.NOT_READY


@pytest.mark.parametrize(("outcome", "elapsed", "expected", "pause"), [
    (REFUSED, 0.0, 0.0, 0.01),  # nothing listens yet: a refused connect costs ~nothing
    (REFUSED, 300.0, 2.0, 0.01),  # however long the model takes to load
    (NOT_READY, 0.01, 0.0, 0.01),  # answering from the start: fast, then slower
    (NOT_READY, 0.4, 0.0, 0.1),
    (NOT_READY, 5.0, 0.0, 0.2),  # never slower than the period
    (NOT_READY, 0.2, 2.0, 0.2),  # far from when this revision is usually ready
    (NOT_READY, 1.8, 2.0, 0.05),  # close to it: probes densest
    (NOT_READY, 2.0, 2.0, 0.01),
    (NOT_READY, 2.4, 2.0, 0.1),  # late: backing off again
])
def test_probes_are_fast_while_nothing_listens_and_densest_when_ready_is_expected(
        outcome, elapsed, expected, pause):
    assert replicas.next_probe_in(outcome, elapsed, expected, DEFAULT) == pytest.approx(pause)


def test_without_a_fast_period_every_probe_waits_the_period():
    readiness = stack.Readiness(fast_period_s=0)
    for outcome in (REFUSED, NOT_READY):
        assert replicas.next_probe_in(outcome, 1.0, 1.0, readiness) == readiness.period_s


def test_a_crash_is_replaced_at_once_then_ever_later_and_a_healthy_run_starts_over():
    backoff = children.Backoff(max_s=30, healthy_s=60)
    pauses = [backoff.failed(ran_s=1) for _ in range(8)]
    assert pauses == [0, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.failed(ran_s=120) == 0  # it had been serving: replaced at once again


@pytest.mark.parametrize(("code", "said"), [
    (0, "exit code 0"), (3, "exit code 3"), (-9, "killed by SIGKILL"), (-15, "killed by SIGTERM"),
])
def test_an_exit_is_said_in_words(code, said):
    assert children.describe_exit(code) == said


class Ports(random.Random):
    """A random source that picks the given ports in turn."""

    def __init__(self, *ports: int) -> None:
        super().__init__()
        self.ports = list(ports)

    def randrange(self, low: int, high: int | None = None, step: int = 1) -> int:
        port = self.ports.pop(0)
        assert high is not None and low <= port < high
        return port


def test_a_replica_port_is_below_the_ephemeral_range_and_skips_one_in_use():
    """Outgoing connections take ephemeral ports: a replica's port is picked below them, so a
    load generator's connections cannot take it before the replica binds it."""
    ephemeral = int(replicas.EPHEMERAL_RANGE.read_text().split()[0])
    ports = iter(p for p in range(replicas.LOWEST_PORT, ephemeral) if _free(p))
    in_use, free = next(ports), next(ports)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", in_use))
        taken.listen()
        assert replicas._free_port(Ports(in_use, free)) == free
    assert replicas.LOWEST_PORT <= replicas._free_port() < ephemeral


def _free(port: int) -> bool:
    with socket.socket() as probe, contextlib.suppress(OSError):
        probe.bind(("127.0.0.1", port))
        return True
    return False
