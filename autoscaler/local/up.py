"""``sluice up``: the whole stack on one machine, no cluster.

``sluice up -f examples/local.yaml`` starts the router as a process, the control core in this
process with the local drivers (replicas as processes of the revisions' commands, the stack's
GPUs, the routers' stats and pokes), and serves the controller's API on loopback: /status (read
by ``sluice status``) and the rollouts (autoscaler/rollouts/api.py, driven by ``sluice
rollout``), whose writes need the token this process makes and writes to 0600 files for the CLI
(autoscaler/rollouts/token.py).

Crash-only:

- Before anything else it takes a lock per port of the stack (autoscaler/local/lock.py): a
  second start on the same ports refuses at once with one line, touching nothing of the first.
  It stops what an earlier run on those ports left running, then checks the ports are free and
  says who holds one that is not.
- Everything it starts dies with it, however it dies: a parent-death signal, a tag in every
  child's environment and a watchdog process (autoscaler/local/children.py, reaper.py).
- The router is supervised like a replica: restarted with backoff when it dies, and given the
  route table again (autoscaler/local/router_process.py).
- Everything it starts is entered into one AsyncExitStack, so Ctrl-C, SIGTERM, SIGHUP (its
  terminal closed) or an exception drains the router while the replicas still serve, stops every
  replica and exits, leaving no process behind.

The console gets one timestamped line per event (autoscaler/local/console.py); ``--quiet`` keeps
only what went wrong.
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
from pathlib import Path

import aiohttp
from aiohttp import web

from autoscaler.control import core, ports
from autoscaler.local import (
    children,
    console,
    gpus,
    lock,
    reaper,
    replicas,
    router_process,
    scrape,
    stack,
)
from autoscaler.rollouts import api, driver, token
from autoscaler.sources import prometheus, routers

logger = logging.getLogger(__name__)

CORE = web.AppKey("core", core.Core)
ROLLOUTS = web.AppKey("status_rollouts", driver.Rollouts)
ROUTER = web.AppKey("router", router_process.RouterProcess)
ROLLOUT_SUMMARY = ("service", "stable_revision", "canary_revision", "phase", "step", "steps",
                   "canary_weight", "reason")


def up(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sluice up", description="run the local stack")
    parser.add_argument("-f", "--file", type=Path, required=True, help="stack YAML")
    parser.add_argument("--run-dir", type=Path, help="where replica and router logs go "
                                                     "(default: a new temporary directory)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print only what goes wrong (crashes, restarts), not every event")
    args = parser.parse_args(argv)
    try:
        spec = stack.load(args.file)
    except ValueError as error:
        print(f"sluice up: invalid {args.file}:", file=sys.stderr)
        for line in str(error).splitlines():
            print(f"  {line}", file=sys.stderr)
        return 2
    console.configure(args.quiet)
    try:
        claim = lock.claim(spec.listens(), token.runtime_dir())
    except lock.Busy as error:
        print(f"sluice up: {error}", file=sys.stderr)
        return 1
    try:
        for earlier in claim.previous:
            if stopped := children.reap(earlier.tag):
                logger.warning("stopped %d processes left running by an earlier sluice up "
                               "(pid %d, %s)", stopped, earlier.pid, earlier.file)
        for name, listen in spec.listens().items():
            if problem := lock.in_use(name, listen):
                print(f"sluice up: {problem}; stop it, or give this stack other ports",
                      file=sys.stderr)
                return 1
        if args.run_dir is not None:
            args.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="sluice-up-"))
        tag = children.new_tag()
        claim.record(lock.Owner(os.getpid(), tag, str(args.file.resolve()), str(run_dir)))
        import uvloop
        return uvloop.run(run_stack(spec, run_dir, tag))
    finally:
        claim.release()


async def run_stack(spec: stack.LocalStack, run_dir: Path, tag: str | None = None) -> int:
    tag = tag or children.new_tag()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stopping.set)
    async with contextlib.AsyncExitStack() as resources:
        watchdog = reaper.Watchdog(tag)
        await watchdog.start()
        resources.push_async_callback(watchdog.stop)
        keeping = asyncio.create_task(watchdog.keep())
        resources.callback(keeping.cancel)
        session = await resources.enter_async_context(aiohttp.ClientSession())
        router_token = secrets.token_hex(16)
        router = router_process.RouterProcess(spec, run_dir, router_token, tag, session)
        resources.callback(router.kill)  # whatever happens next, it does not outlive us
        try:
            await router.start()
        except router_process.RouterFailed as error:
            print(f"sluice up: the router did not start: {error} (see {router.log})",
                  file=sys.stderr)
            return 1
        admin = f"http://{spec.router.admin}"
        router_client = routers.RouterClient([routers.Router(admin, router_token)], session)
        pool = gpus.GpuPool(gpus.discover() if spec.gpus == "auto" else spec.gpus)
        metrics = (prometheus.PrometheusSource(spec.controller.prometheus_url,
                                               spec.controller.prometheus_timeout_s)
                   if spec.controller.prometheus_url else None)
        if metrics is not None:
            resources.callback(metrics.close)
        control = core.Core(capacity=pool, publisher=router_client, load=router_client,
                            tick_s=spec.controller.tick_s, signals_=metrics)
        for service_name, service in spec.services.items():
            if service.sticky is not None:
                control.service_sticky[service_name] = service.sticky
            for revision in service.revisions:
                control.upsert(_target(service_name, revision), replicas.RevisionReplicas(
                    service_name, revision, pool, run_dir, control.endpoints_changed, tag))
        resources.push_async_callback(control.close)
        router.supervise(control.table, control.republish)
        resources.push_async_callback(router.stop)  # drains while replicas still serve
        if spec.controller.prometheus_targets_file is not None:
            keeping_targets = asyncio.create_task(scrape.keep(
                spec.controller.prometheus_targets_file, control, spec.controller.tick_s))
            resources.callback(keeping_targets.cancel)
        rollouts = driver.Rollouts(control, router_client, metrics, metrics_missing=(
            "custom metrics need a Prometheus: set controller.prometheus_url in the stack file"))
        resources.push_async_callback(rollouts.stop)
        # A token of its own: the router's admin token never leaves this process.
        control_token = token.new()
        token_files = [run_dir / token.FILE_NAME,
                       token.well_known_path(spec.controller.listen)]
        token.write(control_token, token_files)
        resources.callback(token.remove, control_token, token_files)
        loop_task = await resources.enter_async_context(core.running(control))
        # Up (its status answering) only once the router's pokes reach the core: a request at
        # zero from then on starts a replica at once, not at the next tick.
        await router_client.subscribed(router_process.READY_S)
        status_site = await _serve_status(control, rollouts, router, control_token,
                                          spec.controller.listen)
        resources.push_async_callback(status_site.cleanup)
        console.say(f"sluice up: router http://{spec.router.listen}  admin {admin}  status "
                    f"http://{spec.controller.listen}/status  logs {run_dir}  (Ctrl-C stops)")
        stop_wait = asyncio.create_task(stopping.wait())
        await asyncio.wait([loop_task, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if loop_task.done() and not loop_task.cancelled() and loop_task.exception():
            logger.error("the control loop stopped: %r", loop_task.exception())
            return 1
        console.say("sluice up: stopping: the router drains, then every replica stops")
    return 0


def _target(service: str, revision: stack.RevisionSpec) -> ports.RevisionTarget:
    return ports.RevisionTarget(service=service, revision=revision.name,
                                policy=revision.scaling, weight=revision.weight,
                                concurrency=revision.concurrency)


async def _serve_status(control: core.Core, rollouts: driver.Rollouts,
                        router: router_process.RouterProcess, write_token: str,
                        listen: str) -> web.AppRunner:
    app = web.Application(client_max_size=api.MAX_BODY_BYTES)
    app[CORE] = control
    app[ROLLOUTS] = rollouts
    app[ROUTER] = router

    async def status(request: web.Request) -> web.Response:
        running = [{key: row[key] for key in ROLLOUT_SUMMARY}
                   for row in request.app[ROLLOUTS].status(verdicts=0)]
        return web.json_response({"router": request.app[ROUTER].status(),
                                  "revisions": request.app[CORE].status_json(),
                                  "rollouts": running})

    app.router.add_get("/status", status)
    api.add_routes(app, rollouts, write_token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host, int(port)).start()
    return runner
