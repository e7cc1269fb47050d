"""Canary rollouts on `sluice up`: the controller's rollout API, the CLI, and the driver end to
end with Locust traffic through the real router to real model-server replicas.

The test policy is short where the statistics allow: weights 20 → 50 → 100, each step at least
5 s and 50 canary requests, a verdict every second, errors margin 2 points (so a good canary at
~16 RPS is shown within the margin in ~10 s, and a canary with 5 % errors can never be), latency
tolerance 50 %: the good canary is as fast as stable (a freshly started process is a little
slower at first), the slow one 5 times slower (200 ms against 40 ms), so what two busy cores
add to both arms (it squeezes their ratio) would have to reach ~280 ms a request to flip a
verdict. Waiting is on conditions with deadlines or on the router's counts; no assertion is
on elapsed time, but the exposure bound of the error test is computed from the recorded
verdict times (at Locust's target rate, so a slower machine only loosens it).

Locust runs in a thread (it must not patch this process) while the test polls the API.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import yaml

from loadtests import run, shapes
from tests import procs
from tests.integration.conftest import INFER, MODEL_SERVER, PAYLOAD, ROOT, call, stack_revision
from tests.integration.prometheus import Prometheus

pytestmark = pytest.mark.integration

USERS, USER_RPS = 20, 4
RPS = USERS * USER_RPS
"""Locust's target rate; closed-loop, so the rate served is at most this."""
FIRST_WEIGHT = 20
INTERVAL_S = 1


def policy(**overrides) -> dict:
    document = {
        "service": "model", "stableRevision": "v1", "canaryRevision": "v2",
        "steps": [{"weight": w, "minDurationSeconds": 5, "minRequests": 50}
                  for w in (FIRST_WEIGHT, 50, 100)],
        "analysis": {"intervalSeconds": INTERVAL_S, "failureLimit": 3},
        "slo": {"successRate": {"min": 99, "marginPoints": 2},
                "latency": {"tolerancePercent": 50}},
        "maxDurationSeconds": 300,
    }
    return {**document, **overrides}


def revisions(stable_args=(), canary_args=()) -> list[dict]:
    """v1 serving on one replica from the start; v2 at weight 0 and zero replicas."""
    return [
        stack_revision("v1", 100, command=[*MODEL_SERVER, "--revision", "v1", *stable_args],
                       metric="rps", target=100, minReplicas=1, initialScale=1),
        stack_revision("v2", 0, command=[*MODEL_SERVER, "--revision", "v2", *canary_args],
                       metric="rps", target=100),
    ]


async def until(probe, predicate, within_s: float = 90.0):
    """probe() until predicate holds for its answer; fail with the last answer after within_s."""
    deadline = time.monotonic() + within_s
    while True:
        current = probe()
        if predicate(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached; last: "
                                 f"{json.dumps(current, indent=1)[-6000:]}")
        await asyncio.sleep(0.2)


class Api:
    """The controller's rollout API and the router's admin API of one stack."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.base = f"http://{stack.controller}"
        self.admin = f"http://127.0.0.1:{stack.admin}"

    def start(self, document, token=...) -> tuple[int, dict]:
        return call("POST", self.base + "/rollouts", document,
                    self.stack.token if token is ... else token)

    def command(self, name: str, service: str = "model", token=...) -> tuple[int, dict]:
        return call("POST", f"{self.base}/rollouts/{service}/{name}",
                    token=self.stack.token if token is ... else token)

    def rollouts(self) -> list[dict]:
        return call("GET", self.base + "/rollouts")[1]["rollouts"]

    def rollout(self, verdicts: int = 100) -> dict:
        status, body = call("GET", f"{self.base}/rollouts/model?verdicts={verdicts}")
        assert status == 200, body
        return body

    async def wait(self, predicate, within_s: float = 90.0) -> dict:
        return await until(self.rollout, predicate, within_s)

    def weights(self) -> dict[str, int]:
        routes = call("GET", self.admin + "/routes")[1]
        return {r["name"]: r["weight"] for r in routes["services"]["model"]["revisions"]}

    def stats(self) -> dict[str, dict]:
        """The router's per-revision stats: request counts, in flight, buffered."""
        return {r["revision"]: r for r in call("GET", self.admin + "/stats")[1]["revisions"]}

    def served(self) -> dict[str, dict]:
        """The router's per-revision request counts."""
        return {name: row["requests"] for name, row in self.stats().items()}


