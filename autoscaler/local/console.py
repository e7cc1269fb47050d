"""What ``sluice up`` prints: one timestamped line per event, and no traceback for what is
expected to go wrong.

Events are log records (INFO: a replica starting, ready or stopped, a scale decision, a rollout
step or verdict; WARNING: a crash, the router restarting, a publish failing), so the control
core and the rollouts, which run in other settings too, only log. ``--quiet`` keeps the warnings
and errors. A traceback is printed only with an ERROR record that carries one: a bug, not a
failure sluice knows how to handle.
"""

from __future__ import annotations

import logging
import sys
import time

LEVEL_PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ",
                logging.CRITICAL: "error: "}


class Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{stamp(record.created)} {LEVEL_PREFIX.get(record.levelno, '')}"
        line += record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            line += "\n" + self.formatException(record.exc_info)
        return line


def stamp(at: float) -> str:
    """Local wall-clock time to the millisecond: 14:03:07.123."""
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"


def configure(quiet: bool) -> None:
    """Send every logger's records to stderr as console lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)


def say(message: str) -> None:
    """A line that shows whatever the level (the banner): the console's format, no logging."""
    print(f"{stamp(time.time())} {message}", file=sys.stderr, flush=True)
