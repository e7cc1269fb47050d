"""The Kubernetes API as sluice's controller uses it: a narrow asyncio seam.

``KubeApi`` is the whole interface: list and watch any kind, get one object, ask whether it
may do something (a SelfSubjectAccessReview), read and set a Deployment's replicas through
``/scale`` only (the RBAC promises the controller never edits a workload), merge-patch a
custom resource's ``/status``, write events.k8s.io/v1 Events, and read/create/update
coordination.k8s.io Leases with optimistic concurrency (leader election).
``Client`` implements it over kubernetes_asyncio; a unit test of the control core can stand a
fake in its place.

Why kubernetes_asyncio: its models are the ``kubernetes`` package's (V1Pod, V1Scale, V1Lease),
which the tests and tools already use; it runs on asyncio (aiohttp); and it loads kubeconfigs
and in-cluster ServiceAccounts, re-reading the projected token as the kubelet rotates it.
Its generated per-kind methods and its ``Watch`` are not used: requests go through
``ApiClient.call_api`` with paths built from ``Kind``, because

- every call here has a timeout (opening a socket, each read, and total; a watch's total is
  its ``timeoutSeconds`` plus a grace, and a watch silent for longer than the apiserver's
  bookmark period is dropped). Not aiohttp's ``connect``, which also counts the wait for a free
  pooled connection: a call queued behind others would time out for waiting its turn;
- its aiohttp session trusts the environment (``trust_env``): every call would look for
  ~/.netrc and proxy variables. Sluice's does not: the apiserver is reached as the kubeconfig
  or the ServiceAccount says, nothing else;
- a watch must surface 410 Gone to the informer, which re-lists and diffs; ``Watch`` retries a
  410 once on its own and builds a second ApiClient (a second connection pool) to decode;
- errors become four exceptions a caller can act on (``NotFound``, ``Conflict``, ``Gone``,
  ``Unavailable``) instead of ApiException and aiohttp's dozen;
- MicroTime fields (a Lease's renewTime, an Event's eventTime) must carry six fractional
  digits: the apiserver rejects ``2026-01-01T00:00:00+00:00``, which is what ``isoformat()``
  gives a datetime whose microsecond is 0.

Built-in kinds come back as models (``Kind.model``); custom resources as plain dicts.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from policies import resources


@dataclass(frozen=True)
class Kind:
    """A resource the controller reads or writes, and how its objects are decoded."""

    group: str
    """API group; "" for the core group (pods, nodes)."""
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    model: str | None = None
    """kubernetes model class name the objects decode to ("V1Pod"); None keeps dicts."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        """The REST path; without ``namespace`` a namespaced kind is listed cluster-wide."""
        path = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            path += f"/namespaces/{namespace}"
        elif not self.namespaced and namespace is not None:
            raise ValueError(f"{self.plural} are cluster-scoped; got namespace {namespace!r}")
        path += f"/{self.plural}"
        if name is not None:
            path += f"/{name}"
            if subresource is not None:
                path += f"/{subresource}"
        return path


PODS = Kind("", "v1", "pods", "Pod", model="V1Pod")
NODES = Kind("", "v1", "nodes", "Node", namespaced=False, model="V1Node")
DEPLOYMENTS = Kind("apps", "v1", "deployments", "Deployment", model="V1Deployment")
SECRETS = Kind("", "v1", "secrets", "Secret", model="V1Secret")
SCALING_POLICIES = Kind(resources.GROUP, resources.VERSION, resources.SCALING_POLICY.plural,
                        resources.SCALING_POLICY.kind)
ROLLOUTS = Kind(resources.GROUP, resources.VERSION, resources.ROLLOUT.plural,
                resources.ROLLOUT.kind)
INFERENCE_SERVICES = Kind("serving.kserve.io", "v1beta1", "inferenceservices",
                          "InferenceService")
EVENTS = Kind("events.k8s.io", "v1", "events", "Event", model="EventsV1Event")
LEASES = Kind("coordination.k8s.io", "v1", "leases", "Lease", model="V1Lease")
SELF_SUBJECT_ACCESS_REVIEWS = Kind("authorization.k8s.io", "v1", "selfsubjectaccessreviews",
                                   "SelfSubjectAccessReview", namespaced=False)


class KubeError(Exception):
    """A call to the apiserver failed."""


class ApiError(KubeError):
    """The apiserver answered with an error status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    """404: the object (or its namespace, or its kind) does not exist."""


