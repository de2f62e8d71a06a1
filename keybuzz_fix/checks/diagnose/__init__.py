"""Why ClusterIP traffic does not cross the nodes: five checks over the gathered facts (pure code).

Each check looks at every node and says, per node, "problem", "fine" or "not checked" (a tool, a
file, the API or the node itself was missing — never counted as fine). A check that found a
problem on a node whose live overlay probe fails there is *confirmed*; a problem without a failing
probe is *suspected*. :func:`rank` puts confirmed findings first, then suspected, then the ones that
could not be checked, then the healthy ones.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from keybuzz_fix.cluster.workloads import internal_ip
from keybuzz_fix.hosts.flannel.facts import (
    NodeFacts,
    OverlayProbe,
    bad_checksum_lines,
    parse_kernel_version,
)
from keybuzz_fix.hosts.flannel.plan import OFFLOAD_FEATURE, VXLAN_DEVICE
from keybuzz_fix.hosts.ufw import rules as firewall
from keybuzz_fix.hosts.ufw.rules import ActionKind, UfwRule
from keybuzz_fix.inventory import Host

PUBLIC_IP = "flannel.alpha.coreos.com/public-ip"
BACKEND_TYPE = "flannel.alpha.coreos.com/backend-type"
VXLAN_OVERHEAD = 50
OFFLOAD_FIXED_IN = (5, 7)


class Status(str, Enum):
    """How sure a finding is, best first."""

    CONFIRMED = "confirmed"  # the cause is there and a live probe fails where it is
    SUSPECTED = "suspected"  # the cause is there; no failing probe ties to it
    NOT_CHECKED = "not checked"  # some node could not be checked (tool, file, API or SSH missing)
    OK = "ok"


class Check(str, Enum):
    """The five checks, in the order they rank within a status."""

    UFW = "ufw-vxlan"
    INTERFACE = "wrong-interface"
    MTU = "mtu"
    OFFLOAD = "checksum-offload"
    OVERLAY = "overlay"


TITLES = {
    Check.UFW: "UFW drops VXLAN",
    Check.INTERFACE: "Flannel on the wrong interface",
    Check.MTU: "MTU too large for VXLAN",
    Check.OFFLOAD: "VXLAN checksum-offload bug",
    Check.OVERLAY: "Live overlay probe",
}
_ORDER = {s: i for i, s in enumerate(Status)}
_CHECKS = list(Check)


@dataclass(frozen=True)
class ApiNode:
    """What the API says about a node's Flannel setup."""

    name: str
    internal_ip: str | None
    public_ip: str | None
    backend_type: str | None
    pod_cidr: str | None

    @property
    def vtep_address(self) -> str | None:
        """Return the address Flannel gives ``flannel.1`` on this node (its podCIDR's network address)."""
        try:
            return str(ipaddress.ip_network(self.pod_cidr or "", strict=False).network_address)
        except ValueError:
            return None


@dataclass(frozen=True)
class ClusterView:
    """The API's side of the story; ``error`` when the API could not be read."""

    nodes: tuple[ApiNode, ...] = ()
    dns_ip: str | None = None
    dns_note: str = ""
    error: str | None = None

    def node_for(self, host: Host) -> ApiNode | None:
        """Return the Node of an inventory host: same name, else same InternalIP."""
        return next((n for n in self.nodes if n.name == host.hostname), None) or next(
            (n for n in self.nodes if n.internal_ip == host.private_ip), None
        )


@dataclass(frozen=True)
class NodeView:
    """One inventory node and what its probes said (``error`` when it could not be probed)."""

    host: Host
    facts: NodeFacts | None = None
    probe: OverlayProbe | None = None
    error: str | None = None
    targets: tuple[str, ...] = ()  # the nodes it pinged


