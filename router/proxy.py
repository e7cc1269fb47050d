"""The request path: client connections, HTTP/1.1 framing, and one `Exchange` per request.

Built on asyncio protocols and httptools (llhttp) instead of aiohttp's web layer because this
path is the tax on every inference call: aiohttp's server adds ~2.5 ms at p50 on a 2-core
machine, a protocol-level proxy ~0.4 ms (docs/benchmarks.md). When an endpoint is free and a
pooled connection is idle, a request is forwarded from inside the parser callbacks, with no task,
no queue and no logging; only a new upstream connection or a wait in the buffer goes through a
coroutine or the revision's queue.

Framing rules: llhttp in strict mode rejects conflicting Content-Length / Transfer-Encoding,
duplicate Content-Length and malformed chunking (400). Requests may be pipelined: they are
parsed in order, answered in order, one at a time. Bodies stream both ways with backpressure
(a full client socket pauses the replica's socket and the reverse); a response without a length
is re-chunked for HTTP/1.1 clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import TYPE_CHECKING

import httptools

from router import balancer, table, upstream

if TYPE_CHECKING:
    from router import worker as worker_

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
REWRITTEN = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id", b"expect"})
NOT_FORWARDED = HOP_BY_HOP | REWRITTEN
CONNECTION_KEYWORDS = (b"keep-alive", b"close")
STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson", b"application/jsonl")
"""Content-Types of streamed responses (an LLM's tokens: SSE, NDJSON), whose time to first byte
and chunk rate are measured (router/stats.py)."""
NOT_A_STREAM = -1

# Why the client socket is paused; reading resumes when no reason is left.
PAUSE_BODY = 1  # request body piling up while the request waits for an endpoint
PAUSE_UPSTREAM = 2  # the replica's socket is full
PAUSE_PIPELINE = 4  # a pipelined request waits behind the one being answered

BODY_BUFFER_BYTES = 64 * 1024
"""Request body held while waiting for an endpoint; beyond it the client socket is paused."""

# Client connection phases, for the sweeper's timeouts.
IDLE, HEAD, BODY, BUSY = range(4)

NEVER = math.inf

logger = logging.getLogger(__name__)


class Reject(Exception):
    """Raised inside a parser callback to stop parsing and answer with an error."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def error_response(status: int, reason: str, *, close: bool,
                   retry_after: int | None = None) -> bytes:
    body = json.dumps({"error": reason, "status": status}).encode()
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
    if retry_after is not None:
        head += f"Retry-After: {retry_after}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


_REASONS = {400: "Bad Request", 404: "Not Found", 408: "Request Timeout",
            413: "Content Too Large", 414: "URI Too Long", 431: "Request Header Fields Too Large",
            499: "Client Closed Request", 501: "Not Implemented", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}


def is_stream(content_type: bytes) -> bool:
    """Whether a response's Content-Type is one of STREAM_TYPES (parameters allowed). Types are
    case-insensitive, but servers send them in lower case: a lowered copy is made only for one
    that starts with a capital of a stream type (a one-byte slice is a cached object)."""
    if content_type.startswith(STREAM_TYPES):
        return True
    return content_type[:1] in (b"T", b"A") and content_type.lower().startswith(STREAM_TYPES)


def connection_options(value: bytes) -> frozenset[bytes] | None:
    """Header names a Connection header lists besides keep-alive and close: they are
    hop-by-hop too (RFC 9110 7.6.1). None for the usual plain keyword."""
    lowered = value.lower()
    if lowered in CONNECTION_KEYWORDS:
        return None
    named = frozenset(t.strip() for t in lowered.split(b",")) - set(CONNECTION_KEYWORDS)
    return named or None


