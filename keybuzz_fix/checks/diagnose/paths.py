"""The path matrix: every probe of every node, as the path its packets take (pure code).

A probe says "from a pod (or the node) on S, this kind of traffic to this address worked or not".
:func:`build_paths` turns it into a :class:`Path`: which node owns the target (for a Service: the
nodes of its backends, from kube-proxy's rules on S), whether it crosses the overlay, whether it
was masqueraded, and the *legs*: where a packet of it arrives and is filtered (node, INPUT or
FORWARD, source, protocol, port, interface), including the outer VXLAN datagrams both ways. The
checks say which paths their cause breaks; :mod:`.findings` ranks them by how well that fits.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from keybuzz_fix.checks.diagnose.views import ClusterView, NodeView
from keybuzz_fix.hosts.flannel.capture import Capture
from keybuzz_fix.hosts.flannel.outputs import Probe

WIREGUARD_PORT = 51820
_SVC = re.compile(r'-d ([0-9.]+)/32 .*--comment "([^"]+) cluster IP".*--dport (\d+)')
_SEP = re.compile(r'--comment "([^"]+)".*--to-destination ([0-9.]+):(\d+)')


@dataclass(frozen=True)
class Leg:
    """Where a packet of a path arrives and is judged by a node's filters."""

    node: str
    chain: str  # INPUT or FORWARD
    src: str | None
    proto: str  # icmp, tcp, udp
    dport: int | None
    iface: str | None  # the interface it arrives on
    outer: bool = False  # the encapsulated datagram (VXLAN / WireGuard) itself
    dst: str | None = None
    bridged: bool = False  # pod to pod on one bridge: iptables sees it only through br_netfilter


@dataclass(frozen=True)
class Hop:
    """The path to one backend: which node it ends on, over the overlay or not, and its legs."""

    node: str | None
    overlay: bool
    legs: tuple[Leg, ...] = ()
    same_node_pod: bool = False  # a pod on the source's own bridge (br_netfilter matters)


@dataclass(frozen=True)
class Path:
    """One probed path and what came back."""

    src: str  # the node it was probed from
    probe: Probe
    hops: tuple[Hop, ...] = ()
    masquerade: bool = False
    service: bool = False  # through a ClusterIP or NodePort (DNAT)

    @property
    def id(self) -> str:
        """Return a stable name for the path."""
        return f"{self.src}: {self.probe.id}"

    @property
    def kind(self) -> str:
        """Return the probe's kind (pod, api, dns, ...)."""
        return self.probe.kind

    @property
    def source(self) -> str:
        """Return where the probe ran: pod or node."""
        return self.probe.source

    @property
    def big(self) -> bool:
        """Whether this is a full-size don't-fragment probe."""
        return self.probe.kind.endswith("-big")

    @property
    def failed(self) -> bool:
        """Whether the path failed (no answer, or an answer from the wrong address)."""
        return self.probe.result in ("fail", "wrong-source")

    @property
    def ok(self) -> bool:
        """Whether the path worked."""
        return self.probe.result == "ok"

    @property
    def overlay(self) -> bool:
        """Whether some backend is reached over the overlay."""
        return any(h.overlay for h in self.hops)

    def all_hops(self, test: Callable[[Hop], bool]) -> bool:
        """Whether the test holds for every hop (there is at least one)."""
        return bool(self.hops) and all(test(h) for h in self.hops)

    def any_hop(self, test: Callable[[Hop], bool]) -> bool:
        """Whether the test holds for some hop."""
        return any(test(h) for h in self.hops)

    def evidence(self) -> tuple[str, ...]:
        """Return the command and what it said."""
        return (f"$ {self.probe.command}" if self.probe.command else f"({self.probe.id})", self.probe.detail)


@dataclass(frozen=True)
class Tunnel:
    """How a node's overlay leaves it: vxlan (device, port, local address, underlay device), wireguard, host-gw."""

    kind: str  # vxlan, wireguard, host-gw, none
    device: str | None = None
    port: int | None = None
    local: str | None = None
    underlay: str | None = None
    mac: str | None = None
    address: str | None = None  # the device's own overlay address (flannel.1's 10.42.N.0)


@dataclass(frozen=True)
class Topology:
    """Who owns which address: nodes' addresses, pod subnets, overlay devices."""

    addresses: Mapping[str, str]  # address -> node
    subnets: Mapping[str, str]  # pod subnet (cidr) -> node
    tunnels: Mapping[str, Tunnel]
    private: Mapping[str, str]  # node -> the address peers reach it at
    nics: Mapping[str, str] = field(default_factory=dict)  # node -> the device that holds that address
    own: Mapping[str, frozenset[str]] = field(default_factory=dict)  # node -> the pod subnets it routes to itself

    def owner(self, address: str, near: str | None = None) -> str | None:
        """Return the node that owns an address: one of its own, else the one whose pod subnet holds it.

        ``near``: the node asking; when its own pod subnet holds the address (a subnet two nodes were
        given), it routes the address to its own bridge, so it is the owner for it.
        """
        if address in self.addresses:
            return self.addresses[address]
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if near is not None and any(ip in ipaddress.ip_network(c, strict=False) for c in self.own.get(near, ())):
            return near
        for cidr, node in self.subnets.items():
            if ip in ipaddress.ip_network(cidr, strict=False):
                return node
        return None

    def is_pod(self, address: str) -> bool:
        """Whether an address is in some node's pod subnet (and not a node's own address)."""
        return address not in self.addresses and self.owner(address) is not None


