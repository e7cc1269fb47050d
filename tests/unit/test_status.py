"""``sluice status``'s table: the router's health first, one row per revision, fixed decimals."""

from __future__ import annotations

from autoscaler.local import status


def row(**overrides: object) -> dict:
    return {"service": "model", "name": "v1", "weight": 100, "desired": 1, "ready": 1,
            "rps": 12.345, "inflight": 2, "p99_ms": 21.4567, "buffered": 0, "conditions": [],
            **overrides}


ROUTER = {"url": "http://127.0.0.1:8080", "state": "serving", "pid": 42, "restarts": 0,
          "last_exit": None}


def test_the_router_comes_first_then_revisions_with_fixed_decimals():
    lines = status.render([row(), row(name="v2", rps=0.0, p99_ms=None, buffered=3)],
                          router=ROUTER).splitlines()
    assert lines[0] == "router http://127.0.0.1:8080: serving (pid 42, 0 restarts)"
    header, v1, v2 = (line.split() for line in lines[1:4])
    assert header[:9] == ["service", "name", "weight", "desired", "ready", "rps", "inflight",
                          "p99_ms", "buffered"]
    assert (v1[5], v1[7]) == ("12.3", "21.5")
    assert (v2[5], v2[7]) == ("0.0", "-")


def test_a_restarting_router_says_why():
    down = {**ROUTER, "state": "restarting", "pid": None, "restarts": 2,
            "last_exit": "killed by SIGKILL"}
    assert status.render([], router=down).splitlines()[0] == (
        "router http://127.0.0.1:8080: restarting (2 restarts; last exit: killed by SIGKILL)")
