"""Does the overlay carry traffic? The node × node ping matrix and CoreDNS through its ClusterIP (pure code)."""

from __future__ import annotations

from collections.abc import Sequence

from keybuzz_fix.checks.diagnose.findings import Cause, Certainty, Finding, Verdicts
from keybuzz_fix.checks.diagnose.views import ClusterView, NodeView
from keybuzz_fix.hosts.flannel.facts import VXLAN_DEVICE


def check_overlay(nodes: Sequence[NodeView], cluster: ClusterView) -> Finding:
    """Every node pings every other node's flannel.1 address; CoreDNS answers through its ClusterIP."""
    v = Verdicts()
    grid = matrix(nodes)
    paths = sum(1 for row in grid.values() for c in row.values() if c in ("ok", "fail", "mtu"))
    failed = sum(1 for row in grid.values() for c in row.values() if c in ("fail", "mtu"))
    for n in nodes:
        name = n.host.hostname
        if n.facts is None or n.pings is None:
            v.skipped[name] = n.error or "not probed"
            continue
        if n.pings.ping_missing:
            v.skipped[name] = "ping is not installed"
            continue
        lines: list[str] = []
        if n.facts.flannel_addr is None:
            lines.append(f"no {VXLAN_DEVICE} address on this node (is Flannel running?)")
        for target in n.targets:
            small, big = n.pings.small.get(target), n.pings.big.get(target)
            if small is not None and not small.ok:
                lines.append(f"-> {target}: {small.received}/{small.sent} replies ({small.detail})")
            elif big is not None and not big.ok:
                lines.append(f"-> {target}: small pings pass, full-size don't-fragment pings fail ({big.detail})")
        dns = n.pings.dns
        if dns is not None and dns.ok is False:
            lines.append(f"DNS through {cluster.dns_ip}: {dns.detail}")
        if lines:
            v.problem[name] = tuple(lines)
        else:
            ok = [f"{sum(1 for t in n.targets if grid[name].get(t) == 'ok')}/{len(n.targets)} peers answer"]
            if dns is not None:
                ok.append(
                    f"DNS through {cluster.dns_ip}: {dns.detail}"
                    if dns.ok
                    else f"DNS through {cluster.dns_ip}: not checked ({dns.detail})"
                )
            v.fine[name] = tuple(ok)
    dns_note = f"; DNS not checked: {cluster.dns_note}" if cluster.dns_note else ""
    fix = (
        "Fix the causes above; if none applies, look for a cloud firewall or security group "
        "that drops UDP 8472 between the nodes"
    )
    finding = v.finding(Cause.OVERLAY, set(v.problem), fix, f"overlay healthy: {paths}/{paths} paths answer{dns_note}")
    if finding.problem:
        finding = Finding(
            finding.check,
            Certainty.CONFIRMED,
            f"{failed}/{paths} paths fail{dns_note}",
            finding.fix,
            finding.hosts,
            finding.evidence,
            finding.not_checked,
        )
    return finding


def matrix(nodes: Sequence[NodeView]) -> dict[str, dict[str, str]]:
    """Return ``{source: {target: cell}}``; a cell is ok, fail, mtu (only full-size fails) or n/a."""
    grid: dict[str, dict[str, str]] = {}
    names = [n.host.hostname for n in nodes]
    for n in nodes:
        row: dict[str, str] = {}
        for t in names:
            if t == n.host.hostname:
                row[t] = "self"
                continue
            small = n.pings.small.get(t) if n.pings else None
            big = n.pings.big.get(t) if n.pings else None
            row[t] = "n/a" if small is None else "fail" if not small.ok else "mtu" if big and not big.ok else "ok"
        grid[n.host.hostname] = row
    return grid


def failing_hosts(nodes: Sequence[NodeView]) -> set[str]:
    """Return the nodes at either end of a failing small ping."""
    out: set[str] = set()
    for src, row in matrix(nodes).items():
        for dst, cell in row.items():
            if cell == "fail":
                out |= {src, dst}
    return out


def full_size_failures(n: NodeView) -> set[str]:
    """Return the nodes at either end of a failing full-size ping from ``n`` (an MTU problem, when small ones pass)."""
    assert n.pings is not None
    return (
        {n.host.hostname, *(t for t, r in n.pings.big.items() if not r.ok)}
        if any(not r.ok for r in n.pings.big.values())
        else set()
    )