class Conflict(ApiError):
    """409: stale resourceVersion on update, or the name is taken on create."""


class Gone(ApiError):
    """410: the resourceVersion a watch or list continued from is no longer available."""


class _ContinueExpired(Gone):
    """410 on a list's continue token, not on the list itself."""


class Unavailable(KubeError):
    """No usable answer: refused, reset, timed out, throttled (429) or a 5xx."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConfigError(KubeError):
    """Neither a usable kubeconfig nor an in-cluster ServiceAccount was found."""


@dataclass(frozen=True)
class Listing:
    items: list[Any]
    resource_version: str
    """The list's resourceVersion: watch from here to miss nothing."""


@dataclass(frozen=True)
class WatchEvent:
    type: str
    """ADDED, MODIFIED, DELETED or BOOKMARK."""
    object: Any
    """The object (model or dict); None for a BOOKMARK."""
    resource_version: str


class KubeApi(Protocol):
    """What the controller needs from the apiserver, and nothing more."""

    async def list(self, kind: Kind, *, namespace: str | None = None,
                   label_selector: str | None = None,
                   field_selector: str | None = None) -> Listing: ...

    def watch(self, kind: Kind, *, resource_version: str, namespace: str | None = None,
              label_selector: str | None = None, field_selector: str | None = None,
              timeout_s: int = 300) -> AsyncGenerator[WatchEvent, None]: ...

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Any: ...

    async def allowed(self, verb: str, kind: Kind, namespace: str | None = None) -> bool: ...

    async def create(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> Any: ...

    async def patch(self, kind: Kind, namespace: str, name: str,
                    body: Mapping[str, Any]) -> Any: ...

    async def get_scale(self, namespace: str, name: str) -> k8s.V1Scale: ...

    async def patch_scale(self, namespace: str, name: str, replicas: int) -> k8s.V1Scale: ...

    async def patch_status(self, kind: Kind, namespace: str, name: str,
                           status: Mapping[str, Any]) -> Any: ...

    async def create_event(self, namespace: str,
                           event: k8s.EventsV1Event | Mapping[str, Any]) -> k8s.EventsV1Event: ...

    async def patch_event(self, namespace: str, name: str,
                          patch: Mapping[str, Any]) -> k8s.EventsV1Event: ...

    async def get_lease(self, namespace: str, name: str) -> k8s.V1Lease: ...

    async def create_lease(self, namespace: str, lease: k8s.V1Lease) -> k8s.V1Lease: ...

    async def update_lease(self, namespace: str, lease: k8s.V1Lease) -> k8s.V1Lease: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ClientSettings:
    kubeconfig: Path | None = None
    """Kubeconfig to load. Default None: the in-cluster ServiceAccount when
    KUBERNETES_SERVICE_HOST is set (as in a pod), else $KUBECONFIG or ~/.kube/config."""
    context: str | None = None
    """Kubeconfig context. Default None: its current-context."""
    connect_timeout_s: float = 5.0
    """Seconds to open a socket (TCP and TLS), not counting the wait for a free pooled
    connection. Default 5: the apiserver is near; longer only delays noticing it is down."""
    read_timeout_s: float = 15.0
    """Seconds a non-watch call may wait for the next bytes of its answer. Default 15: the
    apiserver answers a get in milliseconds and streams a long list as it reads it."""
    request_timeout_s: float = 30.0
    """Seconds for a whole non-watch call, a wait for a pooled connection included. Default
    30: kubectl's order of magnitude; a list of thousands of pods takes well under it."""
    watch_grace_s: float = 15.0
    """Seconds a watch may run past its own timeoutSeconds before the client drops it.
    Default 15: the apiserver ends the watch itself at timeoutSeconds."""
    watch_idle_timeout_s: float = 90.0
    """Seconds a watch may stay silent. Default 90: the apiserver sends a bookmark about
    every 60 s to watches that asked for them, so silence beyond this is a dead connection."""
    max_connections: int = 32
    """Open connections to the apiserver at most. Default 32: each watch holds one (pods,
    nodes, policies, rollouts, InferenceServices, Deployments) and calls need the rest."""
    service_account_dir: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount")
    """Where the in-cluster token, CA and namespace are mounted."""
    user_agent: str = "sluice-controller"


class Client:
    """``KubeApi`` over kubernetes_asyncio. Build it with ``connect``; close it when done."""

    def __init__(self, api: k8s.ApiClient, settings: ClientSettings, namespace: str) -> None:
        self._api = api
        self._settings = settings
        self.namespace = namespace
        """The ServiceAccount's namespace in-cluster, else the context's (or "default")."""
        self._timeout = aiohttp.ClientTimeout(
            total=settings.request_timeout_s,
            sock_connect=settings.connect_timeout_s,
            sock_read=settings.read_timeout_s,
        )
        # call_api's private decoder turns a parsed dict into a model; the public one wants a
        # response's text and would parse every watch event and list item a second time.
        self._decode_model = api._ApiClient__deserialize  # type: ignore[attr-defined]

    @property
    def server(self) -> str:
        return str(self._api.configuration.host)

    async def close(self) -> None:
        await self._api.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # reads

    async def list(self, kind: Kind, *, namespace: str | None = None,
                   label_selector: str | None = None, field_selector: str | None = None,
                   page_size: int = 500) -> Listing:
        """Every object of ``kind`` matching the selectors, in pages of ``page_size``.

        Each page is a separate call with its own timeout. A continue token that expired
        mid-way (410) restarts the list once from the first page.
        """
        query = _selectors(label_selector, field_selector) | {"limit": str(page_size)}
        try:
            return await self._list_pages(kind, kind.path(namespace), query)
        except _ContinueExpired:
            # The token outlived etcd's compaction (the apiserver's: every 5 min): once more.
            return await self._list_pages(kind, kind.path(namespace), query)

    async def _list_pages(self, kind: Kind, path: str, query: dict[str, str]) -> Listing:
        items: list[Any] = []
        token = ""
        while True:
            try:
                page = await self._call("GET", path, query | ({"continue": token} if token else {}))
            except Gone as error:
                if token:
                    raise _ContinueExpired(error.status, error.reason, error.message) from error
                raise
            items.extend(self._decode(kind, item) for item in page.get("items") or [])
            token = page["metadata"].get("continue") or ""
            if not token:
                return Listing(items, page["metadata"]["resourceVersion"])

    async def watch(self, kind: Kind, *, resource_version: str, namespace: str | None = None,
                    label_selector: str | None = None, field_selector: str | None = None,
                    timeout_s: int = 300) -> AsyncGenerator[WatchEvent, None]:
        """Changes after ``resource_version``, with bookmarks, until the apiserver ends the watch
        after ``timeout_s``. Raises ``Gone`` when that version is no longer available.

        Use it under ``contextlib.aclosing`` so the connection is closed when you stop early.
        """
        query = _selectors(label_selector, field_selector) | {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }
        timeout = aiohttp.ClientTimeout(
            total=timeout_s + self._settings.watch_grace_s,
            sock_connect=self._settings.connect_timeout_s,
            sock_read=self._settings.watch_idle_timeout_s,
        )
        path = kind.path(namespace)
        response = await self._open("GET", path, query, None, "application/json", timeout)
        try:
            if response.status != 200:
                raise _error(response.status, await response.read(), f"watch {path}")
            while True:
                try:
                    line = await response.content.readline()
                except (aiohttp.ClientError, TimeoutError) as error:
                    raise Unavailable(f"watch {path}: {_describe(error)}") from error
                except ValueError as error:  # a line longer than the read buffer
                    raise KubeError(f"watch {path}: {error}") from error
                if not line:
                    return  # the apiserver ended the watch at timeoutSeconds
                event = _parse(line, f"watch {path}")
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise _status_error(obj, f"watch {path}")
                version = obj.get("metadata", {}).get("resourceVersion", "")
                if event["type"] == "BOOKMARK":
                    yield WatchEvent("BOOKMARK", None, version)
                else:
                    yield WatchEvent(event["type"], self._decode(kind, obj), version)
        finally:
            # Not release(): a watch stopped mid-stream leaves an unread body; close the socket.
            response.close()

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Any:
        return self._decode(kind, await self._call("GET", kind.path(namespace, name)))

    async def allowed(self, verb: str, kind: Kind, namespace: str | None = None) -> bool:
        """Whether this client may ``verb`` objects of ``kind`` (in ``namespace``; None: all
        namespaces, or a cluster-scoped kind), as ``kubectl auth can-i`` asks: a
        SelfSubjectAccessReview, which any authenticated user may create, writes nothing."""
        review = await self._call("POST", SELF_SUBJECT_ACCESS_REVIEWS.path(), body={
            "apiVersion": SELF_SUBJECT_ACCESS_REVIEWS.api_version,
            "kind": SELF_SUBJECT_ACCESS_REVIEWS.kind,
            "spec": {"resourceAttributes": {"verb": verb, "group": kind.group,
                                            "resource": kind.plural,
                                            **({"namespace": namespace} if namespace else {})}}})
        return bool((review.get("status") or {}).get("allowed"))

    # writes

    async def create(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> Any:
        """Creates an object; ``Conflict`` if one of that name exists."""
        return self._decode(kind, await self._call("POST", kind.path(namespace),
                                                   body=_to_json(body)))

    async def patch(self, kind: Kind, namespace: str, name: str,
                    body: Mapping[str, Any]) -> Any:
        """Merge-patches an object (for sluice's own resources: their metadata, e.g. the
        annotation a rollout command leaves; the spec is the user's). A None value deletes
        its key, as merge patches do."""
        data = await self._call("PATCH", kind.path(namespace, name), body=dict(body),
                                content_type="application/merge-patch+json")
        return self._decode(kind, data)

    async def get_scale(self, namespace: str, name: str) -> k8s.V1Scale:
        """A Deployment's ``/scale``: spec.replicas, status.replicas and status.selector."""
        data = await self._call("GET", DEPLOYMENTS.path(namespace, name, "scale"))
        return cast(k8s.V1Scale, self._decode_model(data, "V1Scale"))

    async def patch_scale(self, namespace: str, name: str, replicas: int) -> k8s.V1Scale:
        """Sets a Deployment's replicas through ``/scale``, nothing else of it."""
        if replicas < 0:
            raise ValueError(f"replicas: must be at least 0, got {replicas}")
        data = await self._call(
            "PATCH", DEPLOYMENTS.path(namespace, name, "scale"),
            body={"spec": {"replicas": replicas}}, content_type="application/merge-patch+json",
        )
        return cast(k8s.V1Scale, self._decode_model(data, "V1Scale"))

    async def patch_status(self, kind: Kind, namespace: str, name: str,
                           status: Mapping[str, Any]) -> Any:
        """Merge-patches ``status`` into the object's ``/status`` (None values delete keys)."""
        data = await self._call(
            "PATCH", kind.path(namespace, name, "status"), body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )
        return self._decode(kind, data)

    async def create_event(self, namespace: str,
                           event: k8s.EventsV1Event | Mapping[str, Any]) -> k8s.EventsV1Event:
        data = await self._call("POST", EVENTS.path(namespace), body=_to_json(event))
        return cast(k8s.EventsV1Event, self._decode(EVENTS, data))

    async def patch_event(self, namespace: str, name: str,
                          patch: Mapping[str, Any]) -> k8s.EventsV1Event:
        """Merge-patches an Event: how a repeated one is counted (``series``)."""
        data = await self._call(
            "PATCH", EVENTS.path(namespace, name), body=_to_json(patch),
            content_type="application/merge-patch+json",
        )
        return cast(k8s.EventsV1Event, self._decode(EVENTS, data))

    async def get_lease(self, namespace: str, name: str) -> k8s.V1Lease:
        return cast(k8s.V1Lease, await self.get(LEASES, namespace, name))

    async def create_lease(self, namespace: str, lease: k8s.V1Lease) -> k8s.V1Lease:
        """Creates the Lease; ``Conflict`` if one of that name exists."""
        data = await self._call("POST", LEASES.path(namespace), body=_to_json(lease))
        return cast(k8s.V1Lease, self._decode(LEASES, data))

    async def update_lease(self, namespace: str, lease: k8s.V1Lease) -> k8s.V1Lease:
        """Replaces the Lease if its ``metadata.resourceVersion`` is still current, else
        ``Conflict``: two candidates cannot both win the same renewal."""
        if lease.metadata is None or not (lease.metadata.name and lease.metadata.resource_version):
            raise ValueError("lease: metadata.name and metadata.resourceVersion are required")
        data = await self._call(
            "PUT", LEASES.path(namespace, lease.metadata.name), body=_to_json(lease)
        )
        return cast(k8s.V1Lease, self._decode(LEASES, data))

    # plumbing

    def _decode(self, kind: Kind, data: Any) -> Any:
        return data if kind.model is None else self._decode_model(data, kind.model)

    async def _call(self, method: str, path: str, query: Mapping[str, str] | None = None, *,
                    body: Any = None, content_type: str = "application/json") -> Any:
        response = await self._open(method, path, query, body, content_type, self._timeout)
        what = f"{method} {path}"
        try:
            payload = await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Unavailable(f"{what}: {_describe(error)}") from error
        finally:
            response.release()
        if response.status >= 400:
            raise _error(response.status, payload, what)
        return _parse(payload, what)

    async def _open(self, method: str, path: str, query: Mapping[str, str] | None, body: Any,
                    content_type: str, limits: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        try:
            response: aiohttp.ClientResponse = await self._api.call_api(
                path, method,
                query_params=list((query or {}).items()),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _preload_content=False,
                _request_timeout=limits,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise Unavailable(f"{method} {path}: {_describe(error)}") from error
        return response


async def connect(settings: ClientSettings = ClientSettings(), *,
                  environ: Mapping[str, str] = os.environ) -> Client:
    """A client from ``settings.kubeconfig``, else in-cluster, else $KUBECONFIG/~/.kube/config.

    Raises ``ConfigError`` naming what was tried when none of them is usable.
    """
    configuration = k8s.Configuration()
    if settings.kubeconfig is None and environ.get("KUBERNETES_SERVICE_HOST"):
        namespace = _load_in_cluster(configuration, settings, environ)
    else:
        namespace = await _load_kubeconfig(configuration, settings, environ)
    configuration.connection_pool_maxsize = settings.max_connections
    api = k8s.ApiClient(configuration)
    api.user_agent = settings.user_agent
    _distrust_env(api)
    return Client(api, settings, namespace)


def _distrust_env(api: k8s.ApiClient) -> None:
    """kubernetes_asyncio's session with ``trust_env`` off, on the same connection pool (its
    connector: the TLS settings and the connection limit)."""
    rest = api.rest_client
    trusting: aiohttp.ClientSession = rest.pool_manager
    rest.pool_manager = aiohttp.ClientSession(
        connector=trusting.connector, trust_env=False,
        read_bufsize=2**21)  # as kubernetes_asyncio's: a watch event may be an etcd value, 1.5 MiB
    trusting.detach()  # closed without closing the connector, which the new session owns


def _load_in_cluster(configuration: k8s.Configuration, settings: ClientSettings,
                     environ: Mapping[str, str]) -> str:
    account = settings.service_account_dir
    try:
        k8s_config.incluster_config.InClusterConfigLoader(
            token_filename=str(account / "token"),
            cert_filename=str(account / "ca.crt"),
            environ=dict(environ),
        ).load_and_set(configuration)
    except k8s_config.ConfigException as error:
        raise ConfigError(f"in-cluster config from {account}: {error}") from error
    namespace_file = account / "namespace"
    return namespace_file.read_text().strip() if namespace_file.exists() else "default"


async def _load_kubeconfig(configuration: k8s.Configuration, settings: ClientSettings,
                           environ: Mapping[str, str]) -> str:
    path = _kubeconfig_path(settings, environ)
    if not path.is_file():
        raise ConfigError(
            f"kubeconfig {path} does not exist, and KUBERNETES_SERVICE_HOST is not set "
            "(not in a pod)"
        )
    try:
        loader = await k8s_config.load_kube_config(
            config_file=str(path), context=settings.context,
            client_configuration=configuration, persist_config=False,
        )
    except (k8s_config.ConfigException, OSError, ValueError) as error:
        raise ConfigError(f"kubeconfig {path}: {error}") from error
    context = (loader.current_context or {}).get("context") or {}
    return str(context.get("namespace") or "default")


def _kubeconfig_path(settings: ClientSettings, environ: Mapping[str, str]) -> Path:
    if settings.kubeconfig is not None:
        return settings.kubeconfig
    # Like kubectl: the first file of $KUBECONFIG, else ~/.kube/config.
    listed = environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return Path(listed) if listed else Path("~/.kube/config").expanduser()


def _selectors(label_selector: str | None, field_selector: str | None) -> dict[str, str]:
    query = {}
    if label_selector:
        query["labelSelector"] = label_selector
    if field_selector:
        query["fieldSelector"] = field_selector
    return query


def _parse(payload: bytes, what: str) -> Any:
    try:
        return json.loads(payload)
    except ValueError as error:
        raise KubeError(f"{what}: the answer is not JSON ({error})") from error


def _error(status: int, payload: bytes, what: str) -> KubeError:
    try:
        body = json.loads(payload)
    except ValueError:
        body = {}
    if not isinstance(body, dict) or body.get("kind") != "Status":
        body = {"message": payload[:200].decode(errors="replace")}
    return _status_error({**body, "code": status}, what)


def _status_error(status: Mapping[str, Any], what: str) -> KubeError:
    """The exception for a metav1.Status (an error answer or a watch's ERROR event)."""
    code = int(status.get("code") or 0)
    reason = str(status.get("reason") or "")
    message = f"{what}: {status.get('message') or reason or 'no message'}"
    if code == 429 or code >= 500:
        return Unavailable(f"{code} {reason}: {message}", status=code)
    error_type = {404: NotFound, 409: Conflict, 410: Gone}.get(code, ApiError)
    return error_type(code, reason, message)


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def micro_time(moment: datetime.datetime) -> str:
    """RFC 3339 with exactly six fractional digits, in UTC: what a MicroTime field accepts."""
    if moment.tzinfo is None:
        raise ValueError(f"a MicroTime needs an aware datetime, got {moment!r}")
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _to_json(value: Any) -> Any:
    """A model, dict or list as JSON-ready data; datetimes as MicroTime strings, which every
    Time field accepts too (fractional seconds are optional there)."""
    if isinstance(value, datetime.datetime):
        return micro_time(value)
    if isinstance(value, Mapping):
        return {key: _to_json(item) for key, item in value.items() if item is not None}
    if isinstance(value, list | tuple):
        return [_to_json(item) for item in value]
    if hasattr(value, "openapi_types") and hasattr(value, "attribute_map"):
        return {
            value.attribute_map[field]: _to_json(getattr(value, field))
            for field in value.openapi_types
            if getattr(value, field) is not None
        }
    return value


