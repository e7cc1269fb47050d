"""The reference model server (examples/model_server.py), run as a real process over loopback.

Router and autoscaler tests lean on this server's behaviour (readiness, 503s, streaming, request
accounting, graceful drain), so each of those is pinned here against the actual script. Waits
poll server state with a deadline; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import numpy as np
import pytest

from tests.integration.conftest import wait_until_refused
from tests.procs import Proc, ProcError, ProcGroup, free_port, proc_group

pytestmark = pytest.mark.integration

SERVER_SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "model_server.py"
ROWS = [[0.5, -1.0, 2.0, 0.25], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, -2.0, 1.0]]
PREDICT = "/v1/models/model:predict"
INFER = "/v2/models/model/infer"
STREAM = "/v2/models/model/generate_stream"
# Long enough that a stream is certainly still open when the test looks; the test closes it.
ENDLESS_TOKENS = 100_000
WAIT_DEADLINE_S = 15.0


def v2_body(rows: list[list[float]]) -> dict[str, Any]:
    flat = [value for row in rows for value in row]
    return {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])],
                        "datatype": "FP32", "data": flat}]}


def load_server_module() -> ModuleType:
    """Import the script as a module, as benchmarks and in-process tests do."""
    spec = importlib.util.spec_from_file_location("sluice_example_model_server", SERVER_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.fixture
def procs(request: pytest.FixtureRequest) -> Iterator[ProcGroup]:
    yield from proc_group(request)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        yield client


def start_server(procs: ProcGroup, *flags: str, ready_path: str = "/v2/health/ready",
                 env: dict[str, str] | None = None) -> tuple[Proc, str]:
    for _attempt in range(3):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        try:
            proc = procs.start([sys.executable, str(SERVER_SCRIPT), "--port", str(port), *flags],
                               base + ready_path, env=env)
        except ProcError as error:
            # Another process took the "free" port before the server bound it: pick again.
            if "cannot listen" in str(error):
                continue
            raise
        return proc, base
    raise AssertionError("no free port could be bound after 3 attempts")


async def call(session: aiohttp.ClientSession, method: str, url: str,
               **kwargs: Any) -> tuple[int, Any]:
    async with session.request(method, url, **kwargs) as response:
        body = await response.read()
        if response.content_type == "application/json":
            return response.status, json.loads(body)
        return response.status, body


async def debug_state(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    status, state = await call(session, "GET", base + "/debug/requests")
    assert status == 200
    return state


async def wait_for_state(session: aiohttp.ClientSession, base: str,
                         condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll /debug/requests until `condition` holds; fail with the last state at the deadline."""
    state: dict[str, Any] = {}
    try:
        async with asyncio.timeout(WAIT_DEADLINE_S):
            while True:
                state = await debug_state(session, base)
                if condition(state):
                    return state
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"server state never matched in {WAIT_DEADLINE_S}s: {state}") from None


async def next_event(response: aiohttp.ClientResponse) -> dict[str, Any] | None:
    """The next SSE event's JSON, or None once the stream has ended."""
    chunk = await response.content.readuntil(b"\n\n")
    if not chunk:
        return None
    assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n"), chunk
    return json.loads(chunk[len(b"data: "):])


async def test_v1_predict_and_v2_infer_give_the_same_numbers(
        procs: ProcGroup, session: aiohttp.ClientSession) -> None:
    _, base = start_server(procs, "--revision", "r7")
    expected = load_server_module().LogisticModel().predict(np.asarray(ROWS, np.float32)).tolist()

    async with session.get(base + "/v1/models/model") as response:
        assert response.status == 200
        assert response.headers["X-Model-Revision"] == "r7"
        assert await response.json() == {"name": "model", "ready": True}

    status, v1 = await call(session, "POST", base + PREDICT, json={"instances": ROWS})
    assert status == 200
    assert v1 == {"predictions": expected}

    status, v2 = await call(session, "POST", base + INFER, json=v2_body(ROWS),
                            headers={"X-Request-Id": "req-42"})
    assert status == 200
    assert v2["model_name"] == "model"
    assert v2["id"] == "req-42"
    assert v2["outputs"] == [{"name": "output-0", "shape": [3], "datatype": "FP32",
                              "data": expected}]

    status, metadata = await call(session, "GET", base + "/v2/models/model")
    assert status == 200
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}]
    assert (await call(session, "GET", base + "/v2/health/live"))[0] == 200
    assert (await call(session, "GET", base + "/v2/models/model/ready"))[0] == 200


