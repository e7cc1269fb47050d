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
