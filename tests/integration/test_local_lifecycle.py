"""The local stack's lifecycle: whatever stops the control core, nothing it started survives.

``sluice up`` (autoscaler/local/up.py) runs here in this process, with a real router and real
model-server replicas, so the test can make the core fail mid-run: the routers' poke stream
raises once two replicas are ready, as a bug in a poke handler would.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from autoscaler.local import stack, up
from autoscaler.sources import routers
from tests import procs
from tests.integration.conftest import stack_revision

pytestmark = pytest.mark.integration


async def test_a_core_that_fails_mid_run_leaves_no_replica_behind(tmp_path, monkeypatch):
    spec = stack.LocalStack.model_validate({
        "router": {"listen": f"127.0.0.1:{procs.free_port()}",
                   "admin": f"127.0.0.1:{procs.free_port()}"},
        "controller": {"listen": f"127.0.0.1:{procs.free_port()}", "tick_s": 0.2},
        "services": {"model": {"revisions": [stack_revision(minReplicas=2, initialScale=2)]}}})
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    started: set[int] = set()

    async def failing_pokes(self: routers.RouterClient, on_poke: object) -> None:
        while True:  # once the router serves both replicas, fail as a bug would
            stats = await self._stats(self.admin_urls[0], raw=False)
            if sum(r.endpoints for r in stats.revisions) == 2:
                started.update(procs.descendants(os.getpid()))
                raise RuntimeError("a bug in the poke handler")
            await asyncio.sleep(0.05)

    monkeypatch.setattr(routers.RouterClient, "pokes", failing_pokes)
    code = await asyncio.wait_for(up.run_stack(spec, tmp_path), 120)

    assert code == 1
    assert len(started) >= 3, "the router and two replicas were running"
    assert procs.alive(started) == [], "left running"
