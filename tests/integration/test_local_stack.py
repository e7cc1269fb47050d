"""`sluice up` end to end: real router, controller and model-server replica processes.

Covered: a request at zero replicas is served after a cold start (never an error), an idle
revision returns to zero after its grace period, a replica command that cannot start fails
waiting requests fast with its reason and shows in status, an invalid policy exits 2 naming the
field, and stopping the stack leaves no process behind. The load-driven scale-up is in
test_autoscaling_load.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests import procs
from tests.integration.conftest import INFER, PAYLOAD, ROOT

pytestmark = pytest.mark.integration

MODEL_SERVER = ["{python}", str(ROOT / "examples" / "model_server.py"), "--port", "{port}"]


class Stack:
    """A `sluice up` process on free ports."""

    def __init__(self, tmp_path: Path, revisions: list[dict], **extra) -> None:
        self.port, self.admin, self.status_port = (procs.free_port() for _ in range(3))
        self.url = f"http://127.0.0.1:{self.port}"
        self.file = tmp_path / "stack.yaml"
        self.file.write_text(yaml.safe_dump({
            "router": {"listen": f"127.0.0.1:{self.port}", "admin": f"127.0.0.1:{self.admin}"},
            "controller": {"listen": f"127.0.0.1:{self.status_port}", "tick_s": 0.5},
            "services": {"model": {"revisions": revisions}}, **extra}))
        self.proc = procs.Proc.start(
            [sys.executable, "-m", "autoscaler.cli", "up", "-f", str(self.file)],
            ready_url=f"http://127.0.0.1:{self.status_port}/status", cwd=str(ROOT))

    def status(self) -> dict[str, dict]:
        out = json.load(urllib.request.urlopen(
            f"http://127.0.0.1:{self.status_port}/status", timeout=5))
        return {row["name"]: row for row in out["revisions"]}

    def wait_for(self, predicate, within_s: float = 60.0) -> dict[str, dict]:
        deadline = time.monotonic() + within_s
        while True:
            current = self.status()
            if predicate(current):
                return current
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached; last status: {current}")
            time.sleep(0.1)

    def descendants(self) -> set[int]:
        """PIDs started by the stack (router, replicas), found through the process tree."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        found, todo = set(), [self.proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.add(child)
                todo.append(child)
        return found


def revision(name: str = "v1", weight: int = 100, command=None, **policy) -> dict:
    return {"name": name, "weight": weight, "command": command or MODEL_SERVER,
            "scaling": {"metric": "concurrency", "target": 1, "targetUtilization": 1.0,
                        "minReplicas": 0,
                        "initialScale": 0, **policy}}


@pytest.fixture
def start_stack(tmp_path):
    stacks: list[Stack] = []

    def start(revisions: list[dict], **extra) -> Stack:
        stacks.append(Stack(tmp_path, revisions, **extra))
        return stacks[-1]

    yield start
    for stack in stacks:
        stack.proc.close()


async def test_first_request_at_zero_replicas_is_served_after_a_cold_start(start_stack):
    stack = start_stack([revision(command=[*MODEL_SERVER, "--startup-delay", "1"])])
    assert stack.status()["v1"]["ready"] == 0
    async with aiohttp.ClientSession() as session, session.post(
            stack.url + INFER, json=PAYLOAD) as response:
        assert response.status == 200
    row = stack.status()["v1"]
    assert row["ready"] == 1
    assert row["restarts"] == 0


async def test_idle_revision_scales_to_zero_after_the_grace_period(start_stack):
    stack = start_stack([revision(stableWindowSeconds=6, scaleToZeroGraceSeconds=1)])
    async with aiohttp.ClientSession() as session, session.post(
            stack.url + INFER, json=PAYLOAD) as response:
        assert response.status == 200
    stack.wait_for(lambda s: s["v1"]["ready"] == 1)
    final = stack.wait_for(lambda s: s["v1"]["ready"] == 0 and s["v1"]["desired"] == 0)
    assert "ScaledToZero" in final["v1"]["conditions"]


async def test_a_command_that_cannot_start_fails_requests_fast_with_the_reason(start_stack):
    stack = start_stack([revision(command=["/nonexistent/model-server", "--port", "{port}"])])
    async with aiohttp.ClientSession() as session, session.post(
            stack.url + INFER, json=PAYLOAD) as response:
        assert response.status == 503
        reason = (await response.json())["error"]
    assert "cannot start '/nonexistent/model-server'" in reason
    row = stack.status()["v1"]
    assert any(c.startswith("ReplicaFailed") for c in row["conditions"])
    assert row["restarts"] >= 1


async def test_a_crashing_replica_is_restarted_and_shows_in_status(start_stack):
    crash = ["{python}", "-c", "import sys; print('model weights not found'); sys.exit(3)"]
    stack = start_stack([revision(command=crash, minReplicas=1, initialScale=1)])
    row = stack.wait_for(lambda s: s["v1"]["restarts"] >= 2)["v1"]
    assert any("exited with code 3: model weights not found" in c for c in row["conditions"])


def test_invalid_policy_exits_2_naming_the_field(tmp_path):
    stack = tmp_path / "bad.yaml"
    stack.write_text(yaml.safe_dump({"services": {"model": {"revisions": [
        revision(target=-4)]}}}))
    result = subprocess.run(
        [sys.executable, "-m", "autoscaler.cli", "up", "-f", str(stack)],
        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "services.model.revisions.0.scaling.target" in result.stderr


def test_stopping_the_stack_leaves_no_process_behind(start_stack):
    stack = start_stack([revision(minReplicas=2, initialScale=2)])
    stack.wait_for(lambda s: s["v1"]["ready"] == 2)
    started = stack.descendants()
    assert len(started) >= 3  # the router and two replicas
    stack.proc.signal(signal.SIGINT)
    assert stack.proc.wait(60) == 0
    alive = [pid for pid in started if Path(f"/proc/{pid}").exists()
             and "(Z)" not in Path(f"/proc/{pid}/stat").read_text()[:64]]
    assert alive == [], f"left running: {alive}"
