"""The local actuator: a replica is a process running the revision's model-server command.

One replica's life::

    starting ──probe 2xx──▶ ready ──scale down──▶ draining ──routes published──▶ stopping ─▶ gone
       │ exits, or not ready in time                 (leaves the route table      SIGTERM, drain
       ▼                                              before it is signalled)      time, SIGKILL
    crashed: replaced at once the first time, then after 1, 2, 4 … 30 s (children.Backoff)

A replica that dies is replaced while the router holds its revision's requests, as at zero. The
revision is *unavailable* (the router answers its requests 503 at once, with ``failure`` as the
reason) only when replicas cannot be had: its command cannot be run, a replica exits or times
out before it is ready, or ready replicas crashed ``CRASH_LOOP`` times in a row; and only while
no other replica of it is starting or ready. ``failure`` is a sentence of ours: a replica's log
may hold addresses and secrets, so its last line goes to the console, never to a client.

Readiness: while a replica starts, a probe is a bare TCP connect plus ``GET <path>``. While
nothing listens on its port the connect is refused, which costs microseconds, so it is retried
every ``fast_period_s`` (10 ms): a server that listens once its model is loaded (as KServe's
does) is ready within that of listening. A server that answers but is not ready yet is probed
less often the further the start is from when this revision's replicas usually become ready
(``next_probe_in``), between ``fast_period_s`` and ``period_s``. No replica starting, no probe.

Replicas run in sessions of their own, tagged and signalled if ``sluice up`` dies
(autoscaler/local/children.py), so stopping one stops whatever it spawned and none outlives it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import os
import random
import signal
import socket
import statistics
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoscaler.control import ports
from autoscaler.local import children, gpus, stack

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
CRASH_LOOP = 3
"""Crashes in a row, each within a minute of its start, after which a revision whose replicas
became ready is unavailable all the same."""
PROBE_SLOPE = 0.25
"""Seconds between probes per second from the expected ready time: probes are densest when a
replica is expected to become ready."""
STARTS_REMEMBERED = 5
"""Recent start-up times whose median is when the next replica is expected to be ready."""


class State(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"


class Probe(enum.Enum):
    REFUSED = "nothing listens"
    NOT_READY = "answers, not ready"
    READY = "ready"


@dataclass(eq=False)
class Replica:
    port: int
    gpus: tuple[int, ...]
    started_at: float
    state: State = State.STARTING
    ready_at: float | None = None
    timed_out: bool = False
    process: asyncio.subprocess.Process | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class RevisionReplicas:
    """The processes of one revision, kept at `desired` by `scale`: the local Replicas of
    control/ports.py."""

    def __init__(self, service: str, spec: stack.RevisionSpec, pool: gpus.GpuPool,
                 log_dir: Path, on_change: Callable[[], None], tag: str) -> None:
        self.service = service
        self.spec = spec
        self.pool = pool
        self.log_dir = log_dir
        self.on_change = on_change
        self.tag = tag
        self.loop = asyncio.get_running_loop()
        self.desired = 0
        self.replicas: list[Replica] = []
        self.failure: str | None = None
        self.restarts = 0
        self._backoff = children.Backoff(max_s=MAX_BACKOFF_S)
        self._next_start_at = 0.0
        self._restart: asyncio.TimerHandle | None = None
        self._cold_starts: list[float] = []
        self._recent_starts: collections.deque[float] = collections.deque(
            maxlen=STARTS_REMEMBERED)

    @property
    def name(self) -> str:
        return f"{self.service}/{self.spec.name}"

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
        live = self._live()
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
        if len(live) < desired and now < self._next_start_at and self._restart is None:
            self._restart = self.loop.call_at(self._next_start_at, self._restart_due)
        while len(live) < desired and now >= self._next_start_at:
            taken = self.pool.take(self.gpus_per_replica) if self.gpus_per_replica else ()
            if taken is None:
                break  # the decider was told how many GPUs are free; it reports CapacityLimited
            replica = Replica(port=_free_port(), gpus=taken, started_at=now)
            self.replicas.append(replica)
            live.append(replica)
            self._spawn(replica, self._run(replica))

    def released(self, listed: frozenset[str]) -> None:
        """Signal draining replicas that have left the published route table."""
        for replica in self.replicas:
            if replica.state == State.DRAINING and replica.url not in listed:
                self._stop(replica)

    async def close(self) -> None:
        self.desired = 0
        if self._restart is not None:
            self._restart.cancel()
        for replica in self.replicas:
            if replica.state != State.STOPPING:
                self._stop(replica)
        tasks = [t for r in self.replicas for t in r.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=self.spec.drain_timeout_s + 5)

    def _live(self) -> list[Replica]:
        return [r for r in self.replicas if r.state in (State.STARTING, State.READY)]

    def _restart_due(self) -> None:
        self._restart = None
        self.scale(self.desired)

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
                replica.process = await children.spawn(argv, tag=self.tag, log=log, env=env)
        except OSError as error:
            why = error.strerror or str(error)
            logger.warning("%s: cannot run %r: %s", self.name, argv[0], why)
            self._crashed(replica, f"its command cannot be run ({why})")
            return
        if replica.state is State.STOPPING:
            self._stop(replica)  # retired while it was being spawned: _stop had no process
        logger.info("%s: replica :%d starting (pid %d)", self.name, replica.port,
                    replica.process.pid)
        if await self._became_ready(replica):
            replica.state = State.READY
            replica.ready_at = self.loop.time()
            took = replica.ready_at - replica.started_at
            self._cold_starts.append(took)
            self._recent_starts.append(took)
            self.failure = None
            logger.info("%s: replica :%d ready after %.2f s", self.name, replica.port, took)
            self.on_change()
        code = await replica.process.wait()
        ran = self.loop.time() - replica.started_at
        said = f"{children.describe_exit(code)}: {last_line(log_path)}"
        if replica.state is State.STARTING:
            if replica.timed_out:
                logger.warning("%s: replica :%d not ready within %g s (GET %s); killed",
                               self.name, replica.port, self.spec.readiness.start_timeout_s,
                               self.spec.readiness.path)
                why = (f"its replica is not ready within {self.spec.readiness.start_timeout_s:g}"
                       " s")
            else:
                logger.warning("%s: replica :%d exits before it is ready (%s)", self.name,
                               replica.port, said)
                why = f"its replica exits before it is ready ({children.describe_exit(code)})"
            self._crashed(replica, why, ran)
        elif replica.state is State.READY:
            logger.warning("%s: replica :%d crashed after %.1f s (%s)", self.name, replica.port,
                           ran, said)
            self._crashed(replica, f"its replicas keep crashing ({children.describe_exit(code)})",
                          ran, ready=True)
        else:
            logger.info("%s: replica :%d stopped (%s)", self.name, replica.port,
                        children.describe_exit(code))
            self._gone(replica)

    async def _became_ready(self, replica: Replica) -> bool:
        readiness = self.spec.readiness
        deadline = replica.started_at + readiness.start_timeout_s
        expected = statistics.median(self._recent_starts) if self._recent_starts else 0.0
        process = replica.process
        assert process is not None
        while replica.state == State.STARTING and process.returncode is None:
            outcome = await probe(replica.port, readiness.path, readiness.timeout_s)
            if outcome is Probe.READY:
                return True
            now = self.loop.time()
            if now > deadline:
                replica.timed_out = True
                self._kill(replica)
                return False
            await asyncio.sleep(next_probe_in(outcome, now - replica.started_at, expected,
                                              readiness))
        return False

    def _stop(self, replica: Replica) -> None:
        replica.state = State.STOPPING
        process = replica.process
        if process is None or process.returncode is not None:
            return
        _signal_group(process, signal.SIGTERM)
        drain_s = self.spec.drain_timeout_s

        async def kill_after_drain() -> None:
            try:
                await asyncio.wait_for(process.wait(), drain_s)
            except TimeoutError:
                logger.warning("%s: replica :%d still running %g s after SIGTERM; killing it",
                               self.name, replica.port, drain_s)
                _signal_group(process, signal.SIGKILL)

        self._spawn(replica, kill_after_drain())

    def _kill(self, replica: Replica) -> None:
        if replica.process is not None and replica.process.returncode is None:
            _signal_group(replica.process, signal.SIGKILL)

    def _crashed(self, replica: Replica, why: str, ran_s: float = 0.0,
                 ready: bool = False) -> None:
        """A replica the revision wanted is gone: replace it after the backoff, and say the
        revision is unavailable if replicas cannot be had (see the module docstring)."""
        self.restarts += 1
        pause = self._backoff.failed(ran_s)
        self._next_start_at = self.loop.time() + pause
        self._gone(replica)
        if not self._live() and (not ready or self._backoff.failures >= CRASH_LOOP):
            self.failure = f"revision {self.spec.name} is unavailable: {why}"
        if self.desired > len(self._live()):
            logger.info("%s: replacing it %s", self.name,
                        "now" if pause == 0 else f"in {pause:g} s")
        self.scale(self.desired)

    def _gone(self, replica: Replica) -> None:
        if replica in self.replicas:
            self.replicas.remove(replica)
            self.pool.give_back(replica.gpus)
            self.on_change()

    def _spawn(self, replica: Replica, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        replica.tasks.add(task)
        task.add_done_callback(replica.tasks.discard)


def next_probe_in(outcome: Probe, elapsed_s: float, expected_s: float,
                  readiness: stack.Readiness) -> float:
    """Seconds to the next readiness probe of a replica started ``elapsed_s`` ago, when this
    revision's replicas are usually ready ``expected_s`` after their start (0 when unknown).
    A refused connection is cheap: retry at the fast period. A server that answers is probed
    the less often the further from the expected ready time, up to the period."""
    fast, period = readiness.fast_period_s, readiness.period_s
    if fast == 0:
        return period
    if outcome is Probe.REFUSED:
        return fast
    return min(period, max(fast, PROBE_SLOPE * abs(expected_s - elapsed_s)))


async def probe(port: int, path: str, timeout_s: float) -> Probe:
    """One readiness probe of a replica on loopback: nothing listening, not ready, or ready
    (a 2xx status line)."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                             "Connection: close\r\n\r\n".encode())
                status = (await reader.readline()).split(maxsplit=2)
            finally:
                writer.close()
    except ConnectionRefusedError:
        return Probe.REFUSED
    except (OSError, TimeoutError):
        return Probe.NOT_READY
    ready = (len(status) >= 2 and status[0].startswith(b"HTTP/") and len(status[1]) == 3
             and status[1].startswith(b"2"))
    return Probe.READY if ready else Probe.NOT_READY


def _signal_group(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10_000
"""Replica ports are picked from here up to the kernel's ephemeral range."""
_PORT_CHOICE = random.SystemRandom()


def _free_port(rng: random.Random = _PORT_CHOICE) -> int:
    """A loopback port nothing is bound to, below the kernel's ephemeral range. A port the
    kernel hands out for binding port 0 is one it may give an outgoing connection before the
    replica binds it: a load generator's thousands of connections took one ("address already
    in use", a replica restart)."""
    try:
        ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768  # Linux's default
    for _ in range(100):
        port = rng.randrange(LOWEST_PORT, max(LOWEST_PORT + 1, ephemeral))
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:  # crowded below the range: let the kernel choose
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def last_line(path: Path) -> str:
    """A log's last line, for the console (bounded read)."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 2048))
            lines = log.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else "(no output)"
