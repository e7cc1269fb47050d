"""Decision state as JSON, so a custom resource's status can hold it and a new controller
resumes from it.

The deciders' and judges' states are frozen dataclasses of numbers, tuples and enums; pydantic
reads and writes them from their type hints, so a state type needs no code of its own here and
a field added to one is persisted with it. Times in them are on the controller's clock, which
is wall-clock seconds wherever state is persisted (autoscaler/control/core.py).
"""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic

T = TypeVar("T")

_ADAPTERS: dict[type[Any], pydantic.TypeAdapter[Any]] = {}
"""One adapter per state type: building one inspects the type, using one is fast."""


def _adapter(kind: type[Any]) -> pydantic.TypeAdapter[Any]:
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        adapter = _ADAPTERS[kind] = pydantic.TypeAdapter(kind)
    return adapter


def dump(state: object) -> Any:
    """``state`` as JSON-compatible data (dicts, lists, numbers, strings)."""
    return _adapter(type(state)).dump_python(state, mode="json")


def load(kind: type[T], data: Any) -> T:
    """A ``kind`` from what ``dump`` gave; raises pydantic.ValidationError if it is not one."""
    loaded: T = _adapter(kind).validate_python(data)
    return loaded
