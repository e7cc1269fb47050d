"""PromQL readings for SLOs and custom signals, through prometheus-api-client.

A reading either has a value or says why it has none. "None" is never zero and never a failure:
a rollout judge treats it as inconclusive and retries, and only after its failure limit does
the rollout pause, saying why. The client is synchronous (requests), so queries run in a thread
with a timeout and no retries of their own: the caller's interval is the retry.
"""

from __future__ import annotations

import asyncio
import math
import urllib.parse

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from autoscaler.control import ports


class PrometheusSource:
    """The MetricSource of control/ports.py, on a Prometheus server."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = _without_credentials(url)
        """For messages, which are served to anyone who can read the controller's status."""
        # disable_ssl=False: an https Prometheus must present a certificate we trust.
        self._client = PrometheusConnect(url=url, disable_ssl=False, timeout=timeout_s,
                                         retry=Retry(total=0))

    async def query(self, expr: str) -> ports.Reading:
        """An instant query that must yield one number (aggregate it, e.g. with sum())."""
        try:
            result = await asyncio.to_thread(self._client.custom_query, expr)
        except (PrometheusApiClientException, requests.RequestException, ValueError) as error:
            return ports.Reading(None, f"Prometheus at {self.url} did not answer {expr!r}: {error}")
        if isinstance(result, list):
            if not result:
                return ports.Reading(None, f"no data for {expr!r}")
            if len(result) > 1:
                return ports.Reading(None, f"{expr!r} returned {len(result)} series; aggregate it "
                                     "to one (e.g. sum(...))")
            sample = result[0].get("value")
        else:  # a scalar result: [time, "value"]
            sample = result
        try:
            value = float(sample[1])
        except (TypeError, ValueError, IndexError):
            return ports.Reading(None, f"unexpected answer to {expr!r}: {result!r}")
        if math.isnan(value):
            return ports.Reading(None, f"{expr!r} is NaN (no traffic in its window?)")
        return ports.Reading(value)


def _without_credentials(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