async def test_unknown_model_is_404_and_malformed_requests_are_400(
        procs: ProcGroup, session: aiohttp.ClientSession) -> None:
    _, base = start_server(procs)

    for method, path in [("POST", "/v1/models/other:predict"), ("POST", "/v2/models/other/infer"),
                         ("POST", "/v2/models/other/generate_stream"),
                         ("GET", "/v1/models/other"), ("GET", "/v2/models/other"),
                         ("GET", "/v2/models/other/ready")]:
        status, body = await call(session, method, base + path, json={"instances": ROWS})
        assert (status, "error" in body) == (404, True), (path, status, body)

    bad_v1 = [b"{not json", b"[1, 2]", b'{"rows": []}', b'{"instances": [[1, 2, 3]]}',
              b'{"instances": [[1, 2, 3, 4], [1, 2]]}', b'{"instances": [["1", 2, 3, 4]]}',
              b'{"instances": [[1e300, 0, 0, 0]]}', b"\xff\xfe"]
    bad_v2 = [
        {"inputs": []},
        {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [1] * 7}]},
        {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "BYTES", "data": ["a"] * 4}]},
        {"inputs": [{"name": "input-0", "shape": [4], "datatype": "FP32", "data": [1] * 4}]},
        {"inputs": [{"name": "input-0", "datatype": "FP32", "data": [1] * 4}]},
    ]
    bad_stream = [{"text_input": 5}, {"parameters": {"max_tokens": 0}}]
    cases = ([(PREDICT, body) for body in bad_v1]
             + [(INFER, json.dumps(body).encode()) for body in bad_v2]
             + [(STREAM, json.dumps(body).encode()) for body in bad_stream])
    for path, raw in cases:
        status, body = await call(session, "POST", base + path, data=raw)
        assert status == 400, (path, raw, status, body)
        assert isinstance(body, dict) and "error" in body, (path, raw, body)

    # Nothing was left in flight, and the server still answers good requests.
    assert (await debug_state(session, base))["inflight"] == 0
    assert (await call(session, "POST", base + PREDICT, json={"instances": ROWS}))[0] == 200


async def test_readiness_is_503_during_startup_delay_then_200(
        procs: ProcGroup, session: aiohttp.ClientSession) -> None:
    # Wait only for liveness: the listener must be up while the model is still "loading", for
    # ten minutes, so every check below lands inside the delay however busy the machine is.
    loading, base = start_server(procs, "--startup-delay", "600",
                                 ready_path="/v2/health/live")

    assert (await call(session, "GET", base + "/v2/health/ready"))[0] == 503
    assert (await call(session, "GET", base + "/v2/models/model/ready"))[0] == 503
    assert await call(session, "GET", base + "/v1/models/model") == (
        503, {"name": "model", "ready": False})
    status, _ = await call(session, "POST", base + INFER, json=v2_body(ROWS),
                           headers={"X-Request-Id": "too-early"})
    assert status == 503
    # A request refused while loading did no work, so it is not accounted.
    state = await debug_state(session, base)
    assert (state["count"], state["ids"]) == (0, [])
    assert "ready on" not in loading.output()

    # Once loaded (a one-second delay, waited for), the same endpoints answer.
    loaded, base = start_server(procs, "--startup-delay", "1", ready_path="/v2/health/live")
    loaded.wait_ready(base + "/v2/health/ready", timeout=20)
    assert (await call(session, "GET", base + "/v1/models/model"))[0] == 200
    assert (await call(session, "POST", base + INFER, json=v2_body(ROWS)))[0] == 200
    assert f"ready on {base}" in loaded.output()


async def test_error_rate_one_fails_every_inference_request(
        procs: ProcGroup, session: aiohttp.ClientSession) -> None:
    _, base = start_server(procs, "--error-rate", "1.0")

    for index in range(5):
        for path, body in [(PREDICT, {"instances": ROWS}), (INFER, v2_body(ROWS))]:
            status, answer = await call(session, "POST", base + path, json=body,
                                        headers={"X-Request-Id": f"{path}-{index}"})
            assert status == 500
            assert "error" in answer
    # Health is not subject to injected faults, and failed requests were still admitted.
    assert (await call(session, "GET", base + "/v2/health/ready"))[0] == 200
    assert (await debug_state(session, base))["count"] == 10


