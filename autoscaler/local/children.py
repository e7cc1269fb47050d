"""What ``sluice up`` starts dies with it, however it dies.

Three layers, because each alone has a hole:

- **The parent-death signal.** Every child sets ``PR_SET_PDEATHSIG`` (Linux) between fork and
  exec, so the kernel sends it SIGTERM when its parent goes, SIGKILL included. The kernel ties it
  to the *thread* that forked: asyncio forks in the event loop's thread (uvloop's spawn and the
  standard loop's ``subprocess.Popen`` both run there), which is the main thread of ``sluice up``
  and ends only with the process. A child forked from an executor thread would be signalled
  when that thread exits; nothing here forks from one. It reaches direct children only: a
  replica command ``sh -c "python serve.py"`` loses its shell, not its server.
- **A tag.** Every child's environment carries ``SLUICE_STACK=<run id>``, which whatever it starts
  inherits. ``/proc/<pid>/environ`` shows it for this user's processes, so the whole tree of a
  run is found even when a grandchild left its process group.
- **A watchdog** (autoscaler/local/reaper.py): a process in a session of its own that holds the
  read end of a pipe whose only write end is in ``sluice up``. End of file on it means ``sluice
  up`` is gone, however it died; the watchdog then stops every process with the run's tag (SIGTERM,
  a grace period, SIGKILL) and exits.

The run's tag is also kept in its lock files (autoscaler/local/lock.py), so if even the watchdog
was killed, the next start on the same ports stops what the last one left.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

TAG_ENV = "SLUICE_STACK"
"""The environment variable that marks a process as started by one run of ``sluice up``."""
REAP_GRACE_S = 10.0
"""Seconds the processes of a run that is gone get after SIGTERM before SIGKILL: enough for an
idle server to exit, short enough that a new start does not wait long for a stuck one."""
PR_SET_PDEATHSIG = 1

_prctl = None
if sys.platform == "linux":  # resolved here, in the parent: the child only calls it
    with contextlib.suppress(OSError, AttributeError):
        _prctl = ctypes.CDLL(None, use_errno=True).prctl


def new_tag() -> str:
    return secrets.token_hex(8)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks the kernel to SIGTERM the child when this process dies (None
    where there is no such thing). If this process died before the child asked, the child
    kills itself: nobody is left to stop it."""
    if _prctl is None:
        return None
    prctl, parent = _prctl, os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


async def spawn(argv: Sequence[str], *, tag: str, log: IO[bytes], env: Mapping[str, str],
                ) -> asyncio.subprocess.Process:
    """Start a child of this run: tagged, signalled when this process dies, in a session of its
    own (so stopping its group stops what it spawned, and a terminal's signals reach only us),
    its output appended to ``log``."""
    return await asyncio.create_subprocess_exec(
        *argv, env={**env, TAG_ENV: tag}, stdin=asyncio.subprocess.DEVNULL, stdout=log,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent())


def tagged(tag: str, proc: Path = Path("/proc")) -> list[int]:
    """This user's processes with ``tag`` in their environment, this one excluded. Zombies have
    no environment left: they are already gone."""
    marker = f"{TAG_ENV}={tag}".encode()
    uid, me = os.getuid(), os.getpid()
    found: list[int] = []
    if not proc.is_dir():  # not Linux: no way to find them here
        return found
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            with open(f"{entry.path}/environ", "rb") as environ:
                variables = environ.read().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if marker in variables:
            found.append(int(entry.name))
    return found


def reap(tag: str, grace_s: float = REAP_GRACE_S,
         sleep: Callable[[float], None] = time.sleep) -> int:
    """Stop every process of the run ``tag``: SIGTERM, up to ``grace_s`` to exit, then SIGKILL.
    Returns how many there were."""
    found = tagged(tag)
    _signal(found, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (left := tagged(tag)) and time.monotonic() < deadline:
        sleep(0.05)
    _signal(left, signal.SIGKILL)
    return len(found)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def describe_exit(code: int) -> str:
    """A process's end in words: "exit code 3", "killed by SIGKILL"."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


@dataclass
class Backoff:
    """When to restart something that keeps failing: at once the first time (a replica killed
    once, by the OOM killer or a person, is simply replaced), then 1, 2, 4 … ``max_s`` seconds
    apart. A run that lasted ``healthy_s`` counts as a recovery: the next failure starts over."""

    max_s: float = 30.0
    healthy_s: float = 60.0
    failures: int = 0
    """Failures in a row."""

    def failed(self, ran_s: float) -> float:
        """One more failure after a run of ``ran_s`` seconds: the pause before the restart."""
        if ran_s >= self.healthy_s:
            self.failures = 0
        self.failures += 1
        return 0.0 if self.failures == 1 else min(self.max_s, 2.0 ** (self.failures - 2))
