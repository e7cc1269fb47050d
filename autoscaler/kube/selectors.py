"""Label selectors in the string form ``/scale`` returns (``status.selector``), matched locally.

A Deployment's ``/scale`` reports its pod selector as a string, e.g. ``app=isvc.m-predictor`` or
``app in (a,b),tier!=cache,!canary``. The controller watches all pods of a namespace once and
sorts them to revisions with these matchers, instead of a watch per revision.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

Matcher = Callable[[Mapping[str, str]], bool]

_SET = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQUAL = re.compile(r"^\s*([^\s!=]+)\s*(==|=|!=)\s*(\S*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)([^\s!=()]+)\s*$")


def parse(selector: str) -> Matcher:
    """A matcher for ``selector``; the empty selector matches everything. Raises ValueError
    naming the requirement it cannot read."""
    requirements = [_requirement(part) for part in _split(selector) if part.strip()]
    return lambda labels: all(requirement(labels) for requirement in requirements)


def _split(selector: str) -> list[str]:
    """Requirements are comma-separated, but a set's values are too: split outside brackets."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _requirement(text: str) -> Matcher:
    if match := _SET.match(text):
        key, operator, values = match[1], match[2], {v.strip() for v in match[3].split(",")}
        if operator == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQUAL.match(text):
        key, operator, value = match[1], match[2], match[3]
        if operator == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS.match(text):
        negated, key = match[1] == "!", match[2]
        return lambda labels: (key in labels) != negated
    raise ValueError(f"cannot read the label selector requirement {text.strip()!r}")
