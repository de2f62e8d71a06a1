"""Write one ``diagnose --from-dir`` capture per public outage report of ../shared/realworld/outages.

    PYTHONPATH=. .venv/bin/python tests/data/diagnose/outages/build.py [DIR of reports, default: reports/]

Each report gives the cluster (nodes, addresses, Flannel's annotations), what today's probe printed
on each node (kernel, devices, MTUs, offloads, UFW, kernel log, pings) and the evidence of the
thread (commands and what they printed). The capture is what the collect script would have printed
there: the node facts are taken from the report, the case's evidence is written into the sections
that show it (below, per case, with the line of evidence it comes from), and each probe's result
follows the report's symptoms. What a thread left out is listed in ``ASSUMPTIONS`` of each case.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.unit.world import M, NodeSpec, World, healthy_tables, remote

HERE = Path(__file__).parent
REPORTS = HERE / "reports"  # a copy of ../shared/realworld/outages


def _section(text: str, name: str) -> list[str]:
    m = re.search(rf"^{re.escape(M)} {re.escape(name)}\n(.*?)(?=^{re.escape(M)} |\Z)", text, re.S | re.M)
    return m.group(1).rstrip("\n").splitlines() if m else []


def nodes_of(report: dict[str, Any]) -> list[NodeSpec]:
    """The report's nodes as NodeSpecs: addresses, kernel, NIC and MTU, VXLAN device, offload, UFW, kernel log."""
    api = {n["name"]: n for n in report["cluster"]["api_nodes"]}
    out = []
    for entry in report["nodes"]:
        h, probe = entry["host"], entry["node_probe"]
        a = api[h["name"]]
        notes = a["annotations"]
        addrs = "\n".join(_section(probe, "addrs"))
        nic = re.search(rf"^\d+: (\S+)\s+inet {re.escape(h['private_ip'])}/", addrs, re.M)
        links = "\n".join(_section(probe, "links"))
        nic_name = nic.group(1) if nic else "eth0"
        mtu = re.search(rf"^\d+: {re.escape(nic_name)}: .*?mtu (\d+)", links, re.M)
        link = " ".join(_section(probe, "flannel-link"))
        vx = re.search(r"vxlan id (\d+) local (\S+) dev (\S+) .*?dstport (\d+)", link)
        public = re.search(rf"^\d+: (\S+)\s+inet {re.escape(h.get('public_ip') or '-')}/", addrs, re.M)
        eth = _section(probe, "ethtool")
        ufw_start = probe.find(f"{M} ssh")
        mac = re.search(r'"VtepMAC":"([0-9a-f:]+)"', notes.get("flannel.alpha.coreos.com/backend-data", ""))
        out.append(
            NodeSpec(
                h["name"],
                h["private_ip"],
                a["pod_cidr"],
                public_ip=h.get("public_ip"),
                kernel=_section(probe, "kernel")[0].strip(),
                nic=nic_name,
                nic_mtu=int(mtu.group(1)) if mtu else 1500,
                vni=int(vx.group(1)) if vx else 1,
                vx_local=vx.group(2) if vx else None,
                vx_nic=vx.group(3) if vx else None,
                vx_port=int(vx.group(4)) if vx else 8472,
                public_nic=public.group(1) if public and public.group(1) != nic_name else None,
                mac=mac.group(1) if mac else None,
                offload=any("tx-checksum-ip-generic: on" in line for line in eth) or not eth,
                ufw=probe[ufw_start:] if ufw_start >= 0 else NodeSpec.ufw,
                kernel_log=[line.strip() for line in _section(probe, "kernel-log") if line.strip()],
                vx_mtu=1450 if (int(mtu.group(1)) if mtu else 1500) == 1500 else None,
            )
        )
    return out


Case = Callable[[dict[str, Any], list[NodeSpec]], tuple[World, list[dict[str, Any]] | None, list[str]]]
CASES: dict[str, Case] = {}


def case(report_id: str) -> Callable[[Case], Case]:
    """Register the builder of one report's capture."""

    def add(f: Case) -> Case:
        CASES[report_id] = f
        return f

    return add


