"""The router beside an InferenceService, as Kubernetes objects (``sluice manifests router``).

Where it sits is the KEDA HTTP add-on's interceptor placement: a Deployment + Service of its
own in the InferenceService's namespace, and the HTTPRoute (or Ingress) that clients reach
pointing at that Service. KServe makes no route of its own for an InferenceService labelled
``networking.kserve.io/visibility: cluster-local``, and the router dials the predictor's pod
IPs itself (the controller publishes them), so KServe's objects stay untouched.

Nothing here carries KServe's predictor labels (``serving.kserve.io/inferenceservice`` with
``component: predictor``): KServe deletes Deployments and Services with them that it did not
create. Every object is named ``<isvc>-router``, never ``<isvc>`` or ``<isvc>-predictor``,
which are KServe's.

What the controller relies on (autoscaler/kube/controller.py finds router pods this way): the
pods' labels ``app.kubernetes.io/name: sluice-router`` and ``sluice.dev/service: <isvc>``, the
admin port named ``admin`` (8081), listening on the pod IP only, and the admin token in the
Secret ``sluice-router-admin``, key ``token``, which the user creates (no token is ever
written into generated YAML).

The router starts without a table (``sluice router`` with no ``--config``): it is not Ready,
so the Service sends it nothing, until the controller has published the service's table to it,
which the controller does as soon as the pod runs; a router pod that restarts gets the current
table again before it takes traffic.

Pure: objects are plain dicts; autoscaler/manifests.py writes them as YAML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ROUTER_NAME_LABEL = "app.kubernetes.io/name"
ROUTER_NAME = "sluice-router"
SERVICE_LABEL = "sluice.dev/service"
"""On a router pod: the route-table service (the InferenceService) it fronts."""
HTTP_PORT_NAME, HTTP_PORT = "http", 8080
ADMIN_PORT_NAME, ADMIN_PORT = "admin", 8081
SERVICE_PORT = 80
"""The router Service's port, as KServe's predictor Services expose 80."""
TOKEN_SECRET, TOKEN_KEY = "sluice-router-admin", "token"
TOKEN_ENV = "SLUICE_ADMIN_TOKEN"
CONTROLLER_LABELS = {"app.kubernetes.io/name": "sluice",
                     "app.kubernetes.io/component": "controller"}
"""The controller's pod labels (manifests/controller/deployment.yaml): the only pods the
NetworkPolicy lets reach a router's admin port."""
KSERVE_PREDICTOR_LABELS = ("serving.kserve.io/inferenceservice", "component")
"""Labels KServe claims objects by; none of ours may carry them."""
DEFAULT_IMAGE = "registry.example.com/sluice:0.1.0"
"""A placeholder: an image of this repository (``pip install .``, the ``sluice`` command on
PATH). None is published yet; build and push one, then pass ``--image``."""
DRAIN_S = 30
"""The router's drain_timeout_s default: in-flight and buffered requests get this long after
SIGTERM."""
PRE_STOP_S = 5
"""Seconds a stopping router keeps accepting, so gateways and kube-proxy stop sending to it
before it closes its listener."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAME_SUFFIX = "-router"


class ManifestError(ValueError):
    """A setting that cannot make valid objects: ``field`` (the CLI flag) and ``reason``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class GatewayRef:
    """The Gateway an HTTPRoute attaches to."""

    name: str
    namespace: str | None = None
    """None: the route's own namespace."""

    @classmethod
    def parse(cls, text: str) -> GatewayRef:
        """``NAME`` or ``NAME/NAMESPACE``."""
        name, _, namespace = text.partition("/")
        for what, value in (("name", name), ("namespace", namespace)):
            if (value or what == "name") and not (_DNS_LABEL.match(value) and len(value) <= 63):
                raise ManifestError("--gateway", f"the Gateway's {what} {value!r} is not a DNS "
                                    "label; give NAME or NAME/NAMESPACE")
        return cls(name, namespace or None)


