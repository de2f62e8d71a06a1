"""Is Flannel set up for the private network? Its interface and its MTU on every node (pure code)."""

from __future__ import annotations

from collections.abc import Sequence

from keybuzz_fix.checks.diagnose.findings import Cause, Finding, Verdicts
from keybuzz_fix.checks.diagnose.views import PUBLIC_IP, ClusterView, NodeView
from keybuzz_fix.hosts.flannel.facts import VXLAN_DEVICE

VXLAN_OVERHEAD = 50


def check_interface(nodes: Sequence[NodeView], cluster: ClusterView, failing: set[str]) -> Finding:
    """Flannel's public-ip annotation and flannel.1's local address versus the node's IP_PRIVEE."""
    v = Verdicts()
    fixes: list[str] = []
    for n in nodes:
        host, facts = n.host, n.facts
        name, lines, bad, checked = host.hostname, [], False, False
        api = cluster.node_for(host) if cluster.error is None else None
        if api is not None:
            checked = True
            lines.append(
                f"node {api.name}: {PUBLIC_IP}={api.public_ip or '(none)'}, "
                f"backend-type={api.backend_type or '(none)'}, IP_PRIVEE={host.private_ip}"
            )
            if api.public_ip and api.public_ip != host.private_ip:
                bad = True
                lines.append(f"Flannel announces {api.public_ip}, not the private address {host.private_ip}")
            if api.backend_type and api.backend_type != "vxlan":
                lines.append(f"backend {api.backend_type}: the VXLAN checks assume vxlan")
        iface = None
        if facts is not None:
            iface = facts.iface_of(host.private_ip) or next((r.dev for r in facts.routes.values() if r), None)
            route = next(((p, r) for p, r in facts.routes.items() if r), None)
            if route:
                lines.append(f"ip route get {route[0]}: dev {route[1].dev} src {route[1].src}")
            link = facts.flannel
            if link is not None:
                checked = True
                lines.append(f"{VXLAN_DEVICE}: local {link.local}, dev {link.dev or '(none)'}")
                if link.local and link.local != host.private_ip:
                    bad = True
                    lines.append(f"{VXLAN_DEVICE} sends from {link.local}, not from {host.private_ip}")
                if link.dev and iface and link.dev != iface:
                    bad = True
                    lines.append(f"{VXLAN_DEVICE} is bound to {link.dev}; the private interface is {iface}")
        if bad:
            v.problem[name] = tuple(lines)
            fixes.append(f"{name}: --flannel-iface={iface or '<private interface>'} --node-ip={host.private_ip}")
        elif checked:
            v.fine[name] = tuple(lines)
        else:
            why = (
                n.error
                or cluster.error
                or (f"no Node named {name} or with InternalIP {host.private_ip}, and no {VXLAN_DEVICE} on the node")
            )
            v.skipped[name] = why
    fix = (
        "Give every K3s server and agent `flannel-iface: <private interface>` and `node-ip: <IP_PRIVEE>` "
        "in /etc/rancher/k3s/config.yaml (the same options on all servers), then restart k3s / k3s-agent: "
        + "; ".join(fixes)
    )
    return v.finding(Cause.INTERFACE, failing, fix, "Flannel uses the private address on every node")


def check_mtu(nodes: Sequence[NodeView], failing: set[str]) -> Finding:
    """FLANNEL_MTU and flannel.1's MTU must leave 50 bytes of VXLAN header under the private MTU."""
    v = Verdicts()
    limits: list[str] = []
    for n in nodes:
        name, facts = n.host.hostname, n.facts
        if facts is None:
            v.skipped[name] = n.error or "not probed"
            continue
        iface = facts.iface_of(n.host.private_ip) or next((r.dev for r in facts.routes.values() if r), None)
        if "ip" not in facts.tools or iface is None or iface not in facts.links:
            v.skipped[name] = (
                "ip is not installed" if "ip" not in facts.tools else f"no interface holds {n.host.private_ip}"
            )
            continue
        limit = facts.links[iface] - VXLAN_OVERHEAD
        env_mtu = _to_int((facts.subnet_env or {}).get("FLANNEL_MTU"))
        link_mtu = facts.flannel.mtu if facts.flannel else None
        if env_mtu is None and link_mtu is None:
            v.skipped[name] = f"no FLANNEL_MTU in /run/flannel/subnet.env and no {VXLAN_DEVICE}"
            continue
        lines = [f"{iface} MTU {facts.links[iface]} (so at most {limit} inside VXLAN)"]
        if env_mtu is not None:
            lines.append(f"FLANNEL_MTU={env_mtu} in /run/flannel/subnet.env")
        if link_mtu is not None:
            lines.append(f"{VXLAN_DEVICE} MTU {link_mtu}")
        if max(m for m in (env_mtu, link_mtu) if m is not None) > limit:
            v.problem[name] = tuple(lines)
            limits.append(f"{name}: ≤ {limit}")
        else:
            v.fine[name] = tuple(lines)
    fix = (
        "Run Flannel on the private interface (`flannel-iface`, see the wrong-interface finding): Flannel "
        "derives FLANNEL_MTU from that interface's MTU minus 50; restart k3s so /run/flannel/subnet.env is "
        "rewritten, then recreate the pods (they keep the MTU they started with): " + "; ".join(limits)
    )
    return v.finding(Cause.MTU, failing, fix, "FLANNEL_MTU fits under the private interface's MTU")


def _to_int(value: str | None) -> int | None:
    return int(value) if value and value.isascii() and value.isdigit() else None
