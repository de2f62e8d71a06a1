"""Flannel's own setup: the backend, its interface, VTEP addresses and MACs, the MTU, the underlay (pure code)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keybuzz_fix.checks.diagnose.findings import Candidate, Cause
from keybuzz_fix.checks.diagnose.paths import Hop, Path, Topology
from keybuzz_fix.checks.diagnose.views import ClusterView, NodeView

OVERHEAD = {"vxlan": 50, "wireguard": 80, "host-gw": 0}


def _pair(p: Path, h: Hop) -> frozenset[str]:
    return frozenset({p.src, h.node or ""})


def backend(nodes: Sequence[NodeView], cluster: ClusterView, topo: Topology) -> Candidate:
    """Informational: the backend in use, every other check adapts to it."""
    lines: dict[str, tuple[str, ...]] = {}
    kinds = set()
    for n in nodes:
        t = topo.tunnels.get(n.name)
        api = cluster.node(n.name, n.address)
        if t is None:
            continue
        kinds.add(t.kind)
        what = t.kind + (
            f" ({t.device}, port {t.port}, local {t.local} on {t.underlay})" if t.device and t.port else ""
        )
        noted = f"; API backend-type {api.backend_type}" if api and api.backend_type else ""
        lines[n.name] = ("$ ip -d -o link show ; ip -4 route show", f"{what}{noted}")
    summary = " / ".join(sorted(kinds)) or "unknown"
    bad = _backend_broken(nodes, cluster, topo)
    if not bad:
        return Candidate(Cause.BACKEND, True, f"backend: {summary}", evidence=lines, info=True)

    def may(p: Path) -> bool:
        return p.any_hop(lambda h: h.node is not None and h.node != p.src and bool({p.src, h.node} & set(bad)))

    return Candidate(
        Cause.BACKEND,
        True,
        f"backend: {summary}; not working on {', '.join(bad)}",
        "Run one backend on every node, one that fits the network: vxlan (K3s' default) where the nodes are not "
        "on one L2 segment (host-gw needs every peer as a direct next hop: routed cloud networks such as Hetzner's "
        "are not); set `flannel-backend` on every server, restart k3s, then k3s-agent",
        tuple(bad),
        {k: (*lines.get(k, ()), *v) for k, v in bad.items()},
        may_break=may,
    )


def _backend_broken(nodes: Sequence[NodeView], cluster: ClusterView, topo: Topology) -> dict[str, tuple[str, ...]]:
    """Return the nodes whose backend cannot carry the overlay, and why.

    Another backend than the rest; no device (or route) though the API says Flannel runs; host-gw with a
    peer's subnet not routed through the peer itself.
    """
    bad: dict[str, tuple[str, ...]] = {}
    seen = [topo.tunnels[n.name].kind for n in nodes if n.capture is not None and n.name in topo.tunnels]
    common = max(set(seen), key=seen.count) if seen else None
    for n in nodes:
        c, t = n.capture, topo.tunnels.get(n.name)
        if c is None or t is None or not c.links:
            continue
        api = cluster.node(n.name, n.address)
        if t.kind == "none" and api is not None and api.backend_type:
            what = "no route to the other nodes' pod subnets" if api.backend_type == "host-gw" else "no overlay device"
            bad[n.name] = (
                "$ ip -d -o link show ; ip -4 route show",
                f"backend-type {api.backend_type} in the API, {what}",
            )
        elif common and t.kind != common and len(set(seen)) > 1:
            bad[n.name] = (f"{t.kind} here, {common} on the other nodes",)
        elif t.kind == "host-gw":
            peers = {p.name: p for p in nodes if p is not n}
            for name, p in peers.items():
                api_p = cluster.node(name, p.address)
                subnet = api_p.pod_cidr if api_p else None
                route = next((r for r in c.routes if subnet and r.dest == subnet), None)
                if subnet and (route is None or route.via not in (p.address, api_p.internal_ip if api_p else None)):
                    got = f"{route.dest} via {route.via} dev {route.dev}" if route else "no route"
                    bad.setdefault(n.name, ("$ ip -4 route show",))
                    bad[n.name] = (*bad[n.name], f"{subnet} of {name}: {got} (host-gw needs via {p.address})")
    return bad


def wrong_interface(nodes: Sequence[NodeView], cluster: ClusterView, topo: Topology) -> Candidate:
    """Flannel sends from (or announces) another address than the node's private IP."""
    bad: dict[str, tuple[str, ...]] = {}
    skipped: dict[str, str] = {}
    fixes = []
    for n in nodes:
        t = topo.tunnels.get(n.name)
        api = cluster.node(n.name, n.address)
        private = n.address or (api.internal_ip if api else None)
        lines: list[str] = []
        if api is not None and api.public_ip and private and api.public_ip != private:
            lines += [
                "$ kubectl get node -o yaml (flannel.alpha.coreos.com/public-ip)",
                f"{api.public_ip}, not {private}",
            ]
        c = n.capture
        if c is not None and t is not None and t.kind == "vxlan" and private:
            nic = c.iface_of(private)
            if t.local and t.local != private:
                lines += [f"$ ip -d link show {t.device}", f"vxlan local {t.local} dev {t.underlay}: not {private}"]
            elif t.underlay and nic and t.underlay != nic:
                lines += [f"$ ip -d link show {t.device}", f"bound to {t.underlay}; {private} is on {nic}"]
        if lines:
            bad[n.name] = tuple(lines)
            nic = c.iface_of(private or "") if c else None
            fixes.append(f"{n.name}: flannel-iface: {nic or '<private interface>'}, node-ip: {private}")
        elif c is None and api is None:
            skipped[n.name] = n.error or "not probed"

    def may(p: Path) -> bool:
        return p.any_hop(lambda h: h.overlay and bool(_pair(p, h) & set(bad)))

    fix = (
        "Give every K3s server and agent `flannel-iface: <private interface>` and `node-ip: <private IP>` in "
        "/etc/rancher/k3s/config.yaml, then restart k3s / k3s-agent: " + "; ".join(fixes)
    )
    return Candidate(
        Cause.WRONG_INTERFACE,
        bool(bad) or (None if len(skipped) == len(nodes) else False),
        f"on {', '.join(bad)}" if bad else "Flannel uses the private address on every node",
        fix,
        tuple(bad),
        bad,
        skipped,
        may_break=may,
    )


