"""Waiting for a state with a deadline, then asserting it: no sleeps of a guessed length."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable

POLL_S = 0.05


def until(predicate: Callable[[], object], *, timeout_s: float, what: str) -> None:
    """Polls ``predicate`` until it is truthy; TimeoutError naming ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(POLL_S)


async def eventually(predicate: Callable[[], object], *, timeout_s: float, what: str,
                     seen: Callable[[], object] | None = None) -> None:
    """``until`` for asyncio code: polls without blocking the loop. ``predicate`` may be a
    coroutine function; ``seen``, what the timeout's message shows of the state instead."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await _value(predicate()):
        if loop.time() > deadline:
            shown = f"; last seen: {seen()}" if seen is not None else ""
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}{shown}")
        await asyncio.sleep(POLL_S)


async def _value(result: object) -> object:
    return await result if inspect.isawaitable(result) else result
