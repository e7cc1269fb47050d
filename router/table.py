"""The compiled route table: an immutable snapshot the request path reads without locking.

A new document is validated (policies.routing), compiled here, and swapped in with one
assignment, so a request sees either the old table or the new one, never a mix. Runtime state
that must outlive a swap (endpoints with their in-flight counts and connection pools, queues,
stats) lives in `RevisionBackend`s kept by the worker and only referenced from the snapshot.
"""

from __future__ import annotations

from collections.abc import Callable

from policies import routing, weighting
from router import balancer

PIN_HEADER = b"x-sluice-revision"

READ_HEADERS = frozenset({
    b"host", PIN_HEADER, b"content-length", b"transfer-encoding", b"expect", b"connection",
    b"upgrade", b"cookie", b"x-request-id", b"x-forwarded-for",
})
"""Request headers the proxy looks at (lowercase); the rest are only forwarded."""


class RouteError(Exception):
    """No route for a request: carries the status and the reason for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ServiceRoute:
    """One service's revisions, weights and stickiness, ready for the request path."""

    __slots__ = ("backends", "by_name", "name", "picker", "sticky_cookie", "sticky_header",
                 "weights")

    def __init__(self, name: str, spec: routing.Service,
                 backends: list[balancer.RevisionBackend]) -> None:
        self.name = name
        self.backends = backends
        self.by_name = {b.name.encode(): b for b in backends}
        self.weights = [r.weight for r in spec.revisions]
        self.picker = weighting.SmoothWeighted(self.weights)
        sticky = spec.sticky
        self.sticky_header = sticky.header.lower().encode() if sticky and sticky.header else None
        self.sticky_cookie = sticky.cookie.encode() if sticky and sticky.cookie else None

    def choose(self, headers: dict[bytes, bytes]) -> balancer.RevisionBackend:
        """Pinned revision, else sticky by key, else smooth weighted; RouteError if none."""
        pinned = headers.get(PIN_HEADER)
        if pinned is not None:
            backend = self.by_name.get(pinned)
            if backend is None:
                if not pinned.isascii():
                    raise RouteError(400, "X-Sluice-Revision must be a revision name (ASCII)")
                raise RouteError(404, f"service {self.name} has no revision "
                                      f"{pinned.decode('ascii')!r}")
            return backend
        try:
            key = self._sticky_key(headers) if self.sticky_header or self.sticky_cookie else None
            index = (weighting.sticky_pick(key, self.weights) if key is not None
                     else self.picker.pick())
        except LookupError:
            raise RouteError(503, f"service {self.name} has no revision with weight") from None
        return self.backends[index]

    def _sticky_key(self, headers: dict[bytes, bytes]) -> bytes | None:
        if self.sticky_header is not None:
            value = headers.get(self.sticky_header)
            if value:
                return value
        if self.sticky_cookie is not None:
            cookies = headers.get(b"cookie")
            if cookies:
                for part in cookies.split(b";"):
                    name, _, value = part.strip().partition(b"=")
                    if name == self.sticky_cookie and value:
                        return value
        return None


class Table:
    """Service lookup by Host label or by the model name in KServe V1 / V2 paths."""

    __slots__ = ("document", "only", "read_headers", "services")

    def __init__(self, document: routing.RouteTable,
                 backend_for: Callable[[str, routing.Service, routing.Revision],
                                       balancer.RevisionBackend]) -> None:
        self.document = document
        self.services = {
            name: ServiceRoute(name, spec, [backend_for(name, spec, r) for r in spec.revisions])
            for name, spec in document.services.items()
        }
        self.only = next(iter(self.services.values())) if len(self.services) == 1 else None
        self.read_headers = READ_HEADERS | {
            s.sticky_header for s in self.services.values() if s.sticky_header}

    def match(self, host: bytes | None, path: bytes) -> ServiceRoute:
        if self.only is not None:
            return self.only
        if not self.services:
            raise RouteError(503, "no route table yet: the controller has not published one")
        if host:
            route = self.services.get(host.split(b".", 1)[0].split(b":", 1)[0].decode("latin-1"))
            if route is not None:
                return route
        name = model_name(path)
        route = self.services.get(name) if name else None
        if route is None:
            raise RouteError(404, "no service matches the Host header or the model path")
        return route


def model_name(path: bytes) -> str | None:
    """The model in ``/v1/models/<name>[:verb]`` or ``/v2/models/<name>[/...]``."""
    if not path.startswith((b"/v1/models/", b"/v2/models/")):
        return None
    rest = path[11:].split(b"?", 1)[0]
    name = rest.split(b"/", 1)[0].split(b":", 1)[0]
    return name.decode("latin-1") or None