def sluice(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoscaler.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, env={**os.environ, **(env or {})})


class Load:
    """Locust at RPS in a thread until stop(); the summary is what every request met."""

    def __init__(self, stack, tmp_path: Path) -> None:
        self.stop_file = tmp_path / "stop-load"
        self._run = asyncio.create_task(asyncio.to_thread(
            run.run_locust, stack.url, shapes.Constant(users=USERS), 150,
            env={"SLUICE_USER_RPS": str(USER_RPS), "SLUICE_STOP_FILE": str(self.stop_file)}))

    async def stop(self) -> run.Summary:
        """Ends at Locust's next shape tick; run_locust bounds the whole run."""
        self.stop_file.touch()
        return await self._run


def started(api: Api, document: dict) -> dict:
    status, body = api.start(document)
    assert status == 201, body
    return body


def first_traffic_at(rollout: dict) -> float:
    """When the canary got its first weight (seconds since the rollout started)."""
    return next(t["elapsed_s"] for t in rollout["transitions"] if t["canary_weight"] > 0)


async def run_until_ended(stack, tmp_path, document) -> tuple[Api, dict, run.Summary, dict]:
    """Load, a rollout to its end, then load on for a moment with the final weights."""
    api = Api(stack)
    stack.wait_for(lambda s: s["v1"]["ready"] == 1)
    load = Load(stack, tmp_path)
    try:
        await until(api.served, lambda served: served["v1"]["total"] >= RPS, 30)  # Locust is on
        started(api, document)
        ended = await api.wait(lambda r: r["phase"] in ("Promoted", "RolledBack", "Failed"))
        weights = api.weights()
        assert weights == {"v1": ended["stable_weight"], "v2": ended["canary_weight"]}
        # The requests the revision left without weight had in flight are answered (the
        # router's count says so); from then on, what reaches which revision, for as many
        # requests as a second of the load: weight 0 gets none of them.
        idle = [name for name, weight in weights.items() if weight == 0]
        await until(api.stats, lambda rows: all(rows[name]["inflight"] == rows[name][
            "buffered"] == 0 for name in idle))
        before = api.served()
        await until(api.served, lambda now: sum(now[name]["total"] - before[name]["total"]
                                                for name in now) >= RPS)
        after = api.served()
    finally:
        summary = await load.stop()
    return api, ended, summary, {name: after[name]["total"] - before[name]["total"]
                                 for name in after}


# -- the API and the CLI, no load ----------------------------------------------------------------


