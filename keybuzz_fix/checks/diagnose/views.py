"""What the diagnosis looks at: each node's capture, and the API's view of the cluster (pure code).

The API's side is the same whether it was read live or from ``kubectl get nodes -o yaml``
(``nodes.yaml``) and ``kubectl get svc,endpoints,networkpolicy,pods -A -o yaml`` (``cluster.yaml``).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keybuzz_fix.cluster.scheduling import internal_ip
from keybuzz_fix.hosts.flannel.capture import Capture

PREFIX = "flannel.alpha.coreos.com/"
DNS_LABELS = ({"k8s-app": "kube-dns"},)


@dataclass(frozen=True)
class ApiNode:
    """What the API says about a node's Flannel setup."""

    name: str
    internal_ip: str | None
    public_ip: str | None = None  # flannel.alpha.coreos.com/public-ip
    backend_type: str | None = None
    vtep_mac: str | None = None  # from backend-data
    pod_cidr: str | None = None

    @property
    def vtep_address(self) -> str | None:
        """Return the address Flannel gives the VXLAN device on this node (its podCIDR's network address)."""
        try:
            return str(ipaddress.ip_network(self.pod_cidr or "", strict=False).network_address)
        except ValueError:
            return None


@dataclass(frozen=True)
class Objects:
    """Services, endpoints, pods and NetworkPolicies (plain dicts as the API serves them)."""

    services: tuple[Mapping[str, Any], ...] = ()
    endpoints: tuple[Mapping[str, Any], ...] = ()
    pods: tuple[Mapping[str, Any], ...] = ()
    policies: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class ClusterView:
    """The API's side of the story; ``error`` when the API (or nodes.yaml) could not be read."""

    nodes: tuple[ApiNode, ...] = ()
    objects: Objects | None = None  # None: not read (no cluster.yaml, or the API refused)
    error: str | None = None
    objects_note: str = ""

    def node(self, name: str, address: str | None = None) -> ApiNode | None:
        """Return the Node with this name, else the one with this InternalIP."""
        return next((n for n in self.nodes if n.name == name), None) or next(
            (n for n in self.nodes if address and n.internal_ip == address), None
        )


@dataclass(frozen=True)
class NodeView:
    """One node: its name and private address, what its collect script printed, or why it could not run."""

    name: str
    address: str | None
    capture: Capture | None = None
    error: str | None = None


def api_nodes(objects: Sequence[Mapping[str, Any]]) -> tuple[ApiNode, ...]:
    """Return the Flannel view of Node objects."""
    out = []
    for obj in objects:
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        notes = meta.get("annotations") or {}
        mac = None
        try:
            data = json.loads(notes.get(PREFIX + "backend-data") or "null")
            mac = data.get("VtepMAC") if isinstance(data, dict) else None
        except ValueError:
            mac = None
        out.append(
            ApiNode(
                name=str(meta.get("name", "")),
                internal_ip=internal_ip(dict(obj)),
                public_ip=_str_or_none(notes.get(PREFIX + "public-ip")),
                backend_type=_str_or_none(notes.get(PREFIX + "backend-type")),
                vtep_mac=str(mac).lower() if mac else None,
                pod_cidr=_cidr_or_none(spec.get("podCIDR")),
            )
        )
    return tuple(out)


def split_objects(items: Sequence[Mapping[str, Any]]) -> Objects:
    """Sort a ``kubectl get svc,endpoints,networkpolicy,pods -A -o yaml`` List by kind."""
    kinds: dict[str, list[Mapping[str, Any]]] = {}
    for item in items:
        kinds.setdefault(str(item.get("kind", "")), []).append(item)
    return Objects(
        services=tuple(kinds.get("Service", [])),
        endpoints=tuple(kinds.get("Endpoints", [])),
        pods=tuple(kinds.get("Pod", [])),
        policies=tuple(kinds.get("NetworkPolicy", [])),
    )


def is_dns_pod(pod: Mapping[str, Any]) -> bool:
    """Whether a pod is one of CoreDNS's (label k8s-app=kube-dns, in kube-system)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    return meta.get("namespace") == "kube-system" and any(
        all(labels.get(k) == v for k, v in want.items()) for want in DNS_LABELS
    )


def _str_or_none(value: object) -> str | None:
    """A field that must be a string; anything else (a hand-edited capture) counts as absent."""
    return value if isinstance(value, str) else None


def _cidr_or_none(value: object) -> str | None:
    """A Node's podCIDR when it is a network; anything else (a hand-edited capture) counts as absent."""
    try:
        return str(ipaddress.ip_network(value, strict=False)) if isinstance(value, str) else None
    except ValueError:
        return None
