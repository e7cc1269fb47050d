"""Run a load scenario against a router on loopback and get its per-revision outcome back.

The autoscaler and rollout end-to-end tests drive traffic with Locust, but Locust monkey-patches
the process that imports it with gevent, which must not happen to pytest or the asyncio code. So
`run_locust` starts Locust headless as a subprocess on loadtests/locustfile.py, hands it the
schedule through the environment (shapes.py), and reads back the JSON summary the locustfile
writes at test stop. This module itself never imports Locust.

Only loopback targets are allowed: load is generated on the machine it measures, and this
workplace forbids sending it anywhere else, so a host that is not a literal 127.0.0.0/8 address
is a ValueError before anything starts.

By hand, from the repository root::

    python3 -m loadtests.run --host http://127.0.0.1:8080 --shape Constant --users 10 \\
        --user-rps 3 --seconds 60
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from loadtests import shapes

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
STARTUP_AND_SHUTDOWN_S = 30.0
"""Added to the run's length for the subprocess timeout: Locust's imports, the first shape tick,
stopping the users and writing the summary. Generous, because a timeout means a hung run."""


class LoadRunError(RuntimeError):
    """Locust failed, hung or wrote no summary; the message ends with its output."""


@dataclass(frozen=True)
class Outcome:
    """Requests, failures and latency of one revision, or of the whole run."""

    requests: int
    failures: int
    status_codes: dict[int, int]
    p50_ms: float | None
    p99_ms: float | None

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        return cls(requests=data["requests"], failures=data["failures"],
                   status_codes={int(code): n for code, n in data["status_codes"].items()},
                   p50_ms=data["latency_ms"]["p50"], p99_ms=data["latency_ms"]["p99"])


@dataclass(frozen=True)
class Summary(Outcome):
    """The whole run, and the same per revision (from X-Sluice-Revision; see locustfile.py)."""

    revisions: dict[str, Outcome]

    @property
    def requests_by_revision(self) -> dict[str, int]:
        return {name: outcome.requests for name, outcome in self.revisions.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Summary:
        revisions = {name: Outcome.from_json(r) for name, r in data["revisions"].items()}
        return cls(**asdict(Outcome.from_json(data)), revisions=revisions)


def require_loopback(host: str) -> None:
    """Raise ValueError unless `host` is an http(s) URL on a literal 127.0.0.0/8 address.

    Names are refused, "localhost" too: what they resolve to is not this function's to check.
    """
    parts = urllib.parse.urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"host {host!r}: expected http://127.x.x.x[:port]")
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        raise ValueError(f"host {host!r}: a name is not allowed, use a 127.x.x.x address") from None
    if address.version != 4 or not address.is_loopback:
        raise ValueError(f"host {host!r}: load may only go to loopback (127.0.0.0/8)")


def run_locust(host: str, shape: shapes.Schedule, seconds: float, *,
               env: Mapping[str, str] | None = None,
               summary_path: Path | None = None) -> Summary:
    """Run `shape` against `host` for at most `seconds` and return what the requests met.

    `env` adds to this process's environment for Locust (SLUICE_MODEL, SLUICE_USER_RPS, the
    task weights, SLUICE_STICKY_USERS: see locustfile.py); the schedule, the run length and the
    summary path are set from the arguments and win. The JSON summary is kept at `summary_path`
    if given (for offline analysis), else in a temporary directory. The shape stops the run at
    `seconds` (shapes.tick_at); the subprocess is killed if it is still alive
    STARTUP_AND_SHUTDOWN_S later. Failed requests do not make this raise: they are in the
    Summary. LoadRunError means Locust itself failed.
    """
    require_loopback(host)
    return Summary.from_json(locust(host, shape, seconds, env=env, summary_path=summary_path))


def locust(host: str, shape: shapes.Schedule, seconds: float, *,
           env: Mapping[str, str] | None = None, summary_path: Path | None = None,
           stop_timeout_s: float | None = None) -> dict[str, Any]:
    """Locust headless on locustfile.py against any `host`; its JSON summary.

    As `run_locust`, without the loopback check: `sluice loadtest` loads the host its user
    names; tests go through `run_locust`. With `stop_timeout_s`, users being stopped finish
    the request they are in (up to that long) instead of being killed mid-request, so every
    request sent is answered or failed in the summary.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    with tempfile.TemporaryDirectory(prefix="sluice-load-") as scratch:
        path = summary_path or Path(scratch) / "summary.json"
        path.unlink(missing_ok=True)  # never mistake an older run's summary for this one's
        locust_env = {**os.environ, **(env or {}), **shape.to_env(),
                      "SLUICE_RUN_SECONDS": str(seconds), "SLUICE_LOAD_SUMMARY": str(path)}
        # --exit-code-on-error 0: failed requests are results, so a non-zero exit is a crash.
        argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
                "--host", host, "--only-summary", "--exit-code-on-error", "0"]
        if stop_timeout_s is not None:
            argv += ["--stop-timeout", f"{stop_timeout_s:g}"]
        try:
            # cwd: Locust puts it on sys.path, which makes `loadtests` importable there.
            done = subprocess.run(argv, cwd=ROOT, env=locust_env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True,
                                  timeout=seconds + STARTUP_AND_SHUTDOWN_S + (stop_timeout_s or 0))
        except subprocess.TimeoutExpired as expired:
            raise LoadRunError(_describe(f"still running after {expired.timeout:.0f}s; killed",
                                         expired.stdout, expired.stderr)) from None
        if done.returncode != 0:
            raise LoadRunError(_describe(f"exited with {done.returncode}", done.stdout,
                                         done.stderr))
        if not path.exists():
            raise LoadRunError(_describe(f"wrote no summary to {path}", done.stdout, done.stderr))
        summary: dict[str, Any] = json.loads(path.read_text())
        return summary


