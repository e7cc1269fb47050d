"""A real Prometheus server (Debian's package) on a free loopback port, for tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests import procs


class Prometheus:
    def __init__(self, tmp_path: Path, targets: list[str], port: int | None = None) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: run `make system-deps` (Debian package)")
        self.port = port or procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tmp_path.mkdir(parents=True, exist_ok=True)
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "sluice-router", "static_configs": [
                {"targets": targets}]}],
        }))
        self.proc = procs.Proc.start(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            ready_url=f"{self.url}/-/ready")

    def close(self) -> None:
        self.proc.close()
