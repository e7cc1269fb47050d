"""The controller's rollout API, served next to /status on the controller's loopback address.

::

    GET  /rollouts[?verdicts=N]              every service's rollout (the last N verdicts, 10)
    GET  /rollouts/{service}[?verdicts=N]    one; 404 if the service never had one
    POST /rollouts                           start one: a RolloutPolicy as JSON (camelCase, as
                                             the YAML), or a Rollout resource with a spec
    POST /rollouts/{service}/{command}       promote | abort | pause | resume
    POST /rollouts/{service}/restore         after it ended: the weights from before it, none
                                             parked; answers them as ``weights``

Writes need ``Authorization: Bearer <token>`` (autoscaler/rollouts/token.py): 401 without it.
A refused write changes nothing and says why: ``{"error": ..., "problems": [{"field", "reason"}]}``
with 400 (invalid policy, unknown service or revision), 409 (a rollout already running, traffic
on a third revision, a command to an ended rollout) or 413 (a body over MAX_BODY_BYTES). A
command answers once the driver has applied it (202 if it is still queued after a while).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web

from autoscaler.rollouts import driver as driver_
from policies import rollout

MAX_BODY_BYTES = 64 * 1024
"""A rollout policy is a few hundred bytes; 20 custom queries of 4 KiB still fit."""

ROLLOUTS = web.AppKey("rollouts", driver_.Rollouts)
TOKEN = web.AppKey("rollout_token", str)


def add_routes(app: web.Application, rollouts: driver_.Rollouts, token: str) -> None:
    """Serve the rollout API on `app`, which must bound bodies (``client_max_size``)."""
    if not token:
        raise ValueError("the rollout API needs a write token")
    app[ROLLOUTS] = rollouts
    app[TOKEN] = token
    app.router.add_get("/rollouts", list_rollouts)
    app.router.add_get("/rollouts/{service}", get_rollout)
    app.router.add_post("/rollouts", start_rollout)
    app.router.add_post("/rollouts/{service}/{command}", command_rollout)


async def list_rollouts(request: web.Request) -> web.Response:
    verdicts = _verdicts(request)
    return web.json_response({"rollouts": request.app[ROLLOUTS].status(verdicts)})


async def get_rollout(request: web.Request) -> web.Response:
    try:
        driver = request.app[ROLLOUTS].get(request.match_info["service"])
    except driver_.RolloutError as error:
        return _refused(error)
    return web.json_response(driver.status(_verdicts(request)))


async def start_rollout(request: web.Request) -> web.Response:
    if denied := _unauthorized(request):
        return denied
    try:
        body = await _json_body(request)
        driver = await request.app[ROLLOUTS].start(body)
    except driver_.RolloutError as error:
        return _refused(error)
    return web.json_response(driver.status(), status=201)


async def command_rollout(request: web.Request) -> web.Response:
    if denied := _unauthorized(request):
        return denied
    name = request.match_info["command"]
    if name == rollout.RESTORE:
        return await _restore(request)
    try:
        command = rollout.Command(name)
    except ValueError:
        known = ", ".join([*(c.value for c in rollout.Command), rollout.RESTORE])
        return _refused(driver_.RolloutError.field(
            400, "command", f"{name!r} is not one of {known}"))
    try:
        driver = request.app[ROLLOUTS].get(request.match_info["service"])
        applied = await driver.command(command)
    except driver_.RolloutError as error:
        return _refused(error)
    return web.json_response(driver.status(), status=200 if applied else 202)


async def _restore(request: web.Request) -> web.Response:
    rollouts, service = request.app[ROLLOUTS], request.match_info["service"]
    try:
        weights = await rollouts.restore(service)
    except driver_.RolloutError as error:
        return _refused(error)
    return web.json_response({**rollouts.get(service).status(), "weights": weights})


def _unauthorized(request: web.Request) -> web.Response | None:
    offered = request.headers.get("Authorization", "")
    expected = f"Bearer {request.app[TOKEN]}"
    # surrogateescape: a header that is not UTF-8 is a wrong token, not a 500.
    if hmac.compare_digest(offered.encode(errors="surrogateescape"), expected.encode()):
        return None
    return web.json_response(
        {"error": "a valid bearer token is required for writes (see `sluice rollout --help`)",
         "problems": [{"field": "Authorization", "reason": "missing or wrong bearer token"}]},
        status=401, headers={"WWW-Authenticate": "Bearer"})


async def _json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise driver_.RolloutError.field(
            413, "(body)", f"{request.content_length} bytes is over {MAX_BODY_BYTES}")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise driver_.RolloutError.field(
            413, "(body)", f"over {MAX_BODY_BYTES} bytes") from None
    try:
        return json.loads(raw)
    except RecursionError:
        raise driver_.RolloutError.field(400, "(body)", "nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise driver_.RolloutError.field(400, "(body)", f"not JSON: {error}") from None


def _verdicts(request: web.Request) -> int:
    try:
        wanted = int(request.query.get("verdicts", "10"))
    except ValueError:
        wanted = 10
    return min(max(wanted, 0), rollout.HISTORY_LIMIT)


def _refused(error: driver_.RolloutError) -> web.Response:
    return web.json_response({"error": str(error), "problems": error.problems},
                             status=error.status)