class ClientConnection(asyncio.Protocol):
    """One client's connection: parses requests and answers them in order."""

    __slots__ = ("_head_bytes", "_headers", "_hmap", "_url", "closed", "corked_upstream",
                 "current", "deadline", "feeding", "out", "parser", "paused", "peer", "phase",
                 "pipeline", "reading", "transport", "worker", "write_paused")

    def __init__(self, worker: worker_.Worker) -> None:
        self.worker = worker
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer = b""
        self.reading: Exchange | None = None  # whose request is being parsed
        self.current: Exchange | None = None  # whose response is being produced
        self.pipeline: list[Exchange] = []  # rare, short; a deque would cost 760 B each
        self.paused = 0
        self.write_paused = False
        self.closed = False
        self.out: list[bytes] | None = None  # writes held while a replica's read is parsed
        self.feeding = False  # inside data_received: writes to the replica are held
        self.corked_upstream: upstream.UpstreamConnection | None = None
        self.phase = IDLE
        self.deadline = NEVER
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._hmap: dict[bytes, bytes] = {}
        self._head_bytes = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode() if isinstance(peer, tuple) else b"unix"
        worker = self.worker
        if len(worker.clients) >= worker.settings.max_connections:
            self.closed = True
            self.transport.write(error_response(503, "too many connections", close=True,
                                                retry_after=1))
            linger_close(self.transport, worker.loop)
            return
        worker.clients.add(self)
        self.deadline = worker.now() + worker.settings.header_timeout_s

    def data_received(self, data: bytes) -> None:
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            reject = error.__context__
            if not isinstance(reject, Reject):
                logger.error("request handling failed", exc_info=reject)
                reject = Reject(500, "internal error in the router")
            self._fail(reject.status, reject.reason)
        except httptools.HttpParserUpgrade as upgrade:
            # An h2c upgrade offer is declined by answering in HTTP/1.1 (RFC 9113 3.1); llhttp
            # stops at it, so parsing continues with a fresh parser after the request.
            self.parser = httptools.HttpRequestParser(self)
            rest = data[upgrade.args[0]:]
            if rest:
                self.data_received(rest)
        except httptools.HttpParserError as error:
            self._fail(400, f"malformed HTTP request: {error}")
        finally:
            self.feeding = False
            corked = self.corked_upstream
            if corked is not None:
                self.corked_upstream = None
                corked.uncork()

    # Writes are corked while one read from the replica is parsed, so a small response leaves
    # in one writev instead of one send per head, body and terminator (half the router's CPU
    # went to those sends before).

    def send(self, *parts: bytes) -> None:
        if self.out is not None:
            self.out.extend(parts)
        elif not self.closed:
            self.transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def cork(self) -> None:
        if self.out is None:
            self.out = []

    def uncork(self) -> None:
        out, self.out = self.out, None
        if out and not self.closed:
            self.transport.write(b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.worker.clients.discard(self)
        gone = [self.current, self.reading, *self.pipeline]
        self.current = self.reading = None
        self.pipeline.clear()
        for exchange in gone:
            if exchange is not None:
                exchange.client_gone()

    def pause_writing(self) -> None:
        self.write_paused = True
        exchange = self.current
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.write_paused = False
        exchange = self.current
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.transport.resume_reading()  # type: ignore[union-attr]

    def pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._hmap = {}
        self._head_bytes = 0
        self.phase = HEAD
        self.deadline = self.worker.now() + self.worker.settings.header_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.worker.settings.max_header_bytes:
            raise Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.worker.settings.max_header_bytes:
            raise Reject(431, "request headers too large")
        lname = name.lower()
        if lname in self.worker.table.read_headers:  # only what routing reads: ~4 KiB/request
            self._hmap[lname] = value                 # matters with 10,000 waiting
        if lname not in NOT_FORWARDED:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        worker = self.worker
        settings = worker.settings
        parser = self.parser
        hmap = self._hmap
        length = hmap.get(b"content-length")
        chunked = b"transfer-encoding" in hmap
        if length is not None and int(length) > settings.max_body_bytes:
            raise Reject(413, f"request body over {settings.max_body_bytes} bytes")
        version = parser.get_http_version()
        if b"host" not in hmap and version != "1.0":  # RFC 9112 3.2; 1.0 gets one upstream
            raise Reject(400, "an HTTP/1.1 request needs a Host header")
        upgrade = hmap.get(b"upgrade")
        if upgrade is not None and upgrade.lower() != b"h2c":
            raise Reject(501, "protocol upgrades (WebSocket) are not supported")
        exchange = Exchange(self, parser.get_method(), self._url, version,
                            parser.should_keep_alive(), self._headers, hmap, chunked)
        self.reading = exchange
        has_body = chunked or (length is not None and length != b"0")
        now = worker.now()
        if has_body:
            self.phase = BODY
            self.deadline = now + settings.body_timeout_s
        else:
            self.phase = BUSY
            self.deadline = NEVER
            exchange.request_complete = True
        if self.current is None:
            self._start(exchange, now)
        else:
            self.pipeline.append(exchange)
            self.pause(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        exchange = self.reading
        if exchange is not None:
            self.deadline = self.worker.now() + self.worker.settings.body_timeout_s
            exchange.request_body(body)

    def on_message_complete(self) -> None:
        exchange = self.reading
        self.reading = None
        if self.phase == BODY:
            self.phase = BUSY
            self.deadline = NEVER
        if exchange is not None and not exchange.request_complete:
            exchange.request_done()

    # answering

    def _start(self, exchange: Exchange, now: float) -> None:
        """The exchange's turn: its response is the next one on this connection."""
        self.current = exchange
        if (not exchange.request_complete and exchange.version == "1.1"
                and exchange.hmap.get(b"expect", b"").lower() == b"100-continue"):
            # A pipelined request's client waits for this too, so it goes out on its turn.
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        exchange.dispatch(now)

    def _fail(self, status: int, reason: str) -> None:
        """The request stream is unusable (bad framing, limits): answer once and close."""
        exchange = self.reading
        self.reading = None
        if exchange is not None and exchange is not self.current:
            self.pipeline.clear()  # later pipelined requests are never answered; close below
            exchange = None
        if exchange is not None:
            exchange.must_close = True
            exchange.answer(status, reason)
        elif self.current is None:
            self.send(error_response(status, reason, close=True))
            self.close()
        else:
            self.current.must_close = True  # finish the response in progress, then close

    def exchange_finished(self, exchange: Exchange) -> None:
        if self.closed:
            return
        if self.current is exchange:
            self.current = None
        if (exchange.must_close or not exchange.keep_alive or not exchange.request_complete
                or self.worker.draining):
            self.close()
            return
        if self.pipeline:
            nxt = self.pipeline.pop(0)
            if not self.pipeline:
                self.resume(PAUSE_PIPELINE)
            self._start(nxt, self.worker.now())
        elif self.reading is None:
            self.phase = IDLE
            self.deadline = self.worker.now() + self.worker.settings.keepalive_timeout_s

    def timed_out(self) -> None:
        """Called by the sweeper when the current phase's deadline passed."""
        if self.phase == IDLE:
            self.close()
        elif self.phase == HEAD:
            self._fail(408, "request head not received in time")
        elif self.phase == BODY:
            self._fail(408, "request body stalled")
        self.deadline = NEVER

    def close(self) -> None:
        if not self.closed:
            self.uncork()
            if self.phase == HEAD or self.phase == BODY:  # the client may still be sending
                if self.paused:
                    self.transport.resume_reading()
                linger_close(self.transport, self.worker.loop)
                self.connection_lost(None)  # the protocol is swapped: settle exchanges now
                return
            self.closed = True
            self.worker.clients.discard(self)
            self.transport.close()


LINGER_S = 1.0
"""How long a connection we refused mid-request keeps reading (and dropping) what the client
still sends before it closes. Closing with unread data resets the connection, and the reset can
destroy the answer in flight (the client reads ECONNRESET instead of our 413 or 503)."""


class Discarding(asyncio.Protocol):
    """What is left of a refused connection: reads are dropped until the client closes."""

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the transport closes


def linger_close(transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
    """Send what is written and a FIN, drop what still comes, close after LINGER_S at most."""
    if transport.can_write_eof():
        transport.write_eof()
    transport.set_protocol(Discarding())
    loop.call_later(LINGER_S, transport.close)


class Exchange:
    """One request from arrival to its last response byte."""

    __slots__ = (
        "assigned_at",
        "backend",
        "body",
        "body_bytes",
        "body_held",
        "chunked_in",
        "chunked_out",
        "client",
        "close_delimited",
        "deadline",
        "done",
        "endpoint",
        "enqueued_at",
        "failed",
        "head",
        "headers",
        "hmap",
        "keep_alive",
        "method",
        "must_close",
        "request_complete",
        "responded",
        "started",
        "status",
        "stream_chunks",
        "stream_first",
        "stream_last",
        "upstream",
        "url",
        "version",
    )

    def __init__(self, client: ClientConnection, method: bytes, url: bytes, version: str,
                 keep_alive: bool, headers: list[tuple[bytes, bytes]], hmap: dict[bytes, bytes],
                 chunked: bool) -> None:
        self.client = client
        self.method = method
        self.url = url
        self.version = version
        self.keep_alive = keep_alive
        self.headers = headers
        self.hmap = hmap
        self.chunked_in = chunked
        self.chunked_out = False
        self.close_delimited = False
        self.request_complete = False
        self.body: list[bytes] | None = None  # only while waiting for an endpoint
        self.body_bytes = 0
        self.body_held = 0
        self.backend: balancer.RevisionBackend | None = None
        self.endpoint: balancer.Endpoint | None = None
        self.upstream: upstream.UpstreamConnection | None = None
        self.failed: list[balancer.Endpoint] | None = None  # endpoints that refused us
        self.head = b""
        self.started = 0.0
        self.assigned_at = 0.0
        self.enqueued_at = 0.0
        self.deadline = NEVER
        self.status = 0
        self.responded = False
        self.must_close = False
        self.done = False
        self.stream_chunks = NOT_A_STREAM  # a stream's body chunks so far
        self.stream_first = 0.0
        self.stream_last = 0.0

    # routing

    def dispatch(self, now: float) -> None:
        """Choose service, revision and endpoint; queue when no endpoint is free."""
        worker = self.client.worker
        self.started = now
        try:
            route = worker.table.match(self.hmap.get(b"host"), self.url)
            backend = route.choose(self.hmap)
        except table.RouteError as error:
            self.answer(error.status, error.reason)
            return
        self.backend = backend
        backend.stats.arrived(now)
        endpoint = backend.pick()
        if endpoint is not None:
            self.assign(endpoint)
            return
        if backend.unavailable and not backend.endpoints:
            self.answer(503, backend.unavailable, retry_after=5)
            return
        if not backend.enqueue(self):
            self.answer(503, f"revision {backend.name} has {len(backend.queue)} requests "
                             "waiting, the most it holds", retry_after=1)
            return
        self.enqueued_at = now
        if not backend.endpoints and len(backend.queue) == 1:
            worker.poke(backend)

    def assign(self, endpoint: balancer.Endpoint) -> None:
        """Take a slot on the endpoint and send the request over a pooled or new connection."""
        backend = self.backend
        assert backend is not None
        self.endpoint = endpoint
        endpoint.inflight += 1
        worker = self.client.worker
        self.assigned_at = now = worker.now()
        backend.stats.assigned(now, 1)
        idle = endpoint.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                self._send(conn)
                return
        worker.spawn(self._connect(endpoint))

    async def _connect(self, endpoint: balancer.Endpoint) -> None:
        worker = self.client.worker
        try:
            conn = await upstream.connect(endpoint, worker.settings.connect_timeout_s)
        except (OSError, TimeoutError):
            if self.done:
                return
            # The request never reached a replica, so another endpoint may take it.
            self._release_endpoint(worker.now())
            self.failed = [*(self.failed or ()), endpoint]
            retry = self._untried_endpoint(self.failed)
            if retry is not None and len(self.failed) < worker.settings.connect_attempts:
                self.assign(retry)
            else:
                self.answer(502, f"could not connect to a replica of revision "
                                 f"{self.backend.name if self.backend else '?'}")
            return
        if self.done:  # the client left while we connected: keep the connection for others
            if endpoint.removed:
                conn.close()
            else:
                conn.idle_since = worker.now()
                endpoint.idle.append(conn)
            return
        self._send(conn)

    def _untried_endpoint(self, failed: list[balancer.Endpoint]) -> balancer.Endpoint | None:
        backend = self.backend
        if backend is None:
            return None
        candidates = [e for e in backend.endpoints if e not in failed
                      and (not backend.limit or e.inflight < backend.limit)]
        return min(candidates, key=lambda e: e.inflight) if candidates else None

    def _send(self, conn: upstream.UpstreamConnection) -> None:
        client = self.client
        conn.exchange = self
        self.upstream = conn
        transport = conn.transport
        assert transport is not None
        if client.feeding:  # the body may follow in this same read: send it all at once
            conn.cork()
            client.corked_upstream = conn
        head = self.head or self._build_head(conn.endpoint)
        if self.body:
            chunks = self.body
            self.body = None
            self.body_held = 0
            if self.chunked_in:
                chunks = [part for c in chunks for part in (b"%x\r\n" % len(c), c, b"\r\n")]
            conn.send(head, *chunks)
            client.resume(PAUSE_BODY)
        else:
            conn.send(head)
        if self.request_complete and self.chunked_in:
            conn.send(b"0\r\n\r\n")
        worker = client.worker
        self.deadline = worker.now() + worker.settings.first_byte_timeout_s
        worker.active.add(self)
        if client.write_paused:
            transport.pause_reading()

    def _build_head(self, endpoint: balancer.Endpoint) -> bytes:
        hmap = self.hmap
        client = self.client
        parts = [self.method, b" ", self.url, b" HTTP/1.1\r\n"]
        connection = hmap.get(b"connection")
        named = connection_options(connection) if connection else None
        for name, value in self.headers:
            if not named or name.lower() not in named:
                parts += (name, b": ", value, b"\r\n")
        if b"host" not in hmap:  # HTTP/1.0 may omit it; HTTP/1.1 requires it
            parts += (b"Host: ", endpoint.authority, b"\r\n")
        forwarded = hmap.get(b"x-forwarded-for")
        chain = forwarded + b", " + client.peer if forwarded else client.peer
        parts += (b"X-Forwarded-For: ", chain, b"\r\nX-Forwarded-Proto: http\r\nX-Request-Id: ",
                  hmap.get(b"x-request-id") or client.worker.request_id(), b"\r\n")
        if self.chunked_in:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(b"\r\n")
        self.head = b"".join(parts)
        return self.head

    # request body from the client

    def request_body(self, chunk: bytes) -> None:
        self.body_bytes += len(chunk)
        if self.body_bytes > self.client.worker.settings.max_body_bytes:
            raise Reject(413, f"request body over {self.client.worker.settings.max_body_bytes}"
                              " bytes")
        if self.done:
            return
        conn = self.upstream
        if conn is not None:
            if self.chunked_in:
                conn.send(b"%x\r\n" % len(chunk), chunk, b"\r\n")
            else:
                conn.send(chunk)
        else:
            if self.body is None:
                self.body = []
            self.body.append(chunk)
            self.body_held += len(chunk)
            if self.body_held > BODY_BUFFER_BYTES:
                self.client.pause(PAUSE_BODY)

    def request_done(self) -> None:
        self.request_complete = True
        conn = self.upstream
        if conn is not None and self.chunked_in and not self.done:
            conn.send(b"0\r\n\r\n")

    # response from the replica

    def response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        client = self.client
        parts = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
        has_length = upstream_chunked = False
        connection = None
        for name, value in headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"transfer-encoding":
                    upstream_chunked = True
                elif lname == b"connection":
                    connection = value
                continue
            if lname == b"content-length":
                has_length = True
            elif lname == b"content-type" and (value.startswith(STREAM_TYPES) or (
                    value[:1] in b"TA" and is_stream(value))):  # no call for a plain JSON answer
                self.stream_chunks = 0
            parts += (name, b": ", value, b"\r\n")
        if connection is not None:
            named = connection_options(connection)
            if named:  # rare: a replica naming its own hop-by-hop headers
                parts = [*parts[:3], *(p for name, value in headers
                                       if name.lower() not in HOP_BY_HOP
                                       and name.lower() not in named
                                       for p in (name, b": ", value, b"\r\n"))]
        no_body = self.method == b"HEAD" or status in (204, 304)
        self.close_delimited = not (has_length or upstream_chunked or no_body)
        if not has_length and not no_body:
            if self.version == "1.1":
                self.chunked_out = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False  # close-delimited for HTTP/1.0
        backend = self.backend
        assert backend is not None
        if self.stream_chunks == 0:
            backend.stats.streams += 1
        parts.append(backend.revision_header)
        if not self.keep_alive or self.must_close or client.worker.draining:
            parts.append(b"Connection: close\r\n")
        elif self.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        client.send(b"".join(parts))
        self.responded = True
        worker = client.worker
        self.deadline = worker.now() + worker.settings.idle_timeout_s
        if self.method == b"HEAD":
            self._finish(status, reuse=False)  # httptools cannot skip a HEAD response's body

    def response_body(self, chunk: bytes) -> None:
        if self.chunked_out:
            self.client.send(b"%x\r\n" % len(chunk), chunk, b"\r\n")
        else:
            self.client.send(chunk)
        worker = self.client.worker
        now = worker.now()
        self.deadline = now + worker.settings.idle_timeout_s
        chunks = self.stream_chunks
        if chunks != NOT_A_STREAM:
            if not chunks:
                self.stream_first = now
                self.backend.stats.first_byte(now - self.started)  # type: ignore[union-attr]
            self.stream_chunks = chunks + 1
            self.stream_last = now

    def response_complete(self, upstream_keep_alive: bool) -> None:
        if self.chunked_out:
            self.client.send(b"0\r\n\r\n")
        self._finish(self.status, reuse=upstream_keep_alive and self.request_complete)

    def upstream_lost(self) -> None:
        """The replica closed the connection before the response was complete."""
        if self.done:
            return
        self.upstream = None
        if not self.responded:
            self.answer(502, "the replica closed the connection without answering")
        elif self.close_delimited:  # the replica's close is the end of this body
            if self.chunked_out:
                self.client.send(b"0\r\n\r\n")
            self._finish(self.status, reuse=False)
        else:
            self.must_close = True
            self._finish(502, reuse=False)
            self.client.close()  # truncated: the client must not take it as complete

    def upstream_failed(self, reason: str) -> None:
        if self.done:
            return
        self.upstream = None
        if not self.responded:
            self.answer(502, reason)
        else:
            self.must_close = True
            self._finish(502, reuse=False)
            self.client.close()

    # endings

    def reject(self, status: int, reason: str) -> None:
        """Turned away from the queue (deadline passed, revision gone)."""
        self.answer(status, reason)

    def timed_out(self) -> None:
        """The replica sent nothing within the first-byte or idle timeout."""
        if self.done:
            return
        if self.responded:
            self.must_close = True
            self._finish(504, reuse=False)
            self.client.close()
        else:
            self.answer(504, "the replica did not answer in time")

    def client_gone(self) -> None:
        if self.done:
            return
        backend = self.backend
        if backend is not None and self.endpoint is None and self.enqueued_at:
            backend.leave(self)
        self._finish(499, reuse=False)

    def answer(self, status: int, reason: str, retry_after: int | None = None) -> None:
        """Answer from the router itself (routing errors, limits, timeouts, failures)."""
        if self.done:
            return
        client = self.client
        if self.responded:  # too late for a status: cut the stream so it reads as incomplete
            self.must_close = True
            self._finish(status, reuse=False)
            client.close()
            return
        close = self.must_close or not self.request_complete or not self.keep_alive
        self.must_close = close
        if status == 503 and retry_after is None:
            retry_after = 1
        client.send(error_response(status, reason, close=close, retry_after=retry_after))
        self.responded = True
        self._finish(status, reuse=False)

    def _finish(self, status: int, *, reuse: bool) -> None:
        if self.done:
            return
        self.done = True
        worker = self.client.worker
        worker.active.discard(self)
        now = worker.now()
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.exchange = None
            endpoint = conn.endpoint
            if reuse and not conn.closed and not endpoint.removed:
                if self.client.write_paused:
                    conn.transport.resume_reading()  # type: ignore[union-attr]
                conn.idle_since = now
                endpoint.idle.append(conn)
            else:
                conn.close()
        self._release_endpoint(now, answered=conn is not None and 200 <= status < 300)
        backend = self.backend
        if backend is not None:
            stats = backend.stats
            stats.answered(status, now - self.started)
            if self.stream_chunks != NOT_A_STREAM:
                stats.stream_ended(self.stream_chunks, self.stream_last - self.stream_first)
        self.client.exchange_finished(self)
        if worker.draining:
            worker.exchange_done()

    def _release_endpoint(self, now: float, *, answered: bool = False) -> None:
        endpoint = self.endpoint
        if endpoint is None:
            return
        self.endpoint = None
        endpoint.inflight -= 1
        backend = self.backend
        assert backend is not None
        backend.stats.assigned(now, -1)
        if backend.queue:
            if answered and backend.release_limit:
                backend.answered(endpoint, now - self.assigned_at)
            backend.release(now)