def vtep(
    nodes: Sequence[NodeView], cluster: ClusterView, topo: Topology, paths: Sequence[Path] = ()
) -> tuple[Candidate, Candidate]:
    """VTEP addresses duplicated, pointing elsewhere or unreachable; the VXLAN MAC differs from what peers know."""
    addr_bad: dict[str, list[str]] = {}
    mac_bad: dict[str, list[str]] = {}
    broken_pairs: set[frozenset[str]] = set()
    mac_pairs: set[frozenset[str]] = set()
    may_pairs: set[frozenset[str]] = set()
    holders: dict[str, list[str]] = {}
    for n in nodes:
        t = topo.tunnels.get(n.name)
        if t is not None and t.kind == "vxlan" and t.address:
            holders.setdefault(t.address, []).append(n.name)
    for addr, names in holders.items():
        if len(names) < 2:
            continue
        for x in names:
            device = topo.tunnels[x].device
            addr_bad.setdefault(x, []).extend([f"$ ip -o -4 addr show {device}", f"{addr} on {' and '.join(names)}"])
        broken_pairs |= {frozenset({a, b}) for a in names for b in names if a != b}  # each routes it locally
        for p in nodes:  # a peer sends to the holder its neighbour entry names; the others are cut off from it
            if p.name in names or p.capture is None:
                continue
            macs = {nb.mac.lower() for nb in p.capture.neigh if nb.ip == addr and nb.mac}
            winners = [x for x in names if (topo.tunnels[x].mac or "").lower() in macs]
            for x in names:
                if x not in winners:
                    (broken_pairs if winners else may_pairs).add(frozenset({x, p.name}))
    for n in nodes:
        t = topo.tunnels.get(n.name)
        if t is None or t.kind != "vxlan":
            continue
        api = cluster.node(n.name, n.address)
        if t.mac and api is not None and api.vtep_mac and api.vtep_mac != t.mac.lower():
            mac_bad.setdefault(n.name, []).extend(
                [
                    f"$ ip -d link show {t.device}",
                    f"link/ether {t.mac}",
                    "$ kubectl get node -o yaml (backend-data)",
                    f"VtepMAC {api.vtep_mac}",
                ]
            )
        for p in nodes:
            if p.name == n.name or p.capture is None:
                continue
            c = p.capture
            for nb in c.neigh:
                if len(holders.get(t.address or "", [])) > 1:
                    break  # another node holds the address too: the peer knows that one's MAC (vtep-address)
                if t.address and nb.ip == t.address and nb.mac and t.mac and nb.mac.lower() != t.mac.lower():
                    mac_bad.setdefault(n.name, []).extend(
                        [
                            f"$ ip -d link show {t.device} (on {n.name})",
                            f"link/ether {t.mac}",
                            f"$ ip -4 neigh show (on {p.name})",
                            f"{nb.ip} dev {nb.dev} lladdr {nb.mac} {nb.state}",
                        ]
                    )
                    mac_pairs.add(frozenset({n.name, p.name}))
            for dev, entries in c.fdb.items():
                for mac, dst in entries:
                    if t.mac and mac.lower() == t.mac.lower() and dst and t.local and dst != t.local:
                        addr_bad.setdefault(n.name, []).extend(
                            [
                                f"$ bridge fdb show dev {dev} (on {p.name})",
                                f"{mac} dst {dst}: but {n.name} sends from {t.local}",
                            ]
                        )
                        broken_pairs.add(frozenset({n.name, p.name}))
    for path in paths:  # a VTEP's underlay address that its peer cannot reach at all
        peer = path.hops[0].node if path.hops else None
        if path.kind == "underlay" and path.failed and peer:
            t = topo.tunnels.get(peer)
            if t is not None and t.kind == "vxlan":
                where = f"{peer}'s VTEP ({t.local or path.probe.target}) unreachable from {path.src}"
                addr_bad.setdefault(peer, []).extend([*path.evidence(), where])
                broken_pairs.add(_pair(path, path.hops[0]))
    if mac_bad and not mac_pairs:
        mac_pairs = {frozenset({a, p.name}) for a in mac_bad for p in nodes if p.name != a}

    def hits(pairs: set[frozenset[str]]) -> Callable[[Path], bool]:
        return lambda p: p.all_hops(lambda h: h.overlay and _pair(p, h) in pairs)

    address = Candidate(
        Cause.VTEP_ADDRESS,
        bool(addr_bad),
        f"on {', '.join(addr_bad)}" if addr_bad else "every VTEP address is unique and where the peers send",
        "Give every node its own podCIDR (kubectl get nodes -o jsonpath='{..podCIDR}'); for a stale "
        "public-ip/forwarding entry restart k3s on the node named, so Flannel re-announces it, then on its peers",
        tuple(addr_bad),
        {k: tuple(dict.fromkeys(v)) for k, v in addr_bad.items()},
        breaks=hits(broken_pairs),
        may_break=hits(broken_pairs | may_pairs),
    )
    moved = Candidate(
        Cause.VTEP_MAC,
        bool(mac_bad),
        f"on {', '.join(mac_bad)}" if mac_bad else "every VXLAN MAC is the one its peers know",
        "Restart k3s (or k3s-agent) on "
        + ", ".join(mac_bad or ["the node"])
        + ": Flannel writes the device's MAC into backend-data and every peer re-programs its neighbour and "
        "forwarding entries (restoring the old MAC by hand is not enough: the peers' entries stay FAILED)",
        tuple(mac_bad),
        {k: tuple(dict.fromkeys(v)) for k, v in mac_bad.items()},
        breaks=hits(mac_pairs),
    )
    return address, moved