@dataclass(frozen=True)
class RouterSettings:
    """What ``sluice manifests router`` makes the objects from."""

    inference_service: str
    """The InferenceService the router fronts: its route-table service name and the prefix of
    every object's name. A DNS-1035 label (KServe's Services need one too)."""
    namespace: str
    """The InferenceService's namespace; the router must run beside it."""
    image: str = DEFAULT_IMAGE
    """The sluice image; DEFAULT_IMAGE is a placeholder (none is published yet)."""
    replicas: int = 2
    """Router pods. Default 2: one can restart or be evicted while the other serves; the
    controller publishes to and adds up the stats of every one."""
    gateway: GatewayRef | None = None
    """Attach an HTTPRoute to this Gateway (needs ``host``); None: no HTTPRoute."""
    ingress_class: str | None = None
    """Make an Ingress of this class instead (needs ``host``); None: no Ingress."""
    host: str | None = None
    """The host name clients use, on the HTTPRoute or Ingress."""
    request_timeout_s: int | None = None
    """Seconds the HTTPRoute lets a request take (``timeouts.request``, a Gateway API extended
    feature); None: the gateway's default. A request at zero waits for a replica to start, so a
    gateway's default (Envoy's 15 s) can cut it short."""
    controller_namespace: str = "sluice-system"
    """Where the controller runs: the NetworkPolicy lets only its pods reach the admin port."""

    def __post_init__(self) -> None:
        name = self.inference_service
        if not _DNS_1035_LABEL.match(name) or len(name) + len(_NAME_SUFFIX) > 63:
            raise ManifestError("--inferenceservice", f"{name!r} must be a lower-case DNS-1035 "
                                f"label of at most {63 - len(_NAME_SUFFIX)} characters (its "
                                f"objects are named {name or 'NAME'}{_NAME_SUFFIX})")
        for flag, value in (("--namespace", self.namespace),
                            ("--controller-namespace", self.controller_namespace)):
            if not _DNS_LABEL.match(value) or len(value) > 63:
                raise ManifestError(flag, f"{value!r} is not a DNS label")
        if not self.image or any(c.isspace() for c in self.image):
            raise ManifestError("--image", f"{self.image!r} is not an image reference")
        if not 1 <= self.replicas <= 100:
            raise ManifestError("--replicas", f"between 1 and 100, got {self.replicas}")
        if self.gateway is not None and self.ingress_class is not None:
            raise ManifestError("--gateway", "give --gateway or --ingress-class, not both")
        routed = self.gateway is not None or self.ingress_class is not None
        if routed and self.host is None:
            raise ManifestError("--host", "needed with --gateway or --ingress-class")
        if self.host is not None and not routed:
            raise ManifestError("--host", "give --gateway or --ingress-class with it")
        if self.host is not None and (not _HOST.match(self.host) or len(self.host) > 253):
            raise ManifestError("--host", f"{self.host!r} is not a DNS name")
        if self.ingress_class is not None and not _DNS_LABEL.match(self.ingress_class):
            raise ManifestError("--ingress-class", f"{self.ingress_class!r} is not a DNS label")
        if self.request_timeout_s is not None and (
                self.gateway is None or not 1 <= self.request_timeout_s <= 86_400):
            raise ManifestError("--request-timeout", "1 to 86400 seconds, with --gateway")

    @property
    def name(self) -> str:
        return self.inference_service + _NAME_SUFFIX


def selector(settings: RouterSettings) -> dict[str, str]:
    """The router pods' labels the controller finds them by (and the Deployment's selector)."""
    return {ROUTER_NAME_LABEL: ROUTER_NAME, SERVICE_LABEL: settings.inference_service}


def _labels(settings: RouterSettings) -> dict[str, str]:
    return {**selector(settings), "app.kubernetes.io/component": "router",
            "app.kubernetes.io/part-of": "sluice"}


def _metadata(settings: RouterSettings, name: str | None = None) -> dict[str, Any]:
    return {"name": name or settings.name, "namespace": settings.namespace,
            "labels": _labels(settings)}


# Non-root, nothing writable but /tmp, no privilege to gain, no capability kept.
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]}}


