"""A kubelet for processes: real programs behind the kwok pods that ask for one.

kwok plays the kubelet of the fake nodes, but it runs nothing: its pods turn Ready at once,
with nobody listening on their IPs. A pod labelled ``sluice.dev/process: "true"`` is instead
left by kwok at Running, with a pod IP and not Ready (the ``pod-process-start`` stage that
``kwok_stages`` adds), and this kubelet takes over, as the real one would:

- it runs the pod's command, the JSON list in annotation ``sluice.dev/command``, as a local
  process, with ``{ip}`` (the pod IP, a 127.1.x.y loopback address the process can bind),
  ``{port}`` (the first containerPort, else 8080), ``{name}``, ``{namespace}`` and
  ``{python}`` (this interpreter) substituted, in the repository root, with the container's
  literal ``env`` values, fieldRefs to the pod's name, namespace and IP, and PORT, POD_IP;
- it probes the readiness path, the pod's ``readinessProbe.httpGet`` (its period, initial
  delay, timeout and failure threshold) or else annotation ``sluice.dev/readiness-path``
  (every second), and marks the pod Ready (Ready and ContainersReady conditions, the
  container's ``ready``) when it answers 2xx/3xx, unready after failureThreshold misses;
  without either the pod is Ready once the process runs;
- when the process exits it reports it as a kubelet does: ``lastState.terminated`` with the
  exit code, ``restartCount`` + 1 and ``state.waiting`` CrashLoopBackOff for the back-off,
  then starts it again; the back-off starts at annotation
  ``sluice.dev/restart-backoff-seconds`` (default 1 s; the kubelet's is 10 s) and doubles
  up to 30 s (the kubelet's 300 s). A command that cannot start shows ``RunContainerError``;
  a missing or malformed annotation ``CreateContainerConfigError``;
- when the pod is deleted (deletionTimestamp set) it stops the process, SIGTERM and SIGKILL
  after the pod's grace period, and then removes the pod (delete with grace 0), as the real
  kubelet does, so a pod IP is never handed to a new pod while its old process still holds it.

Processes get SIGKILL from the kernel if the kubelet's thread dies (``PR_SET_PDEATHSIG``; the
signal follows the thread that forked, and all forks happen on the kubelet's one thread), and
``stop()`` ends every one of them by PID. Each process's output goes to
``<log_dir>/<namespace>.<pod>.log``, the kubelet's own to ``<log_dir>/kubelet.log``.

Every container of a process pod shows the one process's status; model a pod as one container.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio import watch as k8s_watch
from kubernetes_asyncio.client.rest import ApiException

PROCESS_LABEL = "sluice.dev/process"
COMMAND_ANNOTATION = "sluice.dev/command"
READINESS_PATH_ANNOTATION = "sluice.dev/readiness-path"
RESTART_BACKOFF_ANNOTATION = "sluice.dev/restart-backoff-seconds"
DEFAULT_PORT = 8080
DEFAULT_RESTART_BACKOFF_S = 1.0
MAX_RESTART_BACKOFF_S = 30.0
STATUS_RETRY_S = 0.5
WATCH_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 10.0
SHUTDOWN_GRACE_S = 5.0
SSL_CLOSE_S = 0.25

ROOT = Path(__file__).resolve().parents[2]

_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ContainerConfigError(ValueError):
    """The pod does not say what to run; shown as CreateContainerConfigError."""


@dataclass(frozen=True)
class Probe:
    path: str
    port: int
    period_s: float
    initial_delay_s: float
    timeout_s: float
    failure_threshold: int


@dataclass(frozen=True)
class ProcessSpec:
    """What to run for one pod, read from its spec and annotations."""

    argv: list[str]
    env: dict[str, str]
    port: int
    probe: Probe | None
    restart_policy: str
    restart_backoff_s: float
    grace_s: float

    @classmethod
    def of(cls, pod: Any) -> ProcessSpec:
        annotations = pod.metadata.annotations or {}
        container = pod.spec.containers[0]
        port = next((p.container_port for p in container.ports or []), DEFAULT_PORT)
        ip = pod.status.pod_ip
        raw = annotations.get(COMMAND_ANNOTATION)
        if raw is None:
            raise ContainerConfigError(f"annotation {COMMAND_ANNOTATION} is missing")
        try:
            template = json.loads(raw)
        except ValueError as error:
            raise ContainerConfigError(f"annotation {COMMAND_ANNOTATION}: {error}") from error
        if not (isinstance(template, list) and template
                and all(isinstance(arg, str) for arg in template)):
            raise ContainerConfigError(
                f"annotation {COMMAND_ANNOTATION}: must be a non-empty JSON list of strings"
            )
        values = {"{ip}": ip, "{port}": str(port), "{name}": pod.metadata.name,
                  "{namespace}": pod.metadata.namespace, "{python}": sys.executable}
        argv = []
        for arg in template:
            for placeholder, value in values.items():
                arg = arg.replace(placeholder, value)
            argv.append(arg)
        return cls(
            argv=argv,
            env=_environment(pod, container, port),
            port=port,
            probe=_probe(container, annotations, port),
            restart_policy=pod.spec.restart_policy or "Always",
            restart_backoff_s=float(
                annotations.get(RESTART_BACKOFF_ANNOTATION, DEFAULT_RESTART_BACKOFF_S)
            ),
            grace_s=float(
                pod.metadata.deletion_grace_period_seconds
                or pod.spec.termination_grace_period_seconds
                or 30
            ),
        )


def _environment(pod: Any, container: Any, port: int) -> dict[str, str]:
    fields = {"metadata.name": pod.metadata.name, "metadata.namespace": pod.metadata.namespace,
              "status.podIP": pod.status.pod_ip}
    env = {"PORT": str(port), "POD_IP": pod.status.pod_ip}
    for variable in container.env or []:
        if variable.value is not None:
            env[variable.name] = variable.value
        elif variable.value_from and variable.value_from.field_ref:
            path = variable.value_from.field_ref.field_path
            if path in fields:
                env[variable.name] = fields[path]
    return env


def _probe(container: Any, annotations: dict[str, str], port: int) -> Probe | None:
    probe = container.readiness_probe
    if probe is not None and probe.http_get is not None:
        probe_port = probe.http_get.port
        if isinstance(probe_port, str) and not probe_port.isdigit():
            named = probe_port
            probe_port = next((p.container_port for p in container.ports or []
                               if p.name == named), None)
            if probe_port is None:
                raise ContainerConfigError(f"readinessProbe: no container port named {named}")
        return Probe(
            path=probe.http_get.path or "/",
            port=int(probe_port),
            period_s=float(probe.period_seconds or 10),
            initial_delay_s=float(probe.initial_delay_seconds or 0),
            timeout_s=float(probe.timeout_seconds or 1),
            failure_threshold=int(probe.failure_threshold or 3),
        )
    path = annotations.get(READINESS_PATH_ANNOTATION)
    if path:
        return Probe(path=path, port=port, period_s=1.0, initial_delay_s=0.0, timeout_s=1.0,
                     failure_threshold=3)
    return None


class PodRunner:
    """One pod's process: started, probed, restarted, reported, stopped."""

    def __init__(self, kubelet: ProcessKubelet, pod: Any) -> None:
        self.kubelet = kubelet
        self.namespace = pod.metadata.namespace
        self.name = pod.metadata.name
        self.uid = pod.metadata.uid
        self.pod = pod
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.ready = False
        self._ready_changed_at = _now()
        self._container_state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self._last_state: dict[str, Any] = {}
        self._started = False
        self._phase: str | None = None
        self._stop_grace_s: float | None = None
        self._status_dirty = asyncio.Event()
        self._task = asyncio.create_task(self._lifecycle(), name=f"pod {self.key}")
        self._status_task = asyncio.create_task(self._status_writer(), name=f"status {self.key}")

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stops the process (SIGTERM, SIGKILL after ``grace_s``, by default the pod's
        termination grace period) and the runner."""
        self._stop_grace_s = grace_s
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._status_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._status_task

    # lifecycle

    async def _lifecycle(self) -> None:
        try:
            spec = ProcessSpec.of(self.pod)
        except ValueError as error:  # ContainerConfigError, or a malformed number
            self._set_waiting("CreateContainerConfigError", str(error))
            self.kubelet.report(f"{self.key}: {error}")
            return
        backoff = spec.restart_backoff_s
        try:
            while True:
                started_at = _now()
                try:
                    self.process = self._spawn(spec)
                except OSError as error:
                    self._set_waiting("RunContainerError", f"{spec.argv[0]}: {error}")
                    exit_code: int | None = None
                else:
                    self._set_running(started_at)
                    exit_code = await self._supervise(self.process, spec)
                    self.process = None
                    if spec.restart_policy == "Never" or (
                        spec.restart_policy == "OnFailure" and exit_code == 0
                    ):
                        self._set_terminated(exit_code, started_at, final=True)
                        return
                self.restarts += 1
                if exit_code is not None:
                    self._set_terminated(exit_code, started_at, final=False)
                self._set_waiting(
                    "CrashLoopBackOff",
                    f"back-off {backoff:g}s restarting failed container="
                    f"{self.pod.spec.containers[0].name} pod={self.name}_{self.namespace}"
                    f"({self.uid})",
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_RESTART_BACKOFF_S)
        finally:
            if self.process is not None:
                grace_s = spec.grace_s if self._stop_grace_s is None else self._stop_grace_s
                await _terminate(self.process, grace_s)
                self.process = None

    def _spawn(self, spec: ProcessSpec) -> subprocess.Popen[bytes]:
        log_path = self.kubelet.log_dir / f"{self.namespace}.{self.name}.log"
        with open(log_path, "ab") as log:
            log.write(f"--- {_now()} start #{self.restarts}: {spec.argv}\n".encode())
            log.flush()
            return subprocess.Popen(
                spec.argv,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **spec.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    async def _supervise(self, process: subprocess.Popen[bytes], spec: ProcessSpec) -> int:
        """Probes while the process runs; returns its exit code."""
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        pidfd = os.pidfd_open(process.pid)
        loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
        prober = asyncio.create_task(self._probe_forever(spec))
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober
        return process.wait()

    async def _probe_forever(self, spec: ProcessSpec) -> None:
        probe = spec.probe
        if probe is None:
            self._set_ready(True)
            return
        await asyncio.sleep(probe.initial_delay_s)
        misses = 0
        url = f"http://{self.pod.status.pod_ip}:{probe.port}{probe.path}"
        while True:
            if await self.kubelet.probe(url, probe.timeout_s):
                misses = 0
                self._set_ready(True)
            else:
                misses += 1
                if misses >= probe.failure_threshold:
                    self._set_ready(False)
            await asyncio.sleep(probe.period_s)

    # status, as the kubelet reports it

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self._ready_changed_at = _now()
            self._status_dirty.set()

    def _set_running(self, started_at: str) -> None:
        self._started = True
        self._container_state = {"running": {"startedAt": started_at}}
        self._status_dirty.set()

    def _set_waiting(self, reason: str, message: str) -> None:
        self._started = False
        self._container_state = {"waiting": {"reason": reason, "message": message}}
        self.ready = False
        self._ready_changed_at = _now()
        self._status_dirty.set()

    def _set_terminated(self, exit_code: int, started_at: str, *, final: bool) -> None:
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": started_at,
            "finishedAt": _now(),
        }
        self._started = False
        self.ready = False
        self._ready_changed_at = _now()
        if final:
            self._container_state = {"terminated": terminated}
            self._phase = "Succeeded" if exit_code == 0 else "Failed"
        else:
            self._last_state = {"terminated": terminated}
        self._status_dirty.set()

    def _status(self) -> dict[str, Any]:
        # A state has exactly one of running/waiting/terminated: null out the other two, in
        # case the apiserver merges this list element with the previous one.
        state = {"running": None, "waiting": None, "terminated": None, **self._container_state}
        ready = "True" if self.ready else "False"
        not_ready = {} if self.ready else {
            "reason": "ContainersNotReady",
            "message": f"containers with unready status: [{self.pod.spec.containers[0].name}]",
        }
        status: dict[str, Any] = {
            "conditions": [
                {"type": kind, "status": ready, "lastTransitionTime": self._ready_changed_at,
                 "reason": not_ready.get("reason"), "message": not_ready.get("message")}
                for kind in ("Ready", "ContainersReady")
            ],
            "containerStatuses": [
                {
                    "name": container.name,
                    "image": container.image,
                    "imageID": container.image,
                    "ready": self.ready,
                    "started": self._started,
                    "restartCount": self.restarts,
                    "state": state,
                    "lastState": self._last_state,
                }
                for container in self.pod.spec.containers
            ],
        }
        if self._phase is not None:
            status["phase"] = self._phase
        return status

    async def _status_writer(self) -> None:
        """Writes the latest status whenever it changes; retries until the apiserver takes it."""
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            try:
                await self.kubelet.core.patch_namespaced_pod_status(
                    self.name, self.namespace, {"status": self._status()},
                    _request_timeout=REQUEST_TIMEOUT_S,
                )
            except ApiException as error:
                if error.status == 404:
                    return  # the pod is gone
                self.kubelet.log.warning("%s: status patch failed: %s", self.key, error)
                self._retry_status_later()
            except (aiohttp.ClientError, TimeoutError) as error:
                self.kubelet.log.warning("%s: status patch failed: %r", self.key, error)
                self._retry_status_later()

    def _retry_status_later(self) -> None:
        asyncio.get_running_loop().call_later(STATUS_RETRY_S, self._status_dirty.set)


async def _terminate(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; reaps the process, also when cancelled during
    the grace period (the kubelet shutting down): SIGKILL at once, never left running."""
    if process.poll() is not None:
        return
    process.terminate()
    deadline = asyncio.get_running_loop().time() + grace_s
    try:
        while process.poll() is None:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


