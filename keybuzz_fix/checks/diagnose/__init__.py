"""Why ClusterIP and DNS time out: every known cause, judged against what the pods see (pure code).

Each node's collect script (:mod:`keybuzz_fix.hosts.flannel.collect`) probes from a pod and from
the node; :mod:`.paths` turns the probes into the path matrix; one module per family of causes
(:mod:`.firewall`, :mod:`.flannel`, :mod:`.kernel`, :mod:`.dns`) says where its cause is and which
paths it breaks; :mod:`.findings` ranks the causes by how well they explain the matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from keybuzz_fix.checks.diagnose import dns, firewall, flannel, kernel
from keybuzz_fix.checks.diagnose.findings import TITLES, Cause, Finding, Status, healthy, judge, rank
from keybuzz_fix.checks.diagnose.paths import Path, build_paths, topology
from keybuzz_fix.checks.diagnose.views import ApiNode, ClusterView, NodeView, Objects, api_nodes, split_objects

__all__ = [
    "TITLES",
    "ApiNode",
    "Cause",
    "ClusterView",
    "Diagnosis",
    "Finding",
    "NodeView",
    "Objects",
    "Path",
    "Status",
    "api_nodes",
    "find_causes",
    "healthy",
    "split_objects",
]


def find_causes(nodes: Sequence[NodeView], cluster: ClusterView) -> tuple[list[Finding], list[Path]]:
    """Build the path matrix, run every check, and return the findings ranked, with the paths."""
    topo = topology(nodes, cluster)
    paths = build_paths(nodes, cluster)
    port = next((t.port for t in topo.tunnels.values() if t.port), None)
    addr, mac = flannel.vtep(nodes, cluster, topo, paths)
    candidates = [
        *firewall.firewall_candidates(nodes, paths, topo),
        kernel.br_netfilter(nodes, paths),
        flannel.wrong_interface(nodes, cluster, topo),
        addr,
        mac,
        flannel.mtu(nodes, topo),
        kernel.checksum(nodes, topo, port),
        dns.coredns(nodes, cluster),
        dns.network_policy(cluster),
        kernel.kernel_modules(nodes, topo),
        flannel.backend(nodes, cluster, topo),
    ]
    judged = [judge(c, paths) for c in candidates]
    explained = {p for f in judged if f.problem for p in f.explains}
    judged.append(judge(flannel.underlay(paths, explained, topo), paths))
    return rank(upstream_of_dns(judged, paths), paths), paths


def upstream_of_dns(findings: list[Finding], paths: Sequence[Path]) -> list[Finding]:
    """CoreDNS that cannot reach the API server is a consequence: credit its DNS failures to what breaks the API."""
    dns = next((f for f in findings if f.cause is Cause.COREDNS and f.problem), None)
    api_failed = {p.id for p in paths if p.kind == "api" and p.failed}
    logs = [line for lines in dns.evidence.values() for line in lines] if dns else []
    if dns is None or not api_failed or not any("dial tcp" in line and ":443" in line for line in logs):
        return findings
    out = []
    for f in findings:
        if f is dns:
            note = "; CoreDNS cannot reach the API server (its log): a consequence of what breaks pod -> kubernetes"
            f = replace(f, status=Status.LIKELY, summary=f.summary + note)
        elif f.problem and set(f.explains) & api_failed:
            f = replace(f, explains=tuple(dict.fromkeys([*f.explains, *dns.explains])))
        out.append(f)
    return out


@dataclass(frozen=True)
class Diagnosis:
    """What ``diagnose`` found: the ranked findings, the path matrix, each node (the flow's result)."""

    findings: tuple[Finding, ...]
    paths: tuple[Path, ...]
    nodes: tuple[NodeView, ...]
    cluster: ClusterView
    seconds: float = 0.0
    accepted: tuple[tuple[str, str], ...] = ()  # (host, key): host keys recorded under --accept-new-host-keys

    @property
    def failed(self) -> bool:
        """Whether a problem was found, a path failed, or a node could not be probed."""
        return not healthy(self.findings, self.paths) or any(n.error for n in self.nodes)