def deployment(settings: RouterSettings) -> dict[str, Any]:
    container = {
        "name": "router",
        "image": settings.image,
        "command": ["sluice", "router"],
        "args": ["--listen", f"0.0.0.0:{HTTP_PORT}",
                 # The pod IP only: the controller reaches it there, nothing else in the pod.
                 "--admin-listen", f"$(POD_IP):{ADMIN_PORT}"],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": TOKEN_SECRET,
                                                               "key": TOKEN_KEY}}},
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        ],
        "ports": [{"name": HTTP_PORT_NAME, "containerPort": HTTP_PORT, "protocol": "TCP"},
                  {"name": ADMIN_PORT_NAME, "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        # Ready = holds a table and is not draining; probed every second so a new router takes
        # traffic (and a draining one stops) quickly.
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": ADMIN_PORT_NAME},
                           "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": ADMIN_PORT_NAME},
                          "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_S}}},
        # No CPU limit: throttling would add latency to every request; memory is bounded (10,000
        # buffered requests cost ~40 MiB, docs/benchmarks.md).
        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"},
                      "limits": {"memory": "512Mi"}},
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _metadata(settings),
        "spec": {
            "replicas": settings.replicas,
            "selector": {"matchLabels": selector(settings)},
            # Never fewer ready routers than asked for during an update.
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": _labels(settings)},
                "spec": {
                    # The router never talks to the apiserver: no token in its pods.
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": PRE_STOP_S + DRAIN_S + 5,
                    "securityContext": POD_SECURITY_CONTEXT,
                    # One node lost takes one router, not all: spread over nodes where there
                    # are several, without leaving a pod Pending where there are not.
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": selector(settings)}}],
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}],
                },
            },
        },
    }


def disruption_budget(settings: RouterSettings) -> dict[str, Any]:
    """A node drain (or any eviction) takes one router at a time, so the others serve while it
    drains and its replacement starts; one router alone may still be evicted (a drain never
    blocks on it)."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _metadata(settings),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(settings)}}}


def service(settings: RouterSettings) -> dict[str, Any]:
    """The data plane only; the admin port is reached on pod IPs, by the controller."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(settings),
            "spec": {"type": "ClusterIP", "selector": selector(settings),
                     "ports": [{"name": HTTP_PORT_NAME, "port": SERVICE_PORT,
                                "targetPort": HTTP_PORT_NAME, "protocol": "TCP"}]}}


def network_policy(settings: RouterSettings) -> dict[str, Any]:
    """Anyone may send requests; only the controller's pods reach the admin API (its reads,
    stats and route table, are open to whoever reaches it). Kubelet probes come from the node,
    which NetworkPolicies always allow."""
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _metadata(settings),
        "spec": {
            "podSelector": {"matchLabels": selector(settings)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"port": HTTP_PORT_NAME, "protocol": "TCP"}]},
                {"from": [{"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": settings.controller_namespace}},
                    "podSelector": {"matchLabels": CONTROLLER_LABELS}}],
                 "ports": [{"port": ADMIN_PORT_NAME, "protocol": "TCP"}]},
            ],
        },
    }


def http_route(settings: RouterSettings) -> dict[str, Any]:
    assert settings.gateway is not None and settings.host is not None
    parent: dict[str, Any] = {"name": settings.gateway.name}  # group and kind: a Gateway
    if settings.gateway.namespace is not None:
        parent["namespace"] = settings.gateway.namespace
    rule: dict[str, Any] = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "backendRefs": [{"name": settings.name, "port": SERVICE_PORT}]}  # a Service
    if settings.request_timeout_s is not None:
        rule["timeouts"] = {"request": f"{settings.request_timeout_s}s"}
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": _metadata(settings),
            "spec": {"parentRefs": [parent], "hostnames": [settings.host], "rules": [rule]}}


def ingress(settings: RouterSettings) -> dict[str, Any]:
    assert settings.ingress_class is not None and settings.host is not None
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": _metadata(settings),
            "spec": {"ingressClassName": settings.ingress_class, "rules": [{
                "host": settings.host,
                "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {
                    "name": settings.name, "port": {"name": HTTP_PORT_NAME}}}}]}}]}}


def objects(settings: RouterSettings) -> list[dict[str, Any]]:
    """Every object, in the order to apply them."""
    made = [deployment(settings), disruption_budget(settings), service(settings),
            network_policy(settings)]
    if settings.gateway is not None:
        made.append(http_route(settings))
    elif settings.ingress_class is not None:
        made.append(ingress(settings))
    return made
