"""The per-revision queue's release: FIFO, hard limits and the softer release pace (no sockets:
waiters record the endpoint they were given)."""

import random

import pytest

from router import balancer, stats


class Waiter:
    def __init__(self, name):
        self.name = name
        self.enqueued_at = 0.0
        self.endpoint = None

    def assign(self, endpoint):
        self.endpoint = endpoint
        endpoint.inflight += 1

    def reject(self, status, reason):
        raise AssertionError(f"{self.name} rejected: {status} {reason}")


def backend_with(waiting, concurrency=0, release_concurrency=0):
    backend = balancer.RevisionBackend("m", "v1", stats.RevisionStats(0.0), random.Random(1))
    backend.depth = 10_000
    backend.configure(concurrency, release_concurrency)
    waiters = [Waiter(f"w{i}") for i in range(waiting)]
    for waiter in waiters:
        assert backend.enqueue(waiter)
    return backend, waiters


def served_by(waiters):
    counts = {}
    for waiter in waiters:
        if waiter.endpoint is not None:
            counts[waiter.endpoint.url] = counts.get(waiter.endpoint.url, 0) + 1
    return counts


A, B, C = "http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003"


def test_without_a_pace_the_first_endpoint_takes_the_whole_wave():
    backend, waiters = backend_with(100)
    backend.endpoints = [balancer.Endpoint(A)]
    backend.release(1.0)
    assert served_by(waiters) == {A: 100}


def test_the_release_pace_lets_endpoints_that_appear_later_share_the_wave():
    backend, waiters = backend_with(100, release_concurrency=4)
    backend.endpoints = [balancer.Endpoint(A)]
    backend.release(1.0)
    assert served_by(waiters) == {A: 4}
    assert [w.endpoint is not None for w in waiters[:5]] == [True] * 4 + [False]  # oldest first
    backend.endpoints = [*backend.endpoints, balancer.Endpoint(B), balancer.Endpoint(C)]
    backend.release(2.0)
    assert served_by(waiters) == {A: 4, B: 4, C: 4}
    assert len(backend.queue) == 88
    assert backend.stats.buffered == 88


def test_each_answer_releases_one_more():
    backend, waiters = backend_with(10, release_concurrency=2)
    endpoint = balancer.Endpoint(A)
    backend.endpoints = [endpoint]
    backend.release(1.0)
    endpoint.inflight -= 1  # one answered
    backend.release(2.0)
    assert served_by(waiters) == {A: 3}
    assert endpoint.inflight == 2


def test_with_nothing_waiting_the_pace_is_no_limit():
    backend, _ = backend_with(0, release_concurrency=2)
    endpoint = balancer.Endpoint(A)
    endpoint.inflight = 50
    backend.endpoints = [endpoint]
    assert backend.pick() is endpoint


@pytest.mark.parametrize(("concurrency", "release_concurrency", "paced_at"), [
    (0, 0, 0), (0, 5, 5), (3, 0, 3), (3, 5, 3), (8, 5, 5)])
def test_the_smaller_of_limit_and_pace_paces_releases(concurrency, release_concurrency, paced_at):
    backend, _ = backend_with(0, concurrency, release_concurrency)
    assert (backend.limit, backend.release_limit) == (concurrency, paced_at)


def answer_in_turn(backend, endpoint, latencies_s):
    """The endpoint answers its oldest request in flight after each latency in turn; after each
    answer the queue is released. The endpoint's requests in flight after each."""
    seen = []
    for latency_s in latencies_s:
        endpoint.inflight -= 1
        backend.answered(endpoint, latency_s)
        backend.release(0.0)
        seen.append(endpoint.inflight)
    return seen


@pytest.mark.parametrize(("pace", "concurrency", "latencies_s", "in_flight"), [
    # As fast as ever: one more in flight per answer (twice as many per round trip).
    (1, 0, [0.05] * 4, [2, 3, 4, 5]),
    # Slower than 1.5x its fastest: the server was queueing; one fewer, never below the pace.
    (1, 0, [0.05, 0.1, 0.1, 0.1], [2, 1, 1, 1]),
    (4, 0, [0.2, 0.5, 0.5], [5, 4, 4]),
    (1, 0, [0.05, 0.07], [2, 3]),  # within 1.5x: still fast
    # A faster answer is the new yardstick.
    (1, 0, [0.1, 0.05, 0.1], [2, 3, 2]),
    # A hard limit is never exceeded, however fast the answers.
    (1, 3, [0.05] * 4, [2, 3, 3, 3]),
])
def test_the_pace_follows_what_the_endpoint_takes_without_slowing(
        pace, concurrency, latencies_s, in_flight):
    backend, _ = backend_with(100, concurrency, pace)
    endpoint = balancer.Endpoint(A)
    backend.endpoints = [endpoint]
    backend.release(0.0)
    assert endpoint.inflight == pace
    assert answer_in_turn(backend, endpoint, latencies_s) == in_flight


def test_a_server_that_takes_any_number_drains_a_wave_in_a_few_round_trips():
    """Every request answered in the same time at any load: each round trip doubles what the
    endpoint holds, where the pace alone would hold it at 1 (100 round trips)."""
    backend, waiters = backend_with(100, release_concurrency=1)
    endpoint = balancer.Endpoint(A)
    backend.endpoints = [endpoint]
    backend.release(0.0)
    rounds = []
    while backend.queue:
        rounds.append(endpoint.inflight)
        answer_in_turn(backend, endpoint, [0.02] * endpoint.inflight)
    assert rounds == [1, 2, 4, 8, 16, 32]
    assert all(w.endpoint is endpoint for w in waiters)


def test_a_server_that_works_on_one_at_a_time_is_held_near_one():
    """A serial server of 50 ms answers each request 50 ms after the one before: whatever is
    in flight beyond the first waits inside it, and its answers are slower than 1.5x."""
    backend, _ = backend_with(100, release_concurrency=1)
    endpoint = balancer.Endpoint(A)
    backend.endpoints = [endpoint]
    backend.release(0.0)
    now, assigned, most = 0.0, [0.0], 1
    for _ in range(40):
        now = max(now, assigned[0]) + 0.05  # the oldest finishes 50 ms after it can start
        started = assigned.pop(0)
        before = endpoint.inflight
        answer_in_turn(backend, endpoint, [now - started])
        assigned += [now] * (endpoint.inflight - (before - 1))
        most = max(most, endpoint.inflight)
    assert most <= 3
    assert endpoint.learned <= 2
