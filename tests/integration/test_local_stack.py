"""`sluice up` end to end: real router, controller and model-server replica processes.

Covered: a request at zero replicas is served after a cold start (never an error) and the
console says what happened; an idle revision returns to zero after its grace period; a replica
command that cannot start, or keeps crashing, fails waiting requests fast with a reason of ours
(its log goes to the console, never to a client); a replica killed under load is replaced while
requests wait; an invalid policy or a port in use stops the start with a line saying why; the
CLI finds the controller from the stack file; stopping the stack leaves no process behind. The
process lifecycle (kill -9, SIGHUP, a second start, the router dying) is in
test_local_lifecycle.py, the load-driven scale-up in test_autoscaling_load.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
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
    stack.proc.signal(signal.SIGINT)
    assert stack.proc.wait(60) == 0
    console = stack.proc.output()
    # One timestamped line per event, in order.
    events = [r"model/v1: 0 → 1 replicas", r"model/v1: replica :\d+ starting \(pid \d+\)",
              r"model/v1: replica :\d+ ready after \d+\.\d\d s", r"sluice up: stopping",
              r"model/v1: replica :\d+ stopped"]
    at = 0
    for event in events:
        found = re.compile(rf"^\d\d:\d\d:\d\d\.\d\d\d {event}", re.M).search(console, at)
        assert found, f"no line {event!r} after {console[:at][-200:]!r} in:\n{console}"
        at = found.end()
    assert "Traceback" not in console


async def test_quiet_prints_only_what_went_wrong(start_stack):
    crash = ["{python}", "-c", "import sys; sys.exit(3)"]
    stack = start_stack([stack_revision("v1", 100, minReplicas=1, initialScale=1),
                         stack_revision("v2", 0, command=crash, minReplicas=1, initialScale=1)],
                        args=("--quiet",))
    stack.wait_for(lambda s: s["v1"]["ready"] == 1 and s["v2"]["restarts"] >= 1)
    console = stack.proc.output()
    assert "model/v2: replica" in console and "exits" in console  # the crash
    assert "model/v1: replica" not in console  # not its start nor readiness


def test_a_router_port_in_use_is_said_on_the_console(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        file = tmp_path / "stack.yaml"
        file.write_text(yaml.safe_dump({
            "router": {"listen": f"127.0.0.1:{port}", "admin": f"127.0.0.1:{procs.free_port()}"},
            "controller": {"listen": f"127.0.0.1:{procs.free_port()}"},
            "services": {"model": {"revisions": [stack_revision()]}}}))
        result = subprocess.run(
            [sys.executable, "-m", "autoscaler.cli", "up", "-f", str(file)], capture_output=True,
            text=True, cwd=ROOT, timeout=60,
            env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "xdg")})
    assert result.returncode == 1
    assert f"127.0.0.1:{port} (router.listen) is in use by pid {os.getpid()}" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_and_rollout_find_the_controller_from_the_stack_file(start_stack):
    stack = start_stack([stack_revision()])
    env = {**os.environ, **stack.env}

    def sluice(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "autoscaler.cli", *args], env=env,
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    for args in (["status", "-f", str(stack.file), "--once"],
                 ["status", "--url", f"http://{stack.controller}", "--once"],
                 ["status", "--url", f"http://{stack.controller}/", "--once"]):
        result = sluice(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stdout.splitlines()[0].startswith(f"router {stack.url}: serving")
    result = sluice("rollout", "-f", str(stack.file), "status")
    assert (result.returncode, result.stdout.strip()) == (0, "no rollouts"), result.stderr
    result = sluice("rollout", "--controller", f"http://{stack.controller}/", "pause", "model")
    assert result.returncode == 1 and "no rollout for service 'model'" in result.stderr


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
    assert reason == ("revision v1 is unavailable: its command cannot be run (No such file or "
                      "directory)")  # the command's path is the console's, not a client's
    row = stack.status()["v1"]
    assert any(c.startswith("ReplicaFailed") for c in row["conditions"])
    assert row["restarts"] >= 1


async def test_a_crashing_replica_is_restarted_and_its_reason_is_ours_not_its_log(start_stack):
    crash = ["{python}", "-c", "import sys; print('listening on http://127.0.0.1:4242', "
             "flush=True); print('model weights not found'); sys.exit(3)"]
    stack = start_stack([stack_revision(command=crash, minReplicas=1, initialScale=1)])
    row = stack.wait_for(lambda s: s["v1"]["restarts"] >= 2)["v1"]
    (failed,) = [c for c in row["conditions"] if c.startswith("ReplicaFailed")]
    assert failed == ("ReplicaFailed: revision v1 is unavailable: its replica exits before it is "
                      "ready (exit code 3)")
    async with aiohttp.ClientSession() as session, session.post(
            stack.url + INFER, json=PAYLOAD) as response:
        assert response.status == 503
        reason = (await response.json())["error"]
    assert "exits before it is ready" in reason
    for said in (failed, reason):  # the log is the console's, never a client's
        assert "4242" not in said and "weights" not in said
    assert "model weights not found" in stack.proc.output()


async def test_a_replica_killed_under_load_is_replaced_while_requests_wait(start_stack):
    stack = start_stack([stack_revision(
        command=[*MODEL_SERVER, "--startup-delay", "0.5", "--latency", "0.01"],
        minReplicas=1, initialScale=1, maxReplicas=1)], tick_s=10)
    stack.wait_for(lambda s: s["v1"]["ready"] == 1)
    (replica,) = stack.pids("model_server.py")
    statuses: list[int] = []
    errors: list[str] = []
    stop = asyncio.Event()

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set() and len(statuses) < 20_000:
                async with session.post(stack.url + INFER, json=PAYLOAD) as response:
                    statuses.append(response.status)
                    if response.status != 200:
                        errors.append(await response.text())

    async def served(count: int) -> None:
        for _ in range(600):
            if statuses.count(200) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"not served: {statuses[-20:]} {errors[-3:]}")

    clients = [asyncio.create_task(client()) for _ in range(4)]
    try:
        await served(20)
        os.kill(replica, signal.SIGKILL)
        for _ in range(600):  # the clients run meanwhile: wait without blocking them
            await asyncio.sleep(0.1)
            if stack.pids("model_server.py") - {replica} and stack.status()["v1"]["ready"]:
                break
        await served(statuses.count(200) + 20)  # the replacement serves
    finally:
        stop.set()
        await asyncio.gather(*clients)

    assert 503 not in statuses, errors[:3]
    # In flight at the kill, or sent to it before the table dropped it: 502, the router's.
    assert set(statuses) <= {200, 502}, errors[:3]
    assert stack.status()["v1"]["restarts"] == 1


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


async def test_gpus_cap_the_replicas_each_sees_its_own_and_a_crash_gives_its_gpu_back(
        start_stack):
    """GPUs without a GPU: two device indices, one per replica, and load for three replicas.
    Each replica reports the CUDA_VISIBLE_DEVICES it was started with as its revision label
    (the X-Model-Revision header of every answer)."""
    reporting = ["sh", "-c", 'exec "$0" "$1" --port "$2" --latency 0.5 '
                 '--revision "gpu-$CUDA_VISIBLE_DEVICES"', *MODEL_SERVER[:2], "{port}"]
    stack = start_stack([stack_revision(command=reporting, gpusPerReplica=1, maxReplicas=5)],
                        gpus=[0, 1])
    devices: list[str] = []
    statuses: set[int] = set()
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with session.post(stack.url + INFER, json=PAYLOAD) as response:
                statuses.add(response.status)
                if response.status == 200:
                    devices.append(response.headers["X-Model-Revision"])

    async def both_devices_answer() -> None:
        seen = len(devices)
        try:
            await asyncio.to_thread(stack.wait_for, lambda s: {"gpu-0", "gpu-1"} <= set(
                devices[seen:]))
        except AssertionError:
            raise AssertionError(f"answers came from {sorted(set(devices[seen:]))}") from None

    def capacity_limited(status: dict) -> bool:
        row = status["v1"]
        return row["ready"] == 2 and "CapacityLimited" in row["conditions"]

    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(client(session)) for _ in range(3)]  # 3 in flight
        try:
            await asyncio.to_thread(stack.wait_for, capacity_limited)
            await both_devices_answer()
            (victim, _) = stack.pids("model_server.py")
            os.kill(victim, signal.SIGKILL)
            await asyncio.to_thread(stack.wait_for, lambda s: s["v1"]["restarts"] == 1)
            await asyncio.to_thread(stack.wait_for, capacity_limited)  # replaced: a GPU again
            await both_devices_answer()
        finally:
            stop.set()
            await asyncio.gather(*clients)

    assert statuses <= {200, 502}  # 502: in flight at the replica killed
    assert set(devices) == {"gpu-0", "gpu-1"}  # never none, never both on one replica
    decisions = [int(n) for n in re.findall(r"model/v1: \d+ → (\d+) replicas",
                                            stack.proc.output())]
    assert decisions and max(decisions) <= 2, decisions  # every decision, not a sample
