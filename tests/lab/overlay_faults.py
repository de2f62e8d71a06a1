# ruff: noqa: E501  (kube-proxy's rules, written as iptables-save prints them)
"""The overlay fault lab: lab hosts wired like K3s nodes over an underlay namespace, and the faults of diagnose.

Each lab host (sshd, its own UFW, /run and mounts: tests/lab/hosts.py) gets what a K3s node has:
a private NIC ``enp7s0`` (198.18.1.x) plugged into a bridge in a separate *underlay* namespace
(ports MTU 1450, like a Hetzner private network), ``flannel.1`` over it as flanneld builds it,
``cni0`` with pods in ``/run/netns/cni-*`` (containerd's place), kube-proxy's and flannel's
iptables rules (written in their own format: DNAT for the ``kubernetes``, ``kube-dns`` and a
NodePort Service), a CoreDNS stand-in in a pod on the first node, the API server stand-in on the
first node's :6443 and a web pod on the last node. Every address is in 198.18.0.0/15.

SSH still goes to each host's lab address (198.18.0.x); servers.tsv names the private address, so
:meth:`OverlayLab.ssh_home` writes an ssh config whose ProxyCommand maps one to the other.

    with OverlayLab(lab) as world:
        world.forward_drop("k3s-node-03")   # ... diagnose ...
        world.heal()
"""

from __future__ import annotations

import contextlib
import ipaddress
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.lab.hosts import LAB_RANGE, Lab, LabError, LabHost, servers_tsv

UNDERLAY = "198.18.1"  # .1x: the nodes' private addresses
POD_NETWORK = "198.19.0.0/17"
SERVICE_NETWORK = "198.19.128.0/20"
API_IP, DNS_IP = "198.19.128.1", "198.19.128.10"
NODEPORT = 30080
PATH_MTU = 1450
STUBS = Path(__file__).parent


@dataclass(frozen=True)
class Node:
    """One K3s-like node of the lab."""

    host: LabHost
    index: int

    @property
    def name(self) -> str:
        """The node's name."""
        return self.host.name

    @property
    def ip(self) -> str:
        """The private address (on enp7s0)."""
        return f"{UNDERLAY}.{11 + self.index}"

    @property
    def subnet(self) -> str:
        """The node's pod subnet."""
        return f"198.19.{3 + self.index}.0/24"

    def pod(self, n: int) -> str:
        """The n-th address of the pod subnet (.0 is flannel.1's, .1 cni0's)."""
        return str(ipaddress.ip_network(self.subnet).network_address + n)

    @property
    def mac(self) -> str:
        """flannel.1's MAC, the one the peers are told."""
        return f"5a:9c:12:34:56:{11 + self.index:02x}"


