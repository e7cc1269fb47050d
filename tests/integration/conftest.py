"""Real processes on loopback: the router (python -m router.main) and reference model servers.

Every process is started on free ports and stopped by PID when its fixture ends, also when the
test fails. Helpers wait on conditions (an HTTP answer, a stats value) with a deadline; nothing
asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests import procs

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token"
INFER = "/v2/models/model/infer"
PAYLOAD = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32",
                       "data": [0.1, 0.2, 0.3, 0.4]}]}


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(method: str, url: str, body=None, token: str | None = None,
         data: bytes | None = None) -> tuple[int, dict]:
    """An HTTP call to a controller or router API: (status, JSON body), errors included."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


class Router:
    """A router process with a route document, reconfigurable through its admin API."""

    def __init__(self, tmp_path: Path, document: dict | None, workers: int = 1,
                 settings: dict | None = None) -> None:
        """With no ``document`` it starts without a table, as on Kubernetes: not ready (it is
        waited for as started, not as ready) until one is published."""
        self.port = procs.free_port()
        self.admin_port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        argv = [sys.executable, "-m", "router.main", "--listen", f"127.0.0.1:{self.port}",
                "--admin-listen", f"127.0.0.1:{self.admin_port}", "--workers", str(workers)]
        if document is not None:
            config = tmp_path / f"routes-{procs.free_port()}.yaml"
            config.write_text(yaml.safe_dump(document))
            argv += ["--config", str(config)]
        for name, value in (settings or {}).items():
            argv += ["--set", f"{name}={value}"]
        # Ready means every worker listens and its pokes reach the admin API's /events.
        self.proc = procs.Proc.start(argv, ready_url=f"{self.admin}/readyz",
                                     ready_status=200 if document is not None else None,
                                     env={"SLUICE_ADMIN_TOKEN": TOKEN}, cwd=str(ROOT))

    async def put_routes(self, document: dict, token: str = TOKEN) -> aiohttp.ClientResponse:
        async with aiohttp.ClientSession() as session, session.put(
                f"{self.admin}/routes", data=json.dumps(document),
                headers={"Authorization": f"Bearer {token}"}) as response:
            await response.read()
            return response

    async def stats(self) -> dict[str, dict]:
        async with aiohttp.ClientSession() as session, session.get(
                f"{self.admin}/stats") as response:
            body = await response.json()
        return {r["revision"]: r for r in body["revisions"]}

    async def wait_for(self, predicate, within_s: float = 30.0) -> dict[str, dict]:
        """Poll /stats until predicate(stats) holds; fail with the last stats after within_s."""
        deadline = time.monotonic() + within_s
        while True:
            current = await self.stats()
            if predicate(current):
                return current
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached; last stats: {current}")
            await asyncio.sleep(0.02)

    def stop(self) -> int | None:
        return self.proc.close()


class ModelServer:
    """A reference model server process (examples/model_server.py)."""

    def __init__(self, *args: str) -> None:
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = procs.Proc.start(
            [sys.executable, str(ROOT / "examples" / "model_server.py"),
             "--port", str(self.port), *args],
            ready_url=f"{self.url}/v2/health/live", cwd=str(ROOT))

    async def requests(self) -> dict:
        async with aiohttp.ClientSession() as session, session.get(
                f"{self.url}/debug/requests") as response:
            return await response.json()

    def stop(self) -> int | None:
        return self.proc.close()


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes to a loopback port; everything that comes back until the peer closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


def service(*revisions: dict, **extra) -> dict:
    return {"services": {"model": {"revisions": list(revisions), **extra}}}


@pytest.fixture
def start_router(tmp_path):
    started: list[Router] = []

    def start(document: dict, **kwargs) -> Router:
        router = Router(tmp_path, document, **kwargs)
        started.append(router)
        return router

    yield start
    for router in started:
        router.stop()


@pytest.fixture
def start_model_server():
    started: list[ModelServer] = []

    def start(*args: str) -> ModelServer:
        server = ModelServer(*args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


MODEL_SERVER = ["{python}", str(ROOT / "examples" / "model_server.py"), "--port", "{port}"]


class Stack:
    """A `sluice up` process on free ports."""

    def __init__(self, tmp_path: Path, revisions: list[dict], tick_s: float = 0.5,
                 controller: dict | None = None, router: dict | None = None,
                 args: tuple[str, ...] = (), **extra) -> None:
        self.port, self.admin, self.status_port = (procs.free_port() for _ in range(3))
        self.url = f"http://127.0.0.1:{self.port}"
        self.controller = f"127.0.0.1:{self.status_port}"
        self.file = tmp_path / "stack.yaml"
        self.file.write_text(yaml.safe_dump({
            "router": {"listen": f"127.0.0.1:{self.port}", "admin": f"127.0.0.1:{self.admin}",
                       **(router or {})},
            "controller": {"listen": self.controller, "tick_s": tick_s, **(controller or {})},
            "services": {"model": {"revisions": revisions}}, **extra}))
        self.run_dir = tmp_path / "run"
        # The controller's token and lock files go under tmp_path, not the user's runtime
        # directory.
        self.env = {"XDG_RUNTIME_DIR": str(tmp_path / "xdg")}
        self.argv = [sys.executable, "-m", "autoscaler.cli", "up", "-f", str(self.file),
                     "--run-dir", str(self.run_dir), *args]
        self.proc = self.start()

    def start(self) -> procs.Proc:
        """Run `sluice up` on this stack's file (again, after the first has gone)."""
        return procs.Proc.start(self.argv, cwd=str(ROOT), env=self.env,
                                ready_url=f"http://127.0.0.1:{self.status_port}/status")

    @property
    def token(self) -> str:
        return (self.run_dir / "controller.token").read_text().strip()

    def status(self) -> dict[str, dict]:
        out = json.load(urllib.request.urlopen(
            f"http://127.0.0.1:{self.status_port}/status", timeout=5))
        return {row["name"]: row for row in out["revisions"]}

    def router(self) -> dict:
        """The router's health as the controller reports it."""
        return json.load(urllib.request.urlopen(
            f"http://127.0.0.1:{self.status_port}/status", timeout=5))["router"]

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
        return procs.descendants(self.proc.pid)

    def pids(self, role: str) -> set[int]:
        """The stack's processes whose command line has ``role`` in it ("router.main",
        "model_server.py", …)."""
        return {pid for pid in self.descendants() if role in procs.cmdline(pid)}


def stack_revision(name: str = "v1", weight: int = 100, command=None, **policy) -> dict:
    return {"name": name, "weight": weight, "command": command or MODEL_SERVER,
            "scaling": {"metric": "concurrency", "target": 1, "targetUtilization": 1.0,
                        "minReplicas": 0,
                        "initialScale": 0, **policy}}


@pytest.fixture
def start_stack(tmp_path):
    stacks: list[Stack] = []

    def start(revisions: list[dict], **kwargs) -> Stack:
        stacks.append(Stack(tmp_path, revisions, **kwargs))
        return stacks[-1]

    yield start
    for stack in stacks:
        stack.proc.close()


async def wait_until_refused(port: int) -> None:
    """Return once connecting to `port` is refused, i.e. the listener is closed."""
    try:
        async with asyncio.timeout(15):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except ConnectionRefusedError:
                    return
                except ConnectionResetError:  # accepted into the backlog as it closed: again
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                await writer.wait_closed()
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"port {port} still accepts connections") from None
