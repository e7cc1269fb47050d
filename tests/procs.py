"""Real processes for integration tests: start one, wait until it answers, stop it, show its log.

Integration tests run the actual programs (model server, router, autoscaler) as subprocesses on
loopback. This module holds the parts every such test needs and should not reinvent:

- `free_port()`: a port that was free a moment ago on 127.0.0.1.
- `Proc.start(argv, ready_url)`: spawn, then poll the URL with a bounded deadline; if the process
  exits or never answers, it is killed and `ProcError` carries the tail of its output.
- `Proc.stop()`: SIGTERM by PID, SIGKILL if it has not exited within the grace period.
- `ProcGroup`: what a fixture yields; stops every process it started at teardown, even when the
  test failed, and then prints their output so pytest shows it next to the failure.

Output (stdout and stderr together) goes to an unnamed temporary file rather than a pipe, so a
chatty process can never block on a full pipe buffer while nobody reads it.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

# Proxy settings from the environment must never apply to loopback probes.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_LOG_TAIL_CHARS = 8_000
_live: weakref.WeakSet[Proc] = weakref.WeakSet()


def descendants(pid: int) -> set[int]:
    """PIDs of every process below ``pid`` in the process tree, now."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids: set[int]) -> list[int]:
    """Those of ``pids`` still running (zombies, awaiting their parent's wait, do not count)."""
    running = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            running.append(pid)
    return running


def cmdline(pid: int) -> str:
    """The process's command line, arguments joined by spaces ("" once it has gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def wait_gone(pids: set[int], within_s: float = 30.0) -> list[int]:
    """Wait until none of ``pids`` runs; those still running after ``within_s``."""
    deadline = time.monotonic() + within_s
    while (running := alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running


class ProcError(RuntimeError):
    """A process exited early or never became ready; the message ends with its output."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free when asked; another process could still take it before use."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The HTTP status `url` answers a GET with, or None if nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, urllib.error.URLError):
        return None


class Proc:
    """One subprocess, its output log and its lifecycle. Build it with `Proc.start`."""

    def __init__(self, argv: Sequence[str], popen: subprocess.Popen[bytes], log: IO[bytes]) -> None:
        self.argv = list(argv)
        self.popen = popen
        self._log = log

    @classmethod
    def start(cls, argv: Sequence[str], ready_url: str | None = None, *,
              env: Mapping[str, str] | None = None, timeout: float = 30.0,
              ready_status: int | None = 200, cwd: str | None = None) -> Proc:
        """Spawn `argv` and wait until `ready_url` answers `ready_status` (None: any status).

        `env` is added to (not substituted for) this process's environment. On failure the
        process is stopped and `ProcError` is raised with its output.
        """
        log = tempfile.TemporaryFile()  # noqa: SIM115 - the Proc owns it until close()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        try:
            popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
        except BaseException:
            log.close()
            raise
        proc = cls(argv, popen, log)
        _live.add(proc)
        if ready_url is not None:
            try:
                proc.wait_ready(ready_url, timeout=timeout, status=ready_status)
            except BaseException:
                proc.close()  # the error message already carries its output
                raise
        return proc

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def wait_ready(self, url: str, *, timeout: float = 30.0, status: int | None = 200) -> None:
        """Poll `url` until it answers `status` (None: anything); fail fast if the process exits."""
        deadline = time.monotonic() + timeout
        last: int | None = None
        while True:
            if self.popen.poll() is not None:
                raise ProcError(self._describe(f"exited with {self.popen.returncode} before {url} "
                                               "was ready"))
            last = http_status(url)
            if last is not None and (status is None or last == status):
                return
            if time.monotonic() >= deadline:
                raise ProcError(self._describe(f"{url} not ready after {timeout}s "
                                               f"(last status: {last})"))
            time.sleep(0.05)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        _live.discard(self)
        return self.popen.returncode

    def output(self) -> str:
        """Everything the process wrote so far to stdout and stderr."""
        if self._log.closed:
            return ""
        # pread leaves the shared file offset alone, so the child's writes keep appending.
        fd = self._log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def close(self) -> None:
        """Stop the process and release its log file."""
        self.stop()
        self._log.close()

    def _describe(self, problem: str) -> str:
        tail = self.output()[-_LOG_TAIL_CHARS:]
        return f"{self.argv} (pid {self.pid}): {problem}\n--- output ---\n{tail}"

    def __repr__(self) -> str:
        return f"Proc(pid={self.pid}, returncode={self.returncode}, argv={self.argv})"


class ProcGroup:
    """The processes one test started; `close()` stops them all and reports their output."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(self, argv: Sequence[str], ready_url: str | None = None, **kwargs: Any) -> Proc:
        proc = Proc.start(argv, ready_url, **kwargs)
        self.procs.append(proc)
        return proc

    def close(self, report: IO[str] | None = None) -> None:
        """Stop every process (even if one fails to stop), then write their output to `report`."""
        for proc in reversed(self.procs):
            try:
                proc.stop()
            finally:
                if report is not None:
                    report.write(f"--- {proc!r} output ---\n{proc.output()}\n")
                proc.close()
        self.procs.clear()


def proc_group(request: Any) -> Iterator[ProcGroup]:
    """Body for a pytest fixture: `yield from proc_group(request)`.

    Teardown stops every process; if the test failed, their output goes to stderr, which pytest
    shows with the failure (as the teardown's captured stderr).
    """
    group = ProcGroup()
    failures_before = request.session.testsfailed
    try:
        yield group
    finally:
        failed = request.session.testsfailed > failures_before
        group.close(sys.stderr if failed else None)


@atexit.register
def _kill_leftovers() -> None:
    # Last resort if a test runner dies without running fixture teardown.
    for proc in list(_live):
        proc.stop(grace=2.0)