class ProcessKubelet:
    """Runs on its own thread with its own event loop; ``start()``, then ``stop()``."""

    def __init__(self, kubeconfig: Path, log_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.errors: list[str] = []
        """Problems a test should hear about: pods that say nothing runnable."""
        self.runners: dict[tuple[str, str], PodRunner] = {}
        self.core: k8s.CoreV1Api
        self.log = logging.getLogger(f"process-kubelet.{id(self)}")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._thread_main, name="process-kubelet",
                                        daemon=True)
        self._started = threading.Event()
        self._main: asyncio.Task[None] | None = None
        self._finishing: set[tuple[str, str]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._probes: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_dir / "kubelet.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(handler)
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the process kubelet did not start within 30 s")

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=60)
            self._thread.join(timeout=30)
        for handler in list(self.log.handlers):
            handler.close()
            self.log.removeHandler(handler)

    def pids(self, namespace: str | None = None) -> dict[str, int]:
        """Live process PIDs by pod name (in ``namespace`` if given)."""
        return {
            name: runner.process.pid
            for (ns, name), runner in list(self.runners.items())
            if runner.process is not None and namespace in (None, ns)
        }

    def report(self, problem: str) -> None:
        self.log.error("%s", problem)
        self.errors.append(problem)

    async def probe(self, url: str, timeout_s: float) -> bool:
        assert self._probes is not None
        try:
            async with self._probes.get(
                url, timeout=aiohttp.ClientTimeout(total=timeout_s), allow_redirects=False
            ) as response:
                return 200 <= response.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    # the thread

    def _thread_main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._main = self._loop.create_task(self._run())
            self._loop.run_until_complete(self._main)
        except asyncio.CancelledError:
            pass
        finally:
            # TLS connections cancelled mid-request close in later loop iterations; without
            # them the loop would close first and leave their sockets to the GC (ResourceWarning).
            # aiohttp's own advice for a graceful shutdown.
            self._loop.run_until_complete(asyncio.sleep(SSL_CLOSE_S))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _shutdown(self) -> None:
        assert self._main is not None
        self._main.cancel()

    async def _run(self) -> None:
        configuration = k8s.Configuration()
        await k8s_config.load_kube_config(
            config_file=str(self.kubeconfig), client_configuration=configuration,
            persist_config=False,
        )
        # No proxy from the environment: probes go to loopback pod IPs.
        async with k8s.ApiClient(configuration) as api, aiohttp.ClientSession(
            trust_env=False
        ) as probes:
            self.core = k8s.CoreV1Api(api)
            self._probes = probes
            self._started.set()
            try:
                await self._sync_forever()
            finally:
                for task in list(self._background):
                    task.cancel()
                await asyncio.gather(*self._background, return_exceptions=True)
                await asyncio.gather(
                    *(runner.stop(SHUTDOWN_GRACE_S) for runner in self.runners.values())
                )
                self.runners.clear()

    async def _sync_forever(self) -> None:
        selector = f"{PROCESS_LABEL}=true"
        while True:
            try:
                listing = await self.core.list_pod_for_all_namespaces(
                    label_selector=selector, _request_timeout=REQUEST_TIMEOUT_S
                )
                present = set()
                for pod in listing.items:
                    present.add((pod.metadata.namespace, pod.metadata.name))
                    await self._observe(pod)
                for key in set(self.runners) - present:
                    await self._forget(key)
                async with k8s_watch.Watch() as watch:
                    async for event in watch.stream(
                        self.core.list_pod_for_all_namespaces, label_selector=selector,
                        resource_version=listing.metadata.resource_version,
                        timeout_seconds=WATCH_TIMEOUT_S,
                        _request_timeout=WATCH_TIMEOUT_S + REQUEST_TIMEOUT_S,
                    ):
                        pod = event["object"]
                        if event["type"] == "DELETED":
                            await self._forget((pod.metadata.namespace, pod.metadata.name))
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            await self._observe(pod)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # apiserver away, 410, timeouts: list again
                self.log.warning("pod sync: %r; listing again", error)
                await asyncio.sleep(0.5)

    async def _observe(self, pod: Any) -> None:
        key = (pod.metadata.namespace, pod.metadata.name)
        runner = self.runners.get(key)
        if runner is not None and runner.uid != pod.metadata.uid:
            await self._forget(key)  # a new pod under an old name
            runner = None
        if pod.metadata.deletion_timestamp is not None:
            if pod.spec.node_name:
                task = asyncio.create_task(self._finish_deletion(pod))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return
        if runner is None and pod.spec.node_name and pod.status and pod.status.pod_ip:
            self.runners[key] = PodRunner(self, pod)

    async def _forget(self, key: tuple[str, str]) -> None:
        runner = self.runners.pop(key, None)
        if runner is not None:
            await runner.stop()

    async def _finish_deletion(self, pod: Any) -> None:
        """Stop the process, then remove the pod, as the kubelet does after a graceful stop."""
        key = (pod.metadata.namespace, pod.metadata.name)
        runner = self.runners.get(key)
        if key in self._finishing:
            return
        self._finishing.add(key)
        try:
            await self._stop_then_delete(pod, runner)
        finally:
            self._finishing.discard(key)

    async def _stop_then_delete(self, pod: Any, runner: PodRunner | None) -> None:
        key = (pod.metadata.namespace, pod.metadata.name)
        if runner is not None and runner.uid == pod.metadata.uid:
            del self.runners[key]
            await runner.stop(float(pod.metadata.deletion_grace_period_seconds or 0) or None)
        try:
            await self.core.delete_namespaced_pod(
                pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0,
                body=k8s.V1DeleteOptions(grace_period_seconds=0,
                                         preconditions=k8s.V1Preconditions(uid=pod.metadata.uid)),
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except ApiException as error:
            if error.status not in (404, 409):
                self.log.warning("%s: final delete failed: %s", key, error)
        except (aiohttp.ClientError, TimeoutError) as error:
            self.log.warning("%s: final delete failed: %r", key, error)



def _process_pod(expressions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"key": f'.metadata.labels["{PROCESS_LABEL}"]', "operator": "In", "values": ["true"]},
        *expressions,
    ]