def mtu(nodes: Sequence[NodeView], topo: Topology) -> Candidate:
    """The overlay MTU does not fit the NIC, or the NIC's MTU does not fit the path (full-size DF pings fail)."""
    bad: dict[str, list[str]] = {}
    path_bad: set[str] = set()  # the underlay itself drops full-size packets (not only the overlay's setting)
    skipped: dict[str, str] = {}
    for n in nodes:
        c, t = n.capture, topo.tunnels.get(n.name)
        if c is None or t is None:
            skipped[n.name] = n.error or "not probed"
            continue
        nic = topo.nics.get(n.name)
        nic_mtu = c.links[nic].mtu if nic and nic in c.links else None
        dev_mtu = c.links[t.device].mtu if t.device and t.device in c.links else None
        env = (c.subnet_env or {}).get("FLANNEL_MTU")
        overhead = OVERHEAD.get(t.kind, 0)
        inner = max([m for m in (dev_mtu, int(env) if env and env.isdigit() else None) if m] or [0])
        if nic_mtu and inner and inner + overhead > nic_mtu:
            bad.setdefault(n.name, []).extend(
                [
                    f"$ ip -o link show {nic}",
                    f"mtu {nic_mtu}",
                    f"$ cat /run/flannel/subnet.env ; ip -o link show {t.device}",
                    f"FLANNEL_MTU={env} / {t.device} mtu {dev_mtu}: {inner} + {overhead} > {nic_mtu}",
                ]
            )
        for p in c.probes:
            if p.kind.endswith("-big") and p.result == "fail":
                small = next((q for q in c.probes if q.kind == p.kind[:-4] and q.target == p.target), None)
                if small is not None and small.result == "ok":
                    if p.kind == "underlay-big":
                        path_bad.add(n.name)
                    bad.setdefault(n.name, []).extend([f"$ {small.command}", small.detail, f"$ {p.command}", p.detail])
    for n in nodes:
        if n.name in bad and nodes:
            bad[n.name] = list(dict.fromkeys(bad[n.name]))[:12]

    def must(p: Path) -> bool:
        hit = path_bad if p.kind == "underlay-big" else set(bad)
        return p.big and p.all_hops(lambda h: bool(_pair(p, h) & hit))

    return Candidate(
        Cause.MTU,
        bool(bad) or (None if len(skipped) == len(nodes) else False),
        f"on {', '.join(bad)}" if bad else "full-size packets fit the path",
        "Set the private NIC's MTU to what the network carries (Hetzner private networks: 1450; `ip link set dev "
        "<nic> mtu 1450` and in netplan/ifupdown/Talos `mtu: 1450`), restart k3s so FLANNEL_MTU is derived from it "
        "(NIC MTU - 50 for VXLAN), then recreate the pods (they keep the MTU they started with)",
        tuple(bad),
        {k: tuple(v) for k, v in bad.items()},
        skipped,
        breaks=must,
        may_break=lambda p: (
            must(p) or (p.kind in ("api", "nodeport") and p.any_hop(lambda h: bool(_pair(p, h) & set(bad))))
        ),
    )


