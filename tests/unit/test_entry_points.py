"""Light entry points: the router and the CLI start without the heavy modules of other parts."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("matplotlib", "scipy", "numpy", "pandas", "prometheus_api_client", "kubernetes",
         "kubernetes_asyncio", "locust")


@pytest.mark.parametrize("module", ["router.main", "autoscaler.cli"])
def test_an_entry_point_imports_none_of_the_heavy_modules(module):
    check = (f"import sys, {module}; "
             f"sys.exit(' '.join(m for m in {HEAVY!r} if m in sys.modules) or None)")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"import {module} loaded: {done.stderr.strip()}"
