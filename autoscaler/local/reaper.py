"""The watchdog of one ``sluice up``: once it is gone, however it died, stop what it started.

``python -m autoscaler.local.reaper TAG FD`` blocks reading the pipe ``FD``, whose only write end
is held by ``sluice up``; the kernel closes it when that process dies, SIGKILL included. On end of
file it stops every process with the run's tag (autoscaler/local/children.py) and exits. It runs
in a session of its own and ignores SIGINT and SIGHUP, so the terminal that kills ``sluice up``
does not kill it first. ``sluice up`` starts it before anything else (``Watchdog``), starts it
again if it dies, and on a clean stop closes the pipe and waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from autoscaler.local import children

logger = logging.getLogger(__name__)


class Watchdog:
    """The watchdog process as ``sluice up`` runs it."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self._process: asyncio.subprocess.Process | None = None
        self._write_end: int | None = None

    async def start(self) -> None:
        read_end, self._write_end = os.pipe()  # neither is inherited by anything else we start
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "autoscaler.local.reaper", self.tag, str(read_end),
                pass_fds=(read_end,), stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True)
        finally:
            os.close(read_end)

    async def keep(self) -> None:
        """Start it again whenever it dies, until cancelled."""
        while True:
            assert self._process is not None
            code = await self._process.wait()
            logger.warning("the watchdog exited (%s); starting it again",
                           children.describe_exit(code))
            self._close_pipe()
            await self.start()

    async def stop(self) -> None:
        """Everything has been stopped: close the pipe, so it finds nothing and exits."""
        self._close_pipe()
        if self._process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process.wait(), children.REAP_GRACE_S + 5)

    def _close_pipe(self) -> None:
        if self._write_end is not None:
            os.close(self._write_end)
            self._write_end = None


def main(argv: list[str]) -> int:
    tag, fd = argv[0], int(argv[1])
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while os.read(fd, 4096):
        pass  # nothing is ever written; only the end of file means something
    children.reap(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