async def test_max_concurrency_turns_the_excess_away_with_503(
        procs: ProcGroup, session: aiohttp.ClientSession) -> None:
    _, base = start_server(procs, "--max-concurrency", "2", "--token-delay", "0.05")
    endless = {"text_input": "hold", "parameters": {"max_tokens": ENDLESS_TOKENS}}

    # Two streams hold both slots for as long as the test keeps them open.
    holders = [await session.post(base + STREAM, json=endless) for _ in range(2)]
    try:
        for holder in holders:
            assert holder.status == 200
            assert await next_event(holder) is not None

        status, body = await call(session, "POST", base + INFER, json=v2_body(ROWS),
                                  headers={"X-Request-Id": "excess"})
        assert (status, "error" in body) == (503, True)
        assert (await call(session, "POST", base + STREAM, json=endless))[0] == 503
        # Probes are never turned away.
        assert (await call(session, "GET", base + "/v2/health/ready"))[0] == 200
        state = await debug_state(session, base)
        assert (state["inflight"], state["max_inflight"], state["rejected"]) == (2, 2, 2)
        assert "excess" not in state["ids"]
    finally:
        for holder in holders:
            holder.close()

    await wait_for_state(session, base, lambda state: state["inflight"] == 0)
    assert (await call(session, "POST", base + INFER, json=v2_body(ROWS)))[0] == 200


