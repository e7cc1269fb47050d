"""``sluice loadtest``: run a scenario's load, watch the system meanwhile, judge, report.

::

    sluice loadtest --list                                   # the bundled scenarios
    sluice loadtest step --stack examples/loadtest.yaml      # against `sluice up -f` that file
    sluice loadtest ./my-step.yaml --host http://10.1.2.3 --kubeconfig ~/.kube/config -n prod

The load is Locust, headless, as a subprocess on loadtests/locustfile.py (Locust patches the
process that imports it with gevent), bounded by the scenario's phases and its user counts.
Meanwhile an observer (observe.py) samples the system: locally the controller's /status and
rollouts and the router's /stats (addresses from ``--stack``, or ``--controller`` and
``--router-admin``); on Kubernetes the ScalingPolicy and Rollout status and Events of ``-n``.
A canary scenario starts its rollout through the same observer. Then every expectation is
judged (expectations.py), the results are printed, and one self-contained HTML report is
written (report.py), with the results as JSON beside it.

Exit status: 0 when every expectation is met; 1 when one is not, or could not be judged; 2 when
nothing could be judged: invalid scenario or options, a wait before the load that never ended,
Locust failing, or a rollout the system refused.

The host is whatever the user names. This project's tests load only 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadtests import expectations, observe, record, report, run, scenario


class RunError(RuntimeError):
    """The run could not be made; the message says why."""


class Sampler:
    """observer.sample() every `period_s` on a thread, until stopped."""

    def __init__(self, observer: observe.Observer, period_s: float) -> None:
        self.observer = observer
        self.period_s = period_s
        self.samples: list[observe.Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sluice-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.observer.sample())  # how things stand once the load is done

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.samples.append(self.observer.sample())
            self._stop.wait(max(0.0, self.period_s - (time.monotonic() - began)))

    def latest(self) -> observe.Sample | None:
        return self.samples[-1] if self.samples else None


def execute(plan: scenario.Scenario, host: str, observer: observe.Observer, *,
            sample_s: float, target: str = "",
            say: Callable[[str], None] = lambda _: None) -> record.Run:
    """Wait for the scenario's precondition, run its load while sampling (starting its
    rollout), and return the record. Raises RunError, run.LoadRunError or ObserverError."""
    policies = observer.policies()
    if plan.wait_before is not None:
        _wait_before(plan, observer, sample_s, say)
    with tempfile.TemporaryDirectory(prefix="sluice-loadtest-") as scratch:
        started_file, stop_file = Path(scratch) / "started", Path(scratch) / "stop"
        summary_path = Path(scratch) / "summary.json"
        env = {**plan.locust_env(), "SLUICE_SCENARIO": "",  # this plan, not one in the env
               "SLUICE_STARTED_FILE": str(started_file), "SLUICE_STOP_FILE": str(stop_file)}
        summaries: list[dict[str, object]] = []
        errors: list[Exception] = []

        def load() -> None:
            try:
                summaries.append(run.locust(host, plan.schedule(), plan.seconds, env=env,
                                            summary_path=summary_path,
                                            stop_timeout_s=plan.users.timeout_seconds))
            except Exception as error:  # handed to the main thread, raised there
                errors.append(error)

        rollout_started_at = None
        with Sampler(observer, sample_s) as sampler:
            loader = threading.Thread(target=load, name="sluice-locust", daemon=True)
            loader.start()
            try:
                if plan.rollout is not None:
                    rollout_started_at = _drive_rollout(plan.rollout, observer, sampler, loader,
                                                        started_file, stop_file, say)
            finally:
                if rollout_started_at is None and plan.rollout is not None:
                    stop_file.touch()  # the rollout was refused: end the load now
                loader.join()
    if errors:
        raise errors[0]
    return record.Run(scenario=plan, client=record.Client.from_summary(summaries[0]),
                      samples=tuple(sampler.samples), policies=policies,
                      rollout_started_at=rollout_started_at, target=target)


def _wait_before(plan: scenario.Scenario, observer: observe.Observer, sample_s: float,
                 say: Callable[[str], None]) -> None:
    wait = plan.wait_before
    assert wait is not None
    revision = wait.revision or plan.revision
    say(f"waiting up to {wait.timeout_seconds:g} s for {revision} to have "
        f"{wait.ready_replicas} ready replicas")
    deadline = time.monotonic() + wait.timeout_seconds
    while True:
        sample = observer.sample()
        state = sample.revisions.get(revision)
        if state is not None and state.ready == wait.ready_replicas:
            return
        if time.monotonic() > deadline:
            seen = (f"{state.ready} ready" if state is not None
                    else f"not reported ({'; '.join(sample.problems) or 'no such revision'})")
            raise RunError(f"waitBefore: {revision} still {seen} after {wait.timeout_seconds:g} "
                           f"s; the scenario starts at {wait.ready_replicas} ready replicas")
        time.sleep(sample_s)


def _drive_rollout(spec: scenario.Rollout, observer: observe.Observer, sampler: Sampler,
                   loader: threading.Thread, started_file: Path, stop_file: Path,
                   say: Callable[[str], None]) -> float | None:
    """Start the rollout `start_at_seconds` into the load; end the load after it ends if the
    scenario says so. Returns when it was started (wall clock), None if the load ended first."""
    while not started_file.exists():
        if not loader.is_alive():
            return None
        time.sleep(0.05)
    start_at = float(started_file.read_text()) + spec.start_at_seconds
    while time.time() < start_at:
        if not loader.is_alive():
            return None
        time.sleep(min(0.1, max(0.0, start_at - time.time())))
    say(f"starting the rollout of {spec.policy.canary_revision}")
    started = observer.start_rollout(spec.policy)
    if spec.end_load_after_seconds is None:
        return started
    while loader.is_alive():
        latest = sampler.latest()
        if (latest is not None and latest.at > started and latest.rollout is not None
                and latest.rollout.phase in expectations.TERMINAL_PHASES):
            say(f"the rollout ended {latest.rollout.phase}; the load ends in "
                f"{spec.end_load_after_seconds:g} s")
            time.sleep(spec.end_load_after_seconds)
            stop_file.touch()
            break
        time.sleep(0.1)
    return started


@dataclass(frozen=True)
class Target:
    """What the options point at: the observer, the host to load, and how to describe them."""

    observer: observe.Observer
    host: str
    description: str
    sample_s: float
    """Seconds between observations by default: the controller's status is cheap locally; an
    apiserver is shared, and the Kubernetes controller writes status once per tick anyway."""


def _target(args: argparse.Namespace, plan: scenario.Scenario) -> Target:
    router_admin = args.router_admin
    if args.kubeconfig is not None or args.namespace is not None:
        from loadtests import kube_observer  # the kubernetes client only when asked for

        host = args.host or "http://127.0.0.1:8080"
        kube = kube_observer.KubernetesObserver.from_kubeconfig(
            args.kubeconfig, args.context, args.namespace or "default", plan.service,
            router_admin=router_admin)
        return Target(kube, host, f"{host}, observed in namespace {kube.namespace} "
                                  f"({args.kubeconfig or 'default kubeconfig'})", 2.0)
    controller, host = args.controller, args.host
    policies = {}
    if args.stack is not None:
        stack = observe.LocalStack.load(args.stack)
        if plan.service not in stack.policies:
            raise observe.ObserverError(f"{args.stack} has no service {plan.service!r}, the "
                                        "scenario's service")
        policies = stack.policies[plan.service]
        controller = controller or stack.controller
        router_admin = router_admin or stack.router_admin
        host = host or f"http://{stack.router}"
    # Without a stack file: the addresses `sluice up` listens on by default.
    controller = controller or "127.0.0.1:8082"
    router_admin = router_admin or "127.0.0.1:8081"
    host = host or "http://127.0.0.1:8080"
    local = observe.LocalObserver(plan.service, controller, router_admin, policies,
                                  token_file=args.token_file)
    return Target(local, host, f"{host}, observed at controller {controller}, router admin "
                               f"{router_admin}", 0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sluice loadtest", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a load scenario, judge its expectations, write an HTML report.",
        epilog="Exit 0: every expectation met; 1: one failed or could not be judged; 2: the "
               "run could not be made (invalid scenario or options, waitBefore timed out, "
               "Locust failed, rollout refused). Scenarios: loadtests/scenarios/*.yaml.")
    parser.add_argument("scenario", nargs="?", help="a scenario file, or a bundled one's name")
    parser.add_argument("--list", action="store_true", help="list the bundled scenarios")
    parser.add_argument("--host", help="where the load goes: the router's URL (default: the "
                                       "stack's router, else http://127.0.0.1:8080)")
    parser.add_argument("--duration-scale", type=float, default=1.0, help=(
        "multiply the scenario's phase durations by this (0.25: a quarter-length run); "
        "reaction-time bounds are not scaled"))
    parser.add_argument("--report", type=Path, help="the HTML report (default "
                                                    "sluice-loadtest-<scenario>-<time>.html)")
    parser.add_argument("--sample-seconds", type=float, help="seconds between observations "
                                                             "(default 0.5 local, 2 Kubernetes)")
    local = parser.add_argument_group("a local stack (sluice up)")
    local.add_argument("--stack", type=Path, help="the stack file: addresses and policies")
    local.add_argument("--controller", help="the controller's HOST:PORT (default 127.0.0.1:8082)")
    local.add_argument("--token-file", type=Path,
                       help="the controller's write token, for a rollout (default: the file "
                            "`sluice up` wrote)")
    parser.add_argument("--router-admin", help="the router's admin URL, for its counts "
                                               "(default 127.0.0.1:8081 locally)")
    kube = parser.add_argument_group("Kubernetes")
    kube.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: the usual)")
    kube.add_argument("--context", help="kubeconfig context")
    kube.add_argument("-n", "--namespace", help="the namespace of the ScalingPolicies")
    args = parser.parse_args(argv)
    if args.list:
        for name in scenario.bundled():
            described = scenario.load(name).description.strip().splitlines()
            print(f"{name:<16} {described[0] if described else ''}")
        return 0
    if args.scenario is None:
        parser.error("name a scenario (--list shows the bundled ones)")
    if args.sample_seconds is not None and not 0.05 <= args.sample_seconds <= 60:
        parser.error(f"--sample-seconds {args.sample_seconds:g} is not in [0.05, 60]")
    if importlib.util.find_spec("locust") is None:
        print("sluice loadtest: Locust is not installed: pip install 'sluice[loadtest]'",
              file=sys.stderr)
        return 2
    try:
        plan = scenario.load(args.scenario, args.duration_scale)
    except scenario.ScenarioError as error:
        print(f"sluice loadtest: invalid scenario {args.scenario}:", file=sys.stderr)
        for field, reason in error.problems:
            print(f"  {field}: {reason}", file=sys.stderr)
        return 2

    def say(message: str) -> None:
        print(f"sluice loadtest: {message}", file=sys.stderr, flush=True)

    try:
        target = _target(args, plan)
    except observe.ObserverError as error:
        say(str(error))
        return 2
    path = args.report or Path(
        f"sluice-loadtest-{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}.html")
    say(f"{plan.name}: {plan.seconds:g} s of load on {target.description}")
    try:
        done = execute(plan, target.host, target.observer,
                       sample_s=args.sample_seconds or target.sample_s,
                       target=target.description, say=say)
    except (RunError, run.LoadRunError, observe.ObserverError) as error:
        say(str(error))
        return 2
    finally:
        with contextlib.suppress(Exception):
            target.observer.close()
    results = expectations.judge(done)
    path.write_text(report.render(done, results, args.duration_scale))
    path.with_suffix(".json").write_text(json.dumps(report.as_json(done, results), indent=2)
                                         + "\n")
    print(table(results))
    passed = expectations.passed(results)
    say(f"{'PASSED' if passed else 'FAILED'}; report {path}")
    return 0 if passed else 1


def table(results: list[expectations.Result]) -> str:
    """One line per result (outcome, expectation, observed, bound), then its reason."""
    lines = []
    for result in results:
        observed = ("—" if result.observed is None else
                    f"{result.observed:g} {result.unit}".strip()
                    if isinstance(result.observed, int | float) else result.observed)
        lines.append(f"{str(result.outcome).upper():<7} {result.expectation}: observed "
                     f"{observed}, bound {result.bound or '—'}")
        lines.append(f"        {result.reason}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
