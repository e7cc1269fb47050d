"""``sluice status``: one row per revision and a line per rollout, from the controller's API.

A client of the controller's loopback /status only: it imports nothing of the server side, so
it starts at once. It finds the controller as ``sluice rollout`` does (autoscaler/rollouts/
locate.py): ``--url``, else the stack file's controller (``-f``).
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

from autoscaler.rollouts import locate

COLUMNS = ("service", "name", "weight", "desired", "ready", "rps", "inflight", "p99_ms",
           "buffered", "conditions")
DECIMALS = ("rps", "p99_ms")
"""Columns shown to one decimal: rps over 6 s, p99 over the last minute (ms)."""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sluice status", description="per-revision status")
    parser.add_argument("-f", "--file", type=Path, help="stack YAML (for the controller address)")
    parser.add_argument("--url", help="the controller: host:port or a URL such as "
                                      f"http://{locate.DEFAULT_CONTROLLER} (default: from the "
                                      f"file, else ${locate.ENV}, else that)")
    parser.add_argument("--json", action="store_true", help="print JSON once")
    parser.add_argument("--once", action="store_true", help="print the table once")
    args = parser.parse_args(argv)
    try:
        url = locate.controller(args.url, args.file) + "/status"
    except locate.NotFound as error:
        print(f"sluice status: {error}", file=sys.stderr)
        return 2
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
        print(render(document["revisions"], document.get("rollouts", []),
                     document.get("router")))
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


def render(rows: list[dict[str, Any]], rollouts: Sequence[dict[str, Any]] = (),
           router: dict[str, Any] | None = None) -> str:
    """The router's health, a row per revision (rps to 0.1, p99 to 0.1 ms over the last minute),
    then a line per rollout."""
    def cell(row: dict[str, Any], column: str) -> str:
        value = row[column]
        if column == "conditions":
            return ", ".join(value) or "-"
        if value is None:
            return "-"
        return f"{value:.1f}" if column in DECIMALS else str(value)

    table = [list(COLUMNS)] + [[cell(row, c) for c in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS) - 1)]
    lines = [] if router is None else [router_line(router)]
    lines += ["  ".join([*(v.ljust(w) for v, w in zip(line, widths, strict=False)), line[-1]])
              for line in table]
    lines += [f"rollout {r['service']}: {r['phase']}, step {r['step']}/{r['steps']}, "
              f"{r['canary_revision']} at {r['canary_weight']} % ({r['reason']})"
              for r in rollouts]
    return "\n".join(lines)


def router_line(router: dict[str, Any]) -> str:
    restarts = f"{router['restarts']} restart{'' if router['restarts'] == 1 else 's'}"
    if router["state"] == "serving":
        return f"router {router['url']}: serving (pid {router['pid']}, {restarts})"
    last = f"; last exit: {router['last_exit']}" if router.get("last_exit") else ""
    return f"router {router['url']}: {router['state']} ({restarts}{last})"
