"""``sluice router``: run the data plane and its admin API.

With ``--workers 1`` one process serves both. With N > 1 this process runs only the admin API
and N worker processes share the data-plane port (SO_REUSEPORT); each serves a private control
API on a unix socket in a 0700 directory, through which the admin API applies routes to all and
adds their stats up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import yaml
from aiohttp import web

from policies import routing, validation
from router import admin, control, worker
from router.settings import RouterSettings


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sluice router", description=__doc__.split("\n")[0])
    parser.add_argument("--config", "-c", required=True, type=Path, help="route table YAML")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="data plane host:port")
    parser.add_argument("--admin-listen", default="127.0.0.1:8081", help="admin API host:port")
    parser.add_argument("--workers", type=int, default=1, help="data plane processes")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="any RouterSettings field, e.g. --set header_timeout_s=5")
    parser.add_argument("--worker-socket", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> RouterSettings:
    host, port = _host_port(args.listen)
    admin_host, admin_port = _host_port(args.admin_listen)
    overrides: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(RouterSettings)}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in fields:
            raise SystemExit(f"sluice router: unknown setting {name!r}")
        kind = type(getattr(RouterSettings(), name))
        overrides[name] = kind(value)
    return RouterSettings(host=host, port=port, admin_host=admin_host, admin_port=admin_port,
                          workers=max(1, args.workers), **overrides)


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def load_document(path: Path) -> routing.RouteTable:
    """The route table from YAML; exits 2 naming each invalid field."""
    try:
        data = yaml.safe_load(path.read_text())
        return routing.load(data if isinstance(data, dict) else {})
    except OSError as error:
        print(f"sluice router: cannot read {path}: {error}", file=sys.stderr)
    except yaml.YAMLError as error:
        print(f"sluice router: {path} is not YAML: {error}", file=sys.stderr)
    except pydantic.ValidationError as error:
        print(f"sluice router: invalid route table {path}:", file=sys.stderr)
        for problem in validation.problems(error):
            print(f"  {problem['field']}: {problem['reason']}", file=sys.stderr)
    raise SystemExit(2)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _start_site(app: web.Application, **where: Any) -> web.AppRunner:
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = (web.UnixSite(runner, where["path"]) if "path" in where
            else web.TCPSite(runner, where["host"], where["port"]))
    await site.start()
    return runner


async def serve_single(settings: RouterSettings, document: routing.RouteTable) -> None:
    data_plane = worker.Worker(settings, document)
    await data_plane.start()
    app = admin.make_app(control.LocalControl(data_plane), os.environ.get("SLUICE_ADMIN_TOKEN"))
    runner = await _start_site(app, host=settings.admin_host, port=settings.admin_port)
    admin_port = runner.addresses[0][1]
    print(f"sluice router: serving http://{settings.host}:{data_plane.port} "
          f"admin http://{settings.admin_host}:{admin_port}", file=sys.stderr, flush=True)
    await _until_signalled()
    await data_plane.drain()
    await runner.cleanup()


async def serve_worker(settings: RouterSettings, document: routing.RouteTable,
                       socket_path: str) -> None:
    data_plane = worker.Worker(settings, document)
    await data_plane.start()
    runner = await _start_site(admin.worker_app(control.LocalControl(data_plane)),
                               path=socket_path)
    await _until_signalled()
    await data_plane.drain()
    await runner.cleanup()


async def serve_master(settings: RouterSettings, document: routing.RouteTable,
                       sockets: list[str], port: int) -> None:
    fanout = control.FanoutControl(sockets, document)
    fanout.start()
    runner = await _start_site(admin.make_app(fanout, os.environ.get("SLUICE_ADMIN_TOKEN")),
                               host=settings.admin_host, port=settings.admin_port)
    print(f"sluice router: serving http://{settings.host}:{port} with {len(sockets)} workers "
          f"admin http://{settings.admin_host}:{runner.addresses[0][1]}",
          file=sys.stderr, flush=True)
    await _until_signalled()
    fanout.stopping = True
    await runner.cleanup()
    await fanout.close()


def run_workers(settings: RouterSettings, argv: list[str],
                serve: Callable[[list[str], int], None]) -> None:
    """Start the worker processes, run the admin API with `serve`, then drain the workers."""
    rundir = tempfile.mkdtemp(prefix="sluice-router-")  # 0700: only we reach the workers
    sockets = [os.path.join(rundir, f"worker-{i}.sock") for i in range(settings.workers)]
    port = settings.port or _free_port(settings.host)
    argv = [*_without_listen(argv), "--listen", f"{settings.host}:{port}"]
    procs = [subprocess.Popen([sys.executable, "-m", "router.main", *argv, "--worker-socket", s])
             for s in sockets]
    try:
        deadline = time.monotonic() + 30
        while not all(os.path.exists(s) for s in sockets):
            if any(p.poll() is not None for p in procs):
                raise SystemExit("sluice router: a worker process exited during start-up")
            if time.monotonic() > deadline:
                raise SystemExit("sluice router: workers did not start within 30 s")
            time.sleep(0.05)
        serve(sockets, port)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + settings.drain_timeout_s + 5
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        for path in sockets:
            with contextlib.suppress(OSError):
                os.unlink(path)
        os.rmdir(rundir)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> None:
    """Every waiting client holds a socket: allow as many as the hard limit does."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    raise_fd_limit()
    settings = settings_from(args)
    document = load_document(args.config)
    try:
        import uvloop
        run = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps PyPy usable
        run = asyncio.run  # type: ignore[assignment]
    if args.worker_socket:
        run(serve_worker(settings, document, args.worker_socket))
    elif settings.workers > 1:
        run_workers(settings, argv,
                    lambda sockets, port: run(serve_master(settings, document, sockets, port)))
    else:
        run(serve_single(settings, document))
    return 0


def _without_listen(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--listen":
            skip = True
        elif not arg.startswith("--listen="):
            out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main())
