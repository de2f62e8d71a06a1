"""Why ClusterIP traffic does not cross the nodes: five checks over the gathered facts (pure code).

One module per family of causes (:mod:`.firewall`, :mod:`.flannel`, :mod:`.kernel`) and the live
overlay probe (:mod:`.overlay`); :func:`diagnose` runs them all and ranks the findings
(:mod:`.findings`). The facts they read are in :mod:`.views`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keybuzz_fix.checks.diagnose.findings import Cause, Certainty, Finding, healthy, rank
from keybuzz_fix.checks.diagnose.firewall import check_ufw
from keybuzz_fix.checks.diagnose.flannel import check_interface, check_mtu
from keybuzz_fix.checks.diagnose.kernel import check_offload
from keybuzz_fix.checks.diagnose.overlay import check_overlay, failing_hosts, full_size_failures, matrix
from keybuzz_fix.checks.diagnose.views import ApiNode, ClusterView, NodeView, api_nodes
from keybuzz_fix.hosts.ufw.rules import UfwRule

__all__ = [
    "ApiNode",
    "Cause",
    "Certainty",
    "ClusterView",
    "Diagnosis",
    "Finding",
    "NodeView",
    "api_nodes",
    "find_causes",
    "failing_hosts",
    "healthy",
    "matrix",
    "rank",
]


def find_causes(
    nodes: Sequence[NodeView], cluster: ClusterView, rules: Sequence[UfwRule], vxlan_port: int
) -> list[Finding]:
    """Run the five checks and return the findings, ranked."""
    failing = failing_hosts(nodes)
    dns_failed = {n.host.hostname for n in nodes if n.pings and n.pings.dns and n.pings.dns.ok is False}
    big_failed = {h for n in nodes if n.pings for h in full_size_failures(n)}
    return rank(
        [
            check_ufw(nodes, rules, failing),
            check_interface(nodes, cluster, failing),
            check_mtu(nodes, failing | big_failed),
            check_offload(nodes, vxlan_port, dns_failed),
            check_overlay(nodes, cluster),
        ]
    )


@dataclass(frozen=True)
class Diagnosis:
    """What ``diagnose`` found: the ranked findings, each node's facts and pings, the API's view (the flow's result)."""

    findings: tuple[Finding, ...]
    nodes: tuple[NodeView, ...]
    cluster: ClusterView
    seconds: float = 0.0
    accepted: tuple[tuple[str, str], ...] = ()  # (host, key): host keys recorded under --accept-new-host-keys

    @property
    def failed(self) -> bool:
        """Whether the overlay is not healthy, or a node could not be probed."""
        return not healthy(self.findings) or any(n.error for n in self.nodes)
