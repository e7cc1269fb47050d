"""`sluice loadtest`'s refusals and listings, which send no load (loadtests/loadtest.py).

The runs themselves are in tests/integration/test_loadtest_scenarios.py (local stack) and
tests/k8s/test_loadtest_observer.py (a namespace).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from loadtests import expectations, loadtest, scenario

ROOT = Path(__file__).resolve().parents[2]


def test_list_shows_every_bundled_scenario_with_what_it_shows(capsys):
    assert loadtest.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == scenario.bundled()
    assert any(line.startswith("step") and "policy's count" in line for line in lines)


def test_an_invalid_scenario_exits_2_naming_each_field(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "phases": [{"name": "a", "seconds": 0,
                                                                "users": 1}],
                                    "expectations": [{"latency": {"maxMs": -1}}]}))
    assert loadtest.main([str(path), "--report", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert f"invalid scenario {path}:" in err
    assert "  phases.0.seconds: Input should be greater than 0" in err
    assert "  expectations.0.latency.maxMs: Input should be greater than 0" in err
    assert not (tmp_path / "r.html").exists()


def test_a_stack_without_the_scenarios_service_exits_2(tmp_path, capsys):
    document = yaml.safe_load((ROOT / "examples" / "loadtest.yaml").read_text())
    document["services"] = {"other": document["services"]["model"]}
    stack = tmp_path / "stack.yaml"
    stack.write_text(yaml.safe_dump(document))
    assert loadtest.main(["step", "--stack", str(stack)]) == 2
    assert "has no service 'model', the scenario's service" in capsys.readouterr().err


def test_the_printed_table_has_outcome_expectation_observed_bound_and_reason():
    results = [expectations.Result("latency p99 (phase step)", expectations.Outcome.FAIL,
                                   312.5, "<= 250 ms", "ms", "latency p99 ...: 312.5 ms"),
               expectations.Result("rollout", expectations.Outcome.UNKNOWN, None,
                                   "Promoted within 90 s", "", "rollout: it was never started")]
    assert loadtest.table(results).splitlines() == [
        "FAIL    latency p99 (phase step): observed 312.5 ms, bound <= 250 ms",
        "        latency p99 ...: 312.5 ms",
        "UNKNOWN rollout: observed —, bound Promoted within 90 s",
        "        rollout: it was never started",
    ]
