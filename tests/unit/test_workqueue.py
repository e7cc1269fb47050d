"""The controller's reconcile queue: each key queued once, never worked by two workers at once,
a change during its work seen after it, and a failing key retried after its own back-off
without holding up the others. No sleeps: nothing here waits for a timer."""

from __future__ import annotations

import pytest

from autoscaler.kube import workqueue


@pytest.mark.parametrize(("failures", "delay"), [
    (1, 0.1), (2, 0.2), (3, 0.4), (7, 6.4), (8, 10.0), (50, 10.0),
])
def test_a_failing_key_waits_twice_as_long_each_time_up_to_ten_seconds(failures, delay):
    assert workqueue.retry_delay(failures) == pytest.approx(delay)


async def test_a_key_added_while_queued_is_worked_once():
    queue: workqueue.WorkQueue[str] = workqueue.WorkQueue()
    for key in ("a", "b", "a", "a"):
        queue.add(key)
    assert len(queue) == 2
    assert [await queue.get(), await queue.get()] == ["a", "b"]
    assert len(queue) == 0


async def test_a_key_changed_while_worked_is_worked_again_after_not_alongside():
    queue: workqueue.WorkQueue[str] = workqueue.WorkQueue()
    queue.add("a")
    held = await queue.get()
    queue.add("a")  # a change arrives while a worker holds it
    assert len(queue) == 0  # no second worker may take it now
    queue.done(held)
    assert len(queue) == 1
    assert await queue.get() == "a"


async def test_a_failed_key_waits_its_back_off_while_the_others_are_worked():
    queue: workqueue.WorkQueue[str] = workqueue.WorkQueue()
    queue.add("failing")
    queue.add("fine")
    failing = await queue.get()
    assert queue.retry(failing) == pytest.approx(0.1)
    assert await queue.get() == "fine"  # not held up
    assert len(queue) == 0  # the failed one waits for its timer
    queue.add("failing")  # a change supersedes the wait
    assert len(queue) == 1
    again = await queue.get()
    assert queue.retry(again) == pytest.approx(0.2)  # failed twice in a row
    queue.add("failing")
    queue.done(await queue.get())
    queue.add("failing")
    assert queue.retry(await queue.get()) == pytest.approx(0.1)  # a success starts it over
    queue.close()
