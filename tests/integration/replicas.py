"""Scripted replicas: real HTTP servers on loopback, in the test's own event loop, whose answers
the test writes byte by byte. They play what the reference model server must not do: hold an
answer until told, close without answering, stall mid-body, flood a slow client, send
hop-by-hop headers. Each records the request heads it received.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

Answer = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
"""Given the request head (its body already read), write the answer; True keeps the connection."""

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Replica:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.arrived = asyncio.Condition()
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Replica:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def wait_for(self, count: int) -> None:
        """Until `count` requests have arrived in all."""
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.heads) >= count), 30)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = header(head, b"content-length")
                if length:
                    await reader.readexactly(int(length))
                async with self.arrived:
                    self.heads.append(head)
                    self.arrived.notify_all()
                if not await self.answer(head, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


def header(head: bytes, name: bytes) -> bytes | None:
    """The value of the first header called `name` (lowercase) in a raw head."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def held_until(gate: asyncio.Event) -> Answer:
    """Answer 200 once the gate opens."""
    async def answer(head: bytes, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> bool:
        await gate.wait()
        writer.write(OK)
        await writer.drain()
        return True
    return answer


class WorksOn:
    """Answer 200 after `service_s` of work, at most `parallelism` requests at a time (the rest
    wait inside the server, as at a GPU); records the most it held at once."""

    def __init__(self, parallelism: int, service_s: float) -> None:
        self.slots = asyncio.Semaphore(parallelism)
        self.service_s = service_s
        self.holding = 0
        self.most = 0

    async def __call__(self, head: bytes, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> bool:
        self.holding += 1
        self.most = max(self.most, self.holding)
        try:
            async with self.slots:
                await asyncio.sleep(self.service_s)
        finally:
            self.holding -= 1
        writer.write(OK)
        await writer.drain()
        return True


async def never_answer(head: bytes, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> bool:
    with contextlib.suppress(ConnectionError):
        await reader.read()  # until the router gives up and closes
    return False


async def close_at_once(head: bytes, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> bool:
    return False


async def stall_mid_body(head: bytes, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    await writer.drain()
    return await never_answer(head, reader, writer)
