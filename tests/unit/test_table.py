"""Service and revision choice in the compiled table (no sockets: backends are plain objects)."""

import collections
import random

import pytest

from policies import routing
from router import balancer, stats, table


def compile_table(document):
    def backend_for(service, spec, revision):
        backend = balancer.RevisionBackend(service, revision.name, stats.RevisionStats(0.0),
                                           random.Random(1))
        backend.endpoints = [balancer.Endpoint(u) for u in revision.endpoints]
        return backend
    return table.Table(routing.load(document), backend_for)


TWO_SERVICES = {"services": {
    "fraud": {"revisions": [{"name": "v1", "weight": 100}]},
    "churn": {"revisions": [{"name": "v1", "weight": 90}, {"name": "v2", "weight": 10}],
              "sticky": {"header": "X-User", "cookie": "uid"}},
}}


@pytest.mark.parametrize(("host", "path", "service"), [
    pytest.param(b"fraud.models.example.com", b"/anything", "fraud", id="host-label"),
    pytest.param(b"churn:8080", b"/", "churn", id="host-with-port"),
    pytest.param(b"127.0.0.1:8080", b"/v1/models/churn:predict", "churn", id="kserve-v1"),
    pytest.param(None, b"/v2/models/fraud/infer", "fraud", id="oip-v2"),
    pytest.param(None, b"/v2/models/fraud/versions/3/infer?x=1", "fraud", id="v2-versioned"),
])
def test_service_choice(host, path, service):
    assert compile_table(TWO_SERVICES).match(host, path).name == service


def test_unknown_service_is_404():
    with pytest.raises(table.RouteError) as caught:
        compile_table(TWO_SERVICES).match(b"nope", b"/v1/models/nope:predict")
    assert caught.value.status == 404


def test_single_service_takes_everything():
    only = {"services": {"m": {"revisions": [{"name": "v1", "weight": 1}]}}}
    assert compile_table(only).match(b"whatever", b"/x").name == "m"


def test_pin_header_overrides_weights_even_weight_zero():
    doc = {"services": {"m": {"revisions": [{"name": "v1", "weight": 100},
                                            {"name": "dark", "weight": 0}]}}}
    route = compile_table(doc).match(None, b"/")
    assert route.choose({table.PIN_HEADER: b"dark"}).name == "dark"
    assert {route.choose({}).name for _ in range(100)} == {"v1"}
    with pytest.raises(table.RouteError) as caught:
        route.choose({table.PIN_HEADER: b"v9"})
    assert caught.value.status == 404


def test_sticky_header_then_cookie_keep_a_user_on_one_revision():
    route = compile_table(TWO_SERVICES).match(b"churn", b"/")
    by_header = {route.choose({b"x-user": b"alice"}).name for _ in range(50)}
    by_cookie = {route.choose({b"cookie": b"a=1; uid=alice"}).name for _ in range(50)}
    assert len(by_header) == 1
    assert by_cookie == by_header  # the same key by either source lands in the same place
    spread = collections.Counter(route.choose({b"x-user": b"u%d" % i}).name for i in range(5000))
    assert 0.08 < spread["v2"] / 5000 < 0.12