def tunnel_of(c: Capture | None, backend_type: str | None = None) -> Tunnel:
    """Return how a node's overlay leaves it, from its devices (else from the API's backend-type)."""
    if c is not None:
        vx = sorted(c.vxlan(), key=lambda link: (not link.name.startswith("flannel"), link.name))
        if vx:
            v = vx[0]
            addr = next(iter(c.addrs.get(v.name, ())), None)
            return Tunnel("vxlan", v.name, v.port, v.local, v.dev, v.mac, addr.split("/")[0] if addr else None)
        wg = next(
            (link for link in c.links.values() if link.kind == "wireguard" or link.name.startswith("flannel-wg")), None
        )
        if wg is not None:
            addr = next(iter(c.addrs.get(wg.name, ())), None)
            return Tunnel("wireguard", wg.name, WIREGUARD_PORT, address=addr.split("/")[0] if addr else None)
        if c.links and any(r.via and r.dev and r.dev != "cni0" and _pod_route(c, r.dest) for r in c.routes):
            return Tunnel("host-gw")
        if c.links:
            return Tunnel("none")
    kind = {"vxlan": "vxlan", "wireguard-native": "wireguard", "wireguard": "wireguard", "host-gw": "host-gw"}
    return Tunnel(kind.get(backend_type or "", "none"))


def _pod_route(c: Capture, dest: str) -> bool:
    net = (c.subnet_env or {}).get("FLANNEL_NETWORK")
    if not net or "/" not in dest:
        return False
    try:
        return ipaddress.ip_network(dest, strict=False).subnet_of(ipaddress.ip_network(net, strict=False))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False


def topology(nodes: Sequence[NodeView], cluster: ClusterView) -> Topology:
    """Return who owns which address, from the captures and the API."""
    addresses: dict[str, str] = {}
    subnets: dict[str, str] = {}
    tunnels: dict[str, Tunnel] = {}
    private: dict[str, str] = {}
    nics: dict[str, str] = {}
    own: dict[str, set[str]] = {}
    for n in nodes:
        api = cluster.node(n.name, n.address)
        c = n.capture
        tunnels[n.name] = tunnel_of(c, api.backend_type if api else None)
        if n.address:
            addresses[n.address] = n.name
            private[n.name] = n.address
        if api is not None and api.internal_ip:
            addresses.setdefault(api.internal_ip, n.name)
            private.setdefault(n.name, api.internal_ip)
        if api is not None and api.pod_cidr:
            subnets[str(ipaddress.ip_network(api.pod_cidr, strict=False))] = n.name
            own.setdefault(n.name, set()).add(str(ipaddress.ip_network(api.pod_cidr, strict=False)))
        if c is not None:
            nic = c.iface_of(private.get(n.name, "")) or tunnels[n.name].underlay
            if nic:
                nics[n.name] = nic
            for ip in c.ips():
                if not ip.startswith("127."):
                    addresses.setdefault(ip, n.name)
            for a in c.addrs.get("cni0", ()):
                subnets.setdefault(str(ipaddress.ip_network(a, strict=False)), n.name)
                own.setdefault(n.name, set()).add(str(ipaddress.ip_network(a, strict=False)))
            sub = (c.subnet_env or {}).get("FLANNEL_SUBNET")
            if sub:
                try:
                    subnets.setdefault(str(ipaddress.ip_network(sub, strict=False)), n.name)
                except ValueError:
                    pass
    return Topology(addresses, subnets, tunnels, private, nics, {k: frozenset(v) for k, v in own.items()})


def services(c: Capture) -> tuple[dict[str, str], dict[str, list[tuple[str, int]]]]:
    """Return kube-proxy's view on a node: ``{clusterIP: service}`` and ``{service: [(backend, port)]}``."""
    ips: dict[str, str] = {}
    backends: dict[str, list[tuple[str, int]]] = {}
    for t in c.tables.values():
        for line in t.nat:
            if m := _SVC.search(line):
                ips.setdefault(m.group(1), m.group(2))
            elif "DNAT" in line and (m := _SEP.search(line)):
                b = (m.group(2), int(m.group(3)))
                if b not in backends.setdefault(m.group(1), []):
                    backends[m.group(1)].append(b)
    return ips, backends


def build_paths(nodes: Sequence[NodeView], cluster: ClusterView) -> list[Path]:
    """Return every probed path of every node."""
    topo = topology(nodes, cluster)
    out: list[Path] = []
    for n in nodes:
        if n.capture is None:
            continue
        ips, backends = services(n.capture)
        for p in n.capture.probes:
            if p.result == "notool":
                continue
            out.append(_path(n, p, topo, ips, backends))
    return out


