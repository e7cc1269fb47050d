"""A real Kubernetes control plane run as local processes on loopback: the test cluster.

etcd, kube-apiserver, kube-scheduler, kube-controller-manager and kwok (which plays the
kubelet of fake nodes) are started on free 127.0.0.1 ports. Binaries come from
build-control-plane.sh, which builds them from Go modules into a cache outside the repo and is
a sub-second no-op once they exist. See README.md in this directory.

tests/k8s/conftest.py's fixtures start it once per test session (``started``); the Kubernetes
benchmarks (loadtests/kube_bench.py) start it the same way, outside pytest.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import functools
import json
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.k8s import process_kubelet

HERE = Path(__file__).parent
BUILD_SCRIPT = HERE / "build-control-plane.sh"

# kwok hands out pod IPs from this range; all of 127/8 is routed to `lo`, so a test can bind a
# fake model server on a pod IP and nothing is ever sent off the machine.
POD_CIDR = "127.1.0.0/16"
STARTUP_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0

# kwok's node scheme (from its virtual-gpu-node example): the taint keeps pods that did not opt
# in off fake nodes, as GPU taints do on real clusters. Pods opt in by tolerating the key.
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}


class ControlPlaneError(RuntimeError):
    """A component failed to start; the message carries the tail of its log."""


@functools.cache
def control_plane_bin_dir() -> Path:
    """Runs the idempotent build script and returns the directory holding the binaries."""
    result = subprocess.run(
        [str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
    )  # stderr stays attached so a cold build shows its progress
    return Path(result.stdout.strip().splitlines()[-1])


@dataclasses.dataclass(frozen=True)
class Cluster:
    server: str
    kubeconfig: Path
    ca_file: Path
    log_dir: Path
    unprivileged_token: str
    """Bearer token of a user that exists but has no RBAC bindings at all."""
    etcd_url: str
    """etcd's client URL (plain HTTP on loopback): its v3 JSON gateway can bump the revision
    or compact, which is how a test makes a watch's resourceVersion expire."""
    apiserver: ApiserverControl = dataclasses.field(repr=False)
    """Stops and restarts kube-apiserver, same port and certificates, for outage tests."""

    def api_client(self, token: str | None = None) -> client.ApiClient:
        """A client for the admin user of the kubeconfig, or for `token` if given.

        Close it (or use it as a context manager) so its connection pool is released.
        """
        configuration = client.Configuration()
        if token is None:
            config.load_kube_config(
                config_file=str(self.kubeconfig), client_configuration=configuration
            )
        else:
            # Not via the kubeconfig: its loader installs a hook that restores its own token.
            configuration.host = self.server
            configuration.ssl_ca_cert = str(self.ca_file)
            configuration.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(configuration)


@contextlib.contextmanager
def started(work_dir: Path) -> Iterator[Cluster]:
    """The control plane, its state and logs under ``work_dir`` (which must exist), for the
    body of a ``with``; every process is stopped after it, or at interpreter exit."""
    processes = _Processes(work_dir / "logs")
    # atexit covers an interpreter exit that skips the teardown; stop_all is idempotent.
    atexit.register(processes.stop_all)
    try:
        yield _start_cluster(control_plane_bin_dir(), work_dir, processes)
    finally:
        processes.stop_all()
        atexit.unregister(processes.stop_all)
        # etcd preallocates 64 MiB WAL files; keep only the logs.
        shutil.rmtree(work_dir / "etcd", ignore_errors=True)


def wait_schedulable(core: client.CoreV1Api, name: str) -> None:
    """Returns once kwok's node ``name`` can take pods."""
    wait_until(lambda: is_schedulable(core.read_node(name)), timeout_s=60,
               what=f"node {name} to be Ready without the not-ready taint")


def gpu_node_manifest(name: str, *, gpus: int, cpu: str, memory: str, pods: int = 110) -> dict:
    """A Node as kwok's examples declare one; kwok's node-initialize stage fills in the rest."""
    resources = {"cpu": cpu, "memory": memory, "pods": str(pods), "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
            },
        },
        "spec": {"taints": [KWOK_TAINT]},
        # The apiserver keeps status on create (the kubelet relies on that), and kwok keeps
        # the capacity it finds, so the scheduler sees these GPUs.
        "status": {"capacity": resources, "allocatable": resources},
    }


def is_schedulable(node: client.V1Node) -> bool:
    ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
    # TaintNodesByCondition adds node.kubernetes.io/not-ready at creation; KCM's node
    # lifecycle controller lifts it once kwok reports Ready.
    not_ready_taint = any(t.key == "node.kubernetes.io/not-ready" for t in node.spec.taints or [])
    return ready and not not_ready_taint


def is_gone(read: Callable[[], object]) -> bool:
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    processes: _Processes | None = None,
) -> None:
    """Polls `predicate` against a deadline; with `processes`, fails fast if one of them dies."""
    deadline = time.monotonic() + timeout_s
    while True:
        if processes:
            processes.check_alive()
        if predicate():
            return
        if time.monotonic() > deadline:
            logs = f"\n{processes.all_log_tails()}" if processes else ""
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}{logs}")
        time.sleep(0.2)


