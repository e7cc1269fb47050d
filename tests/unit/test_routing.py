"""Route table validation: each invalid document is rejected naming the field and reason."""

import pydantic
import pytest

from policies import routing, validation

GOOD = {"services": {"fraud-model": {"revisions": [
    {"name": "v1", "weight": 90, "endpoints": ["http://127.0.0.1:9001"]},
    {"name": "v2", "weight": 10}]}}}


def with_revision(**changes):
    revision = {"name": "v1", "weight": 100, "endpoints": ["http://127.0.0.1:9001"], **changes}
    return {"services": {"m": {"revisions": [revision]}}}


def test_good_document_loads_with_defaults():
    table = routing.load(GOOD)
    service = table.services["fraud-model"]
    assert [r.weight for r in service.revisions] == [90, 10]
    assert service.buffer.depth == 1000
    assert service.buffer.timeout_s == 300
    assert service.revisions[1].endpoints == []


@pytest.mark.parametrize(("document", "field", "reason"), [
    pytest.param(with_revision(weight=101), "services.m.revisions.0.weight", "less than or equal",
                 id="weight-over-100"),
    pytest.param(with_revision(weight=-1), "services.m.revisions.0.weight", "greater than",
                 id="negative-weight"),
    pytest.param(with_revision(endpoints=["ftp://x:1"]), "services.m.revisions.0.endpoints",
                 "http://host:port", id="bad-endpoint-scheme"),
    pytest.param(with_revision(endpoints=["http://a:1", "http://a:1"]),
                 "services.m.revisions.0.endpoints", "unique", id="duplicate-endpoint"),
    pytest.param(with_revision(name="V_1"), "services.m.revisions.0.name", "pattern",
                 id="bad-revision-name"),
    pytest.param(with_revision(concurrency=-2), "services.m.revisions.0.concurrency",
                 "greater than", id="negative-concurrency"),
    pytest.param(with_revision(colour="red"), "services.m.revisions.0.colour", "not permitted",
                 id="unknown-field"),
    pytest.param({"services": {"m": {"revisions": [{"name": "a"}, {"name": "a"}]}}},
                 "services.m.revisions", "unique", id="duplicate-revision"),
    pytest.param({"services": {"m": {"revisions": []}}}, "services.m.revisions", "at least 1",
                 id="no-revisions"),
    pytest.param({"services": {}}, "services", "at least 1", id="no-services"),
    pytest.param({"services": {"Bad_Name": {"revisions": [{"name": "a"}]}}}, "services",
                 "DNS label", id="bad-service-name"),
    pytest.param({"services": {"m": {"revisions": [{"name": "a"}], "buffer": {"depth": -1}}}},
                 "services.m.buffer.depth", "greater than", id="negative-depth"),
    pytest.param({"services": {"m": {"revisions": [{"name": "a"}], "sticky": {}}}},
                 "services.m.sticky", "header or a cookie", id="empty-sticky"),
])
def test_invalid_documents_name_field_and_reason(document, field, reason):
    with pytest.raises(pydantic.ValidationError) as caught:
        routing.load(document)
    problems = validation.problems(caught.value)
    assert any(p["field"] == field and reason in p["reason"] for p in problems), problems


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:9001", ("127.0.0.1", 9001)),
    ("http://model.local", ("model.local", 80)),
    ("http://[::1]:8000/", ("::1", 8000)),
])
def test_parse_endpoint(url, expected):
    assert routing.parse_endpoint(url) == expected
