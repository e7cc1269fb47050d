"""The local actuator: a replica is a process running the revision's model-server command.

One replica's life::

    starting ──probe 2xx──▶ ready ──scale down──▶ draining ──routes published──▶ stopping ─▶ gone
       │ exits, or not ready in time                 (leaves the route table      SIGTERM, drain
       ▼                                              before it is signalled)      time, SIGKILL
    crashed: replaced after a backoff (1, 2, 4 … 30 s); the revision says why

Readiness is probed every ``readiness.period_s`` (0.2 s, as Knative's activator), so a replica
joins the routers within a fifth of a second of being able to serve. Replicas run in their own
process group, so stopping one stops whatever it spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from autoscaler.control import ports
from autoscaler.local import gpus, stack

MAX_BACKOFF_S = 30.0


class State(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"


@dataclass(eq=False)
class Replica:
    port: int
    gpus: tuple[int, ...]
    started_at: float
    state: State = State.STARTING
    ready_at: float | None = None
    process: asyncio.subprocess.Process | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class RevisionReplicas:
    """The processes of one revision, kept at `desired` by `scale`: the local Replicas of
    control/ports.py."""

    def __init__(self, service: str, spec: stack.RevisionSpec, pool: gpus.GpuPool,
                 session: aiohttp.ClientSession, log_dir: Path,
                 on_change: Callable[[], None]) -> None:
        self.service = service
        self.spec = spec
        self.pool = pool
        self.session = session
        self.log_dir = log_dir
        self.on_change = on_change
        self.loop = asyncio.get_running_loop()
        self.desired = 0
        self.replicas: list[Replica] = []
        self.failure: str | None = None
        self.restarts = 0
        self._crashes_in_a_row = 0
        self._next_start_at = 0.0
        self._cold_starts: list[float] = []

    # what the controller reads

    def count(self, state: State) -> int:
        return sum(1 for r in self.replicas if r.state == state)

    def counts(self) -> ports.ReplicaCounts:
        return ports.ReplicaCounts(ready=self.count(State.READY),
                                   starting=self.count(State.STARTING))

    def endpoints(self) -> list[str]:
        return [r.url for r in self.replicas if r.state == State.READY]

    def take_cold_starts(self) -> tuple[float, ...]:
        taken, self._cold_starts = tuple(self._cold_starts), []
        return taken

    @property
    def gpus_per_replica(self) -> int:
        return self.spec.scaling.gpus_per_replica

    # what the controller asks

    def scale(self, desired: int) -> None:
        """Start or retire replicas toward `desired`; retired ready ones drain first."""
        self.desired = desired
        live = [r for r in self.replicas if r.state in (State.STARTING, State.READY)]
        surplus = len(live) - desired
        if surplus > 0:
            # Starting replicas serve nobody yet: retire those first, newest first.
            victims = sorted(live, key=lambda r: (r.state == State.READY, -r.started_at))
            for replica in victims[:surplus]:
                if replica.state == State.STARTING:
                    self._stop(replica)
                else:
                    replica.state = State.DRAINING
            self.on_change()
        now = self.loop.time()
        while len(live) < desired and now >= self._next_start_at:
            taken = self.pool.take(self.gpus_per_replica) if self.gpus_per_replica else ()
            if taken is None:
                break  # the decider was told how many GPUs are free; it reports CapacityLimited
            replica = Replica(port=_free_port(), gpus=taken, started_at=now)
            self.replicas.append(replica)
            live.append(replica)
            self._spawn(replica, self._run(replica))

    def released(self) -> None:
        """Signal replicas that have left the published route table."""
        for replica in self.replicas:
            if replica.state == State.DRAINING:
                self._stop(replica)

    async def close(self) -> None:
        self.desired = 0
        for replica in self.replicas:
            if replica.state != State.STOPPING:
                self._stop(replica)
        tasks = [t for r in self.replicas for t in r.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=self.spec.drain_timeout_s + 5)

    # one replica

    async def _run(self, replica: Replica) -> None:
        argv = [arg.replace("{port}", str(replica.port)).replace("{python}", sys.executable)
                for arg in self.spec.command]
        env = {**os.environ, **self.spec.env, "PORT": str(replica.port)}
        if replica.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, replica.gpus))
        log_path = self.log_dir / f"{self.service}-{self.spec.name}-{replica.port}.log"
        try:
            with log_path.open("ab") as log:
                replica.process = await asyncio.create_subprocess_exec(
                    *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as error:
            self._crashed(replica, f"cannot start {argv[0]!r}: {error.strerror or error}")
            return
        if await self._became_ready(replica):
            replica.state = State.READY
            replica.ready_at = self.loop.time()
            self._cold_starts.append(replica.ready_at - replica.started_at)
            self._crashes_in_a_row = 0
            self.failure = None
            self.on_change()
        code = await replica.process.wait()
        if replica.state in (State.STARTING, State.READY):
            self._crashed(replica, f"replica exited with code {code}: {_last_line(log_path)}")
        else:
            self._gone(replica)

    async def _became_ready(self, replica: Replica) -> bool:
        readiness = self.spec.readiness
        url = replica.url + readiness.path
        timeout = aiohttp.ClientTimeout(total=readiness.timeout_s)
        deadline = replica.started_at + readiness.start_timeout_s
        process = replica.process
        assert process is not None
        while replica.state == State.STARTING and process.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.session.get(url, timeout=timeout) as response:
                    if 200 <= response.status < 300:
                        return True
            if self.loop.time() > deadline:
                self._kill(replica)
                self.failure = (f"replica not ready within {readiness.start_timeout_s:g} s "
                                f"(GET {readiness.path})")
                return False
            await asyncio.sleep(readiness.period_s)
        return False

    def _stop(self, replica: Replica) -> None:
        replica.state = State.STOPPING
        process = replica.process
        if process is None or process.returncode is not None:
            return
        _signal_group(process, signal.SIGTERM)

        async def kill_after_drain() -> None:
            try:
                await asyncio.wait_for(process.wait(), self.spec.drain_timeout_s)
            except TimeoutError:
                _signal_group(process, signal.SIGKILL)

        self._spawn(replica, kill_after_drain())

    def _kill(self, replica: Replica) -> None:
        if replica.process is not None and replica.process.returncode is None:
            _signal_group(replica.process, signal.SIGKILL)

    def _crashed(self, replica: Replica, reason: str) -> None:
        self.failure = reason
        self.restarts += 1
        self._crashes_in_a_row += 1
        backoff = min(MAX_BACKOFF_S, 2.0 ** (self._crashes_in_a_row - 1))
        self._next_start_at = self.loop.time() + backoff
        self._gone(replica)

    def _gone(self, replica: Replica) -> None:
        if replica in self.replicas:
            self.replicas.remove(replica)
            self.pool.give_back(replica.gpus)
            self.on_change()

    def _spawn(self, replica: Replica, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        replica.tasks.add(task)
        task.add_done_callback(replica.tasks.discard)


def _signal_group(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _last_line(path: Path) -> str:
    """The replica's last words, for the reason shown in status (bounded read)."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 2048))
            lines = log.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else "(no output)"
