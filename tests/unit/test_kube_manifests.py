"""What `sluice manifests router` writes and manifests/controller/ holds, checked against the
code that reads them: the controller's way of finding routers, the router's and the
controller's command lines, and KServe's hazards.

That the apiserver accepts them, and that a router made from them serves, is
tests/k8s/test_manifests.py.
"""

from __future__ import annotations

import importlib.metadata
import io
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoscaler import manifests
from autoscaler.kube import controller
from autoscaler.kube import router_manifests as rm
from router import main as router_main

ROOT = Path(__file__).resolve().parents[2]
CONTROLLER_DEPLOYMENT = ROOT / "manifests" / "controller" / "deployment.yaml"
RBAC_DIR = ROOT / "manifests" / "rbac"
POD_IP = "10.1.2.3"

GATEWAY = rm.RouterSettings("fraud", "models", gateway=rm.GatewayRef("public", "infra"),
                            host="fraud.example.com", request_timeout_s=600)
INGRESS = rm.RouterSettings("fraud", "models", ingress_class="nginx", host="fraud.example.com",
                            replicas=3)
IN_CLUSTER = rm.RouterSettings("fraud", "models")
VARIANTS = [pytest.param(GATEWAY, id="httproute"), pytest.param(INGRESS, id="ingress"),
            pytest.param(IN_CLUSTER, id="service-only")]


def by_kind(settings: rm.RouterSettings) -> dict[str, dict[str, Any]]:
    made = rm.objects(settings)
    kinds = {o["kind"]: o for o in made}
    assert len(kinds) == len(made), "one object of each kind"
    return kinds


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def port(container_: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in container_["ports"] if p["name"] == name)


def expanded_args(container_: dict[str, Any]) -> list[str]:
    """The args as the kubelet runs them: $(POD_IP) from the downward API."""
    env = {e["name"] for e in container_["env"]}
    assert "POD_IP" in env, "$(POD_IP) expands only from a declared variable"
    return [arg.replace("$(POD_IP)", POD_IP) for arg in container_["args"]]


def all_labels(obj: dict[str, Any]) -> list[dict[str, str]]:
    """Every label set and selector of an object: metadata, pod template, selectors."""
    found = [obj["metadata"].get("labels") or {}]
    spec = obj.get("spec") or {}
    found.append((spec.get("template") or {}).get("metadata", {}).get("labels") or {})
    found.append((spec.get("selector") or {}).get("matchLabels") or spec.get("selector") or {})
    found.append((spec.get("podSelector") or {}).get("matchLabels") or {})
    return found


# the router: what the controller and KServe see


@pytest.mark.parametrize("settings", VARIANTS)
def test_nothing_carries_kserve_predictor_labels_or_names(settings):
    for obj in rm.objects(settings):
        for labels in all_labels(obj):
            assert not set(labels) & set(rm.KSERVE_PREDICTOR_LABELS), (obj["kind"], labels)
        assert obj["metadata"]["name"] not in ("fraud", "fraud-predictor")
        assert obj["metadata"]["namespace"] == "models"


