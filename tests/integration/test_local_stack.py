"""`sluice up` end to end: real router, controller and model-server replica processes.

Covered: a request at zero replicas is served after a cold start (never an error), an idle
revision returns to zero after its grace period, a replica command that cannot start fails
waiting requests fast with its reason and shows in status, an invalid policy exits 2 naming the
field, and stopping the stack leaves no process behind. The load-driven scale-up is in
test_autoscaling_load.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import aiohttp
import pytest
import yaml

from tests import procs
from tests.integration.conftest import INFER, MODEL_SERVER, PAYLOAD, ROOT, stack_revision

pytestmark = pytest.mark.integration

async def test_first_request_at_zero_replicas_is_served_after_a_cold_start(start_stack):
    # Ticks 10 s apart: within this request's life only the router's poke can start a replica.
    stack = start_stack([stack_revision(command=[*MODEL_SERVER, "--startup-delay", "1"])],
                        tick_s=10)
    assert stack.status()["v1"]["ready"] == 0
    async with aiohttp.ClientSession() as session, session.post(
            stack.url + INFER, json=PAYLOAD) as response:
        assert response.status == 200
    row = stack.status()["v1"]
    assert row["ready"] == 1
    assert row["restarts"] == 0
    assert row["poke_to_start_ms"] is not None  # started by the poke, not by a later tick


async def test_idle_revision_scales_to_zero_after_the_grace_period(start_stack):
    stack = start_stack([stack_revision(stableWindowSeconds=6, scaleToZeroGraceSeconds=1)])
    async with aiohttp.ClientSession() as session, session.post(
            stack.url + INFER, json=PAYLOAD) as response:
        assert response.status == 200
    stack.wait_for(lambda s: s["v1"]["ready"] == 1)
    final = stack.wait_for(lambda s: s["v1"]["ready"] == 0 and s["v1"]["desired"] == 0)
    assert "ScaledToZero" in final["v1"]["conditions"]


async def test_a_command_that_cannot_start_fails_requests_fast_with_the_reason(start_stack):
    stack = start_stack([stack_revision(command=["/nonexistent/model-server", "--port", "{port}"])])
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
    stack = start_stack([stack_revision(command=crash, minReplicas=1, initialScale=1)])
    row = stack.wait_for(lambda s: s["v1"]["restarts"] >= 2)["v1"]
    assert any("exited with code 3: model weights not found" in c for c in row["conditions"])


def test_invalid_policy_exits_2_naming_the_field(tmp_path):
    stack = tmp_path / "bad.yaml"
    stack.write_text(yaml.safe_dump({"services": {"model": {"revisions": [
        stack_revision(target=-4)]}}}))
    result = subprocess.run(
        [sys.executable, "-m", "autoscaler.cli", "up", "-f", str(stack)],
        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "services.model.revisions.0.scaling.target" in result.stderr


def test_stopping_the_stack_leaves_no_process_behind(start_stack):
    stack = start_stack([stack_revision(minReplicas=2, initialScale=2)])
    stack.wait_for(lambda s: s["v1"]["ready"] == 2)
    started = stack.descendants()
    assert len(started) >= 3  # the router and two replicas
    stack.proc.signal(signal.SIGINT)
    assert stack.proc.wait(60) == 0
    assert procs.alive(started) == [], "left running"
