"""Small helpers for tests of process pods: readiness, HTTP to pod IPs, live PIDs."""

from __future__ import annotations

import json
import os
import urllib.request

from kubernetes import client

# Proxy settings from the environment must never apply to loopback pod IPs.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def is_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def get_json(url: str) -> tuple[int, dict]:
    with _OPENER.open(url, timeout=5) as response:
        return response.status, json.loads(response.read())


def post_json(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with _OPENER.open(request, timeout=5) as response:
        return response.status, json.loads(response.read())


def is_running(pid: int) -> bool:
    """Whether the process exists; the process kubelet reaps its children, so an exited one
    leaves no /proc entry behind."""
    return os.path.exists(f"/proc/{pid}")
