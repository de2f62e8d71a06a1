"""Firewalls on the nodes: UFW, the FORWARD policy, split iptables backends, other firewalls (pure code).

Every leg of every path (where a packet arrives at a node, see :mod:`.paths`) is judged by that
node's filters; :func:`judge_leg` names the first cause that drops it. A check's cause is present
when it drops a leg of a probed path, or one of the flows the cluster needs anyway (VXLAN from
each peer, pods to the API server).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from keybuzz_fix.checks.diagnose.filters import Flow, IptVerdict, iptables_verdict, ufw_verdict
from keybuzz_fix.checks.diagnose.findings import Candidate, Cause
from keybuzz_fix.checks.diagnose.nftables import nft_verdict
from keybuzz_fix.checks.diagnose.paths import Leg, Path, Topology, services
from keybuzz_fix.checks.diagnose.views import NodeView
from keybuzz_fix.hosts.flannel.capture import Capture

_SKIP = ("ufw", "KUBE-ROUTER", "KUBE-NWPLCY", "KUBE-POD-FW")
_K3S = ("KUBE-", "FLANNEL", "flannel", "kube-")


@dataclass(frozen=True)
class Drop:
    """A leg dropped by a node's filter: which cause, and the lines that show it."""

    cause: Cause
    evidence: tuple[str, ...]


def flow_of(leg: Leg) -> Flow:
    """Return the flow a leg stands for."""
    return Flow(leg.src, leg.proto, leg.dport, leg.iface, leg.dst, leg.chain)


def judge_leg(c: Capture, leg: Leg) -> Drop | None:
    """Return the cause that drops this leg at its node, or None when the node's filters let it in."""
    flow = flow_of(leg)
    if c.ufw_rules is not None and leg.chain == "INPUT":
        # the verdict model keeps IPv4 and IPv6 apart: an IPv4 flow meets user.rules only (a rule left in
        # user6.rules alone lets nothing in over IPv4)
        u = ufw_verdict(c.ufw_rules, flow)
        if not u.allowed:
            cause = Cause.UFW_VXLAN if leg.outer else Cause.HOST_FIREWALL
            return Drop(
                cause,
                (
                    "$ ufw show added ; ufw status verbose (read from /etc/ufw/user.rules and /etc/default/ufw)",
                    f"{flow.describe()}: {'throttled' if u.throttled else 'denied'} by {u.decided_by}",
                ),
            )
    if leg.bridged and c.sysctl.get("net.bridge.bridge-nf-call-iptables") != "1":
        return None  # without br_netfilter, iptables never sees a pod talking to a pod on its own bridge
    verdicts = {b: iptables_verdict(t, flow, _SKIP) for b, t in c.tables.items()}
    ufw_on = c.ufw is not None and c.ufw.active
    for backend, v in verdicts.items():
        if v.verdict == "ACCEPT":
            continue
        policy = v.line.startswith(":")
        if policy and leg.chain == "INPUT" and ufw_on:
            continue  # UFW's own default, judged above
        lines = (f"$ iptables-{backend}-save -t filter", f"{flow.describe()}: {v.verdict} by {v.line}")
        other = [(b, w) for b, w in verdicts.items() if b != backend and w.verdict == "ACCEPT" and not _policy(w)]
        if other and _rules(c, other[0][0]):
            b, w = other[0]
            return Drop(
                Cause.BACKEND_SPLIT, (*lines, f"$ iptables-{b}-save -t filter", f"accepted only there: {w.line}")
            )
        if leg.chain == "FORWARD" and (policy or _catch_all(v)):
            return Drop(Cause.FORWARD_DROP, lines)
        if leg.bridged:
            continue  # a zone firewall's rules match by interface: cni0 to cni0 stays inside its zone
        if not v.line.split()[1:2] or not v.line.split()[1].startswith(_K3S):
            return Drop(Cause.OTHER_FIREWALL, lines)
    if c.nft is not None and not leg.bridged:
        n = nft_verdict(c.nft, flow)
        if n is not None:
            return Drop(Cause.OTHER_FIREWALL, ("$ nft list ruleset", f"{flow.describe()}: {n.verdict} by {n.line}"))
    return None