_START_STAGE = {
    "apiVersion": "kwok.x-k8s.io/v1alpha1",
    "kind": "Stage",
    "metadata": {"name": "pod-process-start"},
    "spec": {
        "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
        "selector": {"matchExpressions": _process_pod([
            {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
            {"key": ".status.podIP", "operator": "DoesNotExist"},
        ])},
        # kwok's own pod-ready with Ready, ContainersReady and the containers' ready false: the
        # process kubelet takes it from here.
        "next": {"statusTemplate": """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: ContainersNotReady
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: ContainersNotReady
  type: ContainersReady
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  imageID: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  started: false
  restartCount: 0
  state:
    waiting:
      reason: ContainerCreating
{{ end }}
{{ $hostIPs := NodeIPsWith .spec.nodeName }}
{{ with $hostIPs }}
hostIP: {{ index . 0 | Quote }}
hostIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
{{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
{{ with $podIPs }}
podIP: {{ index . 0 | Quote }}
podIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
phase: Running
startTime: {{ $now | Quote }}
"""},
    },
}

_DELETE_STAGE = {
    "apiVersion": "kwok.x-k8s.io/v1alpha1",
    "kind": "Stage",
    "metadata": {"name": "pod-process-delete"},
    "spec": {
        "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
        "selector": {"matchExpressions": _process_pod([
            {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
        ])},
        # Only a backstop for pods no process kubelet runs: at the end of the grace period,
        # when the real kubelet would have killed the container. The process kubelet removes
        # its pods as soon as their process has stopped.
        "delay": {
            "durationMilliseconds": 30_000,
            "durationFrom": {"expressionFrom": ".metadata.deletionTimestamp"},
        },
        "next": {"delete": True},
    },
}


def kwok_stages(base: str) -> str:
    """kwok's stages (``base``, the build's kwok-stages.yaml) with process pods left out of
    kwok's pod-ready and pod-delete, plus the stages that hand them to the process kubelet."""
    stages = [stage for stage in yaml.safe_load_all(base) if stage]
    for stage in stages:
        if stage["spec"]["resourceRef"]["kind"] == "Pod" and stage["metadata"]["name"] in (
            "pod-ready", "pod-delete",
        ):
            stage["spec"]["selector"]["matchExpressions"].append(
                {"key": f'.metadata.labels["{PROCESS_LABEL}"]', "operator": "DoesNotExist"}
            )
    return yaml.safe_dump_all([*stages, _START_STAGE, _DELETE_STAGE], sort_keys=False)