class OverlayLab:
    """The nodes, the underlay between them, and the faults; ``close`` tears down what it built."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.nodes = [Node(h, i) for i, h in enumerate(lab.hosts)]
        self.underlay = f"kbl-{lab.token}-underlay"
        self.nic_mtu = PATH_MTU
        self.backend = "vxlan"
        for n in self.nodes:
            for a in (n.ip, n.subnet):
                if not ipaddress.ip_network(a, strict=False).subnet_of(LAB_RANGE):  # type: ignore[arg-type]
                    raise LabError(f"{a} is outside the lab range")
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> OverlayLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building ---------------------------------------------------------------------------------

    def _build(self) -> None:
        _sh(f"ip netns add {self.underlay}")
        self._u(f"ip link add br0 type bridge && ip link set br0 mtu {PATH_MTU} up && ip link set lo up")
        for n in self.nodes:
            outside = f"kbl{self.lab.token}u{n.index}"
            _sh(f"ip link add {outside} type veth peer name enp7s0 netns {n.host.netns}")
            _sh(f"ip link set {outside} netns {self.underlay}")
            self._u(f"ip link set {outside} mtu {PATH_MTU} master br0 up")
            n.host.run(
                f"ip link set enp7s0 address 86:00:00:4d:5e:{11 + n.index:02x} mtu {PATH_MTU} && "
                f"ip addr add {n.ip}/24 dev enp7s0 && ip link set enp7s0 up && "
                "sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1"
            )
            self._pods(n)
            n.host.run(self._iptables(n))
        self.vxlan()
        first, last = self.nodes[0], self.nodes[-1]
        first.host.listen(6443, label="kube-apiserver")
        self._daemon(first, "coredns", "cni-coredns", ["python3", "-I", str(STUBS / "dns_stub.py"), "53", API_IP])
        self._daemon(last, "web", "cni-web", ["python3", "-I", str(STUBS / "http_stub.py"), "80", "web"])

    def _u(self, cmd: str) -> None:
        _sh(f"ip netns exec {self.underlay} sh -c {shlex.quote(cmd)}")

    def _pods(self, n: Node) -> None:
        pods = {"cni-probe": 2}
        if n.index == 0:
            pods["cni-coredns"] = 3
        if n is self.nodes[-1]:
            pods["cni-web"] = 4
        lines = ["set -e", "ip link add cni0 type bridge", f"ip addr add {n.pod(1)}/24 dev cni0", "ip link set cni0 up"]
        for ns, last in pods.items():
            veth = f"veth{last}"
            lines += [
                f"ip netns add {ns}",
                f"ip link add {veth} type veth peer name eth0 netns {ns}",
                f"ip link set {veth} master cni0 up",
                f"bridge link set dev {veth} hairpin on",  # flannel's CNI config: hairpinMode true
                f"ip -n {ns} addr add {n.pod(last)}/24 dev eth0",
                f"ip -n {ns} link set eth0 up",
                f"ip -n {ns} link set lo up",
                f"ip -n {ns} route add default via {n.pod(1)}",
            ]
        n.host.run("\n".join(lines))

    def _daemon(self, n: Node, name: str, netns: str, argv: list[str]) -> None:
        log = n.host.workdir / f"{name}.log"
        n.host.spawn(name, ["ip", "netns", "exec", netns, *argv], log)
        deadline = time.monotonic() + 15
        while "ready" not in (log.read_text() if log.exists() else ""):
            if time.monotonic() > deadline:
                raise LabError(f"{n.name}: {name} not ready:\n{log.read_text() if log.exists() else ''}")
            time.sleep(0.05)

    def _iptables(self, n: Node) -> str:
        """kube-proxy's and flannel's rules, in their own words (iptables-nft, the default backend)."""
        api, dns, web = self.nodes[0].ip, self.nodes[0].pod(3), self.nodes[-1].pod(4)
        nat = f"""*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-NPX46M4PTMTKRN6Y - [0:0]
