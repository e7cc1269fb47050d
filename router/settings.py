"""The router's settings: one typed object, passed explicitly, every field with unit and why."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RouterSettings:
    host: str = "127.0.0.1"
    """Address the data plane listens on. Loopback by default; 0.0.0.0 in a pod."""

    port: int = 8080
    """Data plane port. 0 picks a free one (tests)."""

    admin_host: str = "127.0.0.1"
    """Admin API address. Loopback by default: it can rewrite routes, so keep it private."""

    admin_port: int = 8081
    """Admin API port (routes, stats, metrics, events, health)."""

    workers: int = 1
    """Worker processes sharing the data plane port with SO_REUSEPORT; one per core at most."""

    max_body_bytes: int = 64 * 1024 * 1024
    """Largest request body accepted, in bytes; larger gets 413. 64 MiB fits image payloads."""

    max_header_bytes: int = 64 * 1024
    """Largest request line plus headers, in bytes; larger gets 431 (414 for the target)."""

    max_connections: int = 20_000
    """Client connections per worker at most; beyond it new ones get 503 and are closed."""

    header_timeout_s: float = 10.0
    """Seconds a client has to send a whole request head once it starts (and a new connection
    to start): a slowloris client is answered 408 and dropped instead of holding a slot."""

    body_timeout_s: float = 60.0
    """Seconds a request body may stall between chunks before 408."""

    keepalive_timeout_s: float = 75.0
    """Seconds an idle client connection is kept open (nginx's and aiohttp's default)."""

    connect_timeout_s: float = 5.0
    """Seconds to connect to a replica before trying another (the request never reached it)."""

    first_byte_timeout_s: float = 300.0
    """Seconds a replica may take to start answering: model inference can be slow."""

    idle_timeout_s: float = 300.0
    """Seconds a response may stall between chunks (token streams pause while generating)."""

    upstream_keepalive_s: float = 30.0
    """Seconds an idle pooled replica connection is kept; below the replica's own keep-alive
    (aiohttp 75 s, uvicorn 5 s is the exception: lower this for uvicorn replicas) so we close
    first instead of reusing a connection the replica is closing."""

    connect_attempts: int = 3
    """Endpoints tried for one request when connecting fails."""

    drain_timeout_s: float = 30.0
    """On SIGTERM: seconds to finish in-flight and buffered requests before closing."""

    sweep_interval_s: float = 0.5
    """How often timeouts, queue deadlines and idle pools are checked; the precision of every
    timeout above. One sweep per worker instead of a timer per request keeps the path cheap."""
