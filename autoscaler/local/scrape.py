"""The replicas as Prometheus scrape targets: a file_sd file ``sluice up`` keeps current.

A custom signal's query names its revision by labels (policies/signals.py), so whatever scrapes
the replicas must label their series with it. On Kubernetes the pods' labels do, through the
user's relabelling; locally, ``controller.prometheus_targets_file`` is a file_sd file (the JSON
form) with every ready replica's host:port, labelled ``service`` and ``revision``. Point a
Prometheus at it::

    scrape_configs:
      - job_name: sluice-replicas
        file_sd_configs: [{files: [/tmp/sluice-targets.json]}]

Prometheus watches the file, so a replica is scraped from its first ready second; one that
stopped leaves the file, and Prometheus marks its series stale (a query then has no data for it,
never its last value). The file is replaced atomically (write, then rename), and only when the
set of targets changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any

from autoscaler.control import core

logger = logging.getLogger(__name__)


def targets(control: core.Core) -> list[dict[str, Any]]:
    """file_sd groups: one per revision with ready replicas, labelled with its names."""
    groups = []
    for revision in control.revisions.values():
        if revision.removing:
            continue
        hosts = sorted(urllib.parse.urlsplit(url).netloc for url in revision.replicas.endpoints())
        if hosts:
            groups.append({"targets": hosts, "labels": {"service": revision.target.service,
                                                        "revision": revision.target.revision}})
    return sorted(groups, key=lambda group: (group["labels"]["service"],
                                             group["labels"]["revision"]))


def write(path: Path, groups: list[dict[str, Any]]) -> None:
    """Replace the file atomically: Prometheus never reads half of it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(groups, indent=1) + "\n")
    os.replace(partial, path)


async def keep(path: Path, control: core.Core, period_s: float) -> None:
    """Rewrite the file whenever the ready replicas changed, checking every ``period_s``."""
    written: list[dict[str, Any]] | None = None
    while True:
        groups = targets(control)
        if groups != written:
            try:
                write(path, groups)
                written = groups
            except OSError as error:
                logger.warning("cannot write the Prometheus targets to %s: %s", path, error)
        await asyncio.sleep(period_s)
