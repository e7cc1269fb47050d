"""PromQL readings for SLOs and custom signals, through prometheus-api-client.

A reading either has a value or says why it has none. "None" is never zero and never a failure:
a rollout judge treats it as inconclusive and retries, and only after its failure limit does
the rollout pause, saying why; the control core holds a revision's replicas on a custom signal
without a value. The client is synchronous (requests), so queries run in threads with a timeout
and no retries of their own: the caller's interval is the retry. Custom signals run in a pool
of their own, ``max_concurrent`` at a time, so a slow Prometheus holds a bounded number of
threads and never the event loop's default pool.

No value: Prometheus unreachable or answering an error, no series (an empty result: nothing
exports it, or Prometheus marked the series stale because its target is gone or was not
scraped), several series (the query must aggregate), NaN or an infinity, or a stale answer:
an evaluation time more than ``max_age_s`` behind this clock (a caching front end, a clock gone
wrong).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from autoscaler.control import ports


class PrometheusSource:
    """The MetricSource of control/ports.py, on a Prometheus server."""

    def __init__(self, url: str, timeout_s: float = 5.0, *, max_concurrent: int = 4,
                 max_age_s: float = 30.0, wall: Callable[[], float] = time.time) -> None:
        self.url = _without_credentials(url)
        """For messages, which are served to anyone who can read the controller's status."""
        # disable_ssl=False: an https Prometheus must present a certificate we trust.
        self._client = PrometheusConnect(url=url, disable_ssl=False, timeout=timeout_s,
                                         retry=Retry(total=0))
        self.max_age_s = max_age_s
        self._wall = wall
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrent, thread_name_prefix="prometheus-signals")

    async def query(self, expr: str) -> ports.Reading:
        """An instant query that must yield one number (aggregate it, e.g. with sum())."""
        try:
            result = await asyncio.to_thread(self._client.custom_query, expr)
        except (PrometheusApiClientException, requests.RequestException, ValueError) as error:
            return ports.Reading(None, f"Prometheus at {self.url} did not answer {expr!r}: {error}")
        return reading(expr, result, self._wall(), self.max_age_s)

    async def signals(self, queries: Mapping[ports.Key, ports.SignalQuery]
                      ) -> dict[ports.Key, ports.Reading]:
        """The SignalSource of control/ports.py: every query at once, ``max_concurrent`` at a
        time in this source's threads, each within its own timeout (at Prometheus too)."""
        loop = asyncio.get_running_loop()
        keys = list(queries)
        answers = await asyncio.gather(*(
            loop.run_in_executor(self._pool, self._signal, queries[key]) for key in keys))
        return dict(zip(keys, answers, strict=True))

    def _signal(self, signal: ports.SignalQuery) -> ports.Reading:
        expr = signal.query
        try:
            result = self._client.custom_query(
                expr, params={"timeout": f"{signal.timeout_s:g}s"}, timeout=signal.timeout_s)
        except (PrometheusApiClientException, requests.RequestException, ValueError) as error:
            return ports.Reading(None, f"Prometheus at {self.url} did not answer {expr!r}: {error}")
        return reading(expr, result, self._wall(), self.max_age_s)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def reading(expr: str, result: Any, now: float, max_age_s: float) -> ports.Reading:
    """The one number an instant query's ``result`` holds, or why there is none."""
    if isinstance(result, list) and not (len(result) == 2 and not isinstance(result[0], dict)):
        if not result:
            return ports.Reading(None, f"no data for {expr!r}")
        if len(result) > 1:
            return ports.Reading(None, f"{expr!r} returned {len(result)} series; aggregate it "
                                 "to one (e.g. sum(...))")
        sample = result[0].get("value") if isinstance(result[0], dict) else None
    else:  # a scalar result (vector(1) is a vector; scalar(x) is not): [time, "value"]
        sample = result
    try:
        at, value = float(sample[0]), float(sample[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return ports.Reading(None, f"unexpected answer to {expr!r}: {result!r}")
    if math.isnan(value):
        return ports.Reading(None, f"{expr!r} is NaN (no traffic in its window?)")
    if math.isinf(value):
        return ports.Reading(None, f"{expr!r} is {value} (a division by zero?)")
    if now - at > max_age_s:
        return ports.Reading(None, f"{expr!r} is stale: evaluated {now - at:.0f} s ago")
    return ports.Reading(value)


def _without_credentials(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
