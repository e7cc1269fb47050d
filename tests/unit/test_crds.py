"""The CRD generator: structural schemas from the pydantic models, and the committed YAML.

What the apiserver does with the CRDs (install, accept the examples, reject invalid objects,
the status subresource, RBAC) is tested against a real one in tests/k8s/test_crds.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from pydantic import BaseModel, Field

from autoscaler import manifests
from policies import crds, resources, rollout, scaling

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "manifests" / "crds"
EXAMPLE_DIR = ROOT / "manifests" / "examples"
RESOURCES_BY_KIND = {resource.kind: resource for resource in resources.RESOURCES}

JSON_SCHEMA_ONLY = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "const", "title"}


def _schema_nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _schema_nodes(child, f"{path}.{name}")
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(schema.get(key), dict):
            yield from _schema_nodes(schema[key], f"{path}{suffix}")


@pytest.fixture(params=resources.RESOURCES, ids=lambda resource: resource.kind)
def resource(request) -> resources.Resource:
    return request.param


OPAQUE = {".status.decider", ".status.memory"}
"""Decision state the controller writes for itself: the only fields whose contents the
apiserver does not check (policies/codec.py writes and reads them)."""


def test_schemas_are_structural(resource):
    schema = crds.crd(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _schema_nodes(schema):
        assert not JSON_SCHEMA_ONLY & node.keys(), path
        assert "type" in node, path
        if "x-kubernetes-preserve-unknown-fields" in node:
            assert path in OPAQUE, path
        # Structural schemas forbid additionalProperties next to properties.
        assert not {"properties", "additionalProperties"} <= node.keys(), path


def test_optional_field_is_nullable_without_a_null_default():
    target = crds.structural_schema(resources.ScalingPolicySpec)["properties"]["target"]
    assert target["nullable"] is True
    assert target["type"] == "number"
    assert "default" not in target


def test_numeric_exclusive_bounds_become_openapi_v3_flags():
    properties = crds.structural_schema(resources.ScalingPolicySpec)["properties"]
    assert properties["target"] | {"description": ""} == {
        "type": "number", "minimum": 0, "exclusiveMinimum": True, "nullable": True,
        "description": "",
    }
    utilization = properties["targetUtilization"]
    assert (utilization["minimum"], utilization["exclusiveMinimum"]) == (0, True)
    assert (utilization["maximum"], "exclusiveMaximum" in utilization) == (1, False)


def test_defaults_bounds_and_patterns_are_the_models():
    properties = crds.structural_schema(resources.ScalingPolicySpec)["properties"]
    for name, field in scaling.ScalingPolicy.model_fields.items():
        schema = properties[field.alias or name]
        assert schema.get("default") == field.default, name
        assert schema["description"] == field.description, name
    assert properties["metric"]["pattern"] == scaling.METRIC_PATTERN
    assert properties["gpuResource"]["pattern"] == scaling.GPU_RESOURCE_PATTERN
    assert (properties["minReplicas"]["minimum"], properties["minReplicas"]["maximum"]) == (
        0, 10_000,
    )
    assert properties["stableWindowSeconds"]["minimum"] == 6


def test_nested_models_are_inlined_with_their_field_description():
    ref = crds.structural_schema(resources.ScalingPolicySpec)["properties"]["scaleTargetRef"]
    assert ref["description"] == (
        resources.ScalingPolicySpec.model_fields["scale_target_ref"].description
    )
    assert ref["required"] == ["name"]
    assert ref["properties"]["kind"] == {
        "type": "string", "enum": ["Deployment", "InferenceService"], "default": "Deployment",
        "description": ref["properties"]["kind"]["description"],
    }


def test_status_conditions_are_a_map_keyed_by_type():
    conditions = crds.structural_schema(resources.ScalingPolicyStatus)["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert conditions["items"]["properties"]["lastTransitionTime"]["format"] == "date-time"


def test_cross_field_checks_are_cel_rules_on_the_fields_pydantic_names():
    rules = crds.structural_schema(resources.ScalingPolicySpec)["x-kubernetes-validations"]
    by_field = {rule["fieldPath"]: rule for rule in rules}
    assert set(by_field) == {".target", ".signal", ".minReplicas", ".initialScale",
                             ".activationScale"}
    assert by_field[".minReplicas"]["rule"] == (
        "self.maxReplicas == 0 || self.minReplicas <= self.maxReplicas"
    )
    # The messages are pydantic's, so both sides say the same thing.
    with pytest.raises(pydantic.ValidationError) as raised:
        scaling.load_policy({"metric": "custom:kv", "minReplicas": 3, "maxReplicas": 2})
    pydantic_messages = {error["loc"][0]: error["msg"] for error in raised.value.errors()}
    assert pydantic_messages["target"] == by_field[".target"]["message"]
    assert pydantic_messages["minReplicas"].startswith(by_field[".minReplicas"]["message"])


def test_descriptions_are_unwrapped_docstrings():
    description = crds.structural_schema(resources.ScalingPolicySpec)["description"]
    first, second = description.split("\n\n")
    assert "\n" not in first and "\n" not in second
    assert second.startswith("Every field but service")


class _Recursive(BaseModel):
    children: list[_Recursive] = []


class _Union(BaseModel):
    value: int | str


class _Untyped(BaseModel):
    value: Any


class _Unique(BaseModel):
    names: set[str]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        pytest.param(_Recursive, "refers to itself", id="recursive"),
        pytest.param(_Union, "only `X | None`", id="union"),
        pytest.param(_Untyped, "no type", id="any"),
        pytest.param(_Unique, "'uniqueItems' has no structural equivalent", id="set"),
    ],
)
def test_models_without_a_structural_form_are_refused(model, message):
    with pytest.raises(ValueError, match=message):
        crds.structural_schema(model)


def test_dicts_become_typed_additional_properties():
    class Labels(BaseModel):
        labels: dict[str, str] = Field(default_factory=dict, max_length=8)

    labels = crds.structural_schema(Labels)["properties"]["labels"]
    assert labels == {"type": "object", "additionalProperties": {"type": "string"},
                      "maxProperties": 8}


def test_crd_names_scope_subresource_and_columns(resource):
    crd = crds.crd(resource)
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{resource.plural}.sluice.dev"
    assert (spec["group"], spec["scope"]) == ("sluice.dev", "Namespaced")
    assert spec["names"]["shortNames"] == list(resource.short_names)
    assert spec["names"]["categories"] == ["sluice"]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".metadata."):
            continue
        # Every column points at a field that exists, with the column's type.
        node = schema
        for name in column["jsonPath"].removeprefix(".").split("."):
            node = node["properties"][name]
        assert node["type"] == column["type"], column["name"]


@pytest.mark.parametrize(
    ("resource", "short_name", "columns"),
    [
        pytest.param(
            resources.SCALING_POLICY, "sp",
            ["Service", "Revision", "Metric", "Target", "Min", "Max", "Desired", "Ready", "Weight",
             "Age", "Deployment"],
            id="ScalingPolicy",
        ),
        pytest.param(
            resources.ROLLOUT, "ro",
            ["Service", "Stable", "Canary", "Weight", "Step", "Phase", "Verdict", "Age", "Judge"],
            id="Rollout",
        ),
    ],
)
def test_short_names_and_columns(resource, short_name, columns):
    spec = crds.crd(resource)["spec"]
    assert spec["names"]["shortNames"] == [short_name]
    printed = spec["versions"][0]["additionalPrinterColumns"]
    assert [column["name"] for column in printed] == columns


def test_rollout_steps_carry_weight_bounds_and_default_steps():
    steps = crds.structural_schema(resources.RolloutSpec)["properties"]["steps"]
    assert (steps["minItems"], steps["maxItems"]) == (1, 20)
    weight = steps["items"]["properties"]["weight"]
    assert (weight["minimum"], weight["maximum"]) == (1, rollout.FULL_WEIGHT)
    assert [step["weight"] for step in steps["default"]] == [5, 10, 25, 50, 100]
    assert steps["default"][0] == {"weight": 5, "minDurationSeconds": 30.0, "minRequests": 100}


def test_rollout_nested_defaults_and_enums():
    properties = crds.structural_schema(resources.RolloutSpec)["properties"]
    judge = properties["analysis"]["properties"]["judge"]
    assert judge["enum"] == ["thresholds", "compare", "sequential"]
    assert properties["analysis"]["default"]["judge"] == "sequential"
    assert properties["slo"]["default"]["successRate"] == {"min": 99.0, "marginPoints": 1.0}
    sticky = properties["stickiness"]
    assert sticky["nullable"] is True
    assert sticky["properties"]["header"]["nullable"] is True


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        pytest.param({"canaryRevision": "v1"}, "canaryRevision", id="canary-is-stable"),
        pytest.param({"steps": [{"weight": 50}, {"weight": 20}, {"weight": 100}]}, "steps",
                     id="decreasing-weights"),
        pytest.param({"steps": [{"weight": 50}]}, "steps", id="last-step-below-100"),
        pytest.param({"maxDurationSeconds": 60}, "maxDurationSeconds", id="too-short"),
        pytest.param({"stickiness": {}}, "stickiness", id="stickiness-without-source"),
        pytest.param({"slo": {"custom": [{"name": "a", "query": "q"}]}}, "slo.custom",
                     id="custom-metric-without-bounds"),
    ],
)
def test_rollout_cel_rules_name_the_fields_pydantic_names(spec, field):
    rules = crds.structural_schema(resources.RolloutSpec)["x-kubernetes-validations"]
    assert f".{field}" in {rule["fieldPath"] for rule in rules}
    with pytest.raises(pydantic.ValidationError) as invalid:
        resources.RolloutSpec.model_validate(
            {"service": "model", "stableRevision": "v1", "canaryRevision": "v2", **spec}
        )
    assert any(
        ".".join(map(str, error["loc"])).startswith(field) for error in invalid.value.errors()
    )


def test_committed_crds_are_generated_from_the_models():
    assert manifests.drift(CRD_DIR, manifests.render_crds()) == "", (
        "manifests/crds/ is out of date: run `sluice manifests crds`"
    )


def test_examples_are_valid_specs():
    examples = sorted(EXAMPLE_DIR.glob("*.yaml"))
    assert {yaml.safe_load(path.read_text())["kind"] for path in examples} == set(
        RESOURCES_BY_KIND
    )
    for path in examples:
        document = yaml.safe_load(path.read_text())
        assert document["apiVersion"] == resources.API_VERSION
        RESOURCES_BY_KIND[document["kind"]].spec.model_validate(document["spec"])


def test_check_reports_drift_and_write_repairs_it(tmp_path, capsys):
    assert manifests.main(["crds", "--out", str(tmp_path)]) == 0
    assert manifests.main(["crds", "--out", str(tmp_path), "--check"]) == 0

    written = tmp_path / "scalingpolicies.sluice.dev.yaml"
    assert written.read_text().startswith(
        "# generated by `sluice manifests crds`; do not edit\napiVersion: apiextensions.k8s.io/v1\n"
    )
    written.write_text(written.read_text().replace("shortNames:\n    - sp", "shortNames: []"))
    stale = tmp_path / "oldkinds.sluice.dev.yaml"
    stale.write_text(manifests.HEADER + "kind: CustomResourceDefinition\n")
    hand_written = tmp_path / "kustomization.yaml"
    hand_written.write_text("resources: []\n")
    capsys.readouterr()

    assert manifests.main(["crds", "--out", str(tmp_path), "--check"]) == 1
    diff = capsys.readouterr().out
    assert "-    shortNames: []\n+    shortNames:\n+    - sp\n" in diff
    assert f"{stale}: generated by an older model" in diff
    assert "kustomization" not in diff

    assert manifests.main(["crds", "--out", str(tmp_path)]) == 0
    assert manifests.main(["crds", "--out", str(tmp_path), "--check"]) == 0
    assert not stale.exists()
    assert hand_written.exists()


def test_yaml_is_the_crd(resource):
    text = manifests.render_crds()[f"{resource.crd_name}.yaml"]
    assert yaml.safe_load(text) == crds.crd(resource)
