"""A real Kubernetes control plane on loopback for integration tests.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok run as child processes on
free 127.0.0.1 ports under one work directory. kwok plays the kubelet of every Node annotated
``kwok.x-k8s.io/node=fake``: it marks them Ready, renews their leases and runs their pods.

    with ControlPlane(build_binaries()) as cp:
        api = kubernetes.config.new_client_from_config(config_file=str(cp.kubeconfig))
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

from tests.cluster import pki

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CLUSTER_IP_RANGE = "198.19.128.0/20"
SERVICE_NODE_PORT_RANGE = "30000-32767"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Bounded waits, in seconds. Two cores and a cold page cache make the apiserver the slow one.
ETCD_TIMEOUT = 30.0
APISERVER_TIMEOUT = 90.0
COMPONENT_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
RESYNC_GRACE = 10.0  # after an apiserver restart, for the controllers to watch again
_POLL_INTERVAL = 0.1
_PORT_ATTEMPTS = 3
_PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    """A component could not be built, started or reached; the message names its log."""


def read_versions() -> dict[str, str]:
    """Return the pinned versions of versions.env (K8S_VERSION, ETCD_VERSION, KWOK_VERSION, CNI_PLUGINS_VERSION)."""
    versions = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            versions[key.strip()] = value.strip()
    return versions


def build_binaries(timeout: float = 3600.0, *, show_progress: bool = False) -> Path:
    """Run tests/cluster/build (a no-op when its cache is warm) and return the bin directory."""
    try:
        proc = subprocess.run(
            [str(BUILD_SCRIPT)],
            stdout=subprocess.PIPE,
            stderr=None if show_progress else subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise ControlPlaneError(f"{BUILD_SCRIPT} did not finish within {timeout:.0f}s") from e
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-30:])
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed with status {proc.returncode}:\n{tail}")
    return Path(lines[-1])


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this child when the process that started it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_ERROR_LINE = re.compile(r'^(E\d{4} |Error|error:|F\d{4} )|"level":"(error|fatal|panic)"|"level":"ERROR"')


def _log_tail(path: Path, lines: int = 20) -> str:
    """Return the error lines of a log's last run (usage text buries them) and its last lines."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    run = text.splitlines()
    starts = [i for i, line in enumerate(run) if line.startswith("==> ")]
    run = run[starts[-1] + 1 :] if starts else run
    errors = [line for line in run if _ERROR_LINE.search(line)][:10]
    tail = run[-lines:]
    head = [line for line in errors if line not in tail]
    return "\n".join([*head, *(["..."] if head else []), *tail])


