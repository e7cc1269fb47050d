"""One ``sluice up`` per port, and what an earlier one left behind.

A stack holds a lock per port it listens on (router, router admin, controller): an flock(2)ed
file ``port-<port>.lock`` in this user's runtime directory (autoscaler/rollouts/token.py). The
kernel drops an flock when its holder dies, however it died, so a lock is never stale. A second
start that finds one held refuses at once, naming the process that holds it, before it has
touched anything: token files, ports, router, run directory.

A held lock's file says who holds it and the tag its processes carry (autoscaler/local/
children.py). A start that takes a lock whose file names an earlier run (gone, since the lock was
free) stops that run's processes: what a run whose watchdog was killed too can leave behind. Only
then are the ports checked, so a port still held by something else is reported with its holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Owner:
    """What a lock file says about the run holding it."""

    pid: int
    tag: str
    file: str
    """The stack file it runs."""
    run_dir: str


class Busy(Exception):
    """Another run holds one of the ports; the message is one line saying which and who."""


class Claim:
    """The locks of one run, held until ``release`` (or until the process dies)."""

    def __init__(self, fds: list[int], previous: list[Owner]) -> None:
        self._fds = fds
        self.previous = previous
        """Earlier runs named in the lock files this one took: their processes may be left."""

    def record(self, owner: Owner) -> None:
        """Say in every lock file who holds it, for a refused start and the next one."""
        data = json.dumps(asdict(owner)).encode()
        for fd in self._fds:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)

    def release(self) -> None:
        """A clean stop left nothing running: empty the files, drop the locks."""
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)
        self._fds = []


def claim(listens: Mapping[str, str], directory: Path) -> Claim:
    """Lock the port of each ``name: host:port`` in ``listens``; raises Busy, holding nothing,
    when another run holds one."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fds: list[int] = []
    previous: list[Owner] = []
    try:
        for name, listen in listens.items():  # never blocks: any order is deadlock-free
            fd = os.open(directory / f"port-{_port(listen)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _owner(fd)
                who = (f"another sluice up (pid {holder.pid}, {holder.file})" if holder
                       else "another sluice up")
                raise Busy(f"{who} is already running on {listen} ({name}); stop it first, or "
                           "give this stack other ports") from None
            left = _owner(fd)
            if left is not None and left.pid != os.getpid() and left not in previous:
                previous.append(left)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return Claim(fds, previous)


def in_use(name: str, listen: str) -> str | None:
    """Why ``listen`` cannot be listened on (its holder, when this user can see it), or None."""
    host, port = listen.rpartition(":")[0].strip("[]"), _port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            probe.bind((host, port))
        except OSError as error:
            return f"{listen} ({name}) is in use {_holder(port) or f'({error.strerror})'}"
    return None


def _port(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def _owner(fd: int) -> Owner | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
        return Owner(**data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError):
        return None


def _holder(port: int, proc: Path = Path("/proc")) -> str | None:
    """Who holds ``port``: the process listening on it, if it is this user's, or a connection
    that has it as its local port and is closing."""
    listening, closing = set(), False
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (proc / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rpartition(":")[2], 16) != port:
                    continue
                if fields[3] == "0A":  # LISTEN
                    listening.add(f"socket:[{fields[9]}]")
                closing |= fields[3] == "06"  # TIME_WAIT
    for entry in os.scandir(proc) if listening else ():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"{entry.path}/fd"):
                if os.readlink(fd.path) in listening:
                    command = (Path(entry.path) / "cmdline").read_bytes().replace(b"\0", b" ")
                    return (f"by pid {entry.name} "
                            f"({command.decode(errors='replace').strip()[:80]})")
    if closing and not listening:
        return "by a connection still closing (TIME_WAIT; free again within a minute)"
    return None
