"""One way to say what is wrong with a document: the field's path and the reason.

Every model of sluice (route table, stack file, scaling and rollout policies, custom resources)
is pydantic, so every refusal is a ``pydantic.ValidationError``; this turns one into the
``field: reason`` lines a CLI prints and the ``{"field", "reason"}`` problems an API answers,
in the document's own field names (camelCase where the YAML is).
"""

from __future__ import annotations

from typing import TypedDict

import pydantic

WHOLE = "(document)"
"""The field named when the problem is the document itself (not a mapping, say)."""


class Problem(TypedDict):
    field: str
    reason: str


def problems(error: pydantic.ValidationError) -> list[Problem]:
    """Each problem as ``{"field": "services.m.revisions.0.weight", "reason": ...}``."""
    return [
        {"field": ".".join(str(part) for part in e["loc"]) or WHOLE, "reason": e["msg"]}
        for e in error.errors()
    ]


def describe(error: pydantic.ValidationError) -> str:
    """One ``field: reason`` line per problem."""
    return "\n".join(f"{p['field']}: {p['reason']}" for p in problems(error))


class Invalid(ValueError):
    """A document that is not what it should be; ``problems`` say where and why."""

    def __init__(self, message: str, problems: list[Problem]) -> None:
        super().__init__(message)
        self.problems = problems

    @classmethod
    def of(cls, what: str, error: pydantic.ValidationError) -> Invalid:
        return cls(f"invalid {what}", problems(error))

    @classmethod
    def field(cls, field: str, reason: str) -> Invalid:
        return cls(f"{field}: {reason}", [{"field": field, "reason": reason}])

    def __str__(self) -> str:
        lines = "\n".join(f"{p['field']}: {p['reason']}" for p in self.problems)
        head = self.args[0] if self.args else "invalid"
        return lines if head == lines else f"{head}\n{lines}"