def _policy(v: IptVerdict) -> bool:
    return v.line.startswith(":")


def _catch_all(v: IptVerdict) -> bool:
    words = v.line.split()
    return len(words) == 4 and words[2] == "-j"


def _rules(c: Capture, backend: str) -> bool:
    t = c.tables.get(backend)
    return t is not None and (t.count or 0) > 0


def needed_legs(nodes: Sequence[NodeView], topo: Topology) -> list[Leg]:
    """Return the legs the cluster needs whatever was probed: the overlay from each peer, pods to the API server."""
    out: list[Leg] = []
    for n in nodes:
        me = topo.tunnels.get(n.name)
        if me is None:
            continue
        for p in nodes:
            peer = topo.tunnels.get(p.name)
            if p.name == n.name or peer is None:
                continue
            if me.kind == "vxlan" and me.port:
                src = peer.local or topo.private.get(p.name)
                out.append(Leg(n.name, "INPUT", src, "udp", me.port, me.underlay, True, me.local))
            elif me.kind == "wireguard":
                out.append(Leg(n.name, "INPUT", topo.private.get(p.name), "udp", 51820, topo.nics.get(n.name), True))
    pod = next((n.capture.pod.get("ip") for n in nodes if n.capture and n.capture.pod.get("ip")), None)
    for n in nodes:
        if n.capture is None:
            continue
        _, backends = services(n.capture)
        for ip, port in backends.get("default/kubernetes:https", []):
            owner = topo.owner(ip)
            if owner == n.name:
                src = n.capture.pod.get("ip") or pod or _first_pod(topo, n.name)
                out.append(Leg(n.name, "INPUT", src, "tcp", port, "cni0", dst=ip))
    return out


def _first_pod(topo: Topology, node: str) -> str | None:
    """Return the address the node's first pod gets, or None when its pod subnet has room for no pod.

    As the CNI host-local IPAM plugin hands them out (containernetworking/plugins v1.10.0,
    plugins/ipam/host-local/backend/allocator/range.go, ``Range.Canonicalize``; allocator.go,
    ``RangeIter.Next``): the range starts at network + 1, which is also the gateway (cni0's address),
    and the gateway is skipped, so the first pod is network + 2, in either family; a subnet of fewer
    than four addresses (/31, /32, /127, /128) is refused as "too small to allocate from". host-local
    also refuses a subnet written with host bits set, but never gets one: flannel's CNI plugin reads
    FLANNEL_SUBNET (written as 10.42.1.1/24) with Go's net.ParseCIDR, whose network is masked, and
    delegates that (flannel-io/cni-plugin, flannel.go ``loadFlannelSubnetEnv``, flannel_linux.go
    ``getDelegateIPAM``); so a subnet read from cni0's address or subnet.env is masked here too.
    Checked against the real plugin by tests/integration/test_hostlocal_differential.py.
    """
    cidr = next((c for c, owner in topo.subnets.items() if owner == node), None)
    if cidr is None:
        return None
    net = ipaddress.ip_network(cidr, strict=False)
    if net.prefixlen > net.max_prefixlen - 2:
        return None
    return str(net.network_address + 2)


def firewall_candidates(nodes: Sequence[NodeView], paths: Sequence[Path], topo: Topology) -> list[Candidate]:
    """Return the five firewall causes, judged on every leg of every path and every needed flow."""
    by_name = {n.name: n for n in nodes}
    cache: dict[Leg, Drop | None] = {}

    def drop(leg: Leg) -> Drop | None:
        if leg not in cache:
            c = by_name[leg.node].capture if leg.node in by_name else None
            cache[leg] = judge_leg(c, leg) if c is not None else None
        return cache[leg]

    legs = [leg for p in paths for h in p.hops for leg in h.legs] + needed_legs(nodes, topo)
    found: dict[Cause, dict[str, list[str]]] = {}
    for leg in legs:
        d = drop(leg)
        if d is not None:
            lines = found.setdefault(d.cause, {}).setdefault(leg.node, [])
            for line in d.evidence:
                if line not in lines and len(lines) < 12:
                    lines.append(line)

    def breaks(cause: Cause) -> Callable[[Path], bool]:
        return lambda p: p.all_hops(lambda h: any((d := drop(leg)) is not None and d.cause is cause for leg in h.legs))

    out = []
    for cause, (ok, fix) in _TEXT.items():
        where = found.get(cause, {})
        skipped = _not_checked(nodes, cause)
        evidence: Mapping[str, tuple[str, ...]] = {h: tuple(v) for h, v in where.items()}
        if cause is Cause.OTHER_FIREWALL:
            for n in nodes:
                if n.capture and n.capture.firewalld and "running" in n.capture.firewalld.get("state", ""):
                    evidence = {**evidence, n.name: (*evidence.get(n.name, ()), "$ firewall-cmd --state", "running")}
        present: bool | None = bool(where) or (None if skipped and len(skipped) == len(nodes) else False)
        out.append(
            Candidate(
                cause,
                present,
                f"on {', '.join(sorted(where))}" if where else ok,
                fix.format(nodes=", ".join(sorted(where))),
                tuple(sorted(where)),
                evidence,
                skipped,
                breaks=breaks(cause),
            )
        )
    return out


