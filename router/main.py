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
import math
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
    parser.add_argument("--config", "-c", type=Path, help=(
        "route table YAML; without it the router waits for a table on its admin API (PUT "
        "/routes, as the controller does): until then it answers 503 and is not ready"))
    parser.add_argument("--listen", default="127.0.0.1:8080", help="data plane host:port")
    parser.add_argument("--admin-listen", default="127.0.0.1:8081", help="admin API host:port")
    parser.add_argument("--workers", type=int, default=1, help="data plane processes")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="any RouterSettings field, e.g. --set header_timeout_s=5")
    parser.add_argument("--worker-socket", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


class UsageError(Exception):
    """A command-line value that cannot be used: the message names it and says why."""


def settings_from(args: argparse.Namespace) -> RouterSettings:
    """The settings from the command line; UsageError names the first bad value."""
    host, port = _host_port("--listen", args.listen)
    admin_host, admin_port = _host_port("--admin-listen", args.admin_listen)
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    defaults = RouterSettings()
    overrides: dict[str, Any] = {}
    for item in args.set:
        name, equals, value = item.partition("=")
        if not equals:
            raise UsageError(f"--set {item}: expected FIELD=VALUE")
        if name not in _SETTABLE:
            raise UsageError(f"--set {item}: unknown setting {name!r} "
                             f"(settings: {', '.join(sorted(_SETTABLE))})")
        overrides[name] = _setting_value(item, value, type(getattr(defaults, name)))
    return RouterSettings(host=host, port=port, admin_host=admin_host, admin_port=admin_port,
                          workers=args.workers, **overrides)


_SETTABLE = {f.name for f in dataclasses.fields(RouterSettings)} - {
    "host", "port", "admin_host", "admin_port", "workers"}  # these have their own flags


def _setting_value(item: str, text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise UsageError(f"--set {item}: {text!r} is not {noun}") from None
    if not 0 <= value < math.inf:  # also refuses nan: every setting is a size, count or time
        raise UsageError(f"--set {item}: must be a finite number >= 0")
    return value  # type: ignore[no-any-return]


def _host_port(flag: str, value: str) -> tuple[str, int]:
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{flag} {value}: expected HOST:PORT with a port from 0 to 65535, "
                         "e.g. 127.0.0.1:8080")
    return host.strip("[]") or "127.0.0.1", int(port)


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
                       sockets: list[str], port: int, procs: list[subprocess.Popen[bytes]]) -> None:
    fanout = control.FanoutControl(sockets, document)
    fanout.start()
    runner = await _start_site(admin.make_app(fanout, os.environ.get("SLUICE_ADMIN_TOKEN")),
                               host=settings.admin_host, port=settings.admin_port)
    print(f"sluice router: serving http://{settings.host}:{port} with {len(sockets)} workers "
          f"admin http://{settings.admin_host}:{runner.addresses[0][1]}",
          file=sys.stderr, flush=True)
    await _until_signalled()
    fanout.stopping = True
    # The admin API stays up while the workers drain: a table published now still reaches them.
    await asyncio.to_thread(stop_workers, procs, settings.drain_timeout_s + 5)
    await runner.cleanup()
    await fanout.close()


def stop_workers(procs: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM every worker (they drain), wait up to grace_s for all, then SIGKILL the rest."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_workers(settings: RouterSettings, argv: list[str],
                serve: Callable[[list[str], int, list[subprocess.Popen[bytes]]], None]) -> None:
    """Start the worker processes, run the admin API with `serve`, then drain the workers."""
    rundir = tempfile.mkdtemp(prefix="sluice-router-")  # 0700: only we reach the workers
    sockets = [os.path.join(rundir, f"worker-{i}.sock") for i in range(settings.workers)]
    port, reserved = settings.port, None
    if not port:
        reserved = reserve_port(settings.host)
        port = int(reserved.getsockname()[1])
    argv = [*_without_listen(argv), "--listen", f"{settings.host}:{port}"]
    procs = [subprocess.Popen([sys.executable, "-m", "router.main", *argv, "--worker-socket", s])
             for s in sockets]
    try:
        deadline = time.monotonic() + 30
        while not all(os.path.exists(s) for s in sockets):  # each binds the port before
            if any(p.poll() is not None for p in procs):
                raise SystemExit("sluice router: a worker process exited during start-up")
            if time.monotonic() > deadline:
                raise SystemExit("sluice router: workers did not start within 30 s")
            time.sleep(0.05)
        serve(sockets, port, procs)
    finally:
        if reserved is not None:
            reserved.close()
        stop_workers(procs, settings.drain_timeout_s + 5)
        for path in sockets:
            with contextlib.suppress(OSError):
                os.unlink(path)
        os.rmdir(rundir)


def reserve_port(host: str) -> socket.socket:
    """A socket bound to a free port with SO_REUSEPORT, not listening: it holds the port while
    the workers, binding it with SO_REUSEPORT too, listen on it (connections go only to
    listening sockets); only a socket of the same user that sets SO_REUSEPORT could share it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def raise_fd_limit() -> None:
    """Every waiting client holds a socket: allow as many as the hard limit does."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        settings = settings_from(args)
    except UsageError as error:
        print(f"sluice router: {error}", file=sys.stderr)
        return 2
    raise_fd_limit()
    document = load_document(args.config) if args.config else routing.NO_TABLE
    try:
        import uvloop
        run = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps PyPy usable
        run = asyncio.run  # type: ignore[assignment]
    if args.worker_socket:
        run(serve_worker(settings, document, args.worker_socket))
    elif settings.workers > 1:
        run_workers(settings, argv, lambda sockets, port, procs: run(
            serve_master(settings, document, sockets, port, procs)))
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
