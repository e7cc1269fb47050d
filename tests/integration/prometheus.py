"""A real Prometheus server (Debian's package) on a free loopback port, for tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests import procs


class Prometheus:
    """Scrapes ``targets`` (host:port) and, with ``file_sd``, the targets a file_sd file lists
    (what `sluice up` writes for its replicas) every second. ``stop`` and ``start`` again keep
    its port and data, as a restarted server would."""

    def __init__(self, tmp_path: Path, targets: list[str], port: int | None = None,
                 file_sd: Path | None = None) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: run `make system-deps` (Debian package)")
        self.port = port or procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tmp_path.mkdir(parents=True, exist_ok=True)
        config = tmp_path / "prometheus.yml"
        jobs = [{"job_name": "sluice-router", "static_configs": [{"targets": targets}]}]
        if file_sd is not None:
            jobs.append({"job_name": "sluice-replicas", "file_sd_configs": [
                {"files": [str(file_sd)], "refresh_interval": "1s"}]})
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": jobs,
        }))
        self.argv = [binary, f"--config.file={config}",
                     f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        self.proc: procs.Proc | None = None
        self.start()

    def start(self) -> None:
        self.proc = procs.Proc.start(self.argv, ready_url=f"{self.url}/-/ready")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.close()
            self.proc = None

    def close(self) -> None:
        self.stop()