def _not_checked(nodes: Sequence[NodeView], cause: Cause) -> dict[str, str]:
    out = {}
    for n in nodes:
        c = n.capture
        if c is None:
            out[n.name] = n.error or "not probed"
        elif cause in (Cause.UFW_VXLAN, Cause.HOST_FIREWALL) and c.ufw is None:
            out[n.name] = f"ufw not read: {c.ufw_error}"
        elif cause in (Cause.FORWARD_DROP, Cause.BACKEND_SPLIT) and not c.tables:
            out[n.name] = "iptables not found on the node (neither iptables-save nor K3s' own)"
        elif cause is Cause.OTHER_FIREWALL and not c.tables and c.nft is None:
            out[n.name] = "iptables not found on the node (neither iptables-save nor K3s' own)"
    return out


_TEXT: dict[Cause, tuple[str, str]] = {
    Cause.UFW_VXLAN: (
        "UFW lets the overlay's packets in from every peer (or is inactive)",
        "Allow the overlay port from the other nodes' private addresses on {nodes}: "
        "`keybuzz-fix overlay servers.tsv` (adds `ufw allow from <private network> to any port 8472 proto udp`, "
        "4789 on rke2's flannel.4096, 51820 for wireguard-native; removes nothing)",
    ),
    Cause.HOST_FIREWALL: (
        "the host firewall lets pods and Services reach the nodes",
        "Allow the pod and service networks on {nodes}: `ufw allow from 10.42.0.0/16` and "
        "`ufw allow from 10.43.0.0/16` (K3s' documented rules; `keybuzz-fix overlay servers.tsv` adds them), "
        "or at least 6443/tcp on the servers",
    ),
    Cause.OTHER_FIREWALL: (
        "no other firewall drops cluster traffic",
        "On {nodes}: disable firewalld (K3s' advice) or trust the cluster: "
        "`firewall-cmd --permanent --zone=trusted --add-source=10.42.0.0/16 --add-source=10.43.0.0/16; "
        "firewall-cmd --permanent --add-port=8472/udp; firewall-cmd --reload`; remove the REJECT/DROP rule "
        "shown (iptables -D …) or the nftables table that holds it",
    ),
    Cause.FORWARD_DROP: (
        "FORWARD lets the pod network through",
        "On {nodes}: `iptables -P FORWARD ACCEPT` (persist it: Docker and UFW's routed policy set DROP), or "
        "accept the pod network: `iptables -I FORWARD -s 10.42.0.0/16 -j ACCEPT; "
        'iptables -I FORWARD -d 10.42.0.0/16 -j ACCEPT` (UFW: DEFAULT_FORWARD_POLICY="ACCEPT" in /etc/default/ufw)',
    ),
    Cause.BACKEND_SPLIT: (
        "one iptables backend holds the rules",
        "On {nodes}: use one backend for everything — `update-alternatives --set iptables /usr/sbin/iptables-legacy` "
        "(and ip6tables) or the nft ones, to match K3s' choice; flush the other backend's tables "
        "(`iptables-nft-save`/`iptables-legacy-save` show which), then restart k3s; reboot to be sure",
    ),
}