async def test_rollout_api_checks_auth_and_input_and_steers_a_rollout(start_stack, tmp_path):
    stack = start_stack(revisions())
    api = Api(stack)
    stack.wait_for(lambda s: s["v1"]["ready"] == 1)
    token_file = stack.run_dir / "controller.token"
    well_known = tmp_path / "xdg" / "sluice" / f"controller-{stack.status_port}.token"
    for path in (token_file, well_known):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() == stack.token
    assert stack.token not in stack.proc.output()

    # Refused writes change nothing.
    for token in (None, "wrong"):
        status, body = api.start(policy(), token=token)
        assert status == 401, body
        assert api.command("abort", token=token)[0] == 401
    status, body = api.start(policy(steps=[{"weight": 50}, {"weight": 20}, {"weight": 100}]))
    assert status == 400
    assert {"field": "steps.1.weight",
            "reason": "must exceed the previous step's weight (50)"} in body["problems"]
    status, body = api.start(policy(canaryRevision="v9"))
    assert (status, body["problems"][0]["field"]) == (400, "canaryRevision")
    assert "no revision 'v9'" in body["problems"][0]["reason"]
    status, body = api.start(policy(service="other"))
    assert (status, body["problems"][0]["field"]) == (400, "service")
    status, body = api.start(policy(slo={"custom": [{"name": "up", "query": "sum(up)",
                                                     "min": 1}]}))
    assert (status, body["problems"][0]["field"]) == (400, "slo.custom")
    status, body = call("POST", api.base + "/rollouts", data=b"{not json",
                        token=stack.token)
    assert status == 400 and body["problems"][0]["field"] == "(body)"
    status, _ = call("POST", api.base + "/rollouts", data=b" " * (65 * 1024), token=stack.token)
    assert status == 413
    assert api.rollouts() == []
    assert api.weights() == {"v1": 100, "v2": 0}

    # One rollout per service; commands are applied before the answer.
    first = started(api, policy())
    assert first["phase"] in ("Pending", "Progressing")
    status, body = api.start(policy())
    assert (status, body["problems"][0]["field"]) == (409, "service")
    await api.wait(lambda r: r["phase"] == "Progressing" and r["canary_weight"] == FIRST_WEIGHT)
    assert api.weights() == {"v1": 100 - FIRST_WEIGHT, "v2": FIRST_WEIGHT}
    status, paused = api.command("pause")
    assert (status, paused["phase"], paused["reason"]) == (200, "Paused", "paused by a person")
    status, resumed = api.command("resume")
    assert (status, resumed["phase"]) == (200, "Progressing")
    assert api.command("explode")[0] == 400
    assert api.command("abort", service="nothing")[0] == 404
    status, aborted = api.command("abort")
    assert (status, aborted["phase"], aborted["reason"]) == (200, "RolledBack",
                                                             "aborted by a person")
    assert api.weights() == {"v1": 100, "v2": 0}
    assert api.command("resume")[0] == 409
    parked = stack.wait_for(lambda s: s["v2"]["ready"] == 0)
    assert ("Parked: revision v2 is parked at zero replicas: its rollout was rolled back "
            "(aborted by a person)") in parked["v2"]["conditions"]

    # The CLI: a bad file names its field and sends nothing; the rest drives the same API.
    env = stack.env
    where = ["--controller", stack.controller]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(policy(analysis={"intervalSeconds": 0})))
    result = sluice("rollout", *where, "start", "-f", str(bad), env=env)
    assert result.returncode == 2, result.stderr
    assert "analysis.intervalSeconds" in result.stderr
    good = tmp_path / "rollout.yaml"
    good.write_text(yaml.safe_dump({"apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
                                    "metadata": {"name": "v2"}, "spec": policy()}))
    result = sluice("rollout", *where, "--token-file", str(tmp_path / "missing"), "start",
                    "-f", str(good), env=env)
    assert result.returncode == 1 and "no controller token" in result.stderr
    result = sluice("rollout", *where, "start", "-f", str(good), env=env)
    assert result.returncode == 0, result.stderr
    assert "model" in result.stdout
    result = sluice("rollout", *where, "start", "-f", str(good), env=env)
    assert result.returncode == 1 and "promote or abort it first" in result.stderr
    result = sluice("rollout", *where, "promote", "model", env=env)
    assert result.returncode == 0, result.stderr
    promoted = await api.wait(lambda r: r["phase"] == "Promoted")
    assert promoted["reason"] == "promotion asked for"
    assert api.weights() == {"v1": 0, "v2": 100}
    result = sluice("rollout", *where, "status", env=env)
    assert result.returncode == 0, result.stderr
    assert "Promoted" in result.stdout and "v2" in result.stdout
    shown = json.loads(sluice("rollout", *where, "status", "model", "--json", env=env).stdout)
    assert shown["phase"] == "Promoted"
    result = sluice("status", "--url", f"http://{stack.controller}/status", "--once")
    assert "rollout model: Promoted" in result.stdout