def test_router_pods_are_found_the_way_the_controller_looks_for_them():
    assert (rm.ROUTER_NAME_LABEL, rm.ROUTER_NAME, rm.SERVICE_LABEL) == (
        controller.ROUTER_NAME_LABEL, controller.ROUTER_NAME, controller.SERVICE_LABEL)
    assert (rm.ADMIN_PORT_NAME, rm.ADMIN_PORT) == (controller.ADMIN_PORT_NAME,
                                                   controller.DEFAULT_ADMIN_PORT)
    assert (rm.TOKEN_SECRET, rm.TOKEN_KEY) == (controller.ROUTER_TOKEN_SECRET,
                                               controller.ROUTER_TOKEN_KEY)
    deployment = by_kind(IN_CLUSTER)["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels[controller.ROUTER_NAME_LABEL] == controller.ROUTER_NAME
    assert labels[controller.SERVICE_LABEL] == "fraud"
    assert port(container(deployment), controller.ADMIN_PORT_NAME) == rm.ADMIN_PORT


def test_router_command_line_is_the_routers_own():
    made = by_kind(INGRESS)
    router = container(made["Deployment"])
    assert router["command"] == ["sluice", "router"]
    settings = router_main.settings_from(router_main.parse_args(expanded_args(router)))
    assert (settings.host, settings.port) == ("0.0.0.0", port(router, "http"))
    assert (settings.admin_host, settings.admin_port) == (POD_IP, port(router, "admin"))
    assert settings.workers == 1


def test_router_starts_without_a_table_and_so_is_not_ready_until_the_controller_publishes():
    router = container(by_kind(INGRESS)["Deployment"])
    assert router_main.parse_args(expanded_args(router)).config is None
    assert "volumeMounts" not in router or all(
        m["mountPath"] == "/tmp" for m in router["volumeMounts"])
    assert router["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_admin_token_comes_from_the_secret_and_is_never_written():
    for settings in (GATEWAY, INGRESS, IN_CLUSTER):
        made = rm.objects(settings)
        assert "Secret" not in {o["kind"] for o in made}
        env = {e["name"]: e for e in container(by_kind(settings)["Deployment"])["env"]}
        assert env[rm.TOKEN_ENV] == {"name": "SLUICE_ADMIN_TOKEN", "valueFrom": {
            "secretKeyRef": {"name": "sluice-router-admin", "key": "token"}}}


def test_router_pod_is_hardened_probed_and_bounded():
    deployment = by_kind(IN_CLUSTER)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    router = container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert router["securityContext"] == {
        "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}}
    assert router["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert router["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert router["resources"]["requests"] and router["resources"]["limits"]["memory"]
    # SIGTERM → preStop → drain, all inside the grace period
    assert pod["terminationGracePeriodSeconds"] > rm.PRE_STOP_S + rm.DRAIN_S
    assert deployment["spec"]["replicas"] == 2


@pytest.mark.parametrize("settings", VARIANTS)
def test_service_and_network_policy_select_the_router_pods(settings):
    made = by_kind(settings)
    pods = made["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selector = made["Deployment"]["spec"]["selector"]["matchLabels"]
    (spread,) = made["Deployment"]["spec"]["template"]["spec"]["topologySpreadConstraints"]
    for chosen in (selector, made["Service"]["spec"]["selector"],
                   made["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"],
                   made["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
                   spread["labelSelector"]["matchLabels"]):
        assert chosen.items() <= pods.items()
    # A drain takes one router at a time; routers spread over nodes, never left Pending for it.
    assert made["PodDisruptionBudget"]["spec"] == {"maxUnavailable": 1,
                                                   "selector": {"matchLabels": selector}}
    assert (spread["topologyKey"], spread["maxSkew"], spread["whenUnsatisfiable"]) == (
        "kubernetes.io/hostname", 1, "ScheduleAnyway")
    (service_port,) = made["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    router = container(made["Deployment"])
    admin_rule = next(rule for rule in made["NetworkPolicy"]["spec"]["ingress"]
                      if rule["ports"][0]["port"] == "admin")
    open_rule = next(rule for rule in made["NetworkPolicy"]["spec"]["ingress"]
                     if rule["ports"][0]["port"] == "http")
    assert "from" not in open_rule, "requests from anywhere"
    (peer,) = admin_rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "sluice-system"}
    controller_pods = controller_deployment()["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= controller_pods.items()
    assert {p["name"] for p in router["ports"]} == {"http", "admin"}


def test_httproute_sends_the_host_to_the_router_service():
    made = by_kind(GATEWAY)
    assert "Ingress" not in made
    route = made["HTTPRoute"]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "infra"}]
    assert route["spec"]["hostnames"] == ["fraud.example.com"]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": made["Service"]["metadata"]["name"], "port": 80}]
    assert made["Service"]["spec"]["ports"][0]["port"] == 80
    assert rule["timeouts"] == {"request": "600s"}
    same_namespace = rm.RouterSettings("fraud", "models", gateway=rm.GatewayRef("public"),
                                       host="fraud.example.com")
    route = by_kind(same_namespace)["HTTPRoute"]
    assert route["spec"]["parentRefs"] == [{"name": "public"}]
    assert "timeouts" not in route["spec"]["rules"][0]


def test_ingress_sends_the_host_to_the_router_service():
    made = by_kind(INGRESS)
    assert "HTTPRoute" not in made
    spec = made["Ingress"]["spec"]
    assert spec["ingressClassName"] == "nginx"
    (rule,) = spec["rules"]
    assert rule["host"] == "fraud.example.com"
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": made["Service"]["metadata"]["name"],
                                          "port": {"name": "http"}}


def test_without_a_gateway_or_class_no_route_is_made():
    assert set(by_kind(IN_CLUSTER)) == {"Deployment", "PodDisruptionBudget", "Service",
                                        "NetworkPolicy"}


@pytest.mark.parametrize(("make", "field", "reason"), [
    (lambda: rm.RouterSettings("Fraud", "m"), "--inferenceservice", "DNS-1035"),
    (lambda: rm.RouterSettings("1fraud", "m"), "--inferenceservice", "DNS-1035"),
    (lambda: rm.RouterSettings("f" * 57, "m"), "--inferenceservice", "at most 56"),
    (lambda: rm.RouterSettings("fraud", "M_s"), "--namespace", "DNS label"),
    (lambda: rm.RouterSettings("fraud", "m", controller_namespace=""), "--controller-namespace",
     "DNS label"),
    (lambda: rm.RouterSettings("fraud", "m", image="a b"), "--image", "image reference"),
    (lambda: rm.RouterSettings("fraud", "m", replicas=0), "--replicas", "between 1 and 100"),
    (lambda: rm.RouterSettings("fraud", "m", host="a.b"), "--host", "--gateway or"),
    (lambda: rm.RouterSettings("fraud", "m", ingress_class="nginx"), "--host", "needed"),
    (lambda: rm.RouterSettings("fraud", "m", gateway=rm.GatewayRef("g"), ingress_class="n",
                               host="a.b"), "--gateway", "not both"),
    (lambda: rm.RouterSettings("fraud", "m", gateway=rm.GatewayRef("g"), host="a b"), "--host",
     "DNS name"),
    (lambda: rm.RouterSettings("fraud", "m", ingress_class="Nginx!", host="a.b"),
     "--ingress-class", "DNS label"),
    (lambda: rm.RouterSettings("fraud", "m", ingress_class="nginx", host="a.b",
                               request_timeout_s=60), "--request-timeout", "with --gateway"),
    (lambda: rm.RouterSettings("fraud", "m", gateway=rm.GatewayRef("g"), host="a.b",
                               request_timeout_s=0), "--request-timeout", "1 to 86400"),
    (lambda: rm.GatewayRef.parse("gw/Infra"), "--gateway", "namespace 'Infra'"),
    (lambda: rm.GatewayRef.parse("/infra"), "--gateway", "name ''"),
])
def test_bad_settings_name_the_flag_and_reason(make, field, reason):
    with pytest.raises(rm.ManifestError) as caught:
        make()
    assert caught.value.field == field and reason in caught.value.reason, caught.value


def test_gateway_reference_parses_name_and_namespace():
    assert rm.GatewayRef.parse("public") == rm.GatewayRef("public", None)
    assert rm.GatewayRef.parse("public/infra") == rm.GatewayRef("public", "infra")
    assert by_kind(rm.RouterSettings("fraud", "m", host="*.example.com",
                                     gateway=rm.GatewayRef("g")))["HTTPRoute"]


# the CLI


def test_cli_writes_the_objects_with_how_they_were_made(tmp_path):
    out = tmp_path / "router.yaml"
    argv = ["router", "--inferenceservice", "fraud", "-n", "models", "--ingress-class", "nginx",
            "--host", "fraud.example.com", "--replicas", "3", "--out", str(out)]
    assert manifests.main(argv) == 0
    text = out.read_text()
    assert list(yaml.safe_load_all(text)) == rm.objects(INGRESS)
    assert text.splitlines()[0] == (
        "# generated by `sluice manifests router --inferenceservice fraud -n models "
        "--ingress-class nginx --host fraud.example.com --replicas 3`")
    assert "kubectl create secret generic sluice-router-admin -n models" in text
    assert "openssl rand -hex 32" in text
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        assert manifests.main(argv[:-2]) == 0
    assert stdout.getvalue() == text


@pytest.mark.parametrize(("argv", "message"), [
    (["--inferenceservice", "Fraud", "-n", "m"], "--inferenceservice: 'Fraud'"),
    (["--inferenceservice", "fraud", "-n", "m", "--gateway", "g", "--ingress-class", "c",
      "--host", "a.b"], "not allowed with argument"),
    (["--inferenceservice", "fraud", "-n", "m", "--gateway", "g"], "--host: needed"),
    (["--inferenceservice", "fraud"], "required: -n/--namespace"),
])
def test_cli_refuses_bad_arguments_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        manifests.main(["router", *argv])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


# the controller's Deployment


def controller_deployment() -> dict[str, Any]:
    return yaml.safe_load(CONTROLLER_DEPLOYMENT.read_text())


def rbac(kind: str) -> dict[str, Any]:
    documents = [d for path in sorted(RBAC_DIR.glob("*.yaml"))
                 for d in yaml.safe_load_all(path.read_text())]
    (document,) = [d for d in documents if d["kind"] == kind]
    return document


def test_controller_runs_as_the_account_the_rbac_binds():
    deployment = controller_deployment()
    account = rbac("ServiceAccount")["metadata"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["name"]
    assert deployment["metadata"]["namespace"] == account["namespace"]
    (subject,) = rbac("ClusterRoleBinding")["subjects"]
    assert (subject["name"], subject["namespace"]) == (account["name"], account["namespace"])
    assert deployment["metadata"]["namespace"] == IN_CLUSTER.controller_namespace


def test_controller_args_are_its_cli_cluster_wide_with_probes_on_its_health_port():
    deployment = controller_deployment()
    (controller_container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert controller_container["command"] == ["sluice", "controller"]
    invocation = controller.parse(controller_container["args"])
    settings, client_settings = invocation.settings, invocation.client
    assert invocation.leader_elect, "two replicas: one leads, the other stands by"
    assert settings.namespace is None, "-A: every namespace, as the ClusterRole allows"
    assert client_settings.kubeconfig is None, "in-cluster: the ServiceAccount's token"
    health_port = port(controller_container, "health")
    assert settings.health_listen == f"0.0.0.0:{health_port}"
    assert controller_container["readinessProbe"]["httpGet"] == {"path": "/readyz",
                                                                  "port": "health"}
    assert controller_container["livenessProbe"]["httpGet"] == {"path": "/healthz",
                                                                 "port": "health"}


def test_controller_is_two_hardened_replicas_of_the_documented_image_with_a_lease():
    deployment = controller_deployment()
    pod = deployment["spec"]["template"]["spec"]
    (controller_container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2, "one leads, one stands by"
    lease_rbac = (RBAC_DIR / "leader-election.yaml").read_text()
    assert "leases" in lease_rbac and "--no-leader-elect" not in controller_container["args"]
    assert controller_container["image"] == rm.DEFAULT_IMAGE
    assert rm.DEFAULT_IMAGE.endswith(":" + importlib.metadata.version("sluice"))
    assert pod["securityContext"] == rm.POD_SECURITY_CONTEXT
    assert controller_container["securityContext"] == rm.CONTAINER_SECURITY_CONTEXT
    assert controller_container["resources"]["requests"]
    assert controller_container["resources"]["limits"]["memory"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert rm.CONTROLLER_LABELS.items() <= labels.items()