def _path(
    n: NodeView,
    p: Probe,
    topo: Topology,
    ips: Mapping[str, str],
    backends: Mapping[str, list[tuple[str, int]]],
) -> Path:
    c = n.capture
    assert c is not None
    src_ip = (c.pod.get("ip") if p.source == "pod" else None) or None
    addr = p.address
    if p.kind in ("api", "dns") and addr in ips:
        ends = backends.get(ips[addr], [])
        proto = "tcp" if p.kind == "api" else "udp"
        hops = tuple(_hop(n, topo, b, port, proto, src_ip, dnat=True) for b, port in ends)
        masq = p.source == "node"
        return Path(n.name, p, hops, masquerade=masq, service=True)
    if p.kind == "nodeport":
        port = _target_port(p.target)
        name = None
        if port is not None:
            name = next((_np_service(t.nat, port) for t in c.tables.values() if _np_service(t.nat, port)), None)
        ends = backends.get(name or "", [])  # a target without a port (a damaged capture) leads nowhere known
        hops = tuple(_hop(n, topo, b, bp, "tcp", src_ip, dnat=True, masq=True) for b, bp in ends)
        return Path(n.name, p, hops, masquerade=True, service=True)
    proto = {"dns": "udp", "dns-pod": "udp", "api": "tcp"}.get(p.kind, "icmp")
    dport = 53 if p.kind.startswith("dns") else 443 if p.kind == "api" else None
    hop = _hop(n, topo, addr, dport, proto, src_ip, dnat=False, underlay=p.kind.startswith("underlay"))
    return Path(n.name, p, (hop,), masquerade=False, service=p.kind in ("api", "dns"))


def _target_port(target: str) -> int | None:
    """The port of a probe's ``address:port`` target, or None when the capture has none."""
    _, sep, port = target.rpartition(":")
    return int(port) if sep and re.fullmatch(r"[0-9]{1,5}", port) else None


def _np_service(nat: Sequence[str], port: int) -> str | None:
    for line in nat:
        if line.startswith("-A KUBE-NODEPORTS") and f"--dport {port} " in line + " ":
            m = re.search(r'--comment "([^"]+)"', line)
            if m:
                return m.group(1)
    return None


def _hop(
    n: NodeView,
    topo: Topology,
    dst: str,
    dport: int | None,
    proto: str,
    pod_ip: str | None,
    *,
    dnat: bool,
    masq: bool = False,
    underlay: bool = False,
) -> Hop:
    """Return the hop from node ``n`` (its pod ``pod_ip``, or itself) to ``dst``."""
    s = n.name
    t = topo.owner(dst, near=s)
    if t is None:
        return Hop(None, False)
    me, peer = topo.tunnels.get(s, Tunnel("none")), topo.tunnels.get(t, Tunnel("none"))
    legs: list[Leg] = []
    pod_target = topo.is_pod(dst) or (dst == peer.address and peer.address is not None)  # a pod, or the VTEP
    if pod_ip and t != s:  # leaving the pod's node: the sender's FORWARD (cni0 -> overlay or NIC)
        legs.append(Leg(s, "FORWARD", pod_ip, proto, dport, "cni0", dst=dst))
    if t == s:
        if pod_target and pod_ip:
            legs.append(Leg(s, "FORWARD", pod_ip, proto, dport, "cni0", dst=dst, bridged=True))
            return Hop(t, False, tuple(legs), same_node_pod=True)
        if pod_ip:  # a pod to its own node's address
            legs.append(Leg(s, "INPUT", pod_ip, proto, dport, "cni0", dst=dst))
        return Hop(t, False, tuple(legs))
    if not pod_target or underlay:  # to another node's own address: over the underlay, masqueraded
        src = topo.private.get(s)
        iface = topo.nics.get(t)
        legs.append(Leg(t, "INPUT", src, proto, dport, iface, dst=dst))
        return Hop(t, False, tuple(legs))
    # a pod or the overlay address on another node: over the overlay
    inner_src = pod_ip if pod_ip and not masq else me.address or topo.private.get(s)
    vtep_target = dst == peer.address
    chain = "INPUT" if vtep_target else "FORWARD"
    if peer.kind == "vxlan":
        legs.append(Leg(t, chain, inner_src, proto, dport, peer.device, dst=dst))
        legs.append(Leg(t, "INPUT", me.local or topo.private.get(s), "udp", peer.port, peer.underlay, True, peer.local))
        legs.append(Leg(s, "INPUT", peer.local or topo.private.get(t), "udp", me.port, me.underlay, True, me.local))
    elif peer.kind == "wireguard":
        legs.append(Leg(t, chain, inner_src, proto, dport, peer.device, dst=dst))
        legs.append(Leg(t, "INPUT", topo.private.get(s), "udp", WIREGUARD_PORT, topo.nics.get(t), True))
        legs.append(Leg(s, "INPUT", topo.private.get(t), "udp", WIREGUARD_PORT, topo.nics.get(s), True))
    else:
        legs.append(Leg(t, chain, inner_src, proto, dport, topo.nics.get(t), dst=dst))
    return Hop(t, peer.kind in ("vxlan", "wireguard"), tuple(legs))
