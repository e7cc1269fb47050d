"""``sluice status``: one row per revision and a line per rollout, from the controller's API.

A client of the controller's loopback /status only: it imports nothing of the server side, so
it starts at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoscaler.local import stack

COLUMNS = ("service", "name", "weight", "desired", "ready", "rps", "inflight", "p99_ms",
           "buffered", "conditions")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sluice status", description="per-revision status")
    parser.add_argument("-f", "--file", type=Path, help="stack YAML (for the controller address)")
    parser.add_argument("--url", help="controller status URL (default from the file, or "
                                      "http://127.0.0.1:8082)")
    parser.add_argument("--json", action="store_true", help="print JSON once")
    parser.add_argument("--once", action="store_true", help="print the table once")
    args = parser.parse_args(argv)
    url = args.url
    if url is None:
        listen = stack.ControllerSpec().listen
        if args.file is not None:
            try:
                listen = stack.load(args.file).controller.listen
            except ValueError as error:
                print(f"sluice status: invalid {args.file}:\n{error}", file=sys.stderr)
                return 2
        url = f"http://{listen}/status"
    live = not (args.json or args.once) and sys.stdout.isatty()
    while True:
        try:
            document = _fetch(url)
        except OSError as error:
            print(f"sluice status: cannot reach the controller at {url}: {error}",
                  file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(document, indent=2))
            return 0
        if live:
            print("\x1b[H\x1b[2J", end="")
        print(render(document["revisions"], document.get("rollouts", [])))
        if not live:
            return 0
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(1)
            continue
        return 0


def _fetch(url: str) -> dict[str, Any]:
    import urllib.request
    with urllib.request.urlopen(url, timeout=5) as response:
        document: dict[str, Any] = json.load(response)
        return document


def render(rows: list[dict[str, Any]], rollouts: Sequence[dict[str, Any]] = ()) -> str:
    def cell(row: dict[str, Any], column: str) -> str:
        value = row[column]
        if column == "conditions":
            return ", ".join(value) or "-"
        return "-" if value is None else str(value)

    table = [list(COLUMNS)] + [[cell(row, c) for c in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join([*(v.ljust(w) for v, w in zip(line, widths, strict=False)), line[-1]])
             for line in table]
    lines += [f"rollout {r['service']}: {r['phase']}, step {r['step']}/{r['steps']}, "
              f"{r['canary_revision']} at {r['canary_weight']} % ({r['reason']})"
              for r in rollouts]
    return "\n".join(lines)