:KUBE-SEP-API - [0:0]
:KUBE-SVC-TCOU7JCQXEZGVUNU - [0:0]
:KUBE-SEP-DNS - [0:0]
:KUBE-EXT-WEB - [0:0]
:KUBE-SVC-WEB - [0:0]
:KUBE-SEP-WEB - [0:0]
:FLANNEL-POSTRTG - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d {API_IP}/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A KUBE-SERVICES -d {DNS_IP}/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p tcp -m comment --comment "default/web:http" -m tcp --dport {NODEPORT} -j KUBE-EXT-WEB
-A KUBE-EXT-WEB -j KUBE-MARK-MASQ
-A KUBE-EXT-WEB -j KUBE-SVC-WEB
-A KUBE-SVC-NPX46M4PTMTKRN6Y ! -s {POD_NETWORK} -d {API_IP}/32 -p tcp -m tcp --dport 443 -j KUBE-MARK-MASQ
-A KUBE-SVC-NPX46M4PTMTKRN6Y -j KUBE-SEP-API
-A KUBE-SEP-API -s {api}/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-API -p tcp -m comment --comment "default/kubernetes:https" -m tcp -j DNAT --to-destination {api}:6443
-A KUBE-SVC-TCOU7JCQXEZGVUNU ! -s {POD_NETWORK} -d {DNS_IP}/32 -p udp -m udp --dport 53 -j KUBE-MARK-MASQ
-A KUBE-SVC-TCOU7JCQXEZGVUNU -j KUBE-SEP-DNS
-A KUBE-SEP-DNS -s {dns}/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-DNS -p udp -m comment --comment "kube-system/kube-dns:dns" -m udp -j DNAT --to-destination {dns}:53
-A KUBE-SVC-WEB -j KUBE-SEP-WEB
-A KUBE-SEP-WEB -s {web}/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-WEB -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination {web}:80
-A FLANNEL-POSTRTG -s {n.subnet} -d {POD_NETWORK} -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s {POD_NETWORK} -d {n.subnet} -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s {POD_NETWORK} ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
COMMIT
"""
        return f"iptables-nft-restore --noflush <<'EOF'\n{nat}{_FILTER}EOF"

    def vxlan(self, mtu: int | None = None) -> None:
        """(Re)build flannel.1 on every node as flanneld does, its peers programmed; the pods' MTU follows."""
        self.backend = "vxlan"
        mtu = mtu or self.nic_mtu - 50
        for n in self.nodes:
            lines = [
                "set -e",
                "ip link del flannel.1 2>/dev/null || true",
                *(f"ip route del {p.subnet} 2>/dev/null || true" for p in self.nodes if p is not n),
                f"ip link add flannel.1 type vxlan id 1 local {n.ip} dev enp7s0 dstport 8472 nolearning",
                f"ip link set flannel.1 address {n.mac} mtu {mtu}",
                f"ip addr add {n.pod(0)}/32 dev flannel.1",
                "ip link set flannel.1 up",
            ]
            for p in self.nodes:
                if p is not n:
                    lines += [
                        f"ip neigh replace {p.pod(0)} lladdr {p.mac} dev flannel.1 nud permanent",
                        f"bridge fdb replace {p.mac} dev flannel.1 dst {p.ip} self permanent",
                        f"ip route replace {p.subnet} via {p.pod(0)} dev flannel.1 onlink",
                    ]
            lines += self._mtu_lines(n, mtu)
            n.host.run("\n".join(lines))

    def host_gw(self) -> None:
        """Flannel's host-gw backend instead: no tunnel, a route to each peer's subnet via its private address."""
        self.backend = "host-gw"
        mtu = self.nic_mtu
        for n in self.nodes:
            lines = ["set -e", "ip link del flannel.1 2>/dev/null || true"]
            lines += [f"ip route replace {p.subnet} via {p.ip} dev enp7s0" for p in self.nodes if p is not n]
            lines += self._mtu_lines(n, mtu)
            n.host.run("\n".join(lines))

    def _mtu_lines(self, n: Node, mtu: int) -> list[str]:
        env = f"FLANNEL_NETWORK={POD_NETWORK}\nFLANNEL_SUBNET={n.pod(1)}/24\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n"
        pods = ["cni-probe", *(["cni-coredns"] if n.index == 0 else []), *(["cni-web"] if n is self.nodes[-1] else [])]
        return [
            f"ip link set cni0 mtu {mtu}",
            *(f"ip -n {ns} link set eth0 mtu {mtu}" for ns in pods),
            "mkdir -p /run/flannel",
            f"printf '%s' {shlex.quote(env)} > /run/flannel/subnet.env",
        ]

    # -- the faults (each undone by heal) ----------------------------------------------------------

    def forward_drop(self, name: str) -> None:
        """FORWARD policy DROP, flannel's accepts gone (Docker's doing)."""
        self._node(name).host.run("iptables-nft -P FORWARD DROP && iptables-nft -F FLANNEL-FWD")

    def backends_split(self, name: str) -> None:
        """DROP policy in nf_tables, flannel's accepts only in iptables-legacy."""
        self._node(name).host.run(
            "iptables-nft -P FORWARD DROP && iptables-nft -F FLANNEL-FWD && "
            f"iptables-legacy -A FORWARD -s {POD_NETWORK} -j ACCEPT && iptables-legacy -A FORWARD -d {POD_NETWORK} -j ACCEPT"
        )

    def ufw_blocks_vxlan(self, name: str) -> None:
        """UFW enabled the usual way, the pod and service networks allowed, 8472/udp forgotten."""
        self._node(name).host.run(
            "ufw default deny incoming >/dev/null && ufw allow 22/tcp >/dev/null && "
            f"ufw allow from {POD_NETWORK} >/dev/null && ufw allow from {SERVICE_NETWORK} >/dev/null && "
            "ufw allow 6443/tcp >/dev/null && ufw --force enable >/dev/null",
            timeout=60,
        )

    def iptables_drops_vxlan(self, name: str) -> None:
        """A plain iptables rule dropping 8472/udp on INPUT."""
        self._node(name).host.run("iptables-nft -I INPUT -p udp --dport 8472 -j DROP")

    def change_mac(self, name: str) -> None:
        """flannel.1's MAC changed after the peers were programmed."""
        self._node(name).host.run("ip link set flannel.1 address 5a:9c:12:34:56:ee")

    def nic_mtu_1500(self) -> None:
        """The private NIC reset to 1500 over the 1450 underlay; Flannel derives 1450 from it."""
        self.nic_mtu = 1500
        for n in self.nodes:
            n.host.run("ip link set enp7s0 mtu 1500")
        self.vxlan()

    def bridge_nf_off(self, name: str) -> None:
        """``bridge-nf-call-iptables=0`` on the node that runs CoreDNS."""
        self._node(name).host.run("sysctl -qw net.bridge.bridge-nf-call-iptables=0")

    def corrupt_checksums(self) -> None:
        """An nft rule on the underlay bridge spoils the outer UDP checksum; offloads off so it is checked."""
        self._u(
            "nft add table bridge kbl && nft add chain bridge kbl spoil '{ type filter hook forward priority 0; }' && "
            "nft add rule bridge kbl spoil udp dport 8472 udp checksum set 4660"
        )
        for n in self.nodes:
            n.host.run("ethtool -K enp7s0 tx off rx off >/dev/null")

    def heal(self) -> None:
        """Undo every fault: the lab is a healthy VXLAN overlay again."""
        with contextlib.suppress(LabError, subprocess.CalledProcessError):
            self._u("nft delete table bridge kbl 2>/dev/null || true")
        self.nic_mtu = PATH_MTU
        for n in self.nodes:
            n.host.run(
                "ufw --force disable >/dev/null 2>&1 || true; ufw --force reset >/dev/null 2>&1 || true; "
                "iptables-nft -P FORWARD ACCEPT; iptables-nft -F FLANNEL-FWD; "
                f"iptables-nft -A FLANNEL-FWD -s {POD_NETWORK} -m comment --comment 'flanneld forward' -j ACCEPT; "
                f"iptables-nft -A FLANNEL-FWD -d {POD_NETWORK} -m comment --comment 'flanneld forward' -j ACCEPT; "
                "iptables-nft -D INPUT -p udp --dport 8472 -j DROP 2>/dev/null; "
                "iptables-legacy -F FORWARD 2>/dev/null; iptables-legacy -P FORWARD ACCEPT 2>/dev/null; "
                f"sysctl -qw net.bridge.bridge-nf-call-iptables=1; ip link set enp7s0 mtu {PATH_MTU}; "
                "ethtool -K enp7s0 tx on rx on >/dev/null 2>&1; true",
                timeout=60,
            )
        self.vxlan()

    # -- what the tool is given ----------------------------------------------------------------------

    def servers(self, path: Path) -> Path:
        """servers.tsv naming the nodes by their private addresses (every node a K3s node)."""
        servers_tsv(path, [_at(n) for n in self.nodes], masters=[self.nodes[0].name])
        return path

    def ssh_home(self, home: Path) -> Path:
        """A HOME whose ~/.ssh/config reaches each private address through the host's lab address."""
        ssh = home / ".ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        (ssh / "config").write_text(
            "".join(f"Host {n.ip}\n  ProxyCommand socat - TCP:{n.host.ip}:22\n" for n in self.nodes)
        )
        return home

    def known_hosts(self, path: Path) -> Path:
        """known_hosts with each host's key under its private address."""
        path.write_text("".join(f"{n.ip} {n.host.host_key_pub}\n" for n in self.nodes))
        return path

    def nodes_yaml(self) -> str:
        """``kubectl get nodes -o yaml`` as K3s would print it for these nodes."""
        import yaml

        items = []
        for n in self.nodes:
            notes = {"flannel.alpha.coreos.com/public-ip": n.ip, "flannel.alpha.coreos.com/backend-type": self.backend}
            if self.backend == "vxlan":
                notes["flannel.alpha.coreos.com/backend-data"] = f'{{"VNI":1,"VtepMAC":"{n.mac}"}}'
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": n.name, "annotations": notes},
                    "spec": {"podCIDR": n.subnet},
                    "status": {"addresses": [{"type": "InternalIP", "address": n.ip}]},
                }
            )
        return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})

    def _node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def close(self) -> None:
        """Stop the stand-ins, delete the pods' namespaces and the underlay namespace (the hosts are the Lab's)."""
        for n in self.nodes:
            for d in ("coredns", "web"):
                n.host.kill(d)
            with contextlib.suppress(LabError, subprocess.SubprocessError, OSError):
                n.host.run("for ns in $(ip netns list | awk '{print $1}'); do ip netns del $ns; done", check=False)
        if Path("/run/netns", self.underlay).exists():
            _sh(f"ip netns del {self.underlay}")


_FILTER = f"""*filter
:FLANNEL-FWD - [0:0]
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s {POD_NETWORK} -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d {POD_NETWORK} -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
"""


def _at(n: Node) -> LabHost:
    """The host as servers.tsv sees it: at its private address."""
    from dataclasses import replace

    return replace(n.host, ip=n.ip)


def _sh(cmd: str) -> None:
    result = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise LabError(f"{cmd}: exit {result.returncode}: {result.stderr.strip()}")
