# ruff: noqa: E501  (captures are long lines, as the tools print them)
"""Synthetic K3s clusters as the collect script would see them: one capture text per node.

A :class:`World` holds the nodes (:class:`NodeSpec`: devices, MTUs, firewalls, sysctls, logs,
counters) and the Services kube-proxy programmed; :meth:`World.capture` prints, for one node, what
``keybuzz-fix diagnose --collect-script`` prints there — the same sections, the same probes, in the
same formats (ping, curl, dig). Whether a probe worked is the case's ``outcome`` function: the
evidence of an outage report says which paths failed; this module only writes it down.

Used by the unit tests for every kind of cause and by ``tests/data/diagnose/outages/build.py``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

M = "@@keybuzz-fix@@"
# (source node, "pod" or "node", probe kind, target, the nodes the target's traffic ends on) -> ok, fail, wrong-source
Outcome = Callable[["NodeSpec", str, str, str, "list[NodeSpec]"], str]


@dataclass
class NodeSpec:
    """One node of a synthetic cluster."""

    name: str
    ip: str
    pod_cidr: str
    public_ip: str | None = None
    kernel: str = "6.8.0-49-generic"
    nic: str = "enp7s0"
    nic_mtu: int = 1450
    path_mtu: int | None = None  # what the network between the nodes carries (default: nic_mtu)
    backend: str = "vxlan"  # vxlan, wireguard, host-gw
    vx_dev: str = "flannel.1"
    vx_port: int = 8472
    vni: int = 1
    vx_local: str | None = None
    vx_nic: str | None = None
    vx_mtu: int | None = None
    mac: str | None = None
    public_nic: str | None = None  # a second NIC holding public_ip
    offload: bool = True
    nic_offload: bool = True
    driver: str = "virtio_net"
    bridge_nf: str | None = "1"  # None: br_netfilter not loaded (no /proc/sys/net/bridge)
    modules: tuple[str, ...] = ("br_netfilter", "vxlan", "nf_conntrack", "overlay")
    lib_modules: bool = True
    iptables_version: str = "iptables v1.8.9 (nf_tables)"
    backends: dict[str, dict[str, object]] = field(default_factory=dict)  # backend -> {"filter": [...], ...}
    nft: list[str] | None = None
    firewalld: list[str] | None = None  # the section's lines
    ufw: str = f"{M} ssh\n10.0.0.99 51234 10.0.0.2 22\n{M} missing\n"
    kernel_log: list[str] = field(default_factory=list)
    resolv: list[str] = field(default_factory=lambda: ["nameserver 10.0.0.1"])
    coredns_logs: list[str] = field(default_factory=list)
    csum: tuple[int, int] = (0, 0)
    pods: bool = True  # a pod network namespace to probe from
    neigh_override: dict[str, str] = field(default_factory=dict)  # peer vtep address -> lladdr it shows
    fdb_override: dict[str, str] = field(default_factory=dict)  # peer name -> dst shown
    tools: tuple[str, ...] = (
        "ip",
        "bridge",
        "ethtool",
        "ping",
        "curl",
        "dig",
        "timeout",
        "iptables",
        "iptables-save",
        "iptables-legacy-save",
        "iptables-nft-save",
        "dmesg",
    )

    @property
    def vtep(self) -> str:
        """The overlay device's address: the podCIDR's network address."""
        return str(ipaddress.ip_network(self.pod_cidr).network_address)

    @property
    def gw(self) -> str:
        """cni0's address."""
        return str(ipaddress.ip_network(self.pod_cidr).network_address + 1)

    def pod(self, n: int) -> str:
        """The n-th pod address on this node."""
        return str(ipaddress.ip_network(self.pod_cidr).network_address + n)

    @property
    def dev_mtu(self) -> int:
        """The overlay device's MTU."""
        return self.vx_mtu or self.nic_mtu - {"vxlan": 50, "wireguard": 80}.get(self.backend, 0)

    @property
    def vtep_mac(self) -> str:
        """The overlay device's MAC."""
        return self.mac or "5a:9c:12:34:56:%02x" % (int(self.ip.split(".")[-1]) % 256)