async def test_after_an_abort_restore_brings_back_the_weights_from_before(start_stack):
    stack = start_stack([
        stack_revision("v1", 90, command=[*MODEL_SERVER, "--revision", "v1"], metric="rps",
                       target=100, minReplicas=1, initialScale=1),
        stack_revision("v2", 10, command=[*MODEL_SERVER, "--revision", "v2"], metric="rps",
                       target=100, minReplicas=1, initialScale=1)])
    api = Api(stack)
    stack.wait_for(lambda s: s["v1"]["ready"] == 1 and s["v2"]["ready"] == 1)
    started(api, policy())
    await api.wait(lambda r: r["phase"] == "Progressing" and r["canary_weight"] == FIRST_WEIGHT)
    assert api.command("abort")[0] == 200
    stack.wait_for(lambda s: s["v2"]["ready"] == 0)
    async def pinned_to_v2() -> tuple[int, str | None]:
        async with aiohttp.ClientSession() as session, session.get(
                f"{stack.url}/v2/health/ready", headers={"X-Sluice-Revision": "v2"}) as response:
            return response.status, (await response.json()).get("error")

    assert await pinned_to_v2() == (503, "revision v2 is parked at zero replicas: its rollout "
                                         "was rolled back (aborted by a person)")
    assert api.weights() == {"v1": 100, "v2": 0}

    where = ["--controller", stack.controller]
    result = sluice("rollout", *where, "restore", "model", env=stack.env)

    assert result.returncode == 0, result.stderr
    assert "restored" in result.stdout
    assert api.weights() == {"v1": 90, "v2": 10}
    restored = stack.wait_for(lambda s: s["v2"]["ready"] == 1)
    assert not [c for c in restored["v2"]["conditions"] if c.startswith("Parked")]
    assert (await pinned_to_v2())[0] == 200
    result = sluice("rollout", *where, "restore", "model", env=stack.env)
    assert result.returncode == 0, "restoring twice changes nothing more"
    assert api.weights() == {"v1": 90, "v2": 10}
    # A new rollout starts from the restored weights.
    assert api.start(policy())[0] == 201


async def test_requests_pinned_to_a_parked_canary_are_answered_503_with_the_reason_at_once(
        start_stack):
    """Held for a canary that is starting, or new after it was parked: either way a 503 that
    says why as soon as it is parked, not the buffer's 504 at bufferTimeoutSeconds (10 min)."""
    stack = start_stack([
        stack_revision("v1", 100, minReplicas=1, initialScale=1, bufferTimeoutSeconds=600),
        stack_revision("v2", 0, command=[*MODEL_SERVER, "--startup-delay", "600"],
                       bufferTimeoutSeconds=600)])
    api = Api(stack)
    stack.wait_for(lambda s: s["v1"]["ready"] == 1)
    started(api, policy())  # waits for the canary's replica, which never becomes ready
    parked = ("revision v2 is parked at zero replicas: its rollout was rolled back (aborted by "
              "a person)")

    async with aiohttp.ClientSession() as session:
        async def pinned_to_v2() -> tuple[int, str | None, str | None]:
            async with session.get(f"{stack.url}/v2/health/ready",
                                   headers={"X-Sluice-Revision": "v2"}) as response:
                body = await response.json()
                return response.status, response.headers.get("Retry-After"), body.get("error")

        held = asyncio.create_task(pinned_to_v2())
        await until(lambda: call("GET", api.admin + "/stats")[1]["revisions"],
                    lambda rows: rows[1]["buffered"] == 1)  # waiting for v2's replica
        assert api.command("abort")[0] == 200  # answered once the routers serve its table
        v2 = call("GET", api.admin + "/stats")[1]["revisions"][1]
        assert v2["buffered"] == 0, "still held after the table that parks v2"
        status, retry_after, reason = await held
        assert (status, reason) == (503, parked) and retry_after is not None

        # Pinned after it was parked: answered without ever waiting in the buffer.
        fresh = asyncio.create_task(pinned_to_v2())
        while not fresh.done():
            v2 = call("GET", api.admin + "/stats")[1]["revisions"][1]
            assert v2["buffered"] == 0, "held in the buffer instead of answered at once"
            await asyncio.sleep(0.01)
        status, retry_after, reason = await fresh
        assert (status, reason) == (503, parked) and retry_after is not None
    served = call("GET", api.admin + "/stats")[1]["revisions"][1]["requests"]
    assert (served["total"], served["5xx"]) == (2, 2)


# -- end to end under load -----------------------------------------------------------------------