def _overlay_fails(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
    if kind.startswith("underlay") or kind == "api":  # the API server's endpoint is a node address: no overlay
        return "ok"
    return "fail" if remote(src, backends) else "ok"


@case("01")
def _csum_rhel7(r: dict[str, Any], nodes: list[NodeSpec]) -> tuple[World, None, list[str]]:
    # "service IPs for pods on other nodes are not accessible. Pod IP seem to work fine"; dmesg on the
    # receiver: "UDP: bad checksum. From 10.0.0.2:27503 to 10.0.0.3:8472"; ethtool: tx-checksum-ip-generic on.
    nodes[1].csum = (0, 14)  # the receiver counts what it logs as bad checksums

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        nat = kind in ("dns", "nodeport")  # through a ClusterIP or NodePort to a pod on another node
        return "fail" if nat and remote(src, backends) else "ok"

    w = World(nodes, outcome, dns_on="k3s-worker-01", web_on=["k3s-worker-02"])
    return w, None, ["UdpInCsumErrors rises on k3s-worker-01 (it logs the bad checksums)"]


@case("02")
def _csum_63s(r: dict[str, Any], nodes: list[NodeSpec]) -> tuple[World, None, list[str]]:
    # "only connections that kube-proxy masquerades (host, hostNetwork, NodePort/ExternalIP) are hit";
    # tcpdump on the receiver: "[bad udp cksum 0x... -> 0x...!] OTV ... instance 1".
    for n in nodes:
        n.csum = (3, 21)

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        masq = where == "node" and kind == "dns" or kind == "nodeport"  # masqueraded, to a pod on another node
        return "fail" if masq and remote(src, backends) else "ok"

    w = World(nodes, outcome, dns_on="k3s-worker-01", web_on=["k3s-worker-02"])
    return w, None, ["the bad checksums tcpdump shows on the receivers are counted in UdpInCsumErrors"]


@case("06")
def _csum_68(r: dict[str, Any], nodes: list[NodeSpec]) -> tuple[World, None, list[str]]:
    # "Pods cannot communicate with each other ... until offloading is turned off"; nstat UdpInCsumErrors rises.
    for n in nodes:
        n.csum = (0, 6)
    w = World(nodes, _overlay_fails, dns_on="k3s-worker-01", web_on=["k3s-worker-02"])
    return w, None, []


@case("07")
def _csum_rke2(r: dict[str, Any], nodes: list[NodeSpec]) -> tuple[World, None, list[str]]:
    # "ip -d link show type vxlan: flannel.4096 ... vxlan id 4096 ... dstport 4789"; api and dns fail from every
    # node but the first; node-to-node fine.
    for n in nodes:
        n.vx_dev, n.vni, n.vx_port, n.csum = "flannel.4096", 4096, 4789, (0, 5)

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        return "fail" if kind in ("dns", "dns-pod", "pod", "pod-big", "nodeport") and remote(src, backends) else "ok"

    w = World(nodes, outcome, web_on=["k3s-master-01"])
    return w, None, ["UdpInCsumErrors rises on the receivers (not in the thread: the counter that shows it)"]


@case("09")
def _ufw_api(r: dict[str, Any], nodes: list[NodeSpec]) -> tuple[World, list[dict[str, Any]], list[str]]:
    # UFW: 443 and 22/tcp allowed, default deny; pod -> 10.43.0.1:443 is DNATed to the node's :6443 and dropped;
    # CoreDNS not ready.
    n = nodes[0]
    n.coredns_logs = [
        "2020-01-07T10:00:00Z stdout F [ERROR] plugin/kubernetes: Failed to list *v1.Namespace: Get "
        '"https://10.43.0.1:443/api/v1/namespaces?limit=500": dial tcp 10.43.0.1:443: i/o timeout'
    ]

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        if kind == "api":
            return "fail" if where == "pod" else "ok"
        if kind in ("dns", "dns-pod"):
            return "fail"
        return "ok"

    w = World(nodes, outcome, dns_endpoints=False)
    w.nodes[0].backends = {"nft": healthy_tables(w.pod_network, w.nat())}
    w.nodes[0].backends["nft"]["filter"] = [*_filter_dns_reject(w)]  # type: ignore[index]
    dns_pod = _pod("coredns-6799fbcd5-x7x2k", "k3s-master-01", "10.42.0.3", ready=False)
    return w, [_endpoints(None), dns_pod], ["CoreDNS logs its failing list calls to 10.43.0.1:443"]


@case("12")
def _firewalld(r: dict[str, Any], nodes: list[NodeSpec]) -> tuple[World, None, list[str]]:
    # "iptables -S INPUT | tail -1: -A INPUT -j REJECT --reject-with icmp-host-prohibited", firewalld active,
    # no 8472/udp in firewall-cmd --list-ports; busybox and CoreDNS only talk when on the same host.
    for n in nodes:
        n.iptables_version = "iptables v1.4.21"
        n.firewalld = [
            "active=active",
            "state=running",
            "|public (active)",
            "|  target: default",
            "|  interfaces: eth0",
            "|  services: ssh dhcpv6-client",
            "|  ports: 6443/tcp",
            "|  sources: ",
        ]
        n.tools = (*n.tools, "firewall-cmd", "systemctl")

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        if kind == "api" and where == "pod" and remote(src, backends):
            return "fail"  # leaves the pod's node through FORWARD, where firewalld REJECTs too
        return _overlay_fails(src, where, kind, target, backends)

    w = World(nodes, outcome, dns_on="k3s-worker-01", web_on=["k3s-worker-01"], nat_backend="legacy")
    for n in nodes:
        t = healthy_tables(w.pod_network, w.nat())
        f = list(t["filter"])  # type: ignore[arg-type]
        f[f.index("COMMIT") : f.index("COMMIT")] = [
            "-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT",
            "-A INPUT -i lo -j ACCEPT",
            "-A INPUT -p icmp -j ACCEPT",
            "-A INPUT -p tcp -m tcp --dport 22 -m state --state NEW -j ACCEPT",
            "-A INPUT -p tcp -m tcp --dport 6443 -m state --state NEW -j ACCEPT",
            "-A INPUT -j REJECT --reject-with icmp-host-prohibited",
            "-A FORWARD -j REJECT --reject-with icmp-host-prohibited",
        ]
        f.insert(
            f.index('-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD'),
            "-A FORWARD -m state --state RELATED,ESTABLISHED -j ACCEPT",
        )
        # firewalld (iptables backend, CentOS 7) puts its chains first: the REJECTs come before flannel's accepts
        order = [x for x in f if x.startswith("-A FORWARD -j REJECT")]
        f = [x for x in f if x not in order]
        f.insert(f.index("-A FORWARD -m state --state RELATED,ESTABLISHED -j ACCEPT") + 1, order[0])
        t["filter"] = f
        n.backends = {"legacy": t}
    return w, None, ["firewalld's iptables backend (CentOS 7): its REJECTs come before K3s' FORWARD accepts"]


@case("13")
def _security_group(r: dict[str, Any], nodes: list[NodeSpec]) -> tuple[World, None, list[str]]:
    # The security group allows TCP between the nodes but no UDP: VXLAN never arrives; ufw inactive.
    w = World(nodes, _overlay_fails, dns_on="k3s-worker-01", web_on=["k3s-worker-02"])
    return w, None, []


@case("15")
def _public_iface(r: dict[str, Any], nodes: list[NodeSpec]) -> tuple[World, None, list[str]]:
    # "ip -d link show flannel.1: local <public IP> dev eth0"; default route via eth0 (public).
    w = World(nodes, _overlay_fails, dns_on="k3s-worker-01", web_on=["k3s-worker-01"])
    return w, None, ["the provider drops VXLAN between the public addresses, as the symptom says"]


@case("18")
def _hetzner_mtu(r: dict[str, Any], nodes: list[NodeSpec]) -> tuple[World, None, list[str]]:
    # "ip link show eth1: mtu 1500 (Hetzner private network is 1450)"; "ping -M do -s 1422 <peer>: fails;
    # -s 1372 works"; large transfers / TLS silently dropped, small packets fine.
    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        if kind == "underlay-big":
            return "fail"
        if kind in ("pod-big", "vtep-big"):
            return "fail" if remote(src, backends) else "ok"
        return "ok"

    w = World(nodes, outcome, dns_on="k3s-worker-01", web_on=["k3s-worker-02"])
    return w, None, []


@case("20")
def _raspbian(r: dict[str, Any], nodes: list[NodeSpec]) -> tuple[World, None, list[str]]:
    # "iptables --version: iptables v1.8.2 (nf_tables)"; "iptables -t nat -L PREROUTING: ... # Warning:
    # iptables-legacy tables present"; nothing routed, even core services.
    w = World(nodes, lambda *a: "ok", dns_on="k3s-worker-01", web_on=["k3s-worker-01"], nat_backend="legacy")
    for n in nodes:
        n.iptables_version = "iptables v1.8.2 (nf_tables)"
        k3s = healthy_tables(w.pod_network, w.nat())
        host = {
            "filter": [
                "# Warning: iptables-legacy tables present, use iptables-legacy to see them",
                "*filter",
                ":INPUT ACCEPT [0:0]",
                ":FORWARD DROP [0:0]",
                ":OUTPUT ACCEPT [0:0]",
                "COMMIT",
            ],
            "nat": ["# Warning: iptables-legacy tables present, use iptables-legacy to see them"],
            "count": 0,
        }
        n.backends = {"legacy": k3s, "nft": host}

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        if kind.startswith(("underlay", "vtep")) or kind == "api" and (where == "node" or not remote(src, backends)):
            return "ok"
        if where == "node" and kind in ("dns-pod", "pod") and not remote(src, backends):
            return "ok"
        if where == "node" and not remote(src, backends):
            return "ok"
        return "fail"

    w.outcome = outcome
    return (
        w,
        None,
        [
            "the host's nf_tables FORWARD policy is DROP (Raspbian's iptables-persistent default), "
            "K3s' accepts are in iptables-legacy"
        ],
    )


@case("23")
def _docker_forward(r: dict[str, Any], nodes: list[NodeSpec]) -> tuple[World, None, list[str]]:
    # "iptables -S FORWARD | head -1: -P FORWARD DROP"; NodePort inaccessible; Docker >= 1.13.
    w = World(nodes, lambda *a: "ok")
    t = healthy_tables(w.pod_network, w.nat())
    t["filter"] = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":DOCKER-USER - [0:0]",
        "-A FORWARD -j DOCKER-USER",
        "-A DOCKER-USER -j RETURN",
        "COMMIT",
    ]
    nodes[0].backends = {"legacy": t}
    nodes[0].iptables_version = "iptables v1.6.0"

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        return "fail" if where == "pod" and kind not in ("api",) else "ok"

    w.outcome = outcome
    w.nat_backend = "legacy"
    return w, None, ["flannel's FORWARD accepts are missing (an old flannel without FLANNEL-FWD)"]


