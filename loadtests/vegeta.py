"""vegeta, the open-loop load generator: requests at a fixed rate whatever the answers, built
from the Go module proxy into sluice's cache on first use."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

TOOLS = Path(os.environ.get("SLUICE_CACHE", Path.home() / ".cache" / "sluice")) / "tools"
VERSION = "v12.12.0"


def binary() -> str:
    """The vegeta binary's path."""
    path = TOOLS / "vegeta"
    if not path.exists():
        TOOLS.mkdir(parents=True, exist_ok=True)
        subprocess.run(["go", "install", f"github.com/tsenart/vegeta/v12@{VERSION}"],
                       check=True, env={**os.environ, "GOBIN": str(TOOLS), "GOTOOLCHAIN": "local"},
                       timeout=1800)
    return str(path)