async def test_stream_delivers_the_first_event_while_the_stream_is_still_open(
        procs: ProcGroup, session: aiohttp.ClientSession) -> None:
    proc, base = start_server(procs, "--token-delay", "0.05")
    request = {"text_input": "hello", "parameters": {"max_tokens": ENDLESS_TOKENS}}

    async with session.post(base + STREAM, json=request,
                            headers={"X-Request-Id": "stream-1"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        first = await next_event(response)
        assert first is not None
        assert (first["index"], first["id"], first["finished"]) == (0, "stream-1", False)
        # The server reports the stream still in progress after the first event arrived: the
        # event was flushed when produced, not held until the stream ended.
        assert (await debug_state(session, base))["inflight"] == 1
        assert not response.content.at_eof()
        second = await next_event(response)
        assert second is not None and second["index"] == 1
        response.close()

    # The server notices the client leaving and frees the slot, quietly: a client hanging up
    # mid-stream is normal and must not log a traceback per request.
    await wait_for_state(session, base, lambda state: state["inflight"] == 0)
    assert "Traceback" not in proc.output()


async def test_stream_sends_one_event_per_token_in_order_then_ends(
        procs: ProcGroup, session: aiohttp.ClientSession) -> None:
    _, base = start_server(procs)

    async def stream_tokens(prompt: str) -> list[dict[str, Any]]:
        request = {"text_input": prompt, "parameters": {"max_tokens": 5}}
        async with session.post(base + STREAM, json=request) as response:
            assert response.status == 200
            events = []
            while (event := await next_event(response)) is not None:
                events.append(event)
            return events

    events = await stream_tokens("same prompt")
    assert [event["index"] for event in events] == [0, 1, 2, 3, 4]
    assert [event["finished"] for event in events] == [False] * 4 + [True]
    assert all(isinstance(event["text_output"], str) for event in events)
    assert len({event["id"] for event in events}) == 1
    # Deterministic: the same prompt streams the same tokens.
    again = await stream_tokens("same prompt")
    assert [e["text_output"] for e in again] == [e["text_output"] for e in events]


async def test_request_ids_are_recorded_once_each_in_arrival_order(
        procs: ProcGroup, session: aiohttp.ClientSession) -> None:
    _, base = start_server(procs)
    requests = [(PREDICT, {"instances": ROWS}), (INFER, v2_body(ROWS)),
                (STREAM, {"parameters": {"max_tokens": 2}})]

    sent = []
    for index in range(9):
        path, body = requests[index % len(requests)]
        request_id = f"seq-{index}"
        assert (await call(session, "POST", base + path, json=body,
                           headers={"X-Request-Id": request_id}))[0] == 200
        sent.append(request_id)
    assert (await call(session, "POST", base + PREDICT, json={"instances": ROWS}))[0] == 200
    assert (await call(session, "POST", base + "/v1/models/other:predict", json={},
                       headers={"X-Request-Id": "unknown-model"}))[0] == 404

    state = await debug_state(session, base)
    # The request without an id counts but records nothing; the 404 was never admitted.
    assert state == {"count": 10, "ids": sent, "inflight": 0, "max_inflight": 1, "rejected": 0,
                     "working": 0, "waiting": 0}

    assert (await call(session, "POST", base + "/debug/reset"))[0] == 200
    assert (await debug_state(session, base))["ids"] == []

    concurrent_ids = [f"par-{index}" for index in range(20)]
    results = await asyncio.gather(*(
        call(session, "POST", base + INFER, json=v2_body(ROWS), headers={"X-Request-Id": rid})
        for rid in concurrent_ids))
    assert [status for status, _ in results] == [200] * 20
    state = await debug_state(session, base)
    assert state["count"] == 20
    assert sorted(state["ids"]) == sorted(concurrent_ids)


async def test_sigterm_finishes_the_inflight_request_then_exits_0(
        procs: ProcGroup, session: aiohttp.ClientSession) -> None:
    proc, base = start_server(procs, "--latency", "10")  # still working when the port closes
    port = int(base.rsplit(":", 1)[1])
    expected = load_server_module().LogisticModel().predict(np.asarray(ROWS, np.float32)).tolist()

    inflight = asyncio.create_task(call(session, "POST", base + PREDICT, json={"instances": ROWS}))
    await wait_for_state(session, base, lambda state: state["inflight"] == 1)
    proc.signal(signal.SIGTERM)

    await wait_until_refused(port)
    assert proc.returncode is None, "the listener should close before in-flight work is done"
    assert await inflight == (200, {"predictions": expected})
    assert proc.wait(timeout=15) == 0
    assert "draining 1 in-flight" in proc.output()


async def test_knobs_come_from_sluice_ms_environment_variables(
        procs: ProcGroup, session: aiohttp.ClientSession) -> None:
    port, ignored_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"SLUICE_MS_PORT": str(port), "PORT": str(ignored_port),
           "SLUICE_MS_MODEL_NAME": "iris", "SLUICE_MS_REVISION": "from-env"}
    proc = procs.start([sys.executable, str(SERVER_SCRIPT)], base + "/v2/models/iris/ready",
                       env=env)

    async with session.post(base + "/v1/models/iris:predict", json={"instances": ROWS}) as answer:
        assert answer.status == 200
        assert answer.headers["X-Model-Revision"] == "from-env"
    # A flag beats the environment: the same variables with --model-name given.
    other_port = free_port()
    other = procs.start([sys.executable, str(SERVER_SCRIPT), "--port", str(other_port),
                         "--model-name", "flag"],
                        f"http://127.0.0.1:{other_port}/v2/models/flag/ready", env=env)
    assert other.returncode is None
    assert f"ready on {base}" in proc.output()


async def test_a_client_that_leaves_mid_request_or_mid_stream_leaves_no_traceback(
        procs: ProcGroup, session: aiohttp.ClientSession) -> None:
    proc, base = start_server(procs)
    port = int(base.rsplit(":", 1)[1])
    # Mid-body: the handler is reading the request when the connection goes.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: m\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inst")
    await wait_for_state(session, base, lambda state: state["inflight"] == 1)
    writer.transport.abort()
    await wait_for_state(session, base, lambda state: state["inflight"] == 0)
    # Mid-stream: the client stops reading a token stream, so the server waits to write, and
    # then the connection goes.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"text_input": "x", "parameters": {"max_tokens": ENDLESS_TOKENS}}).encode()
    writer.write(b"POST " + STREAM.encode() + b" HTTP/1.1\r\nHost: m\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                 + body)
    await reader.readuntil(b"data: ")
    writer.transport.abort()
    await wait_for_state(session, base, lambda state: state["inflight"] == 0)
    output = proc.output()
    assert "Traceback" not in output and "Connection lost" not in output, output


async def test_debug_headers_echo_the_request_as_received(
        procs: ProcGroup, session: aiohttp.ClientSession) -> None:
    _, base = start_server(procs)
    async with session.post(base + "/debug/headers?q=1", data=b"ignored",
                            headers=[("X-Twice", "a"), ("X-Twice", "b")]) as response:
        echoed = await response.json()
    assert (echoed["method"], echoed["path"], echoed["version"]) == ("POST", "/debug/headers?q=1",
                                                                     "1.1")
    assert [value for name, value in echoed["headers"] if name == "X-Twice"] == ["a", "b"]
    assert (await debug_state(session, base))["count"] == 0  # not inference


async def test_parallelism_makes_requests_wait_inside_the_server(
        procs: ProcGroup, session: aiohttp.ClientSession) -> None:
    _, base = start_server(procs, "--parallelism", "2", "--latency", "600", "--drain-timeout", "0")
    calls = [asyncio.create_task(call(session, "POST", base + PREDICT, json={"instances": ROWS}))
             for _ in range(4)]
    state = await wait_for_state(session, base,
                                 lambda state: state["working"] + state["waiting"] == 4)
    assert (state["working"], state["waiting"]) == (2, 2)  # admitted, no 503
    for task in calls:
        task.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
