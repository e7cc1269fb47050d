"""``sluice rollout``: start, watch and steer canary rollouts on a running ``sluice up``.

::

    sluice rollout start -f rollout.yaml      # a RolloutPolicy, or a Rollout resource (spec)
    sluice rollout status [SERVICE] [--json]  # phase, step, weights, reason, last verdicts
    sluice rollout promote|abort|pause|resume SERVICE
    sluice rollout restore SERVICE            # after it ended: the weights from before it

The controller is the one of the stack file given with ``-f`` (before the command:
``sluice rollout -f examples/local.yaml status``), or at ``--controller`` (host:port or a URL),
else $SLUICE_CONTROLLER, else 127.0.0.1:8082 (autoscaler/rollouts/locate.py). Writes send the
token ``sluice up`` wrote for that controller (autoscaler/rollouts/token.py), or the one in
``--token-file`` or $SLUICE_CONTROLLER_TOKEN. A file that is not a valid rollout
exits 2 naming the field, before anything is sent; so does a rollout the controller refuses as
invalid (400). Other refusals (409: one is already running) and an unreachable controller
exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from autoscaler.rollouts import locate, token
from policies import rollout, validation

TIMEOUT_S = 30.0
"""A command is answered once applied (the API waits up to 15 s for it)."""
MAX_FILE_BYTES = 1 << 20
# Proxy settings from the environment must never apply to the loopback controller.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Refused(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", f"HTTP {status}"))
        self.status = status
        self.body = body


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sluice rollout", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-f", "--stack", type=Path, metavar="FILE",
                       help="the stack file of the `sluice up` to steer (its controller.listen)")
    where.add_argument("--controller", metavar="ADDRESS",
                       help=f"the controller's host:port or URL (default: ${locate.ENV}, else "
                            f"{locate.DEFAULT_CONTROLLER})")
    parser.add_argument("--token-file", type=Path,
                        help=f"the write token (default: ${token.ENV}, else the file "
                             "`sluice up` wrote for this controller)")
    commands = parser.add_subparsers(dest="action", required=True)
    start = commands.add_parser("start", help="start a rollout from a file")
    start.add_argument("-f", "--file", type=Path, required=True, help="rollout YAML or JSON")
    status = commands.add_parser("status", help="show rollouts and their last verdicts")
    status.add_argument("service", nargs="?")
    status.add_argument("--json", action="store_true", help="print the API's JSON")
    status.add_argument("--verdicts", type=int, default=5, help="verdicts shown (default 5)")
    for command in rollout.Command:
        steer = commands.add_parser(command.value, help=f"{command.value} a service's rollout")
        steer.add_argument("service")
    restore = commands.add_parser(rollout.RESTORE, help="after a rollout ended (aborted, rolled "
                                  "back, promoted): give its service's revisions the weights "
                                  "they had before it, none parked")
    restore.add_argument("service")
    args = parser.parse_args(argv)
    try:
        base = locate.controller(args.controller, args.stack)
    except locate.NotFound as error:
        print(f"sluice rollout: {error}", file=sys.stderr)
        return 2
    try:
        if args.action == "status":
            return _status(base, args)
        secret = token.find(locate.listen_of(base), args.token_file)
        if args.action == "start":
            try:
                body = _policy_document(args.file)
            except validation.Invalid as error:
                _problems(f"invalid {args.file}", error.problems)
                return 2
            shown = _request("POST", f"{base}/rollouts", secret, body)
        else:
            shown = _request("POST", f"{base}/rollouts/{args.service}/{args.action}", secret)
    except token.TokenNotFound as error:
        print(f"sluice rollout: {error}", file=sys.stderr)
        return 1
    except Refused as error:
        _problems(f"refused ({error.status}): {error}", error.body.get("problems", []))
        return 2 if error.status == 400 else 1
    except OSError as error:
        print(f"sluice rollout: cannot reach the controller at {base}: {error}", file=sys.stderr)
        return 1
    if args.action == rollout.RESTORE:
        weights = ", ".join(f"{name} {weight} %" for name, weight in shown["weights"].items())
        print(f"{args.service}: restored the weights from before the rollout: {weights}")
        return 0
    print(render([shown], verdicts=3))
    return 0


def _policy_document(path: Path) -> Any:
    """The file's document, checked here so that a bad file names its field before sending."""
    try:
        with path.open("rb") as file:
            data = yaml.safe_load(file.read(MAX_FILE_BYTES))
    except OSError as error:
        raise validation.Invalid.field("(file)", str(error)) from None
    except yaml.YAMLError as error:
        raise validation.Invalid.field("(file)", f"not YAML: {error}") from None
    rollout.parse_document(data)
    return data


def _status(base: str, args: argparse.Namespace) -> int:
    verdicts = max(0, min(args.verdicts, rollout.HISTORY_LIMIT))
    path = f"/rollouts/{args.service}" if args.service else "/rollouts"
    try:
        answer = _request("GET", f"{base}{path}?verdicts={verdicts}")
    except Refused as error:
        _problems(f"{error}", error.body.get("problems", []))
        return 1
    except OSError as error:
        print(f"sluice rollout: cannot reach the controller at {base}: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    shown = [answer] if args.service else answer["rollouts"]
    print(render(shown, verdicts) if shown else "no rollouts")
    return 0


def _request(method: str, url: str, token: str | None = None, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=TIMEOUT_S) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        try:
            answer = json.loads(error.read(MAX_FILE_BYTES))
        except ValueError:
            answer = {}
        raise Refused(error.code, answer if isinstance(answer, dict) else {}) from None


def _problems(headline: str, problems: list[Any]) -> None:
    print(f"sluice rollout: {headline}", file=sys.stderr)
    for problem in problems:
        print(f"  {problem.get('field')}: {problem.get('reason')}", file=sys.stderr)


def render(shown: list[dict[str, Any]], verdicts: int = 5) -> str:
    """A table of rollouts, each followed by its last verdicts and their reasons."""
    header = ("SERVICE", "PHASE", "STEP", "CANARY", "WEIGHT", "STABLE", "ELAPSED", "REASON")
    rows = [header] + [(
        r["service"], r["phase"], f"{r['step']}/{r['steps']}", r["canary_revision"],
        f"{r['canary_weight']} %", f"{r['stable_revision']} {r['stable_weight']} %",
        f"{r['elapsed_s']:.0f} s", r["reason"]) for r in shown]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join([*(v.ljust(w) for v, w in zip(row, widths, strict=False)),
                                row[-1]]))
        if index == 0 or verdicts <= 0:
            continue
        for verdict in shown[index - 1]["verdicts"][-verdicts:]:
            at = time.strftime("%H:%M:%S", time.localtime(verdict["at"]))
            lines.append(f"    {at} +{verdict['elapsed_s']:.0f} s  step {verdict['step']} at "
                         f"{verdict['canary_weight']} %  {verdict['outcome']}: "
                         f"{verdict['reason']}")
    return "\n".join(lines)