@case("24")
def _jetson(r: dict[str, Any], nodes: list[NodeSpec]) -> tuple[World, None, list[str]]:
    # "lsmod | grep br_netfilter: (empty)"; "sysctl net.bridge.bridge-nf-call-iptables: cannot stat ...";
    # pod -> service DNS fails.
    n = nodes[0]
    n.bridge_nf, n.modules = None, ("vxlan", "nf_conntrack", "overlay")

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        if where == "pod" and kind == "dns":
            return "wrong-source"  # dig: ";; reply from unexpected source"
        return "fail" if where == "pod" and kind == "nodeport" else "ok"  # the same, through the NodePort

    return World(nodes, outcome), None, []


@case("29")
def _coredns_loop(r: dict[str, Any], nodes: list[NodeSpec]) -> tuple[World, list[dict[str, Any]], list[str]]:
    # "cat /etc/resolv.conf: nameserver 127.0.0.53"; "kubectl get endpoints kube-dns: <none>"; "[FATAL]
    # plugin/loop: Seen "HINFO IN ..." more than twice, loop detected"; other ClusterIPs work.
    for n in nodes:
        n.resolv = ["nameserver 127.0.0.53"]
    nodes[1].coredns_logs = [
        '2018-09-06T09:12:03Z stdout F [FATAL] plugin/loop: Seen "HINFO IN 6900627972087569316.8143811286214938137. '
        '" more than twice, loop detected'
    ]

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        return "fail" if kind.startswith("dns") else "ok"

    w = World(nodes, outcome, dns_endpoints=False, web_on=["k3s-worker-02"])
    for n in nodes:
        n.backends = {"nft": healthy_tables(w.pod_network, w.nat())}
        n.backends["nft"]["filter"] = _filter_dns_reject(w)
    pods = [_pod("coredns-78fcdf6894-5dntv", "k3s-worker-01", "10.42.1.3", ready=False, crash=True)]
    return w, [_endpoints(None), *pods], []


