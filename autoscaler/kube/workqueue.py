"""A work queue of keys to reconcile, as client-go's: deduplicated, one worker per key at a
time, retried per key with back-off.

A key added while queued is queued once; added while a worker holds it, it is queued again
when that worker is done (the change it missed is seen). A failed key is retried after its own
back-off (``retry_delay``), so one object that keeps failing holds up no other; a key that
succeeds starts its back-off over. Its size is bounded by the number of distinct keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class RetrySettings:
    first_s: float = 0.1
    """Seconds before the first retry of a failed key. Default 0.1: a conflict or a blip is
    over by then."""
    max_s: float = 10.0
    """The back-off doubles each failure up to this. Default 10: an apiserver that is away
    is tried again often enough to notice its return, rarely enough to cost nothing."""


def retry_delay(failures: int, settings: RetrySettings = RetrySettings()) -> float:
    """Seconds before retrying a key that failed ``failures`` times in a row (at least 1)."""
    return min(settings.max_s, settings.first_s * 2.0 ** (max(1, failures) - 1))


class WorkQueue(Generic[K]):
    """See the module docstring. ``get`` a key, work it, then ``done`` (or ``retry``)."""

    def __init__(self, retry: RetrySettings = RetrySettings()) -> None:
        self._retry = retry
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._working: set[K] = set()
        self._again: set[K] = set()
        """Keys added while a worker held them: queued again when it is done."""
        self._failures: dict[K, int] = {}
        self._later: dict[K, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, key: K) -> None:
        """Queue ``key`` now (a pending delayed add is superseded)."""
        timer = self._later.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._working:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: K, delay_s: float) -> None:
        """Queue ``key`` after ``delay_s``, unless it is queued sooner."""
        if key in self._queued or key in self._later:
            return
        self._later[key] = asyncio.get_running_loop().call_later(delay_s, self._due, key)

    def _due(self, key: K) -> None:
        self._later.pop(key, None)
        self.add(key)

    async def get(self) -> K:
        """The next key; the caller holds it until ``done`` or ``retry``."""
        key = await self._queue.get()
        self._queued.discard(key)
        self._working.add(key)
        return key

    def done(self, key: K) -> None:
        """The key was worked: its back-off starts over."""
        self._failures.pop(key, None)
        self._release(key)

    def retry(self, key: K) -> float:
        """The key failed: queue it again after its back-off; returns that delay."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = retry_delay(failures, self._retry)
        self._release(key)
        self.add_after(key, delay)
        return delay

    def _release(self, key: K) -> None:
        self._working.discard(key)
        if key in self._again:
            self._again.discard(key)
            self.add(key)

    def close(self) -> None:
        for timer in self._later.values():
            timer.cancel()
        self._later.clear()