@dataclass(frozen=True)
class Finding:
    """One ranked finding: what, how sure, where, the evidence and the exact fix."""

    check: Check
    status: Status
    summary: str
    fix: str
    hosts: tuple[str, ...] = ()  # where the problem is
    evidence: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    not_checked: Mapping[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """Return the check's title."""
        return TITLES[self.check]

    @property
    def problem(self) -> bool:
        """Whether the finding reports a problem."""
        return self.status in (Status.CONFIRMED, Status.SUSPECTED)

    def to_json(self) -> dict[str, Any]:
        """Return the finding as ``diagnose -o json`` prints it."""
        return {
            "check": self.check.value,
            "title": self.title,
            "status": self.status.value,
            "summary": self.summary,
            "hosts": list(self.hosts),
            "evidence": {h: list(lines) for h, lines in self.evidence.items()},
            "not_checked": dict(self.not_checked),
            "fix": self.fix,
        }


@dataclass
class _Verdicts:
    """Per-host results of one check, folded into a :class:`Finding`."""

    problem: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fine: dict[str, tuple[str, ...]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def finding(self, check: Check, confirmed: set[str], fix: str, ok_summary: str) -> Finding:
        hosts = tuple(self.problem)
        if hosts:
            status = Status.CONFIRMED if confirmed & set(hosts) else Status.SUSPECTED
            sure = sorted(confirmed & set(hosts))
            summary = f"on {len(hosts)} node(s)" + (
                f"; live probe fails on {', '.join(sure)}" if sure else "; the live probe does not fail there"
            )
        elif self.skipped:
            status, summary = Status.NOT_CHECKED, f"not checked on {len(self.skipped)} node(s)"
            fix = ""
        else:
            status, summary, fix = Status.OK, ok_summary, ""
        evidence = dict(self.problem) if hosts else dict(self.fine)
        return Finding(check, status, summary, fix, hosts, evidence, dict(self.skipped))


# -- the checks -----------------------------------------------------------------------------------


def diagnose(
    nodes: Sequence[NodeView], cluster: ClusterView, rules: Sequence[UfwRule], vxlan_port: int
) -> list[Finding]:
    """Run the five checks and return the findings, ranked."""
    failing = failing_hosts(nodes)
    dns_failed = {n.host.hostname for n in nodes if n.probe and n.probe.dns and n.probe.dns.ok is False}
    big_failed = {h for n in nodes if n.probe for h in _big_failures(n)}
    return rank(
        [
            check_ufw(nodes, rules, failing),
            check_interface(nodes, cluster, failing),
            check_mtu(nodes, failing | big_failed),
            check_offload(nodes, vxlan_port, dns_failed),
            check_overlay(nodes, cluster),
        ]
    )


def rank(findings: Sequence[Finding]) -> list[Finding]:
    """Order findings: confirmed, suspected, not checked, ok; within a status by check."""
    return sorted(findings, key=lambda f: (_ORDER[f.status], _CHECKS.index(f.check)))


def healthy(findings: Sequence[Finding]) -> bool:
    """Whether no problem was found and the live probe passed."""
    return not any(f.problem for f in findings) and all(
        f.status is Status.OK for f in findings if f.check is Check.OVERLAY
    )


def check_ufw(nodes: Sequence[NodeView], rules: Sequence[UfwRule], failing: set[str]) -> Finding:
    """UFW active, incoming denied, and no allow rule for VXLAN / the pod and service networks."""
    v = _Verdicts()
    for n in nodes:
        name, facts = n.host.hostname, n.facts
        if facts is None:
            v.skipped[name] = n.error or "not probed"
        elif facts.ufw is None:
            v.skipped[name] = f"cannot read ufw: {facts.ufw_error}"
        elif not facts.ufw.installed:
            v.skipped[name] = "ufw is not installed (another firewall may still drop UDP)"
        elif not facts.ufw.active:
            v.fine[name] = ("ufw inactive",)
        elif facts.ufw.default_incoming in ("allow", None):
            v.fine[name] = (f"ufw active, default incoming {facts.ufw.default_incoming or 'unknown'}",)
        else:
            plan = firewall.plan(rules, facts.ufw)
            missing = [f"missing rule: {a.rule.describe()}" for a in plan if a.kind is ActionKind.ADD and a.rule]
            blocked = [a.reason for a in plan if a.kind is ActionKind.BLOCKED]
            head = f"ufw active, default {facts.ufw.default_incoming} (incoming)"
            if missing or blocked:
                v.problem[name] = (head, *missing, *blocked)
            else:
                v.fine[name] = (head, "every overlay rule is present")
    return v.finding(
        Check.UFW,
        failing,
        "keybuzz-fix overlay servers.tsv (adds the allow rules; removes nothing)",
        "ufw lets VXLAN and the pod and service networks in",
    )


def check_interface(nodes: Sequence[NodeView], cluster: ClusterView, failing: set[str]) -> Finding:
    """Flannel's public-ip annotation and flannel.1's local address versus the node's IP_PRIVEE."""
    v = _Verdicts()
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
    return v.finding(Check.INTERFACE, failing, fix, "Flannel uses the private address on every node")


def check_mtu(nodes: Sequence[NodeView], failing: set[str]) -> Finding:
    """FLANNEL_MTU and flannel.1's MTU must leave 50 bytes of VXLAN header under the private MTU."""
    v = _Verdicts()
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
    return v.finding(Check.MTU, failing, fix, "FLANNEL_MTU fits under the private interface's MTU")


def check_offload(nodes: Sequence[NodeView], vxlan_port: int, dns_failed: set[str]) -> Finding:
    """Checksum offload left on for flannel.1 on a kernel older than 5.7, or bad checksums logged."""
    v = _Verdicts()
    confirmed = set(dns_failed)
    for n in nodes:
        name, facts = n.host.hostname, n.facts
        if facts is None:
            v.skipped[name] = n.error or "not probed"
            continue
        logged = bad_checksum_lines(facts.kernel_log, vxlan_port) if facts.kernel_log is not None else []
        kernel = parse_kernel_version(facts.kernel)
        note = [] if facts.kernel_log is not None else ["kernel log not readable (dmesg)"]
        if logged:
            confirmed.add(name)
            v.problem[name] = (f"kernel log: {len(logged)} bad checksum line(s) for port {vxlan_port}", *logged[-3:])
        elif kernel is None:
            v.skipped[name] = f"unknown kernel version {facts.kernel!r}"
        elif kernel >= OFFLOAD_FIXED_IN:
            v.fine[name] = (f"kernel {facts.kernel} (fixed since 5.7)", *note)
        elif facts.flannel is None:
            v.skipped[name] = f"kernel {facts.kernel} is older than 5.7 but there is no {VXLAN_DEVICE} to read"
        elif facts.offload is None:
            v.skipped[name] = f"kernel {facts.kernel} is older than 5.7 and ethtool is not installed"
        elif facts.offload.get(OFFLOAD_FEATURE, (False, False))[0]:
            v.problem[name] = (
                f"kernel {facts.kernel} is older than 5.7",
                f"{OFFLOAD_FEATURE}: on ({VXLAN_DEVICE})",
                *note,
            )
        else:
            v.fine[name] = (f"kernel {facts.kernel}, {OFFLOAD_FEATURE}: off", *note)
    fix = (
        "Upgrade the kernel (5.7 or later) or K3s; or run `keybuzz-fix overlay servers.tsv --checksum-offload-off` "
        f"(`ethtool -K {VXLAN_DEVICE} {OFFLOAD_FEATURE} off`, kept by a udev rule)"
    )
    return v.finding(Check.OFFLOAD, confirmed, fix, "no checksum-offload bug on any node")


def check_overlay(nodes: Sequence[NodeView], cluster: ClusterView) -> Finding:
    """Every node pings every other node's flannel.1 address; CoreDNS answers through its ClusterIP."""
    v = _Verdicts()
    grid = matrix(nodes)
    paths = sum(1 for row in grid.values() for c in row.values() if c in ("ok", "fail", "mtu"))
    failed = sum(1 for row in grid.values() for c in row.values() if c in ("fail", "mtu"))
    for n in nodes:
        name = n.host.hostname
        if n.facts is None or n.probe is None:
            v.skipped[name] = n.error or "not probed"
            continue
        if n.probe.ping_missing:
            v.skipped[name] = "ping is not installed"
            continue
        lines: list[str] = []
        if n.facts.flannel_addr is None:
            lines.append(f"no {VXLAN_DEVICE} address on this node (is Flannel running?)")
        for target in n.targets:
            small, big = n.probe.pings.get(target), n.probe.big.get(target)
            if small is not None and not small.ok:
                lines.append(f"-> {target}: {small.received}/{small.sent} replies ({small.detail})")
            elif big is not None and not big.ok:
                lines.append(f"-> {target}: small pings pass, full-size don't-fragment pings fail ({big.detail})")
        dns = n.probe.dns
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
    finding = v.finding(Check.OVERLAY, set(v.problem), fix, f"overlay healthy: {paths}/{paths} paths answer{dns_note}")
    if finding.problem:
        finding = Finding(
            finding.check,
            Status.CONFIRMED,
            f"{failed}/{paths} paths fail{dns_note}",
            finding.fix,
            finding.hosts,
            finding.evidence,
            finding.not_checked,
        )
    return finding


# -- the probe matrix ---------------------------------------------------------------------------


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
            small = n.probe.pings.get(t) if n.probe else None
            big = n.probe.big.get(t) if n.probe else None
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


def _big_failures(n: NodeView) -> set[str]:
    assert n.probe is not None
    return (
        {n.host.hostname, *(t for t, r in n.probe.big.items() if not r.ok)}
        if any(not r.ok for r in n.probe.big.values())
        else set()
    )


def api_nodes(objects: Sequence[Mapping[str, Any]]) -> tuple[ApiNode, ...]:
    """Return the Flannel view of Node objects (dicts as the API serves them)."""
    out = []
    for obj in objects:
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        annotations = meta.get("annotations") or {}
        internal = internal_ip(dict(obj))
        out.append(
            ApiNode(
                name=str(meta.get("name", "")),
                internal_ip=internal,
                public_ip=annotations.get(PUBLIC_IP),
                backend_type=annotations.get(BACKEND_TYPE),
                pod_cidr=spec.get("podCIDR"),
            )
        )
    return tuple(out)


def _to_int(value: str | None) -> int | None:
    return int(value) if value and value.isascii() and value.isdigit() else None