@dataclass
class _Component:
    """One child process: its command line, log file and, while running, its Popen."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    wait: Callable[[_Component], None] = lambda component: None
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self, die_with_parent: bool) -> None:
        """Start the process, appending to its log (a restart keeps the earlier output)."""
        self._log = self.log_path.open("ab")
        self._log.write(f"\n==> {time.strftime('%H:%M:%S')} {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )

    def running(self) -> bool:
        """Tell whether the process was started and has not exited."""
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        """SIGTERM, wait a bounded time, then SIGKILL; safe to call twice."""
        if self.popen is not None:
            if self.popen.poll() is None:
                self.popen.terminate()
                try:
                    self.popen.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(STOP_TIMEOUT)
            self.popen = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def failure(self, what: str) -> ControlPlaneError:
        """Build the error for a component that died or never became ready, with its log tail."""
        status = "" if self.popen is None else f" (exit status {self.popen.poll()})"
        return ControlPlaneError(f"{self.name}: {what}{status}; log {self.log_path}:\n{_log_tail(self.log_path)}")


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on 127.0.0.1.

    The work directory holds pki/, etcd/, kubeconfigs/ and logs/. Without ``workdir`` a temporary
    directory is created and removed by stop(); a given workdir is left in place. ``extra_args``
    adds flags per component, e.g. ``{"kube-apiserver": ["--feature-gates=..."]}``.

    With ``die_with_parent`` the kernel SIGKILLs the components when the thread that started them
    exits, so even a killed test run leaves no process behind (its temporary directory stays).
    ``serving_addresses`` adds IP addresses to the API server's certificate (loopback is always in
    it), for clients that reach it through a forwarder on another address, as at a K3s master's.
    """

    def __init__(
        self,
        bin_dir: Path,
        workdir: Path | None = None,
        *,
        extra_args: Mapping[str, Sequence[str]] | None = None,
        die_with_parent: bool = True,
        serving_addresses: Sequence[str] = (),
    ) -> None:
        self.bin_dir = Path(bin_dir)
        self.serving_addresses = tuple(serving_addresses)
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="keybuzz-fix-cp-")) if workdir is None else Path(workdir)
        self.logs_dir = self.workdir / "logs"
        self.pki_dir = self.workdir / "pki"
        self.kubeconfig = self.workdir / "kubeconfigs" / "admin.kubeconfig"
        self.server = ""
        self.version = ""
        self.apiserver_port = 0
        self._die_with_parent = die_with_parent
        self._extra_args = {name: list(args) for name, args in (extra_args or {}).items()}
        self._components: dict[str, _Component] = {}
        self._ca: pki.CertificateAuthority | None = None
        self._identities: dict[str, pki.KeyPair] = {}
        self._etcd_url = ""
        self._watches_before_stop = 0
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every component in order, each checked ready before the next; stop all on failure."""
        if self._started:
            return
        self._started = True
        atexit.register(self.stop)
        try:
            for sub in (self.logs_dir, self.pki_dir, self.kubeconfig.parent, self.workdir / "etcd"):
                sub.mkdir(parents=True, exist_ok=True)
            self._write_pki()
            self._start_with_port_retry("etcd", self._etcd, self._wait_etcd)
            self._start_with_port_retry("kube-apiserver", self._apiserver, self._wait_apiserver)
            self._write_kubeconfigs()
            self._start_with_port_retry("kube-controller-manager", self._controller_manager, self._wait_https_healthz)
            self._start_with_port_retry("kube-scheduler", self._scheduler, self._wait_https_healthz)
            self._start_with_port_retry("kwok", self._kwok, self._wait_kwok)
            self.version = self._get_json("/version")["gitVersion"]
        except BaseException:
            self.stop(keep_logs=True)
            raise

    def stop(self, *, keep_logs: bool = False) -> None:
        """Stop every process (newest first); remove an own temporary workdir, maybe keeping logs/."""
        for component in reversed(list(self._components.values())):
            component.stop()
        self._components.clear()
        atexit.unregister(self.stop)
        if self._own_workdir and self.workdir.exists():
            if keep_logs and self.logs_dir.exists() and any(self.logs_dir.iterdir()):
                for child in self.workdir.iterdir():
                    if child != self.logs_dir:
                        shutil.rmtree(child, ignore_errors=True)
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
                if self.workdir.exists():  # a second pass raises whatever kept the first from finishing
                    shutil.rmtree(self.workdir)
        self._started = False

    def stop_apiserver(self) -> None:
        """Stop only kube-apiserver (a fault test); etcd keeps the data, the others keep retrying."""
        component = self._components["kube-apiserver"]
        if component.running():
            self._watches_before_stop = self._watch_count()
        component.stop()

    def start_apiserver(self) -> None:
        """Start kube-apiserver again on the same port and data; wait for /readyz and the watchers.

        After an outage the controllers re-list with backoff and act on their stale caches
        meanwhile (recreating what was just deleted, for one). So this also waits until the
        apiserver serves as many watches as before stop_apiserver() (a test must not hold a watch
        of its own across the restart). Backoff grows to 30 s over repeated outages: past
        RESYNC_GRACE the other components are restarted instead, which lists afresh.
        """
        component = self._components["kube-apiserver"]
        if component.running():
            return
        component.start(self._die_with_parent)
        self._wait_apiserver(component)
        wanted = self._watches_before_stop
        if self._until(RESYNC_GRACE, lambda: self._watch_count() >= wanted):
            return
        for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
            self._restart(name)
        if not self._until(COMPONENT_TIMEOUT, lambda: self._watch_count() >= wanted):
            raise component.failure(f"{self._watch_count()} of {wanted} watches back after a restart")

    def log_paths(self) -> dict[str, Path]:
        """Return each component's log file, for failure messages."""
        return {name: c.log_path for name, c in self._components.items()}

    def pids(self) -> dict[str, int]:
        """Return the pid of each running component."""
        return {n: c.popen.pid for n, c in self._components.items() if c.popen is not None and c.running()}

    # -- identities ------------------------------------------------------------------------------

    def user_kubeconfig(self, user: str, groups: list[str] | None = None) -> Path:
        """Write a kubeconfig for another identity (client cert CN=user, O=groups), e.g. a read-only one."""
        if self._ca is None or not self.server:
            raise ControlPlaneError("the control plane is not started")
        pair = self._ca.issue(user, list(groups or []))
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in user)
        path = self.kubeconfig.parent / f"user-{safe}.kubeconfig"
        self._write_kubeconfig(path, user, pair)
        return path

    # -- internals -------------------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        path = self.bin_dir / name
        if not os.access(path, os.X_OK):
            raise ControlPlaneError(f"{path} is missing: run {BUILD_SCRIPT}")
        return str(path)

    def _write_pki(self) -> None:
        self._ca = ca = pki.CertificateAuthority()
        ca.pair.write(self.pki_dir, "ca")
        pki.service_account_keys().write(self.pki_dir, "sa")
        ca.issue("kube-apiserver", server=True, client=False, addresses=self.serving_addresses).write(
            self.pki_dir, "apiserver"
        )
        for name in ("kube-controller-manager", "kube-scheduler"):
            ca.issue(name, server=True, client=False).write(self.pki_dir, f"{name}-serving")
        # Admin and component identities: system:masters, each under its own name in audit and logs.
        self._identities = {
            "admin": ca.issue("keybuzz-admin", ["system:masters"]),
            "kube-controller-manager": ca.issue("system:kube-controller-manager", ["system:masters"]),
            "kube-scheduler": ca.issue("system:kube-scheduler", ["system:masters"]),
            "kwok": ca.issue("kwok-controller", ["system:masters"]),
        }
        self._identities["admin"].write(self.pki_dir, "admin")

    def _write_kubeconfig(self, path: Path, user: str, pair: pki.KeyPair) -> None:
        assert self._ca is not None
        path.touch(mode=0o600)
        path.write_text(pki.kubeconfig(self.server, self._ca.cert_pem, user, pair))

    def _write_kubeconfigs(self) -> None:
        self._write_kubeconfig(self.kubeconfig, "admin", self._identities["admin"])
        for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
            path = self.kubeconfig.parent / f"{name}.kubeconfig"
            self._write_kubeconfig(path, name, self._identities[name])

    def _start_with_port_retry(
        self,
        name: str,
        argv_for: Callable[[int], tuple[list[str], dict[str, str]]],
        wait: Callable[[_Component], None],
    ) -> None:
        """Start a component on a fresh free port; if it loses a port race, retry with another port."""
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = free_port()
            argv, env = argv_for(port)
            argv += self._extra_args.get(name, [])
            component = _Component(name, argv, self.logs_dir / f"{name}.log", env, port, wait)
            self._components[name] = component
            component.start(self._die_with_parent)
            try:
                wait(component)
                return
            except ControlPlaneError:
                component.stop()
                if attempt == _PORT_ATTEMPTS or "address already in use" not in _log_tail(component.log_path):
                    raise

    def _restart(self, name: str) -> None:
        component = self._components[name]
        component.stop()
        component.start(self._die_with_parent)
        component.wait(component)

    @staticmethod
    def _until(timeout: float, check: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_INTERVAL)
        return True

    def _poll(self, component: _Component, what: str, timeout: float, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not component.running():
                raise component.failure(f"exited while waiting for {what}")
            if check():
                return
            if time.monotonic() > deadline:
                raise component.failure(f"{what} not ok within {timeout:.0f}s")
            time.sleep(_POLL_INTERVAL)

    # etcd

    def _etcd(self, port: int) -> tuple[list[str], dict[str, str]]:
        peer = free_port()
        self._etcd_url = f"http://127.0.0.1:{port}"
        peer_url = f"http://127.0.0.1:{peer}"
        return [
            self._bin("etcd"),
            "--name=default",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={self._etcd_url}",
            f"--advertise-client-urls={self._etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ], {}

    def _wait_etcd(self, component: _Component) -> None:
        def healthy() -> bool:
            body = _http_get(f"{self._etcd_url}/health")
            return body is not None and json.loads(body).get("health") == "true"

        self._poll(component, "/health", ETCD_TIMEOUT, healthy)

    # kube-apiserver

    def _apiserver(self, port: int) -> tuple[list[str], dict[str, str]]:
        self.apiserver_port = port
        self.server = f"https://127.0.0.1:{port}"
        p = self.pki_dir
        return [
            self._bin("kube-apiserver"),
            f"--etcd-servers={self._etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'apiserver'}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={p / 'sa.crt'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--service-node-port-range={SERVICE_NODE_PORT_RANGE}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            # The lease reconciler would publish 127.0.0.1 as the kubernetes Service endpoint, which
            # Endpoints validation rejects (loopback) every 10 s; nothing here needs that endpoint.
            "--endpoint-reconciler-type=none",
            # Close open watches on SIGTERM instead of waiting for them: stop_apiserver() takes 1 s, not 60.
            "--shutdown-watch-termination-grace-period=2s",
            "--profiling=false",
        ], {}

    def _admin_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        return ctx

    def _wait_apiserver(self, component: _Component) -> None:
        ctx = self._admin_ssl()
        self._poll(
            component,
            "/readyz",
            APISERVER_TIMEOUT,
            lambda: _http_get(f"{self.server}/readyz", ctx) == b"ok",
        )

    def _watch_count(self) -> int:
        """Count the watches the apiserver serves (its apiserver_longrunning_requests gauge)."""
        body = _http_get(f"{self.server}/metrics", self._admin_ssl(), timeout=10)
        if body is None:
            return -1
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in body.decode().splitlines()
            if line.startswith("apiserver_longrunning_requests{") and 'verb="WATCH"' in line
        )

    def _get_json(self, path: str) -> dict[str, str]:
        body = _http_get(f"{self.server}{path}", self._admin_ssl(), timeout=10)
        if body is None:
            raise ControlPlaneError(f"GET {self.server}{path} failed")
        return dict(json.loads(body))

    # kube-controller-manager and kube-scheduler

    def _component_flags(self, name: str, port: int) -> list[str]:
        kubeconfig = self.kubeconfig.parent / f"{name}.kubeconfig"
        return [
            f"--kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={self.pki_dir / f'{name}-serving.crt'}",
            f"--tls-private-key-file={self.pki_dir / f'{name}-serving.key'}",
            "--leader-elect=false",
        ]

    def _controller_manager(self, port: int) -> tuple[list[str], dict[str, str]]:
        p = self.pki_dir
        return [
            self._bin("kube-controller-manager"),
            *self._component_flags("kube-controller-manager", port),
            "--controllers=*",
            f"--service-account-private-key-file={p / 'sa.key'}",
            f"--root-ca-file={p / 'ca.crt'}",
            "--use-service-account-credentials=false",
            "--allocate-node-cidrs=false",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--cluster-signing-cert-file={p / 'ca.crt'}",
            f"--cluster-signing-key-file={p / 'ca.key'}",
            "--profiling=false",
        ], {}

    def _scheduler(self, port: int) -> tuple[list[str], dict[str, str]]:
        return [self._bin("kube-scheduler"), *self._component_flags("kube-scheduler", port)], {}

    def _wait_https_healthz(self, component: _Component) -> None:
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        url = f"https://127.0.0.1:{component.port}/healthz"
        self._poll(component, "/healthz", COMPONENT_TIMEOUT, lambda: _http_get(url, ctx) == b"ok")

    # kwok

    def _kwok(self, port: int) -> tuple[list[str], dict[str, str]]:
        stages = self.bin_dir / "kwok-stages.yaml"
        if not stages.is_file():
            raise ControlPlaneError(f"{stages} is missing: run {BUILD_SCRIPT}")
        kwok_home = self.workdir / "kwok"
        kwok_home.mkdir(exist_ok=True)
        return [
            self._bin("kwok"),
            f"--kubeconfig={self.kubeconfig.parent / 'kwok.kubeconfig'}",
            f"--config={stages}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{port}",
        ], {"KWOK_WORKDIR": str(kwok_home)}  # not the user's ~/.kwok/kwok.yaml

    def _wait_kwok(self, component: _Component) -> None:
        url = f"http://127.0.0.1:{component.port}/healthz"
        self._poll(component, "/healthz", COMPONENT_TIMEOUT, lambda: _http_get(url) == b"ok")


def _http_get(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bytes | None:
    """GET a loopback URL; return the body of a 200, or None for anything else."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return bytes(resp.read()) if resp.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None