def underlay(paths: Sequence[Path], explained: set[str], topo: Topology) -> Candidate:
    """Inferred: overlay packets between two nodes vanish; the nodes reach each other; nothing on them drops it."""
    pairs: dict[frozenset[str], list[Path]] = {}
    for p in paths:
        if p.failed and not p.big and p.overlay and p.id not in explained and len(p.hops) == 1 and p.hops[0].node:
            pairs.setdefault(_pair(p, p.hops[0]), []).append(p)
    under_ok = {frozenset({p.src, p.hops[0].node or ""}) for p in paths if p.kind == "underlay" and p.ok and p.hops}
    direct_ok = {_pair(p, p.hops[0]) for p in paths if p.ok and not p.service and p.overlay and len(p.hops) == 1}
    direct_failed = {
        _pair(p, p.hops[0]) for p in paths if p.failed and not p.service and p.overlay and len(p.hops) == 1
    }
    good = {
        k: v
        for k, v in pairs.items()
        if (k in under_ok or not any(p.kind == "underlay" for p in paths)) and k in direct_failed and k not in direct_ok
    }
    kinds = {t.kind for t in topo.tunnels.values()}
    evidence: dict[str, tuple[str, ...]] = {}
    for pair, ps in good.items():
        under = [p for p in paths if p.kind == "underlay" and p.hops and _pair(p, p.hops[0]) == pair and p.ok]
        lines = [line for p in ps[:3] for line in p.evidence()] + [line for p in under[:1] for line in p.evidence()]
        evidence[" <-> ".join(sorted(pair))] = (*lines, "no filter on either node drops it (ufw, iptables, nftables)")
    hosts = tuple(sorted({h for pair in good for h in pair}))
    port = next((t.port for t in topo.tunnels.values() if t.port), 8472)
    return (
        Candidate(
            Cause.UNDERLAY,
            bool(good),
            f"between {', '.join(evidence)}" if good else "the underlay carries the overlay",
            f"Allow UDP {port} between the nodes in the cloud firewall / security group / hypervisor filter "
            "(the nodes reach each other, so only the overlay's UDP is dropped); check with "
            f"`tcpdump -ni <private nic> udp port {port}` on both ends",
            hosts,
            evidence,
            breaks=lambda p: p.all_hops(lambda h: h.overlay and _pair(p, h) in good),
            inferred=True,
        )
        if "vxlan" in kinds or "wireguard" in kinds or good
        else Candidate(Cause.UNDERLAY, False, f"no tunnel to drop (backend {', '.join(sorted(kinds))})")
    )
