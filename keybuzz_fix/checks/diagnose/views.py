"""What the diagnosis looks at: each node's facts and pings, and the API's view of the nodes (pure code)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keybuzz_fix.cluster.scheduling import internal_ip
from keybuzz_fix.hosts.flannel.facts import NodeFacts, PeerPings
from keybuzz_fix.inventory import Host

PUBLIC_IP = "flannel.alpha.coreos.com/public-ip"
BACKEND_TYPE = "flannel.alpha.coreos.com/backend-type"


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
    pings: PeerPings | None = None
    error: str | None = None
    targets: tuple[str, ...] = ()  # the nodes it pinged


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