@case("31")
def _ufw_8472(r: dict[str, Any], nodes: list[NodeSpec]) -> tuple[World, None, list[str]]:
    # "ufw status: 6443/tcp, 10250/tcp open; no 8472/udp"; "tcpdump on the receiver: arrives, then dropped in INPUT".
    return World(nodes, _overlay_fails, dns_on="k3s-worker-01", web_on=["k3s-worker-02"]), None, []


def _filter_dns_reject(w: World) -> list[str]:
    f = list(healthy_tables(w.pod_network, w.nat())["filter"])  # type: ignore[arg-type]
    f.insert(
        f.index("COMMIT"),
        f"-A KUBE-SERVICES -d {w.dns_ip}/32 -p udp -m comment --comment "
        '"kube-system/kube-dns:dns has no endpoints" -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable',
    )
    f.insert(4, ":KUBE-SERVICES - [0:0]")
    return f


def _endpoints(address: str | None) -> dict[str, Any]:
    subsets = (
        [{"addresses": [{"ip": address}], "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}] if address else []
    )
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "subsets": subsets,
    }


def _pod(name: str, node: str, ip: str, *, ready: bool, crash: bool = False) -> dict[str, Any]:
    state = {"waiting": {"reason": "CrashLoopBackOff"}} if crash else {"running": {}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "spec": {"nodeName": node},
        "status": {
            "podIP": ip,
            "containerStatuses": [
                {"name": "coredns", "ready": ready, "restartCount": 17 if crash else 0, "state": state}
            ],
        },
    }


def main(source: Path) -> None:
    """Write every case's capture under this folder, and EXPECTED (id, expected top finding, source)."""
    expected = []
    for path in sorted(source.glob("*.yaml")):
        report = yaml.safe_load(path.read_text())
        rid = str(report["id"]).zfill(2)
        world, cluster, assumptions = CASES[rid](report, nodes_of(report))
        out = HERE / f"{rid}-{report['name']}"
        world.write(out, cluster)
        nodes_yaml = yaml.safe_load((out / "nodes.yaml").read_text())
        by_name = {n["name"]: n for n in report["cluster"]["api_nodes"]}
        for item in nodes_yaml["items"]:  # the annotations as the report has them
            item["metadata"]["annotations"] = by_name[item["metadata"]["name"]]["annotations"]
        (out / "nodes.yaml").write_text(yaml.safe_dump(nodes_yaml))
        notes = [*report.get("assumptions", []), *assumptions]
        (out / "SOURCE").write_text(
            f"{report['source']['ref']}: {report['source']['title']}\nexpected: {report['expected_top_finding']}\n"
            + "".join(f"assumed: {a}\n" for a in notes)
        )
        expected.append(f"{out.name}\t{report['expected_top_finding']}")
    (HERE / "EXPECTED").write_text("\n".join(expected) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPORTS)
