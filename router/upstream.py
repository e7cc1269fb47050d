"""Connections to replicas: one asyncio protocol per keep-alive connection, pooled per endpoint.

A connection carries one exchange at a time. Parsed response events go straight to that
exchange, which writes them to the client: no task, no queue, no copy beyond httptools' own.
Idle connections wait in the endpoint's LIFO pool (the warmest first) and are closed by the
worker's sweeper before a replica's own keep-alive timeout would cut them mid-request.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

if TYPE_CHECKING:
    from router import balancer, proxy


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("_headers", "_informational", "_reason", "closed", "endpoint", "exchange",
                 "idle_since", "out", "parser", "transport")

    def __init__(self, endpoint: balancer.Endpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: proxy.Exchange | None = None
        self.closed = False
        self.out: list[bytes] | None = None
        self.idle_since = 0.0
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._informational = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # a replica talking out of turn: not safe to reuse
            self.close()
            return
        client = exchange.client
        client.cork()  # what this read produces goes to the client in one write
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()
            exchange.upstream_failed("the replica sent a malformed response")
        finally:
            client.uncork()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.upstream_lost()

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.pause(2)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.resume(2)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if not 100 <= status <= 599:  # llhttp takes any three digits
            raise ValueError(f"status {status}")  # -> malformed response, 502
        self._informational = status < 200  # 1xx: not forwarded, the real head follows
        if not self._informational and self.exchange is not None:
            self.exchange.response_head(status, self._reason, self._headers)

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            return
        if self.exchange is not None:
            self.exchange.response_complete(self.parser.should_keep_alive())

    def send(self, *parts: bytes) -> None:
        if self.out is not None:
            self.out.extend(parts)
        elif not self.closed:
            self.transport.write(parts[0] if len(parts) == 1 else b"".join(parts))  # type: ignore[union-attr]

    def cork(self) -> None:
        if self.out is None:
            self.out = []

    def uncork(self) -> None:
        out, self.out = self.out, None
        if out and not self.closed:
            self.transport.write(b"".join(out))  # type: ignore[union-attr]

    # pool side

    def close(self) -> None:
        self.closed = True
        self.exchange = None
        if self.transport is not None:
            self.transport.close()


async def connect(endpoint: balancer.Endpoint, timeout_s: float) -> UpstreamConnection:
    """A new connection to the endpoint; OSError or TimeoutError when it cannot be made."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        _, conn = await loop.create_connection(
            lambda: UpstreamConnection(endpoint), endpoint.host, endpoint.port)
    return conn
