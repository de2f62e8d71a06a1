"""The whole outage on this machine: workers with the cluster's data path, a load balancer, the control plane.

What is real: the worker hosts (sshd, UFW with default deny incoming, as in production), kube-proxy
on each of them programming the NodePorts from the control plane's EndpointSlices, an ingress
stand-in proxying by Host header to the app endpoints on every worker, the apps' processes where
the API shows their hostNetwork pods, and Debian's nginx as the load balancer in front of the
workers' NodePorts (tests/lab/datapath.py, tests/lab/loadbalancer.py). The control plane must be
running and seeded (tests/cluster/seed.py) before ``start``: the workers are its Nodes.

    with OutageLab(control_plane, workdir).start() as world:
        world.cli_args()          # servers.tsv, kubeconfig, SSH key, known_hosts, --resolve, --ca-file
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.controlplane import ControlPlane
from tests.cluster.seed import DEFAULT_MASTERS, DEFAULT_WORKERS, Nodes
from tests.lab.datapath import DataPath
from tests.lab.hosts import INGRESS_HOSTS, SUBNET, HostSpec, Lab, LabError, servers_tsv
from tests.lab.loadbalancer import INGRESS_TLS_PORT, LoadBalancer
from tests.lab.testca import make_test_ca

LB_OFFSET = 40  # the load balancer's address: 198.18.0.40


@dataclass(frozen=True)
class Answer:
    """One request through the load balancer: the status (None: no answer) and the body or the error."""

    status: int | None
    text: str


class OutageLab:
    """Workers (and optionally masters) as lab hosts, the data path on the workers, and the load balancer.

    Args:
        control_plane: running, seeded with ``workers`` and ``masters`` as Nodes.
        workdir: where servers.tsv, the lab config, certificates and logs go.
        workers: (name, address) of the worker Nodes; their addresses must be consecutive.
        masters: (name, address) of the master Nodes, written into servers.tsv.
        master_hosts: also build the masters as lab hosts (sshd + UFW), for overlay and diagnose.
    """

    def __init__(
        self,
        control_plane: ControlPlane,
        workdir: Path,
        *,
        workers: Nodes = DEFAULT_WORKERS,
        masters: Nodes = DEFAULT_MASTERS,
        master_hosts: bool = False,
    ) -> None:
        self.cp = control_plane
        self.dir = workdir
        self.workers, self.masters = list(workers), list(masters)
        self.master_hosts = master_hosts
        self._stack = contextlib.ExitStack()
        self.lab: Lab | None = None
        self.masters_lab: Lab | None = None
        self.lb: LoadBalancer | None = None
        self.data_path: DataPath | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> OutageLab:
        """Build the hosts, start the data path and the load balancer; close everything on failure."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.lab = self._stack.enter_context(
                Lab([HostSpec(name, http_listener=False) for name, _ in self.workers], base_ip=_base(self.workers))
            )
            if self.master_hosts:
                self.masters_lab = self._stack.enter_context(
                    Lab([HostSpec(name, http_listener=False) for name, _ in self.masters], base_ip=_base(self.masters))
                )
                # One key for every node, as the operator has (cli_args passes the workers' key).
                with (self.masters_lab.workdir / "authorized_keys").open("a") as keys:
                    keys.write(self.lab.identity_file.with_suffix(".pub").read_text())
            lb_lab = self._stack.enter_context(
                Lab([HostSpec("lb-01", ufw_active=False, http_listener=False)], base_ip=LB_OFFSET)
            )
            tls = make_test_ca(self.dir / "ingress-tls", INGRESS_HOSTS, common_name="keybuzz-fix ingress test CA")
            self.data_path = self._stack.enter_context(DataPath(self.lab, self.cp, self.dir / "datapath", tls=tls))
            self.data_path.start()
            self.lb = self._stack.enter_context(
                LoadBalancer(
                    lb_lab.hosts[0], [h.ip for h in self.lab.hosts], self.dir / "lb", tls_backend_port=INGRESS_TLS_PORT
                )
            )
            self._write_inventory()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the load balancer, the data path and every host; idempotent."""
        self._stack.close()

    def __enter__(self) -> OutageLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the tool is given -------------------------------------------------------------------

    @property
    def servers(self) -> Path:
        """servers.tsv with the workers (lab addresses) and the masters."""
        return self.dir / "servers.tsv"

    @property
    def config(self) -> Path:
        """The tool's config for the lab: its private network is 198.18.0.0/24 (10.0.0.0/16 in production)."""
        return self.dir / "lab.yaml"

    def _write_inventory(self) -> None:
        hosts = [h for lab in (self.lab, self.masters_lab) if lab is not None for h in lab.hosts]
        servers_tsv(self.servers, hosts, masters=[m for m, _ in self.masters])
        self.config.write_text(f"firewall:\n  source: {SUBNET}\noverlay:\n  source: {SUBNET}\n")

    def cli_args(self) -> list[str]:
        """Options every cluster command of the tool needs here: kubeconfig, config, SSH, the load balancer."""
        assert self.lab is not None and self.lb is not None
        return [
            "--kubeconfig",
            str(self.cp.kubeconfig),
            "--config",
            str(self.config),
            *self.lb.resolve_args(),
            "--ca-file",
            str(self.lb.ca_file),
            "--identity",
            str(self.lab.identity_file),
            "--known-hosts",
            str(self.known_hosts),
        ]

    @property
    def known_hosts(self) -> Path:
        """known_hosts with every lab host's key."""
        path = self.dir / "known_hosts"
        labs = [lab for lab in (self.lab, self.masters_lab) if lab is not None]
        path.write_text("".join(lab.known_hosts_file.read_text() for lab in labs))
        return path

    # -- what the traffic does ----------------------------------------------------------------------

    def requests(
        self, host: str = INGRESS_HOSTS[0], count: int = 10, timeout: float = 4.0, scheme: str = "https"
    ) -> list[Answer]:
        """Send ``count`` requests for ``host`` through the load balancer at once, each on its own connection."""
        assert self.lb is not None
        with ThreadPoolExecutor(max_workers=count) as pool:
            return list(pool.map(lambda _: self._request(host, timeout, scheme), range(count)))

    def _request(self, host: str, timeout: float, scheme: str) -> Answer:
        assert self.lb is not None
        ip = self.lb.ip
        if ipaddress.ip_address(ip) not in ipaddress.ip_network("198.18.0.0/15"):
            raise LabError(f"{ip} is outside the lab range")
        deadline = time.monotonic() + timeout
        try:
            sock: socket.socket = socket.create_connection((ip, 443 if scheme == "https" else 80), timeout=timeout)
            if scheme == "https":
                ctx = ssl.create_default_context(cafile=str(self.lb.ca_file))
                sock = ctx.wrap_socket(sock, server_hostname=host)
            with sock:
                sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := _recv(sock, deadline):
                    data += chunk
        except OSError as e:
            return Answer(None, f"{type(e).__name__}: {e}")
        head, _, body = data.partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            return Answer(None, f"no HTTP answer: {data[:80]!r}")
        return Answer(status, body.decode(errors="replace").strip())


def _recv(sock: socket.socket, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no complete answer in time")
    sock.settimeout(left)
    return sock.recv(65536)


def _base(nodes: Sequence[tuple[str, str]]) -> int:
    """The last octet of the first address; the lab needs the nodes' addresses consecutive in its subnet."""
    addresses = [ipaddress.ip_address(ip) for _, ip in nodes]
    first = addresses[0]
    if any(a != first + i for i, a in enumerate(addresses)) or first not in SUBNET:
        raise LabError(f"node addresses must be consecutive in {SUBNET}: {[str(a) for a in addresses]}")
    return int(first) - int(SUBNET.network_address)
