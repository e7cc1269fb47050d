"""CustomResourceDefinitions from the pydantic models: one source for both sides of the API.

The apiserver validates a custom resource against the structural OpenAPI v3 schema in its CRD,
and the controller validates it again with pydantic. Generating the first from the second keeps
them from drifting apart. Pydantic emits JSON Schema 2020-12; Kubernetes wants a structural
subset of OpenAPI v3.0, so :func:`structural_schema`:

- inlines ``$defs``/``$ref`` (structural schemas cannot refer; recursive models are refused);
- turns ``anyOf: [X, {type: null}]`` (an optional field) into X with ``nullable: true``, and
  drops ``default: null``, since an absent field already means None;
- turns ``const`` (a one-value Literal) into a one-value ``enum``, and the numeric
  ``exclusiveMinimum``/``exclusiveMaximum`` into ``minimum``/``maximum`` with OpenAPI v3.0's
  boolean flag;
- drops ``title`` (pydantic derives it from the name) and ``additionalProperties: false``
  (``extra="forbid"``), which structural schemas do not allow next to ``properties``; unknown
  fields are pruned, and rejected by kubectl's strict field validation, instead;
- unwraps descriptions to one line per paragraph (`kubectl explain` wraps them itself);
- keeps defaults, bounds, patterns, enums, formats and ``x-kubernetes-*`` extensions (list
  types, CEL rules) as they are.

Any other keyword (``oneOf``, ``uniqueItems``, an ``anyOf`` of two types, ...) raises
ValueError naming its path, so a model the apiserver could not enforce is found when the CRDs
are generated, not when a user's object is silently accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from policies import resources

KEPT_KEYWORDS = frozenset({
    "type", "default", "format", "enum", "pattern", "minimum", "maximum",
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
    "multipleOf", "required",
})
DROPPED_KEYWORDS = frozenset({"title"})
EXCLUSIVE_BOUNDS = {"exclusiveMinimum": "minimum", "exclusiveMaximum": "maximum"}
EXTENSION_PREFIX = "x-kubernetes-"

Schema = dict[str, Any]


def structural_schema(model: type[BaseModel]) -> Schema:
    """The model's validation schema, by alias, as a Kubernetes structural OpenAPI v3 schema."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    definitions = schema.pop("$defs", {})
    structural = _structural(schema, definitions, path=model.__name__, resolving=())
    _require_types(structural, path=model.__name__)
    return structural


def _require_types(schema: Schema, *, path: str) -> None:
    """Structural schemas type every node; an untyped one (a field of type Any) would fail."""
    if "type" not in schema and "x-kubernetes-preserve-unknown-fields" not in schema:
        raise ValueError(f"{path}: no type; give the field a concrete type")
    for name, child in schema.get("properties", {}).items():
        _require_types(child, path=f"{path}.{name}")
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        if key in schema:
            _require_types(schema[key], path=f"{path}{suffix}")


def _structural(
    node: Mapping[str, Any],
    definitions: Mapping[str, Any],
    *,
    path: str,
    resolving: tuple[str, ...],
) -> Schema:
    """One node and everything under it; `resolving` holds the $defs being inlined above."""
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/$defs/")
        if name in resolving:
            raise ValueError(f"{path}: {name} refers to itself; structural schemas cannot")
        target = _structural(
            definitions[name], definitions, path=path, resolving=(*resolving, name)
        )
        # Keywords next to the $ref (the field's description, default) override the model's.
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return {**target, **_structural(siblings, definitions, path=path, resolving=resolving)}
    if "anyOf" in node:
        return _optional(node, definitions, path=path, resolving=resolving)

    schema: Schema = {}
    for key, value in node.items():
        if key == "description":
            schema[key] = _unwrapped(value)
        elif key in KEPT_KEYWORDS or key.startswith(EXTENSION_PREFIX):
            schema[key] = value
        elif key in DROPPED_KEYWORDS:
            continue
        elif key == "const":
            schema["enum"] = [value]
        elif key in EXCLUSIVE_BOUNDS:
            schema[EXCLUSIVE_BOUNDS[key]] = value
            schema[key] = True
        elif key == "properties":
            schema[key] = {
                name: _structural(
                    child, definitions, path=f"{path}.{name}", resolving=resolving
                )
                for name, child in value.items()
            }
        elif key == "items":
            schema[key] = _structural(value, definitions, path=f"{path}[]", resolving=resolving)
        elif key == "additionalProperties":
            schema.update(_additional_properties(value, definitions, path, resolving))
        else:
            raise ValueError(f"{path}: {key!r} has no structural equivalent")
    return schema


def _unwrapped(description: str) -> str:
    """A docstring's paragraphs, each on one line: `kubectl explain` wraps text itself."""
    paragraphs = description.split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


def _optional(
    node: Mapping[str, Any],
    definitions: Mapping[str, Any],
    *,
    path: str,
    resolving: tuple[str, ...],
) -> Schema:
    """``X | None``: X, nullable. Any other union has no structural form."""
    variants = [variant for variant in node["anyOf"] if variant != {"type": "null"}]
    if len(variants) != 1 or len(node["anyOf"]) != 2:
        raise ValueError(f"{path}: only `X | None` unions have a structural form")
    rest = {key: value for key, value in node.items() if key != "anyOf"}
    if rest.get("default", ...) is None:
        del rest["default"]
    return {
        **_structural(variants[0], definitions, path=path, resolving=resolving),
        **_structural(rest, definitions, path=path, resolving=resolving),
        "nullable": True,
    }


def _additional_properties(
    value: bool | Mapping[str, Any],
    definitions: Mapping[str, Any],
    path: str,
    resolving: tuple[str, ...],
) -> Schema:
    if isinstance(value, bool):
        # False is extra="forbid": pruning drops unknown fields, strict kubectl rejects them.
        return {"x-kubernetes-preserve-unknown-fields": True} if value else {}
    return {
        "additionalProperties": _structural(
            value, definitions, path=f"{path}{{}}", resolving=resolving
        )
    }


def crd(resource: resources.Resource) -> Schema:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1) of one sluice resource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": resource.crd_name},
        "spec": {
            "group": resources.GROUP,
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": [resources.CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": resources.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": _object_schema(resource)},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        _printer_column(column) for column in resource.columns
                    ],
                }
            ],
        },
    }


def _object_schema(resource: resources.Resource) -> Schema:
    return {
        "type": "object",
        "description": resource.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": f"Always {resources.API_VERSION}."},
            "kind": {"type": "string", "description": f"Always {resource.kind}."},
            "metadata": {"type": "object"},
            "spec": structural_schema(resource.spec),
            "status": structural_schema(resource.status),
        },
    }


def _printer_column(column: resources.PrinterColumn) -> Schema:
    printed: Schema = {
        "name": column.name,
        "type": column.type,
        "jsonPath": column.json_path,
        "description": column.description,
    }
    if column.priority:
        printed["priority"] = column.priority
    return printed
