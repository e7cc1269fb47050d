"""What ``make up`` installs: the runtime only; ``make test`` the development tools as well."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEV_TOOLS = {"mypy", "ruff", "locust", "pytest", "import-linter", "hypothesis"}


def names(requirements: list[str]) -> set[str]:
    return {r.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip()
            for r in requirements}


def test_the_runtime_dependencies_hold_no_development_tool():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not names(project["dependencies"]) & DEV_TOOLS
    assert names(project["optional-dependencies"]["dev"]) >= DEV_TOOLS


def make_dry_run(target: str) -> str:
    # -W: as if pyproject.toml had just changed, so the install steps are shown, not run.
    return subprocess.run(["make", "-n", "-W", "pyproject.toml", target], cwd=ROOT,
                          capture_output=True, text=True, check=True, timeout=60).stdout


def test_make_up_installs_the_runtime_and_make_test_the_tools():
    up = make_dry_run("up")
    assert "pip install" in up and "[dev]" not in up
    unit = make_dry_run("unit")
    assert "'.[dev]'" in unit