async def test_a_good_canary_is_promoted_without_a_failed_request(start_stack, tmp_path):
    stack = start_stack(revisions(["--latency", "0.04"], ["--latency", "0.04"]))
    api, ended, summary, _ = await run_until_ended(stack, tmp_path, policy())

    assert ended["phase"] == "Promoted", ended["reason"]
    assert ended["reason"] == "every step passed"
    assert [(t["phase"], t["canary_weight"]) for t in ended["transitions"]][1:] == [
        ("Progressing", FIRST_WEIGHT), ("Progressing", 50), ("Progressing", 100),
        ("Promoted", 100)]
    assert summary.failures == 0, summary.status_codes
    assert set(summary.status_codes) == {200}
    assert summary.revisions["v2"].requests > 0 and summary.revisions["v1"].requests > 0
    assert all(rows["5xx"] == 0 for rows in api.served().values())
    assert api.weights() == {"v1": 0, "v2": 100}
    final = stack.wait_for(lambda s: s["v1"]["ready"] == 0)  # the old stable is parked
    assert ("Parked: revision v1 is parked at zero replicas: v2 was promoted in its place"
            in final["v1"]["conditions"])
    assert final["v2"]["ready"] >= 1
    # v2 keeps what 100 % needs for its stable window, while its decider catches up
    assert any(c.startswith("RolloutFloor") for c in final["v2"]["conditions"]), final["v2"]
    shown = sluice("rollout", "--controller", stack.controller, "status", env=stack.env).stdout
    assert "Promoted" in shown and "every step passed" in shown


async def test_stickiness_holds_each_user_on_its_revision_while_the_weights_step(start_stack):
    """40 users, each with its own X-User-Id, through a 20 → 50 → 100 rollout: a user moves to
    the canary at most once and never comes back, while without stickiness every user would be
    split between the two at each step."""
    stack = start_stack(revisions(["--latency", "0.02"], ["--latency", "0.02"]))
    api = Api(stack)
    stack.wait_for(lambda s: s["v1"]["ready"] == 1)
    seen: dict[str, list[str]] = {f"user-{n}": [] for n in range(40)}
    statuses: list[int] = []
    done = asyncio.Event()

    async def user(session: aiohttp.ClientSession, name: str) -> None:
        while not done.is_set() and len(seen[name]) < 1000:
            async with session.post(stack.url + INFER, json=PAYLOAD,
                                    headers={"X-User-Id": name}) as response:
                await response.read()
                statuses.append(response.status)
                seen[name].append(response.headers.get("X-Sluice-Revision", "none"))
            await asyncio.sleep(0.25)  # each user's pace: 4 requests a second at most

    async with aiohttp.ClientSession() as session:
        users = [asyncio.create_task(user(session, name)) for name in seen]
        try:
            started(api, policy(stickiness={"header": "X-User-Id"}))
            ended = await api.wait(lambda r: r["phase"] in ("Promoted", "RolledBack", "Failed"),
                                   within_s=180)
        finally:
            done.set()
            await asyncio.gather(*users)

    assert ended["phase"] == "Promoted", ended["reason"]
    assert [t["canary_weight"] for t in ended["transitions"]][1:] == [FIRST_WEIGHT, 50, 100, 100]
    assert set(statuses) == {200}
    assert sum("v2" in answers for answers in seen.values()) >= 4, "the canary had users"
    for name, answers in seen.items():
        moved = answers.index("v2") if "v2" in answers else len(answers)
        assert set(answers[:moved]) == {"v1"} and set(answers[moved:]) <= {"v2"}, (
            f"{name} was moved back and forth: {''.join(a[-1] for a in answers)}")


