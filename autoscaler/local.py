"""``sluice up`` and ``sluice status``: the whole stack on one machine, no cluster.

``sluice up -f examples/local.yaml`` starts the router as a process, the controller in this
process, and replicas as processes of the revisions' commands; Ctrl-C (or SIGTERM) drains the
router, stops every replica and exits, leaving no process behind. ``sluice status`` reads the
controller's status API (loopback) and shows one row per revision, and a line per rollout.

The controller's API (loopback only) serves /status and the rollouts (autoscaler/rollout_api.py,
driven by ``sluice rollout``); its writes need the token this process makes and writes to 0600
files for the CLI (autoscaler/controller_token.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from autoscaler import (
    config,
    controller,
    controller_token,
    gpus,
    replicas,
    rollout_api,
    rollout_driver,
    routers,
)

STATUS = web.AppKey("controller", controller.Controller)
STATUS_ROLLOUTS = web.AppKey("status_rollouts", rollout_driver.Rollouts)
COLUMNS = ("service", "name", "weight", "desired", "ready", "rps", "inflight", "p99_ms",
           "buffered", "conditions")
ROLLOUT_SUMMARY = ("service", "stable_revision", "canary_revision", "phase", "step", "steps",
                   "canary_weight", "reason")


def up(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sluice up", description="run the local stack")
    parser.add_argument("-f", "--file", type=Path, required=True, help="stack YAML")
    parser.add_argument("--run-dir", type=Path, help="where replica and router logs go "
                                                     "(default: a new temporary directory)")
    args = parser.parse_args(argv)
    try:
        stack = config.load(args.file)
    except ValueError as error:
        print(f"sluice up: invalid {args.file}:", file=sys.stderr)
        for line in str(error).splitlines():
            print(f"  {line}", file=sys.stderr)
        return 2
    import uvloop
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="sluice: %(message)s")
    if args.run_dir is not None:
        args.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return uvloop.run(run_stack(stack, args.run_dir or Path(tempfile.mkdtemp(prefix="sluice-up-"))))


async def run_stack(stack: config.LocalStack, run_dir: Path) -> int:
    token = secrets.token_hex(16)
    router = await _start_router(stack, run_dir, token)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        async with aiohttp.ClientSession() as session:
            admin = f"http://{stack.router.admin}"
            if not await _wait_ready(session, admin + "/readyz", router):
                print(f"sluice up: the router did not start; see {run_dir}/router.log",
                      file=sys.stderr)
                return 1
            pool = gpus.GpuPool(gpus.discover() if stack.gpus == "auto" else stack.gpus)
            control: controller.Controller

            def replicas_for(service: str, spec: config.RevisionSpec) -> replicas.RevisionReplicas:
                return replicas.RevisionReplicas(service, spec, pool, session, run_dir,
                                                 lambda: control.endpoints_changed())

            router_client = routers.RouterClient([admin], token, session)
            control = controller.Controller(stack, router_client, pool, replicas_for)
            rollouts = rollout_driver.Rollouts(control, router_client, stack.controller)
            # A token of its own: the router's admin token never leaves this process.
            control_token = controller_token.new()
            token_files = [run_dir / controller_token.FILE_NAME,
                           controller_token.well_known_path(stack.controller.listen)]
            controller_token.write(control_token, token_files)
            status_site = await _serve_status(control, rollouts, control_token,
                                              stack.controller.listen)
            print(f"sluice: router http://{stack.router.listen}  admin {admin}  status "
                  f"http://{stack.controller.listen}/status  logs {run_dir}  (Ctrl-C stops)",
                  file=sys.stderr, flush=True)
            loop_task = asyncio.create_task(control.run())
            stop_wait = asyncio.create_task(stopping.wait())
            await asyncio.wait([loop_task, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
            await rollouts.stop()
            controller_token.remove(control_token, token_files)
            await _stop_router(router)  # drains in-flight requests while replicas still serve
            await control.stop()
            await status_site.cleanup()
    finally:
        if router.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                router.kill()
    return 0


async def _start_router(stack: config.LocalStack, run_dir: Path,
                        token: str) -> asyncio.subprocess.Process:
    routes = {"services": {
        name: {"revisions": [{"name": r.name, "weight": r.weight} for r in service.revisions]}
        for name, service in stack.services.items()}}
    (run_dir / "routes.yaml").write_text(yaml.safe_dump(routes))
    with (run_dir / "router.log").open("ab") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router.main", "--config", str(run_dir / "routes.yaml"),
            "--listen", stack.router.listen, "--admin-listen", stack.router.admin,
            "--workers", str(stack.router.workers),
            env={**os.environ, "SLUICE_ADMIN_TOKEN": token}, stdin=asyncio.subprocess.DEVNULL,
            stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True)


async def _wait_ready(session: aiohttp.ClientSession, url: str,
                      process: asyncio.subprocess.Process) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.returncode is None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                if response.status == 200:
                    return True
        await asyncio.sleep(0.1)
    return False


async def _stop_router(router: asyncio.subprocess.Process) -> None:
    if router.returncode is not None:
        return
    router.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(router.wait(), 40)
    except TimeoutError:
        router.kill()
        await router.wait()


async def _serve_status(control: controller.Controller, rollouts: rollout_driver.Rollouts,
                        token: str, listen: str) -> web.AppRunner:
    app = web.Application(client_max_size=rollout_api.MAX_BODY_BYTES)
    app[STATUS] = control
    app[STATUS_ROLLOUTS] = rollouts

    async def status(request: web.Request) -> web.Response:
        running = [{key: row[key] for key in ROLLOUT_SUMMARY}
                   for row in request.app[STATUS_ROLLOUTS].status(verdicts=0)]
        return web.json_response({"revisions": request.app[STATUS].status(),
                                  "rollouts": running})

    app.router.add_get("/status", status)
    rollout_api.add_routes(app, rollouts, token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host, int(port)).start()
    return runner


def status(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sluice status", description="per-revision status")
    parser.add_argument("-f", "--file", type=Path, help="stack YAML (for the controller address)")
    parser.add_argument("--url", help="controller status URL (default from the file, or "
                                      "http://127.0.0.1:8082)")
    parser.add_argument("--json", action="store_true", help="print JSON once")
    parser.add_argument("--once", action="store_true", help="print the table once")
    args = parser.parse_args(argv)
    url = args.url
    if url is None:
        listen = config.ControllerSpec().listen
        if args.file is not None:
            try:
                listen = config.load(args.file).controller.listen
            except ValueError as error:
                print(f"sluice status: invalid {args.file}:\n{error}", file=sys.stderr)
                return 2
        url = f"http://{listen}/status"
    live = not (args.json or args.once) and sys.stdout.isatty()
    while True:
        try:
            document = _fetch(url)
        except OSError as error:
            print(f"sluice status: cannot reach the controller at {url}: {error}",
                  file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(document, indent=2))
            return 0
        if live:
            print("\x1b[H\x1b[2J", end="")
        print(render(document["revisions"], document.get("rollouts", [])))
        if not live:
            return 0
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(1)
            continue
        return 0


def _fetch(url: str) -> dict[str, Any]:
    import urllib.request
    with urllib.request.urlopen(url, timeout=5) as response:
        document: dict[str, Any] = json.load(response)
        return document


def render(rows: list[dict[str, Any]], rollouts: Sequence[dict[str, Any]] = ()) -> str:
    def cell(row: dict[str, Any], column: str) -> str:
        value = row[column]
        if column == "conditions":
            return ", ".join(value) or "-"
        return "-" if value is None else str(value)

    table = [list(COLUMNS)] + [[cell(row, c) for c in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join([*(v.ljust(w) for v, w in zip(line, widths, strict=False)), line[-1]])
             for line in table]
    lines += [f"rollout {r['service']}: {r['phase']}, step {r['step']}/{r['steps']}, "
              f"{r['canary_revision']} at {r['canary_weight']} % ({r['reason']})"
              for r in rollouts]
    return "\n".join(lines)
