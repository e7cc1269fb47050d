"""What the admin API controls: one in-process worker, or several worker processes.

`LocalControl` wraps the worker in this process. `FanoutControl` talks to worker processes over
their private unix sockets (each serves the internal API of `admin.worker_app`), applies a route
table to all of them and adds their raw stats up; counts are additive, so the sums are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
import pydantic

from policies import routing, wire
from router import worker as worker_

Listener = Callable[[wire.Poke], None]


class WorkerUnavailable(Exception):
    """A worker process did not answer on its control socket; the admin API answers 503."""


class Control(Protocol):
    def document(self) -> routing.RouteTable: ...

    async def apply(self, document: routing.RouteTable) -> None: ...

    async def raw_stats(self) -> list[dict[str, Any]]: ...

    def subscribe(self, listener: Listener) -> Callable[[], None]: ...

    def ready(self) -> bool: ...


class LocalControl:
    def __init__(self, worker: worker_.Worker) -> None:
        self.worker = worker

    def document(self) -> routing.RouteTable:
        return self.worker.table.document

    async def apply(self, document: routing.RouteTable) -> None:
        self.worker.apply(document)

    async def raw_stats(self) -> list[dict[str, Any]]:
        return [self.worker.raw_stats()]

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self.worker.subscribe(listener)

    def ready(self) -> bool:
        return not self.worker.draining and self.worker.has_table


class FanoutControl:
    """Several workers behind one admin API. Start with `run` inside the admin app's cleanup_ctx."""

    TIMEOUT = aiohttp.ClientTimeout(total=10)

    def __init__(self, sockets: list[str], document: routing.RouteTable) -> None:
        self.sockets = sockets
        self._document = document
        self._sessions = [aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path),
                                                timeout=self.TIMEOUT) for path in sockets]
        self._listeners: list[Listener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._relaying = [False] * len(sockets)
        self.stopping = False

    def document(self) -> routing.RouteTable:
        return self._document

    async def apply(self, document: routing.RouteTable) -> None:
        await self._all("PUT", "/routes", document.model_dump(mode="json"))
        self._document = document

    async def raw_stats(self) -> list[dict[str, Any]]:
        return await self._all("GET", "/raw")

    async def _all(self, method: str, path: str, body: Any = None) -> list[Any]:
        """Every worker's answer. While stopping, a worker that has finished draining and exited
        is left out (it needs no table and has nothing to count); otherwise a worker that does
        not answer is WorkerUnavailable, and a table is current only once all took it."""
        results = await asyncio.gather(*(self._call(s, method, path, body)
                                         for s in self._sessions), return_exceptions=True)
        answers = []
        for index, result in enumerate(results):
            if isinstance(result, aiohttp.ClientConnectionError) and self.stopping:
                continue
            if isinstance(result, aiohttp.ClientError | TimeoutError):
                raise WorkerUnavailable(f"worker {index} did not answer {method} {path}: "
                                        f"{type(result).__name__} {result}") from result
            if isinstance(result, BaseException):
                raise result
            answers.append(result)
        return answers

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def ready(self) -> bool:
        """Serving: not stopping, holding a table, and every worker's pokes reach this
        process's subscribers (a poke fired before the relay subscribed would be lost)."""
        return not self.stopping and all(self._relaying) and bool(self._document.services)

    async def _call(self, session: aiohttp.ClientSession, method: str, path: str,
                    body: Any = None) -> Any:
        async with session.request(method, "http://worker" + path, json=body) as response:
            response.raise_for_status()
            return await response.json()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._relay(i)) for i in range(len(self._sessions))]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in self._sessions))

    async def _relay(self, index: int) -> None:
        """Forward one worker's poke events to this process's listeners, reconnecting."""
        session = self._sessions[index]
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, pydantic.ValidationError):
                async with session.get("http://worker/events",
                                       timeout=aiohttp.ClientTimeout(sock_read=60)) as response:
                    async for line in response.content:
                        self._relaying[index] = True  # the worker's first line: subscribed
                        if line.strip():
                            event = wire.Poke.model_validate_json(line)
                            for listener in list(self._listeners):
                                listener(event)
            self._relaying[index] = False
            await asyncio.sleep(0.2)