async def test_a_canary_with_errors_is_rolled_back_within_its_exposure(start_stack, tmp_path):
    error_rate = 0.05
    stack = start_stack(revisions(["--latency", "0.04"],
                                  ["--latency", "0.04", "--error-rate", str(error_rate)]))
    api, ended, summary, since = await run_until_ended(stack, tmp_path, policy())

    assert ended["phase"] == "RolledBack", ended["reason"]
    assert "error" in ended["reason"]
    decisive = [v for v in ended["verdicts"] if v["outcome"] == "fail"][-1]
    assert decisive["canary_weight"] == FIRST_WEIGHT  # stopped in the first step
    detection_s = decisive["elapsed_s"] - first_traffic_at(ended)
    exposure = FIRST_WEIGHT / 100 * RPS * (detection_s + INTERVAL_S) * error_rate
    print(f"detection {detection_s:.1f} s, failures {summary.failures}, "
          f"expected {exposure:.1f}, bound {3 * exposure:.1f}")
    assert 0 < summary.failures <= 3 * exposure, (summary.failures, exposure)
    assert summary.failures == summary.revisions["v2"].failures  # v1 never failed
    assert set(summary.status_codes) <= {200, 500}
    assert api.weights() == {"v1": 100, "v2": 0}
    assert since["v2"] == 0 and since["v1"] > 0  # after the rollback, no request reached v2
    stack.wait_for(lambda s: s["v2"]["ready"] == 0)  # the canary is parked


async def test_a_slower_canary_is_rolled_back_on_latency(start_stack, tmp_path):
    stack = start_stack(revisions(["--latency", "0.04"], ["--latency", "0.2"]))
    api, ended, summary, since = await run_until_ended(stack, tmp_path, policy())

    assert ended["phase"] == "RolledBack", ended["reason"]
    assert "latency: slower than stable by more than 50 %" in ended["reason"]
    decisive = [v for v in ended["verdicts"] if v["outcome"] == "fail"][-1]
    latency = next(f for f in decisive["findings"] if f["metric"] == "latency")
    assert latency["outcome"] == "fail" and latency["interval"][0] > 1.5
    print(f"detection {decisive['elapsed_s'] - first_traffic_at(ended):.1f} s, ratio "
          f"{latency['observed']:.2f} within {latency['interval']}")
    assert summary.failures == 0, summary.status_codes
    assert api.weights() == {"v1": 100, "v2": 0}
    assert since["v2"] == 0
    shown = sluice("rollout", "--controller", stack.controller, "status", env=stack.env).stdout
    assert "RolledBack" in shown and "slower than stable" in shown


async def test_prometheus_unreachable_pauses_the_rollout_which_resumes_when_it_is_back(
        start_stack, tmp_path):
    port = procs.free_port()
    stack = start_stack(revisions(), controller={"prometheus_url": f"http://127.0.0.1:{port}"})
    api = Api(stack)
    query = 'sum(up{job="sluice-router"})'
    url = f"http://127.0.0.1:{port}/api/v1/query?{urllib.parse.urlencode({'query': query})}"

    def custom_value(verdict):
        found = [f for f in verdict["findings"] if f["metric"] == "router-up"]
        return found[0]["observed"] if found else None

    prom = Prometheus(tmp_path / "first", [f"127.0.0.1:{stack.admin}"], port=port)
    try:
        # Scraped once: the metric has a value from the first verdict on.
        await until(lambda: call("GET", url)[1]["data"]["result"], bool, 30)
        started(api, policy(slo={"custom": [{"name": "router-up", "query": query, "min": 1}]}))
        await api.wait(lambda r: any(custom_value(v) == 1 for v in r["verdicts"]))
    finally:
        prom.close()
    paused = await api.wait(lambda r: r["phase"] == "Paused")

    assert "did not answer 3 analyses in a row (failureLimit 3)" in paused["reason"]
    missing = paused["verdicts"][-3:]
    assert all(v["outcome"] == "missing" for v in missing), missing
    assert all(f"Prometheus at http://127.0.0.1:{port} did not answer" in v["reason"]
               for v in missing)
    assert "RolledBack" not in {t["phase"] for t in paused["transitions"]}
    assert api.weights() == {"v1": 100 - FIRST_WEIGHT, "v2": FIRST_WEIGHT}  # held, not moved

    # Back on the same address: the next verdict ends the pause, with no command from anyone.
    prom = Prometheus(tmp_path / "again", [f"127.0.0.1:{stack.admin}"], port=port)
    try:
        resumed = await api.wait(lambda r: r["phase"] == "Progressing"
                                 and len(r["transitions"]) > len(paused["transitions"]))
    finally:
        prom.close()
    assert resumed["transitions"][len(paused["transitions"])]["reason"] == "resumed"
    assert custom_value(resumed["verdicts"][-1]) == 1
