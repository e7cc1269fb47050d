"""The local stack's lifecycle: whatever stops it, nothing it started survives.

The first test runs ``sluice up`` (autoscaler/local/up.py) in this process, with a real router
and real model-server replicas, so it can make the core fail mid-run: the routers' poke stream
raises once two replicas are ready, as a bug in a poke handler would. The others run ``sluice
up`` as a process and do to it what happens to one: kill -9, a closed terminal (SIGHUP), a second
start on the same file, its router killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import aiohttp
import pytest

from autoscaler.local import gpus, replicas, stack, up
from autoscaler.sources import routers
from tests import procs
from tests.integration.conftest import INFER, MODEL_SERVER, PAYLOAD, ROOT, call, stack_revision

pytestmark = pytest.mark.integration


async def test_a_core_that_fails_mid_run_leaves_no_replica_behind(tmp_path, monkeypatch):
    spec = stack.LocalStack.model_validate({
        "router": {"listen": f"127.0.0.1:{procs.free_port()}",
                   "admin": f"127.0.0.1:{procs.free_port()}"},
        "controller": {"listen": f"127.0.0.1:{procs.free_port()}", "tick_s": 0.2},
        "services": {"model": {"revisions": [stack_revision(minReplicas=2, initialScale=2)]}}})
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    started: set[int] = set()

    async def failing_pokes(self: routers.RouterClient, on_poke: object) -> None:
        while True:  # once the router serves both replicas, fail as a bug would
            stats = await self._stats(self.admin_urls[0], raw=False)
            if sum(r.endpoints for r in stats.revisions) == 2:
                started.update(procs.descendants(os.getpid()))
                raise RuntimeError("a bug in the poke handler")
            await asyncio.sleep(0.05)

    monkeypatch.setattr(routers.RouterClient, "pokes", failing_pokes)
    code = await asyncio.wait_for(up.run_stack(spec, tmp_path), 120)

    assert code == 1
    assert len(started) >= 3, "the router and two replicas were running"
    assert procs.alive(started) == [], "left running"


# -- sluice up as a process: crash-only ----------------------------------------------------------


async def test_a_replica_retired_while_it_is_being_spawned_stops_and_gives_its_gpu_back(
        tmp_path):
    """Scaled up and back down within one call's time, before its process exists: the replica
    is stopped once it does, not left running outside the table holding its GPU."""
    changed = asyncio.Event()
    pool = gpus.GpuPool([0])
    spec = stack.RevisionSpec.model_validate({
        "name": "v1", "command": [sys.executable, "-c", "import time; time.sleep(600)"],
        "scaling": {"gpusPerReplica": 1, "maxReplicas": 1}})
    revision = replicas.RevisionReplicas("model", spec, pool, tmp_path, changed.set,
                                         tag=f"test-spawn-{os.getpid()}")
    revision.scale(1)
    (replica,) = revision.replicas
    assert pool.free == 0
    revision.scale(0)  # nothing awaited: the spawn has not returned yet
    try:
        async with asyncio.timeout(30):
            while revision.replicas:
                changed.clear()
                await changed.wait()
        assert pool.free == 1
        assert replica.process is not None and replica.process.returncode is not None
    finally:
        await revision.close()


def test_kill_9_of_sluice_up_takes_the_router_and_every_replica_with_it(start_stack):
    stack = start_stack([stack_revision(minReplicas=2, initialScale=2)])
    stack.wait_for(lambda s: s["v1"]["ready"] == 2)
    started = stack.pids("router.main") | stack.pids("model_server.py")
    assert len(started) == 3

    stack.proc.signal(signal.SIGKILL)

    assert procs.wait_gone(started) == [], "outlived sluice up"


def test_a_closed_terminal_stops_the_stack_and_everything_it_started(start_stack):
    stack = start_stack([stack_revision(minReplicas=1, initialScale=1)])
    stack.wait_for(lambda s: s["v1"]["ready"] == 1)
    started = stack.descendants()

    stack.proc.signal(signal.SIGHUP)

    assert stack.proc.wait(60) == 0
    assert procs.wait_gone(started) == [], "left running"


def test_a_start_stops_what_an_earlier_run_left_behind(start_stack):
    # A replica behind a shell: the parent-death signal reaches the shell, not its child. With
    # the watchdog killed too (as the OOM killer might), the model server is left running,
    # until the next start on the same ports finds it.
    shell = ["sh", "-c", " ".join(MODEL_SERVER).replace("{python}", sys.executable) + " & wait"]
    stack = start_stack([stack_revision(command=shell, minReplicas=1, initialScale=1)])
    stack.wait_for(lambda s: s["v1"]["ready"] == 1)
    server = stack.pids("model_server.py") - stack.pids("sh -c")
    assert len(server) == 1
    watchdog = stack.pids("autoscaler.local.reaper")
    for pid in watchdog:
        os.kill(pid, signal.SIGSTOP)  # it cannot act on sluice up's death
    stack.proc.signal(signal.SIGKILL)
    stack.proc.wait(10)
    for pid in watchdog:
        os.kill(pid, signal.SIGKILL)
    assert procs.alive(server) == list(server), "left behind"
    stack.proc.close()

    stack.proc = stack.start()

    assert procs.wait_gone(server) == [], "the new start left the old replica running"
    assert "left running by an earlier sluice up" in stack.proc.output()


def test_a_second_start_refuses_and_touches_nothing_of_the_first(start_stack, tmp_path):
    stack = start_stack([stack_revision(minReplicas=1, initialScale=1)])
    stack.wait_for(lambda s: s["v1"]["ready"] == 1)
    token_files = [stack.run_dir / "controller.token",
                   tmp_path / "xdg" / "sluice" / f"controller-{stack.status_port}.token"]
    tokens = [path.read_text() for path in token_files]
    router = stack.pids("router.main")

    second = subprocess.run(stack.argv, capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, **stack.env}, timeout=60)

    assert second.returncode == 1
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert f"already running on 127.0.0.1:{stack.port}" in second.stderr
    assert f"pid {stack.proc.pid}" in second.stderr
    assert [path.read_text() for path in token_files] == tokens
    assert stack.pids("router.main") == router
    status, _ = call("POST", f"http://{stack.controller}/rollouts/model/pause",
                     token=stack.token)
    assert status == 404  # no rollout to pause, and not 401: the first keeps its token


async def test_a_router_that_dies_is_restarted_and_given_the_table_again(start_stack):
    stack = start_stack([stack_revision(minReplicas=1, initialScale=1)], tick_s=1)
    stack.wait_for(lambda s: s["v1"]["ready"] == 1)
    (router,) = stack.pids("router.main")

    os.kill(router, signal.SIGKILL)

    restarted = stack.wait_for(lambda s: s["v1"]["ready"] == 1
                               and stack.router()["restarts"] == 1
                               and stack.router()["state"] == "serving")
    assert stack.pids("router.main") - {router}
    async with aiohttp.ClientSession() as session, session.post(
            stack.url + INFER, json=PAYLOAD) as response:
        assert response.status == 200  # served by the replica it already had
    assert restarted["v1"]["restarts"] == 0
    output = stack.proc.output()
    assert "router exited" in output and "Traceback" not in output