def _describe(problem: str, stdout: str | bytes | None, stderr: str | bytes | None) -> str:
    def text(stream: str | bytes | None) -> str:
        # TimeoutExpired carries bytes even when the run asked for text.
        return stream.decode(errors="replace") if isinstance(stream, bytes) else stream or ""

    return f"locust {problem}\n--- output ---\n{(text(stdout) + text(stderr))[-8000:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run",
                                     description="Run a load scenario; print its JSON summary.")
    parser.add_argument("--host", required=True, help="router URL, e.g. http://127.0.0.1:8080")
    # Phases come from scenario files: `sluice loadtest`.
    parser.add_argument("--shape", choices=sorted(set(shapes.SCHEDULES) - {"Phases"}),
                        default="Constant")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--user-rps", type=float, default=1.0,
                        help="requests per second per user; the target is users x this")
    parser.add_argument("--seconds", type=float, required=True, help="hard end of the run")
    parser.add_argument("--ramp-seconds", type=float, help="RampFromZero: time to reach --users")
    parser.add_argument("--idle-seconds", type=float, help="Step: time with no users first")
    parser.add_argument("--hold-seconds", type=float, help="Step: time at --users")
    parser.add_argument("--model", default="model")
    parser.add_argument("--sticky-users", action="store_true", help="send X-User-Id: user-<n>")
    parser.add_argument("--summary", type=Path, help="also keep the JSON summary here")
    args = parser.parse_args(argv)
    try:
        require_loopback(args.host)
    except ValueError as error:
        parser.error(str(error))
    schedule = shapes.SCHEDULES[args.shape]
    parameters = [field.name for field in fields(schedule)]  # each is an option of the same name
    if missing := [f"--{name.replace('_', '-')}" for name in parameters
                   if getattr(args, name) is None]:
        parser.error(f"--shape {args.shape} needs {' '.join(missing)}")
    try:
        shape = schedule(**{name: getattr(args, name) for name in parameters})
    except ValueError as error:
        parser.error(f"--shape {args.shape}: {error}")
    summary = run_locust(args.host, shape, args.seconds, summary_path=args.summary, env={
        "SLUICE_MODEL": args.model, "SLUICE_USER_RPS": str(args.user_rps),
        "SLUICE_STICKY_USERS": "1" if args.sticky_users else ""})
    print(json.dumps(asdict(summary), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
