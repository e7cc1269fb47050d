"""The reference model server with a clock: what ``make bench`` uses as a replica to measure how
long after a replica could answer its first request is answered.

``python -m loadtests.replica [--listen-after S] [--jitter J] -- <model_server.py arguments>``
runs examples/model_server.py in this process with every log line prefixed by the wall-clock
time, so its ``ready on …`` line says when it could first answer. ``--listen-after S`` waits S
seconds before the server starts, so it listens only once "loaded", as KServe's ModelServer does
(the reference server's own ``--startup-delay`` listens at once and answers 503 until loaded).
``--jitter J`` adds a random 0 to J seconds before that, as real loading times vary: a start-up
time always the same would always meet a periodic probe at the same moment.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import time
from pathlib import Path

SERVER = Path(__file__).resolve().parents[1] / "examples" / "model_server.py"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.replica")
    parser.add_argument("--listen-after", type=float, default=0.0)
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("server_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    spec = importlib.util.spec_from_file_location("model_server", SERVER)
    assert spec is not None and spec.loader is not None
    server = importlib.util.module_from_spec(spec)
    sys.modules["model_server"] = server  # its dataclasses look their module up
    spec.loader.exec_module(server)

    def log(message: str) -> None:
        print(f"{time.time():.6f} {message}", file=sys.stderr, flush=True)

    server.log = log  # type: ignore[attr-defined]
    time.sleep(args.listen_after + random.uniform(0, args.jitter))
    server.main([a for a in args.server_args if a != "--"])


def ready_at(log: Path) -> float | None:
    """When a replica run by this module said it was ready (Unix time), from its log."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        stamp, _, message = line.partition(" ")
        if message.startswith("ready on "):
            return float(stamp)
    return None


if __name__ == "__main__":
    main(sys.argv[1:])