def healthy_tables(pod_network: str, nat: list[str]) -> dict[str, object]:
    """What K3s leaves in one backend on a healthy node: FORWARD ACCEPT, flannel's and kube-proxy's accepts, NAT."""
    return {
        "filter": [
            "*filter",
            ":INPUT ACCEPT [0:0]",
            ":FORWARD ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":FLANNEL-FWD - [0:0]",
            ":KUBE-FORWARD - [0:0]",
            '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
            '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
            '-A FLANNEL-FWD -s %s -m comment --comment "flanneld forward" -j ACCEPT' % pod_network,
            '-A FLANNEL-FWD -d %s -m comment --comment "flanneld forward" -j ACCEPT' % pod_network,
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
            '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
            "COMMIT",
        ],
        "nat": nat,
        "count": 40,
    }


@dataclass
class World:
    """A cluster: its nodes, where CoreDNS, the API server and a web pod run, the NodePort."""

    nodes: list[NodeSpec]
    outcome: Outcome = lambda src, where, kind, target, owner: "ok"  # noqa: E731
    pod_network: str = "10.42.0.0/16"
    api_ip: str = "10.43.0.1"
    dns_ip: str = "10.43.0.10"
    dns_on: str | None = None  # the node running CoreDNS (default: the first)
    api_on: str | None = None  # the server (default: the first)
    web_on: Sequence[str] | None = None  # nodes with a web pod behind the NodePort (default: all)
    nodeport: int | None = 30080
    dns_endpoints: bool = True
    nat_backend: str = "nft"  # where kube-proxy's rules are

    def node(self, name: str) -> NodeSpec:
        """Return a node by name."""
        return next(n for n in self.nodes if n.name == name)

    @property
    def dns_pods(self) -> list[str]:
        """CoreDNS's pod addresses."""
        return [self.node(self.dns_on or self.nodes[0].name).pod(3)] if self.dns_endpoints else []

    def nat(self) -> list[str]:
        """kube-proxy's NAT rules, the same on every node."""
        api = self.node(self.api_on or self.nodes[0].name).ip
        lines = [
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]",
            f'-A KUBE-SERVICES -d {self.api_ip}/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" '
            "-m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y",
            f'-A KUBE-SEP-API -p tcp -m comment --comment "default/kubernetes:https" -m tcp -j DNAT --to-destination {api}:6443',
            f'-A KUBE-SERVICES -d {self.dns_ip}/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" '
            "-m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU",
        ]
        for i, ip in enumerate(self.dns_pods):
            lines.append(
                f'-A KUBE-SEP-DNS{i} -p udp -m comment --comment "kube-system/kube-dns:dns" -m udp -j DNAT --to-destination {ip}:53'
            )
        if self.nodeport:
            lines.append(
                f'-A KUBE-NODEPORTS -p tcp -m comment --comment "default/web:http" -m tcp --dport {self.nodeport} -j KUBE-EXT-WEB'
            )
            for n in self.web_nodes():
                lines.append(
                    f'-A KUBE-SEP-WEB{n.name[-2:]} -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination {n.pod(4)}:80'
                )
        return lines

    def web_nodes(self) -> list[NodeSpec]:
        """Nodes with a web pod."""
        return [n for n in self.nodes if self.web_on is None or n.name in self.web_on]

    def owner(self, address: str) -> NodeSpec | None:
        """The node owning an address (its own, or its pod subnet)."""
        for n in self.nodes:
            if address in (n.ip, n.public_ip, n.vtep):
                return n
            if ipaddress.ip_address(address) in ipaddress.ip_network(n.pod_cidr):
                return n
        return None

    # -- one node's capture ---------------------------------------------------------------------

    def capture(self, me: NodeSpec) -> str:
        """Return what the collect script prints on node ``me``."""
        s: list[str] = []

        def sec(name: str, *lines: str) -> None:
            s.append(f"{M} {name}")
            s.extend(lines)

        peers = [n for n in self.nodes if n is not me]
        sec("version", "2")
        sec("hostname", me.name)
        sec("kernel", me.kernel)
        sec("uptime", "86400.00")
        sec("tools", *me.tools)
        sec("snmp-before", *_snmp(me.csum[0]))
        links = [
            "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000"
            "\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00",
            f"2: {me.nic}: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu {me.nic_mtu} qdisc fq_codel state UP mode DEFAULT "
            f"group default qlen 1000\\    link/ether 86:00:00:4d:5e:{int(me.ip.split('.')[-1]) % 256:02x} brd ff:ff:ff:ff:ff:ff",
        ]
        addrs = [f"2: {me.nic}    inet {me.ip}/24 brd 10.0.0.255 scope global {me.nic}\\       valid_lft forever"]
        if me.public_nic:
            links.append(
                f"3: {me.public_nic}: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel state UP mode DEFAULT "
                "group default qlen 1000\\    link/ether 96:00:02:1a:2b:30 brd ff:ff:ff:ff:ff:ff"
            )
            addrs.append(
                f"3: {me.public_nic}    inet {me.public_ip}/32 scope global {me.public_nic}\\       valid_lft forever"
            )
        if me.backend == "vxlan":
            links.append(
                f"4: {me.vx_dev}: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu {me.dev_mtu} qdisc noqueue state UNKNOWN mode DEFAULT "
                f"group default \\    link/ether {me.vtep_mac} brd ff:ff:ff:ff:ff:ff promiscuity 0 minmtu 68 maxmtu 65535 "
                f"\\    vxlan id {me.vni} local {me.vx_local or me.ip} dev {me.vx_nic or me.nic} srcport 0 0 "
                f"dstport {me.vx_port} nolearning ttl auto ageing 300 udpcsum noudp6zerocsumtx noudp6zerocsumrx"
            )
            addrs.append(f"4: {me.vx_dev}    inet {me.vtep}/32 scope global {me.vx_dev}\\       valid_lft forever")
        elif me.backend == "wireguard":
            links.append(
                f"4: flannel-wg: <POINTOPOINT,NOARP,UP,LOWER_UP> mtu {me.dev_mtu} qdisc noqueue state UNKNOWN mode "
                "DEFAULT group default qlen 1000\\    link/none promiscuity 0 \\    wireguard addrgenmode none"
            )
            addrs.append(f"4: flannel-wg    inet {me.vtep}/32 scope global flannel-wg\\       valid_lft forever")
        links.append(
            f"5: cni0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu {me.dev_mtu} qdisc noqueue state UP mode DEFAULT group "
            f"default qlen 1000\\    link/ether 2e:11:22:33:44:{int(me.ip.split('.')[-1]) % 256:02x} brd ff:ff:ff:ff:ff:ff "
            "promiscuity 0 \\    bridge forward_delay 1500"
        )
        addrs.append(f"5: cni0    inet {me.gw}/24 brd 10.42.0.255 scope global cni0\\       valid_lft forever")
        sec("links", *links)
        sec("addrs", "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever", *addrs)
        routes = [
            f"default via 10.0.0.1 dev {me.public_nic or me.nic}",
            f"10.0.0.0/16 dev {me.nic} proto kernel scope link src {me.ip}",
        ]
        routes.append(f"{me.pod_cidr} dev cni0 proto kernel scope link src {me.gw}")
        neigh = []
        for p in peers:
            if me.backend == "vxlan":
                routes.append(f"{p.pod_cidr} via {p.vtep} dev {me.vx_dev} onlink")
                neigh.append(f"{p.vtep} dev {me.vx_dev} lladdr {me.neigh_override.get(p.vtep, p.vtep_mac)} PERMANENT")
            elif me.backend == "wireguard":
                routes.append(f"{p.pod_cidr} dev flannel-wg scope link")
            else:
                routes.append(f"{p.pod_cidr} via {p.ip} dev {me.nic}")
        sec("routes", *routes)
        sec("neigh", *neigh)
        if me.backend == "vxlan":
            sec(
                f"fdb {me.vx_dev}",
                *(f"{p.vtep_mac} dst {me.fdb_override.get(p.name, p.vx_local or p.ip)} self permanent" for p in peers),
            )
            sec(f"ethtool-k {me.vx_dev}", *_features(me.vx_dev, me.offload))
        sec(f"ethtool-k {me.nic}", *_features(me.nic, me.nic_offload))
        sec(f"ethtool-i {me.nic}", f"driver: {me.driver}", "version: 1.0.0", "bus-info: 0000:07:00.0")
        sec(
            "subnet-env",
            f"FLANNEL_NETWORK={self.pod_network}",
            f"FLANNEL_SUBNET={me.gw}/24",
            f"FLANNEL_MTU={me.dev_mtu}",
            "FLANNEL_IPMASQ=true",
        )
        bnf = "missing" if me.bridge_nf is None else me.bridge_nf
        sec(
            "sysctl",
            "net/ipv4/ip_forward=1",
            f"net/bridge/bridge-nf-call-iptables={bnf}",
            f"net/bridge/bridge-nf-call-ip6tables={bnf}",
        )
        sec("modules", *(f"loaded {m}" for m in me.modules), f"lib-modules {'yes' if me.lib_modules else 'no'}")
        sec("iptables-version", me.iptables_version)
        backends = me.backends or {self.nat_backend: healthy_tables(self.pod_network, self.nat())}
        for b in ("legacy", "nft"):
            if b in backends:
                t = backends[b]
                sec(
                    f"iptables-{b} filter",
                    *t.get("filter", ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", "COMMIT"]),
                )  # type: ignore[arg-type]
                sec(f"iptables-{b} count", str(t.get("count", 0)))
                sec(f"iptables-{b} nat", *t.get("nat", []))  # type: ignore[arg-type]
        if me.nft is not None:
            sec("nft", *me.nft)
        if me.firewalld is not None:
            sec("firewalld", *me.firewalld)
        s.append(me.ufw.rstrip("\n"))
        sec("kernel-log", *me.kernel_log)
        sec("resolv", *me.resolv)
        sec("coredns-logs", *("|" + line for line in me.coredns_logs))
        pod = me.pods
        sec("pod", f"netns=cni-1a2b3c ip={me.pod(2)} mtu={me.dev_mtu}" if pod else "netns= ip= mtu=")
        sec(
            "targets",
            f"api={self.api_ip} dns={self.dns_ip} dnspods={' '.join(self.dns_pods)} nodeport={self.nodeport or ''}",
        )
        for where in ("pod", "node") if pod else ("node",):
            done = set()
            for n in self.web_nodes() + ([self.node(self.dns_on or self.nodes[0].name)] if self.dns_pods else []):
                if n is me or n.name in done:
                    continue
                done.add(n.name)
                target = n.pod(4) if n in self.web_nodes() else n.pod(3)
                s += self._ping(me, where, "pod", target, None)
                if where == "pod":
                    s += self._ping(me, where, "pod-big", target, me.dev_mtu - 28)
            s += self._tcp(me, where, "api", self.api_ip, 443)
            s += self._dns(me, where, "dns", self.dns_ip)
            for ip in self.dns_pods:
                s += self._dns(me, where, "dns-pod", ip)
            if self.nodeport:
                s += self._tcp(me, where, "nodeport", me.ip, self.nodeport)
        for p in peers:
            s += self._ping(me, "node", "underlay", p.ip, None)
            s += self._ping(me, "node", "underlay-big", p.ip, me.nic_mtu - 28)
        if me.backend == "vxlan":
            for p in peers:
                s += self._ping(me, "node", "vtep", p.vtep, None)
                s += self._ping(me, "node", "vtep-big", p.vtep, me.dev_mtu - 28)
        sec("snmp-after", *_snmp(me.csum[1]))
        sec("neigh-after", *neigh)
        sec("end")
        return "\n".join(s) + "\n"

    def _result(self, me: NodeSpec, where: str, kind: str, target: str) -> str:
        return self.outcome(me, where, kind, target, self.backends(kind, target))

    def backends(self, kind: str, target: str) -> list[NodeSpec]:
        """The nodes a probe's traffic ends on (a Service's backends, else the target's owner)."""
        if kind == "api":
            return [self.node(self.api_on or self.nodes[0].name)]
        if kind == "dns":
            return [self.node(self.dns_on or self.nodes[0].name)] if self.dns_endpoints else []
        if kind == "nodeport":
            return self.web_nodes()
        owner = self.owner(target.split(":")[0])
        return [owner] if owner else []

    def _prefix(self, where: str, cmd: str) -> str:
        return f"ip netns exec cni-1a2b3c {cmd}" if where == "pod" else cmd

    def _ping(self, me: NodeSpec, where: str, kind: str, target: str, size: int | None) -> list[str]:
        ok = self._result(me, where, kind, target) == "ok"
        df = f"-M do -s {size} " if size else ""
        return [
            f"{M} probe {where} {kind} {target} {size or '-'}",
            "$ " + self._prefix(where, f"ping -n -q -c 2 -i 0.2 -W 1 {df}{target}"),
            f"PING {target} ({target}) {size or 56}({(size or 56) + 28}) bytes of data.",
            "",
            f"--- {target} ping statistics ---",
            f"2 packets transmitted, {2 if ok else 0} received, {0 if ok else 100}% packet loss, time 201ms",
            f"rc={0 if ok else 1}",
        ]

    def _tcp(self, me: NodeSpec, where: str, kind: str, addr: str, port: int) -> list[str]:
        r = self._result(me, where, kind, f"{addr}:{port}")
        line = "connect=0.000812 code=400" if r == "ok" else "connect=0.000000 code=000"
        return [
            f"{M} probe {where} {kind} {addr}:{port} -",
            "$ "
            + self._prefix(
                where,
                f"curl -s -o /dev/null --connect-timeout 3 -m 4 -w connect=%{{time_connect}} "
                f"code=%{{http_code}} http://{addr}:{port}/",
            ),
            line,
            f"rc={0 if r == 'ok' else 28}",
        ]

    def _dns(self, me: NodeSpec, where: str, kind: str, addr: str) -> list[str]:
        r = self._result(me, where, kind, addr)
        head = [
            f"{M} probe {where} {kind} {addr} -",
            "$ " + self._prefix(where, f"dig +time=2 +tries=1 @{addr} kubernetes.default.svc.cluster.local A"),
        ]
        if r == "ok":
            return [
                *head,
                ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1",
                ";; ANSWER SECTION:",
                f"kubernetes.default.svc.cluster.local. 5 IN A {self.api_ip}",
                "rc=0",
            ]
        if r == "wrong-source":
            src = self.dns_pods[0] if self.dns_pods else addr
            return [
                *head,
                f";; reply from unexpected source: {src}#53, expected {addr}#53",
                ";; connection timed out; no servers could be reached",
                "rc=9",
            ]
        return [*head, ";; connection timed out; no servers could be reached", "rc=9"]

    def write(self, directory: Path, cluster: list[dict[str, object]] | None = None, annotations: bool = True) -> Path:
        """Write DIR/nodes.yaml, DIR/<node>.txt (and DIR/cluster.yaml) as an operator would."""
        directory.mkdir(parents=True, exist_ok=True)
        items = []
        for n in self.nodes:
            notes = {}
            if annotations:
                notes = {
                    "flannel.alpha.coreos.com/public-ip": n.public_ip
                    if n.public_ip and n.vx_local == n.public_ip
                    else n.ip,
                    "flannel.alpha.coreos.com/backend-type": {"wireguard": "extension", "host-gw": "host-gw"}.get(
                        n.backend, "vxlan"
                    ),
                }
                if n.backend == "vxlan":
                    notes["flannel.alpha.coreos.com/backend-data"] = f'{{"VNI":{n.vni},"VtepMAC":"{n.vtep_mac}"}}'
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": n.name, "annotations": notes},
                    "spec": {"podCIDR": n.pod_cidr},
                    "status": {
                        "addresses": [{"type": "InternalIP", "address": n.ip}, {"type": "Hostname", "address": n.name}]
                    },
                }
            )
            (directory / f"{n.name}.txt").write_text(self.capture(n))
        (directory / "nodes.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
        if cluster is not None:
            (directory / "cluster.yaml").write_text(
                yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": cluster})
            )
        return directory


def _snmp(errors: int) -> list[str]:
    return [
        "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors",
        f"Udp: 183021 12 {errors} 184002 0 0 {errors} 0 0",
    ]


def _features(dev: str, on: bool) -> list[str]:
    v = "on" if on else "off"
    return [
        f"Features for {dev}:",
        "rx-checksumming: on",
        f"tx-checksumming: {v}",
        "\ttx-checksum-ipv4: off [fixed]",
        f"\ttx-checksum-ip-generic: {v}",
        "\ttx-checksum-ipv6: off [fixed]",
        "scatter-gather: on",
        "generic-segmentation-offload: on",
    ]


def three_nodes(**kw: object) -> list[NodeSpec]:
    """k3s-master-01 and two workers on 10.0.0.2-4, pods 10.42.0-2.0/24."""
    return [
        NodeSpec(name, f"10.0.0.{i + 2}", f"10.42.{i}.0/24", **kw)  # type: ignore[arg-type]
        for i, name in enumerate(("k3s-master-01", "k3s-worker-01", "k3s-worker-02"))
    ]


def remote(src: NodeSpec, backends: list[NodeSpec]) -> bool:
    """Whether every backend is on another node (the traffic crosses the overlay)."""
    return bool(backends) and all(b is not src for b in backends)


def ufw_text(rules: Sequence[str], default: str = "deny", active: bool = True, routed: str = "deny") -> str:
    """The UFW part of a capture: ``ufw status verbose`` and ``ufw show added`` as the probe prints them."""
    status = (
        f"Status: active\nLogging: on (low)\nDefault: {default} (incoming), allow (outgoing), {routed} (routed)\n"
        if active
        else "Status: inactive\n"
    )
    added = "".join(f"{r}\n" for r in rules)
    return (
        f"{M} ssh\n10.0.0.99 51234 10.0.0.2 22\n{M} status\n{status}\n"
        f"{M} added\nAdded user rules (see 'ufw status' for running firewall):\n{added}{M} end\n"
    )
