"""``sluice up``: the whole stack on one machine, no cluster.

``sluice up -f examples/local.yaml`` starts the router as a process, the control core in this
process with the local drivers (replicas as processes of the revisions' commands, the stack's
GPUs, the routers' stats and pokes), and serves the controller's API on loopback: /status (read
by ``sluice status``) and the rollouts (autoscaler/rollouts/api.py, driven by ``sluice
rollout``), whose writes need the token this process makes and writes to 0600 files for the CLI
(autoscaler/rollouts/token.py).

Everything it starts is entered into one AsyncExitStack, so Ctrl-C, SIGTERM or any exception
drains the router, stops every replica and exits, leaving no process behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from autoscaler.control import core, ports
from autoscaler.local import gpus, replicas, stack
from autoscaler.rollouts import api, driver, token
from autoscaler.sources import prometheus, routers

logger = logging.getLogger(__name__)

CORE = web.AppKey("core", core.Core)
ROLLOUTS = web.AppKey("status_rollouts", driver.Rollouts)
ROLLOUT_SUMMARY = ("service", "stable_revision", "canary_revision", "phase", "step", "steps",
                   "canary_weight", "reason")
ROUTER_READY_S = 30.0
"""Seconds the router may take to answer /readyz before ``sluice up`` gives up."""
ROUTER_DRAIN_S = 40.0
"""Seconds the router may take to drain on SIGTERM before it is killed."""


def up(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sluice up", description="run the local stack")
    parser.add_argument("-f", "--file", type=Path, required=True, help="stack YAML")
    parser.add_argument("--run-dir", type=Path, help="where replica and router logs go "
                                                     "(default: a new temporary directory)")
    args = parser.parse_args(argv)
    try:
        spec = stack.load(args.file)
    except ValueError as error:
        print(f"sluice up: invalid {args.file}:", file=sys.stderr)
        for line in str(error).splitlines():
            print(f"  {line}", file=sys.stderr)
        return 2
    import uvloop
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="sluice: %(message)s")
    if args.run_dir is not None:
        args.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="sluice-up-"))
    return uvloop.run(run_stack(spec, run_dir))


async def run_stack(spec: stack.LocalStack, run_dir: Path) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    async with contextlib.AsyncExitStack() as resources:
        router_token = secrets.token_hex(16)
        router = await _start_router(spec, run_dir, router_token)
        resources.callback(_kill, router)  # whatever happens next, it does not outlive us
        session = await resources.enter_async_context(aiohttp.ClientSession())
        admin = f"http://{spec.router.admin}"
        if not await _wait_ready(session, admin + "/readyz", router):
            print(f"sluice up: the router did not start; see {run_dir}/router.log",
                  file=sys.stderr)
            return 1
        router_client = routers.RouterClient([routers.Router(admin, router_token)], session)
        pool = gpus.GpuPool(gpus.discover() if spec.gpus == "auto" else spec.gpus)
        control = core.Core(capacity=pool, publisher=router_client, load=router_client,
                            tick_s=spec.controller.tick_s)
        for service_name, service in spec.services.items():
            if service.sticky is not None:
                control.service_sticky[service_name] = service.sticky
            for revision in service.revisions:
                control.upsert(_target(service_name, revision), replicas.RevisionReplicas(
                    service_name, revision, pool, session, run_dir, control.endpoints_changed))
        resources.push_async_callback(control.close)
        resources.push_async_callback(_stop_router, router)  # drains while replicas still serve
        metrics = (prometheus.PrometheusSource(spec.controller.prometheus_url,
                                               spec.controller.prometheus_timeout_s)
                   if spec.controller.prometheus_url else None)
        rollouts = driver.Rollouts(control, router_client, metrics, metrics_missing=(
            "custom metrics need a Prometheus: set controller.prometheus_url in the stack file"))
        resources.push_async_callback(rollouts.stop)
        # A token of its own: the router's admin token never leaves this process.
        control_token = token.new()
        token_files = [run_dir / token.FILE_NAME,
                       token.well_known_path(spec.controller.listen)]
        token.write(control_token, token_files)
        resources.callback(token.remove, control_token, token_files)
        status_site = await _serve_status(control, rollouts, control_token,
                                          spec.controller.listen)
        resources.push_async_callback(status_site.cleanup)
        print(f"sluice: router http://{spec.router.listen}  admin {admin}  status "
              f"http://{spec.controller.listen}/status  logs {run_dir}  (Ctrl-C stops)",
              file=sys.stderr, flush=True)
        loop_task = await resources.enter_async_context(core.running(control))
        stop_wait = asyncio.create_task(stopping.wait())
        await asyncio.wait([loop_task, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if loop_task.done() and not loop_task.cancelled() and loop_task.exception():
            logger.error("the control loop stopped: %r", loop_task.exception())
            return 1
    return 0


def _target(service: str, revision: stack.RevisionSpec) -> ports.RevisionTarget:
    return ports.RevisionTarget(service=service, revision=revision.name,
                                policy=revision.scaling, weight=revision.weight,
                                concurrency=revision.concurrency)


async def _start_router(spec: stack.LocalStack, run_dir: Path,
                        router_token: str) -> asyncio.subprocess.Process:
    routes = {"services": {
        name: {"revisions": [{"name": r.name, "weight": r.weight} for r in service.revisions]}
        for name, service in spec.services.items()}}
    (run_dir / "routes.yaml").write_text(yaml.safe_dump(routes))
    with (run_dir / "router.log").open("ab") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router.main", "--config", str(run_dir / "routes.yaml"),
            "--listen", spec.router.listen, "--admin-listen", spec.router.admin,
            "--workers", str(spec.router.workers),
            env={**os.environ, "SLUICE_ADMIN_TOKEN": router_token},
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)


async def _wait_ready(session: aiohttp.ClientSession, url: str,
                      process: asyncio.subprocess.Process) -> bool:
    deadline = time.monotonic() + ROUTER_READY_S
    while time.monotonic() < deadline and process.returncode is None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                if response.status == 200:
                    return True
        await asyncio.sleep(0.1)
    return False


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()


async def _stop_router(router: asyncio.subprocess.Process) -> None:
    if router.returncode is not None:
        return
    router.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(router.wait(), ROUTER_DRAIN_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            router.kill()
        await router.wait()


async def _serve_status(control: core.Core, rollouts: driver.Rollouts,
                        write_token: str, listen: str) -> web.AppRunner:
    app = web.Application(client_max_size=api.MAX_BODY_BYTES)
    app[CORE] = control
    app[ROLLOUTS] = rollouts

    async def status(request: web.Request) -> web.Response:
        running = [{key: row[key] for key in ROLLOUT_SUMMARY}
                   for row in request.app[ROLLOUTS].status(verdicts=0)]
        return web.json_response({"revisions": request.app[CORE].status_json(),
                                  "rollouts": running})

    app.router.add_get("/status", status)
    api.add_routes(app, rollouts, write_token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host, int(port)).start()
    return runner
