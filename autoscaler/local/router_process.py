"""The router as a child of ``sluice up``: started, watched, started again when it dies.

It is supervised as a replica is. When it exits (killed, crashed) it is started again after a
backoff (children.Backoff: at once, then 1, 2, 4 … 30 s) from the route table the core would
publish now, written as its config file, so it serves the ready replicas from its first request;
then the core publishes again anyway (``republish``), and the router client follows the new
process's stats and pokes on its own. Each exit and restart is a console line; ``status()`` is
the router's row in ``sluice status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from autoscaler.local import children, replicas, stack
from policies import routing

logger = logging.getLogger(__name__)

READY_S = 30.0
"""Seconds the router may take to answer /readyz."""
DRAIN_S = 40.0
"""Seconds the router may take to drain on SIGTERM before it is killed."""


class RouterFailed(Exception):
    """The router did not become ready; the message says why (its log's last line)."""


class RouterProcess:
    def __init__(self, spec: stack.LocalStack, run_dir: Path, token: str, tag: str,
                 session: aiohttp.ClientSession) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.token = token
        self.tag = tag
        self.session = session
        self.state = "starting"
        self.restarts = 0
        self.last_exit: str | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._started_at = 0.0
        self._backoff = children.Backoff()
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def log(self) -> Path:
        return self.run_dir / "router.log"

    async def start(self, table: routing.RouteTable | None = None) -> None:
        """Start it on ``table`` (else the stack's revisions with no endpoint yet) and wait
        until it is ready; RouterFailed, with the process gone, if it is not."""
        config = self.run_dir / "routes.yaml"
        if table is None:
            config.write_text(yaml.safe_dump({"services": {
                name: {"revisions": [{"name": r.name, "weight": r.weight}
                                     for r in service.revisions]}
                for name, service in self.spec.services.items()}}))
        else:
            config.write_text(table.model_dump_json())  # JSON is YAML
        spec = self.spec.router
        with self.log.open("ab") as log:
            self._process = await children.spawn(
                [sys.executable, "-m", "router.main", "--config", str(config), "--listen",
                 spec.listen, "--admin-listen", spec.admin, "--workers", str(spec.workers)],
                tag=self.tag, log=log, env={**os.environ, "SLUICE_ADMIN_TOKEN": self.token})
        self._started_at = asyncio.get_running_loop().time()
        if not await self._ready():
            self.kill()
            await self._process.wait()
            raise RouterFailed(replicas.last_line(self.log))
        self.state = "serving"

    def supervise(self, table: Callable[[], routing.RouteTable | None],
                  republish: Callable[[], None]) -> None:
        """From now on, start it again whenever it exits, until ``stop``."""
        self._supervisor = asyncio.create_task(self._keep(table, republish))

    async def _keep(self, table: Callable[[], routing.RouteTable | None],
                    republish: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            assert self._process is not None
            code = await self._process.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)  # its workers, if they outlived it
            self.state, self.restarts = "restarting", self.restarts + 1
            self.last_exit = children.describe_exit(code)
            pause = self._backoff.failed(loop.time() - self._started_at)
            said = f": {replicas.last_line(self.log)}" if code > 0 else ""  # a crash's words
            logger.warning("router exited (%s%s); starting it again%s", self.last_exit, said,
                           f" in {pause:g} s" if pause else "")
            await asyncio.sleep(pause)
            try:
                await self.start(table())
            except RouterFailed as error:
                logger.warning("router did not start again: %s", error)
                continue
            republish()
            logger.info("router serving again (pid %d); routes sent again", self._process.pid)

    async def _ready(self) -> bool:
        url = f"http://{self.spec.router.admin}/readyz"
        process = self._process
        assert process is not None
        deadline = asyncio.get_running_loop().time() + READY_S
        while asyncio.get_running_loop().time() < deadline and process.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.session.get(
                        url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self) -> None:
        """Stop supervising, then let it drain (SIGTERM) and kill it if it takes too long."""
        self.state = "stopped"
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), DRAIN_S)
        except TimeoutError:
            self.kill()
            await process.wait()

    def kill(self) -> None:
        """At once, whatever it is doing: the last resort when ``sluice up`` leaves."""
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    def status(self) -> dict[str, Any]:
        process = self._process
        serving = self.state == "serving" and process is not None
        return {"url": f"http://{self.spec.router.listen}",
                "admin": f"http://{self.spec.router.admin}", "state": self.state,
                "pid": process.pid if serving and process else None, "restarts": self.restarts,
                "last_exit": self.last_exit}