class _Processes:
    """Child processes started by the fixture, each logging to its own file."""

    def __init__(self, log_dir: Path) -> None:
        log_dir.mkdir()
        self.log_dir = log_dir
        self._started: list[tuple[str, subprocess.Popen[bytes]]] = []
        # PR_SET_PDEATHSIG fires when the *thread* that forked exits, not the process: a
        # restart from asyncio.to_thread would die with that worker thread at the end of the
        # test's event loop. Every fork happens on this one thread, alive until stop_all.
        self._spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="k8s-spawn")

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        process = self._spawner.submit(self._spawn, name, argv).result()
        self._started.append((name, process))
        return process

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        # Appended: a restarted component keeps its earlier log.
        with open(self.log_dir / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    def check_alive(self) -> None:
        for name, process in self._started:
            if process.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {process.returncode}\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 40) -> str:
        text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def all_log_tails(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{self.log_tail(name, lines=15)}" for name, _ in self._started
        )

    def stop(self, name: str) -> None:
        """Stops the named process (SIGTERM, then SIGKILL) and forgets it."""
        for entry in [entry for entry in self._started if entry[0] == name]:
            self._started.remove(entry)
            _stop(entry[1])

    def stop_all(self) -> None:
        # One at a time, newest first: kube-apiserver's graceful shutdown hangs until SIGKILL
        # when etcd goes away under it.
        while self._started:
            _, process = self._started.pop()
            _stop(process)
        self._spawner.shutdown()


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ApiserverControl:
    """Stops and starts the fixture's kube-apiserver (the other components stay up and
    reconnect, as they would on a real cluster)."""

    def __init__(self, processes: _Processes, argv: list[str], server: str, ca_file: Path):
        self._processes = processes
        self._argv = argv
        self._server = server
        self._ca_file = ca_file

    def stop(self) -> None:
        self._processes.stop("kube-apiserver")

    def start(self) -> None:
        """Starts it again and returns once /readyz answers 200."""
        self._processes.start("kube-apiserver", self._argv)
        _wait_for_http_ok(
            f"{self._server}/readyz",
            self._processes,
            what="kube-apiserver /readyz after a restart",
            context=ssl.create_default_context(cafile=str(self._ca_file)),
        )

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """The apiserver is down inside the block and back (ready) after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If pytest itself is killed (no teardown, no atexit), the kernel kills the children.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_loopback_ports(count: int) -> list[int]:
    # Hold every socket until all are picked so the ports are distinct.
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _start_cluster(bin_dir: Path, work_dir: Path, processes: _Processes) -> Cluster:
    etcd_client, etcd_peer, apiserver, scheduler, controller_manager = _free_loopback_ports(5)
    server = f"https://127.0.0.1:{apiserver}"
    cert_dir = work_dir / "pki"
    ca_file = work_dir / "ca.crt"
    kubeconfig = work_dir / "kubeconfig"
    admin_token, unprivileged_token = secrets.token_hex(16), secrets.token_hex(16)

    sa_key, sa_pub = work_dir / "sa.key", work_dir / "sa.pub"
    for argv in (
        ["openssl", "genrsa", "-out", str(sa_key), "2048"],
        ["openssl", "rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub)],
    ):
        subprocess.run(argv, check=True, capture_output=True)
    # Columns: token, user, uid, groups. system:masters bypasses RBAC entirely.
    tokens = work_dir / "tokens.csv"
    tokens.write_text(
        f'{admin_token},sluice-admin,sluice-admin,"system:masters"\n'
        f"{unprivileged_token},sluice-nobody,sluice-nobody\n"
    )
    # JSON is valid YAML, and both the Go and Python clients read it.
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "sluice-test",
                        "cluster": {"server": server, "certificate-authority": str(ca_file)},
                    }
                ],
                "users": [{"name": "sluice-admin", "user": {"token": admin_token}}],
                "contexts": [
                    {
                        "name": "sluice-test",
                        "context": {"cluster": "sluice-test", "user": "sluice-admin"},
                    }
                ],
                "current-context": "sluice-test",
            },
            indent=2,
        )
    )

    etcd_url = f"http://127.0.0.1:{etcd_client}"
    peer_url = f"http://127.0.0.1:{etcd_peer}"
    processes.start(
        "etcd",
        [
            str(bin_dir / "etcd"),
            "--name=default",
            f"--data-dir={work_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--unsafe-no-fsync",  # test data is throwaway; fsync dominates write latency
            "--log-level=warn",
        ],
    )
    _wait_for_http_ok(f"{etcd_url}/health", processes, what="etcd /health")

    apiserver_argv = [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        # Without it the apiserver advertises the default-route interface, or fails to
        # start on a machine that has none.
        "--advertise-address=127.0.0.1",
        f"--secure-port={apiserver}",
        f"--cert-dir={cert_dir}",  # self-generates apiserver.crt: leaf, then its CA
        f"--token-auth-file={tokens}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer={server}",
        f"--service-account-key-file={sa_pub}",
        f"--service-account-signing-key-file={sa_key}",
        "--service-cluster-ip-range=10.0.0.0/24",  # allocated, never dialled
        "--allow-privileged=true",
        # The reconciler would write 127.0.0.1 into the `kubernetes` EndpointSlice, which
        # validation rejects for loopback addresses.
        "--endpoint-reconciler-type=none",
    ]
    processes.start("kube-apiserver", apiserver_argv)
    wait_until(
        lambda: _extract_serving_ca(cert_dir / "apiserver.crt", ca_file),
        timeout_s=STARTUP_TIMEOUT_S,
        what="kube-apiserver to write its serving certificate",
        processes=processes,
    )
    _wait_for_http_ok(
        f"{server}/readyz",
        processes,
        what="kube-apiserver /readyz",
        context=ssl.create_default_context(cafile=str(ca_file)),
    )

    common_controller_flags = [
        f"--kubeconfig={kubeconfig}",
        # Health checks need no credentials. Without delegated-auth kubeconfigs these ports
        # serve nothing else, which is all the tests need.
        "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
    ]
    processes.start(
        "kube-scheduler",
        [
            str(bin_dir / "kube-scheduler"),
            *common_controller_flags,
            f"--secure-port={scheduler}",
        ],
    )
    processes.start(
        "kube-controller-manager",
        [
            str(bin_dir / "kube-controller-manager"),
            *common_controller_flags,
            f"--secure-port={controller_manager}",
            f"--service-account-private-key-file={sa_key}",
            f"--root-ca-file={ca_file}",
            # Endpoint(Slice) validation rejects the loopback pod IPs kwok hands out, so these
            # controllers would only retry and log errors. Discover pods through Pods instead.
            "--controllers=*,-endpoints-controller,-endpointslice-controller,"
            "-endpointslice-mirroring-controller",
        ],
    )
    processes.start(
        "kwok",
        [
            str(bin_dir / "kwok"),
            f"--kubeconfig={kubeconfig}",
            # kwok >= v0.8.0 has no built-in stages; the build script copies kwokctl's set,
            # to which process pods (process_kubelet.py) add theirs.
            f"--config={_kwok_stages(bin_dir, work_dir)}",
            "--manage-all-nodes=true",
            f"--cidr={POD_CIDR}",
            "--node-ip=127.0.0.1",
            "--node-lease-duration-seconds=40",
            # Neither --server-address nor --node-port: kwok then opens no port at all.
        ],
    )
    insecure = ssl.create_default_context()  # self-signed, in-memory certs of the controllers
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    for name, port in (
        ("kube-scheduler", scheduler),
        ("kube-controller-manager", controller_manager),
    ):
        _wait_for_http_ok(
            f"https://127.0.0.1:{port}/healthz",
            processes,
            what=f"{name} /healthz",
            context=insecure,
        )

    cluster = Cluster(
        server=server,
        kubeconfig=kubeconfig,
        ca_file=ca_file,
        log_dir=processes.log_dir,
        unprivileged_token=unprivileged_token,
        etcd_url=etcd_url,
        apiserver=ApiserverControl(processes, apiserver_argv, server, ca_file),
    )
    # KCM's serviceaccount controller creates it; pods cannot be admitted in `default` before.
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        wait_until(
            lambda: (
                not is_gone(lambda: core.read_namespaced_service_account("default", "default"))
            ),
            timeout_s=STARTUP_TIMEOUT_S,
            what="the default ServiceAccount (created by kube-controller-manager)",
            processes=processes,
        )
    return cluster


def _kwok_stages(bin_dir: Path, work_dir: Path) -> Path:
    path = work_dir / "kwok-stages.yaml"
    path.write_text(process_kubelet.kwok_stages((bin_dir.parent / "kwok-stages.yaml").read_text()))
    return path


def _wait_for_http_ok(
    url: str, processes: _Processes, *, what: str, context: ssl.SSLContext | None = None
) -> None:
    def responds_ok() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return response.status == 200
        except OSError:  # refused, reset, TLS or HTTP errors while still starting
            return False

    wait_until(responds_ok, timeout_s=STARTUP_TIMEOUT_S, what=what, processes=processes)


def _extract_serving_ca(serving_cert: Path, ca_file: Path) -> bool:
    """Copies the CA out of the apiserver's self-generated cert file, once fully written.

    Clients could trust the whole file, but KCM publishes --root-ca-file as the cluster's
    trust bundle and rejects a leaf (CA:FALSE) in it.
    """
    if not serving_cert.exists():
        return False
    end = "-----END CERTIFICATE-----\n"
    blocks = [block + end for block in serving_cert.read_text().split(end)[:-1]]
    if len(blocks) < 2:
        return False
    ca_file.write_text("".join(blocks[1:]))
    return True
