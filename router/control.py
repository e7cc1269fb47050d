"""What the admin API controls: one in-process worker, or several worker processes.

`LocalControl` wraps the worker in this process. `FanoutControl` talks to worker processes over
their private unix sockets (each serves the internal API of `admin.worker_app`), applies a route
table to all of them and adds their raw stats up; counts are additive, so the sums are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from policies import routing
from router import worker as worker_

Listener = Callable[[dict[str, Any]], None]


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
        return not self.worker.draining


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
        self.stopping = False

    def document(self) -> routing.RouteTable:
        return self._document

    async def apply(self, document: routing.RouteTable) -> None:
        body = document.model_dump(mode="json")
        await asyncio.gather(*(self._call(s, "PUT", "/routes", body) for s in self._sessions))
        self._document = document

    async def raw_stats(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self._call(s, "GET", "/raw") for s in self._sessions)))

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def ready(self) -> bool:
        return not self.stopping

    async def _call(self, session: aiohttp.ClientSession, method: str, path: str,
                    body: Any = None) -> Any:
        async with session.request(method, "http://worker" + path, json=body) as response:
            response.raise_for_status()
            return await response.json()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._relay(s)) for s in self._sessions]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in self._sessions))

    async def _relay(self, session: aiohttp.ClientSession) -> None:
        """Forward one worker's poke events to this process's listeners, reconnecting."""
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get("http://worker/events",
                                       timeout=aiohttp.ClientTimeout(sock_read=60)) as response:
                    async for line in response.content:
                        if line.strip():
                            event = json.loads(line)
                            for listener in list(self._listeners):
                                listener(event)
            await asyncio.sleep(0.2)
