"""The route table: which revisions serve a service, with what weights and endpoints.

The router serves it and the autoscaler publishes it, so the schema lives here, between them.
YAML on disk and JSON on the router's control API are the same document::

    services:
      fraud-model:
        revisions:
          - {name: v1, weight: 90, endpoints: ["http://127.0.0.1:9001"], concurrency: 0,
             release_concurrency: 7}
          - {name: v2, weight: 10, endpoints: []}     # no ready endpoint: buffered
        buffer: {depth: 1000, timeout_s: 300}
        sticky: {header: X-User-Id}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Self
from urllib.parse import urlsplit

import pydantic
from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A DNS-1123 label: service and revision names become Kubernetes names and Host labels."""

MAX_WEIGHT = 100


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Buffer(_Model):
    """The bounded FIFO that holds a revision's requests while it has no free endpoint."""

    depth: int = Field(1000, ge=0, le=1_000_000, description=(
        "Requests held per revision at most; the next one gets 503 with Retry-After at once. "
        "0 disables buffering. Default 1000."))
    timeout_s: float = Field(300.0, gt=0, le=3600, description=(
        "Seconds a request may wait for an endpoint before it gets 504. Default 300, "
        "Knative's revision timeout, long enough for a model to load."))


class Sticky(_Model):
    """Where the key that keeps one user on one revision comes from."""

    header: str | None = Field(None, min_length=1, max_length=128, description=(
        "Request header whose value is the stickiness key, e.g. X-User-Id."))
    cookie: str | None = Field(None, min_length=1, max_length=128, description=(
        "Cookie whose value is the stickiness key; used when the header is absent."))

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.header is None and self.cookie is None:
            raise ValueError("give a header or a cookie")
        return self


class Revision(_Model):
    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    weight: int = Field(0, ge=0, le=MAX_WEIGHT, description=(
        "Relative share of the service's traffic (percent by convention). 0 gets nothing "
        "unless pinned with X-Sluice-Revision."))
    endpoints: list[str] = Field(default_factory=list, max_length=10_000, description=(
        "Ready replicas as http://host:port. Empty: requests are buffered until one appears."))
    concurrency: int = Field(0, ge=0, le=100_000, description=(
        "Most requests in flight per endpoint; 0 = unlimited. Excess waits in the buffer."))
    release_concurrency: int = Field(0, ge=0, le=100_000, description=(
        "Requests in flight per endpoint up to which waiting requests are released from the "
        "buffer; 0 = no pacing. Not a limit: with nothing waiting a request goes straight to "
        "an endpoint. It paces a scale-from-zero wave: the first replica to become ready takes "
        "this many, then one more per answer, and the replicas that become ready next share "
        "the rest, instead of the first one taking the whole wave while the others start. "
        "It is where each endpoint starts: an answer about as fast as the endpoint's fastest "
        "lets one more in, a slower one takes one back, so a server that takes any number "
        "drains the wave in a few round trips and one that works on a few at a time holds "
        "about that many. "
        "The autoscaler sets it from the ScalingPolicy (in-flight requests per replica it "
        "aims for). With concurrency set too, the smaller one paces. Default 0, as before."))
    unavailable: str | None = Field(None, max_length=500, description=(
        "Why the revision cannot get an endpoint (its replicas fail to start), set by the "
        "autoscaler. While it has no endpoint, its requests get 503 with this reason at once "
        "instead of waiting for a replica that is not coming."))

    @pydantic.field_validator("endpoints")
    @classmethod
    def _endpoints_are_http_urls(cls, endpoints: list[str]) -> list[str]:
        for url in endpoints:
            parse_endpoint(url)
        if len(set(endpoints)) != len(endpoints):
            raise ValueError("endpoints must be unique")
        return endpoints


def require_unique(names: list[str], what: str) -> None:
    """Raise ValueError naming the repeated ones, for a validator to report at its field."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{what} must be unique: {', '.join(repeated)}")


class Service(_Model):
    revisions: list[Revision] = Field(min_length=1, max_length=64)
    buffer: Buffer = Buffer()
    sticky: Sticky | None = None

    @pydantic.field_validator("revisions")
    @classmethod
    def _unique_names(cls, revisions: list[Revision]) -> list[Revision]:
        require_unique([r.name for r in revisions], "revision names")
        return revisions


class RouteTable(_Model):
    services: dict[str, Service] = Field(min_length=1, max_length=1000)

    @pydantic.field_validator("services")
    @classmethod
    def _service_names(cls, services: dict[str, Service]) -> dict[str, Service]:
        for name in services:
            if not re.match(NAME_PATTERN, name) or len(name) > 63:
                raise ValueError(f"service name {name!r} is not a DNS label")
        return services


NO_TABLE = RouteTable.model_construct(services={})
"""What a router serves before its controller has published a table (``sluice router`` without
``--config``, as on Kubernetes): nothing. It answers 503 and is not ready until a table comes."""


def parse_endpoint(url: str) -> tuple[str, int]:
    """``http://host:port`` → (host, port); anything else is a ValueError naming the URL."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"endpoint {url!r} must look like http://host:port")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"endpoint {url!r} has an invalid port") from None
    return parts.hostname, port


def load(document: Mapping[str, Any]) -> RouteTable:
    """Validate a route document; raises pydantic.ValidationError naming field and reason."""
    return RouteTable.model_validate(document)
