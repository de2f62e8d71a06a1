"""The cluster's data path on the lab's workers: what a K3s worker does with a request, with real parts.

On a real worker a request for the ingress NodePort is translated by kube-proxy **before** UFW
sees it, and ingress-nginx then proxies to app pods on every worker. This harness reproduces that
path on lab hosts (tests/lab/hosts.py), driven by the test control plane:

- **kube-proxy**, the real one (built with the control plane, tests/cluster/build), runs inside
  every worker's network namespace in iptables mode with ``--hostname-override`` = the node's
  name and K3s's own conntrack flags (a network namespace may not set ``nf_conntrack_max``; K3s
  passes ``--conntrack-max-per-core=0`` and zero timeouts, which tell kube-proxy to leave them).
  It reaches the API server through a ``socat`` forwarder on the lab bridge's address and
  programs NodePorts and Services from the control plane's real EndpointSlices.
- **The apps' processes**: where the API shows a Running hostNetwork pod on a worker (kwok gives
  those pods the node's InternalIP, as a kubelet would), an HTTP listener runs on each of its
  container ports in that worker, answering ``<namespace>/<app> <node>``; it stops when the pod goes.
- **An ingress stand-in**: where an ingress-nginx controller pod runs, Debian's nginx listens on its
  host ports (80/443), routing by Host to the ready endpoints of the Ingress backends' Services
  (tests/lab/ingress_standin.py), reloaded whenever Ingresses, Services or EndpointSlices change.

Everything is watched (list, then watch from that resourceVersion), and one reconciler applies the
difference. ``settle()`` waits until what runs matches a fresh read of the API, including
kube-proxy's rules, so a test never races the harness.

    with DataPath(lab, control_plane, workdir, tls=ca).start() as path:
        path.settle()
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import ControlPlane
from tests.lab import ingress_standin
from tests.lab.hosts import GATEWAY, Lab, LabError, LabHost
from tests.lab.nginx import Nginx, main_block
from tests.lab.testca import TestCA

Obj = dict[str, Any]
CLUSTER_CIDR = "198.19.0.0/17"  # the seeded nodes' pod CIDRs (tests/cluster/seed.py), below the Service range
INGRESS_NAMESPACE = "ingress-nginx"
INGRESS_SELECTOR = {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}
_DNAT = re.compile(r"--to-destination (\S+)")
_WATCH_SECONDS = 2  # a watch call ends this often, so close() is bounded


@dataclass(frozen=True)
class _Wanted:
    """What should run on the workers for one snapshot of the API."""

    listeners: Mapping[tuple[str, int], str]  # (node, port) -> label of the pod's process
    ingress_nodes: frozenset[str]
    routes: tuple[ingress_standin.Route, ...]  # what ingress-nginx would serve
    dnat: frozenset[str]  # every "ip:port" kube-proxy must translate to


class _Informer:
    """One kind of object, listed then watched into a dict by namespace/name; ``changed`` fires on events."""

    def __init__(
        self, list_fn: Callable[..., Any], api: client.ApiClient, changed: threading.Event, stop: threading.Event
    ) -> None:
        self.list_fn, self.api, self.changed, self.stop = list_fn, api, changed, stop
        self.objects: dict[str, Obj] = {}
        self.synced = threading.Event()
        self.error = ""
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"informer-{list_fn.__name__}")

    def snapshot(self) -> list[Obj]:
        with self.lock:
            return list(self.objects.values())

    def _plain(self, obj: Any) -> Obj:
        data = self.api.sanitize_for_serialization(obj)
        assert isinstance(data, dict)
        return data

    def _run(self) -> None:
        version: str | None = None
        while not self.stop.is_set():
            try:
                if version is None:
                    listing = self.list_fn(_request_timeout=10)
                    fresh = {}
                    for o in listing.items:
                        d = self._plain(o)
                        fresh[_key(d)] = d
                    with self.lock:
                        self.objects = fresh
                    version = listing.metadata.resource_version
                    self.synced.set()
                    self.changed.set()
                for event in watch.Watch().stream(
                    self.list_fn,
                    resource_version=version,
                    timeout_seconds=_WATCH_SECONDS,
                    allow_watch_bookmarks=True,
                    _request_timeout=_WATCH_SECONDS + 5,
                ):
                    obj = event["object"]
                    version = obj.metadata.resource_version
                    if event["type"] == "BOOKMARK":
                        continue
                    d = self._plain(obj)
                    with self.lock:
                        if event["type"] == "DELETED":
                            self.objects.pop(_key(d), None)
                        else:
                            self.objects[_key(d)] = d
                    self.changed.set()
                    if self.stop.is_set():
                        break
            except ApiException as e:
                if e.status != 410:
                    self.error = f"{e.status} {e.reason}"
                    self.stop.wait(0.5)
                version = None  # expired or failed: list again
            except Exception as e:  # noqa: BLE001 - a lost connection: list again after a pause
                self.error = str(e)
                self.stop.wait(0.5)
                version = None


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _key(obj: Obj) -> str:
    return f"{_meta(obj).get('namespace', '')}/{_meta(obj).get('name', '')}"


def _is_ingress_controller(pod: Obj) -> bool:
    labels = _meta(pod).get("labels") or {}
    return _meta(pod).get("namespace") == INGRESS_NAMESPACE and all(
        labels.get(k) == v for k, v in INGRESS_SELECTOR.items()
    )


def _running(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and not _meta(pod).get("deletionTimestamp")


def _app_name(pod: Obj) -> str:
    meta = _meta(pod)
    owner = next((o.get("name") for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
    return str((meta.get("labels") or {}).get("app") or owner or meta.get("name"))


def _pod_ports(pod: Obj) -> list[int]:
    spec = pod.get("spec") or {}
    containers = list(spec.get("containers") or [])
    containers += [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    return sorted(
        {
            p["containerPort"]
            for c in containers
            for p in c.get("ports") or []
            if p.get("containerPort") and p.get("protocol", "TCP") == "TCP"
        }
    )


def wanted(
    pods: Iterable[Obj],
    services: Iterable[Obj],
    slices: Iterable[Obj],
    ingresses: Iterable[Obj],
    classes: Iterable[Obj],
    nodes: Iterable[str],
) -> _Wanted:
    """Return what should run on ``nodes`` for this state of the API (pure)."""
    nodes = set(nodes)
    listeners: dict[tuple[str, int], str] = {}
    ingress_nodes: set[str] = set()
    for pod in sorted(pods, key=lambda p: (_meta(p).get("creationTimestamp") or "", _key(p))):
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        if node not in nodes or not spec.get("hostNetwork") or not _running(pod):
            continue
        if _is_ingress_controller(pod):
            ingress_nodes.add(node)
            continue
        label = f"{_meta(pod).get('namespace')}/{_app_name(pod)} {node}"
        for port in _pod_ports(pod):
            listeners.setdefault((node, port), label)
    services, slices = list(services), list(slices)
    served = ingress_standin.routes(list(ingresses), services, slices, list(classes))
    return _Wanted(listeners, frozenset(ingress_nodes), tuple(served), frozenset(_dnat_targets(services, slices)))


def _dnat_targets(services: Iterable[Obj], slices: Iterable[Obj]) -> set[str]:
    """Every ready endpoint ("ip:port") of a Service with a selector: what kube-proxy DNATs to."""
    with_selector = {
        _key(s)
        for s in services
        if (s.get("spec") or {}).get("selector")
        and (s.get("spec") or {}).get("type") != "ExternalName"
        and (s.get("spec") or {}).get("clusterIP") != "None"
    }
    out: set[str] = set()
    for sl in slices:
        meta = _meta(sl)
        svc = f"{meta.get('namespace')}/{(meta.get('labels') or {}).get('kubernetes.io/service-name')}"
        if svc not in with_selector or sl.get("addressType") != "IPv4":
            continue
        for ep in sl.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            for port in sl.get("ports") or []:
                if port.get("protocol", "TCP") == "TCP" and port.get("port"):
                    out |= {f"{a}:{port['port']}" for a in ep.get("addresses") or []}
    return out


class DataPath:
    """kube-proxy, app processes and the ingress stand-in on every host of ``lab`` that is a node.

    Args:
        lab: the worker hosts; each host's name must be a Node whose InternalIP is the host's address.
        control_plane: the running test control plane (its bin dir holds kube-proxy).
        workdir: where configurations and logs go (kept for failure reports).
        tls: the certificate the ingress stand-in serves on 443.
    """

    def __init__(self, lab: Lab, control_plane: ControlPlane, workdir: Path, *, tls: TestCA) -> None:
        if shutil.which("socat") is None:
            raise LabError("the lab's data path needs socat on this machine (apt-get install socat)")
        self.lab, self.cp, self.dir, self.tls = lab, control_plane, workdir, tls
        self.dir.mkdir(parents=True, exist_ok=True)
        self.api = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
        self._stop = threading.Event()
        self._changed = threading.Event()
        core, disc, net = client.CoreV1Api(self.api), client.DiscoveryV1Api(self.api), client.NetworkingV1Api(self.api)
        self._lists: dict[str, Callable[..., Any]] = {
            "pods": core.list_pod_for_all_namespaces,
            "services": core.list_service_for_all_namespaces,
            "slices": disc.list_endpoint_slice_for_all_namespaces,
            "ingresses": net.list_ingress_for_all_namespaces,
            "classes": net.list_ingress_class,
        }
        self._informers = {k: _Informer(fn, self.api, self._changed, self._stop) for k, fn in self._lists.items()}
        self._forwarder: subprocess.Popen[bytes] | None = None
        self.api_address = ""  # "198.18.0.1:PORT": where the lab hosts reach the API server, once started
        self._nginx: dict[str, Nginx] = {}
        self._applied: _Wanted | None = None
        self._error = ""
        self._lock = threading.Lock()
        self._reconciler = threading.Thread(target=self._reconcile_loop, daemon=True, name="datapath-reconciler")
        self.hosts = {h.name: h for h in lab.hosts}

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> DataPath:
        """Start the forwarder, kube-proxy on every worker and the watchers; wait until settled."""
        try:
            self._check_nodes()
            port = self._start_forwarder()
            self.api_address = f"{GATEWAY}:{port}"
            kubeconfig = self._kube_proxy_kubeconfig(port)
            for host in self.hosts.values():
                host.run("sysctl -qw net.ipv4.ip_forward=1")  # K3s turns forwarding on; a new netns has it off
                host.spawn("kube-proxy", self._kube_proxy_argv(host, kubeconfig), host.workdir / "kube-proxy.log")
            for informer in self._informers.values():
                informer.thread.start()
            self._reconciler.start()
            self.settle(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> DataPath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the watchers, the stand-ins, kube-proxy and the forwarder; idempotent."""
        self._stop.set()
        self._changed.set()
        for t in [self._reconciler, *(i.thread for i in self._informers.values())]:
            if t.is_alive():
                t.join(timeout=_WATCH_SECONDS + 8)
        for nginx in self._nginx.values():
            nginx.close()
        self._nginx.clear()
        for host in self.hosts.values():
            with contextlib.suppress(LabError):
                host.kill("kube-proxy")
            for port in host.listeners():
                with contextlib.suppress(LabError):
                    host.stop_listener(port)
        if self._forwarder is not None and self._forwarder.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._forwarder.pid, signal.SIGTERM)  # socat forks a child per connection
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._forwarder.wait(timeout=5)
            if self._forwarder.poll() is None:
                self._forwarder.kill()
                self._forwarder.wait(timeout=5)
        self._forwarder = None
        self.api.close()

    # -- waiting --------------------------------------------------------------------------------

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until what runs on the workers matches a fresh read of the API, kube-proxy's rules included."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            want = self._fresh_wanted()
            with self._lock:
                applied, error = self._applied, self._error
            problem = error or self._differs(applied, want)
            if not problem:
                return
            last = problem
            if time.monotonic() > deadline:
                raise LabError(f"the lab's data path did not settle in {timeout:.0f}s: {last}")
            self._changed.set()
            time.sleep(0.1)

    def _differs(self, applied: _Wanted | None, want: _Wanted) -> str:
        if applied is None:
            return "not reconciled yet"
        if applied != want:
            return "the reconciler has not caught up with the API"
        for name, host in self.hosts.items():
            rules = host.run("iptables-save -t nat", check=False).stdout
            missing = sorted(want.dnat - set(_DNAT.findall(rules)))
            if missing:
                return f"kube-proxy on {name} has no rule for {', '.join(missing[:4])} yet"
            stale = sorted(set(_DNAT.findall(rules)) - want.dnat)
            if stale:
                return f"kube-proxy on {name} still translates to {', '.join(stale[:4])}"
        return ""

    def _fresh_wanted(self) -> _Wanted:
        objs = {
            k: [self.api.sanitize_for_serialization(o) for o in fn(_request_timeout=10).items]
            for k, fn in self._lists.items()
        }
        return self._wanted_from(objs)

    def _wanted_from(self, objs: Mapping[str, list[Obj]]) -> _Wanted:
        return wanted(objs["pods"], objs["services"], objs["slices"], objs["ingresses"], objs["classes"], self.hosts)

    # -- reconciling ----------------------------------------------------------------------------

    def _reconcile_loop(self) -> None:
        for informer in self._informers.values():
            while not informer.synced.wait(0.5):
                if self._stop.is_set():
                    return
        while not self._stop.is_set():
            self._changed.wait(1.0)
            self._changed.clear()
            if self._stop.is_set():
                return
            time.sleep(0.02)  # let a burst of events land in one pass
            want = self._wanted_from({k: i.snapshot() for k, i in self._informers.items()})
            try:
                self._apply(want)
                error = ""
            except LabError as e:
                error = str(e)
            with self._lock:
                self._applied, self._error = (want if not error else None), error

    def _apply(self, want: _Wanted) -> None:
        for name, host in self.hosts.items():
            running = host.listeners()
            for port in sorted(running):
                if (name, port) not in want.listeners:
                    host.stop_listener(port)
            for (node, port), label in sorted(want.listeners.items()):
                if node == name and port not in running:
                    host.listen(port, label=label)
        for name in sorted(set(self._nginx) - want.ingress_nodes):
            self._nginx.pop(name).close()
        changed = self._applied is None or want.routes != self._applied.routes
        for name in sorted(want.ingress_nodes):
            nginx = self._nginx.get(name)
            if nginx is None:
                nginx = Nginx(self.hosts[name], self.hosts[name].workdir / "ingress", ports=(80, 443))
                nginx.start(self._ingress_conf(want.routes, nginx.dir))
                self._nginx[name] = nginx
            elif changed:
                nginx.reload(self._ingress_conf(want.routes, nginx.dir))

    def _ingress_conf(self, routes: tuple[ingress_standin.Route, ...], workdir: Path) -> str:
        return ingress_standin.render(
            routes, main=main_block(workdir), workdir=workdir, cert=self.tls.cert_file, key=self.tls.key_file
        )

    # -- parts ----------------------------------------------------------------------------------

    def _check_nodes(self) -> None:
        core = client.CoreV1Api(self.api)
        for name, host in self.hosts.items():
            try:
                node = core.read_node(name, _request_timeout=10)
            except ApiException as e:
                raise LabError(f"lab host {name} is no Node of the control plane ({e.status} {e.reason})") from None
            ips = [a.address for a in node.status.addresses or [] if a.type == "InternalIP"]
            if ips != [host.ip]:
                raise LabError(f"Node {name} has InternalIP {ips}, the lab host has {host.ip}")

    def _start_forwarder(self) -> int:
        """socat on the bridge address: the workers' way to the API server, which listens on loopback only."""
        with socket.socket() as s:
            s.bind((GATEWAY, 0))
            port = int(s.getsockname()[1])
        log = open(self.dir / "api-forwarder.log", "ab")  # noqa: SIM115 - kept open by the child
        try:
            self._forwarder = subprocess.Popen(
                [
                    "socat",
                    f"TCP-LISTEN:{port},bind={GATEWAY},reuseaddr,fork",
                    f"TCP:127.0.0.1:{self.cp.apiserver_port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((GATEWAY, port), timeout=0.5):
                return port
            if self._forwarder.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"the API forwarder on {GATEWAY}:{port} did not start (see {self.dir})")
            time.sleep(0.05)

    def _kube_proxy_kubeconfig(self, port: int) -> Path:
        """kube-proxy's own identity (system:kube-proxy, bound to system:node-proxier), via the forwarder."""
        path = self.cp.user_kubeconfig("system:kube-proxy")
        doc = yaml.safe_load(path.read_text())
        cluster = doc["clusters"][0]["cluster"]
        cluster["server"] = f"https://{GATEWAY}:{port}"
        cluster["tls-server-name"] = "localhost"  # the serving certificate names loopback, not the bridge
        out = self.dir / "kube-proxy.kubeconfig"
        out.touch(mode=0o600)
        out.write_text(yaml.safe_dump(doc, sort_keys=False))
        return out

    def _kube_proxy_argv(self, host: LabHost, kubeconfig: Path) -> list[str]:
        # The flags K3s passes to its embedded kube-proxy (pkg/daemons/agent), with the lab's pod network.
        return [
            str(self.cp.bin_dir / "kube-proxy"),
            "--proxy-mode=iptables",
            f"--cluster-cidr={CLUSTER_CIDR}",
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0s",
            "--conntrack-tcp-timeout-close-wait=0s",
            "--healthz-bind-address=127.0.0.1",
            "--metrics-bind-address=127.0.0.1:10249",
            f"--hostname-override={host.name}",
            f"--kubeconfig={kubeconfig}",
            "--v=2",
        ]
