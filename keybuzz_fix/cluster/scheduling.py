"""Where pods run: which nodes a pod template can land on, the host ports it holds, which pods run (pure code).

Enough of the scheduler's rules to tell whether two hostNetwork workloads meet on a node:
nodeSelector, required node affinity, and NoSchedule/NoExecute taints against tolerations. Taints
the node lifecycle controller sets (``node.kubernetes.io/…``) are ignored: DaemonSets tolerate
them, and for a collision check it is safer to assume a workload can come back on a node.

The pod and node readers are shared by the ingress-nginx check, the scorecard, the rollout wait
and diagnose, so that "Running", "Ready" and "on that worker" mean the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from keybuzz_fix.cluster.objects import Obj, containers, labels_of, meta_of, name_of, pod_spec, spec_of, status_of
from keybuzz_fix.inventory import Host

CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
_LIFECYCLE_TAINT_PREFIX = "node.kubernetes.io/"


@dataclass(frozen=True, order=True)
class HostPort:
    """A port a pod binds on its node's network."""

    port: int
    protocol: str = "TCP"

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


def host_ports(spec: Obj) -> set[HostPort]:
    """Return the host ports a pod spec holds: every container port with hostNetwork, else its hostPorts."""
    found: set[HostPort] = set()
    host_network = bool(spec.get("hostNetwork"))
    for c in containers({k: v for k, v in spec.items() if k != "ephemeralContainers"}):
        for p in c.get("ports") or []:
            port = p.get("hostPort") or (p.get("containerPort") if host_network else None)
            if isinstance(port, int) and port > 0:
                found.add(HostPort(port, str(p.get("protocol") or "TCP")))
    return found


def eligible_nodes(spec: Obj, nodes: Sequence[Obj]) -> list[str]:
    """Return the names of the nodes the pod spec may be scheduled on."""
    return [name_of(n) for n in nodes if fits(spec, n)]


def fits(spec: Obj, node: Obj) -> bool:
    """Whether a pod with this spec may run on ``node`` (selector, required affinity, taints)."""
    node_labels = labels_of(node)
    selector = spec.get("nodeSelector") or {}
    if any(node_labels.get(k) != v for k, v in selector.items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if terms and not any(_term_matches(t, node_labels, name_of(node)) for t in terms):
        return False
    tolerations = spec.get("tolerations") or []
    for taint in spec_of(node).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if str(taint.get("key", "")).startswith(_LIFECYCLE_TAINT_PREFIX):
            continue
        if not any(_tolerates(t, taint) for t in tolerations):
            return False
    return True


def is_control_plane(node: Obj) -> bool:
    """Whether the node carries the control-plane role label."""
    return CONTROL_PLANE_LABEL in labels_of(node)


# -- which pods run where -------------------------------------------------------------------------


def phase(pod: Obj) -> str:
    """Return a pod's phase, ``Terminating`` while it is being deleted."""
    if meta_of(pod).get("deletionTimestamp"):
        return "Terminating"
    return str(status_of(pod).get("phase") or "Unknown")


def is_running(pod: Obj) -> bool:
    """Whether a pod is Running and not being deleted."""
    return phase(pod) == "Running"


def is_ready(pod: Obj) -> bool:
    """Whether a pod's Ready condition is True and it is not being deleted."""
    if meta_of(pod).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status_of(pod).get("conditions") or [])


def owned_by(pod: Obj, kind: str, name: str) -> bool:
    """Whether ``kind``/``name`` is the pod's controller."""
    return any(
        r.get("kind") == kind and r.get("name") == name and r.get("controller", True)
        for r in meta_of(pod).get("ownerReferences") or []
    )


def pods_of(pods: Iterable[Obj], kind: str, name: str) -> list[Obj]:
    """Return the pods whose controller is ``kind``/``name``, by name."""
    return sorted((p for p in pods if owned_by(p, kind, name)), key=name_of)


def host_network(workload: Obj) -> bool:
    """Whether a DaemonSet's or Deployment's pod template has hostNetwork on."""
    return bool(pod_spec(workload).get("hostNetwork"))


def node_of(pod: Obj) -> str | None:
    """Return the node a pod is scheduled on."""
    node = spec_of(pod).get("nodeName")
    return str(node) if node else None


def internal_ip(node: Obj) -> str | None:
    """Return a Node's InternalIP."""
    for a in status_of(node).get("addresses") or []:
        if a.get("type") == "InternalIP":
            return str(a.get("address"))
    return None


def worker_nodes(workers: Sequence[Host], nodes: Sequence[Obj]) -> dict[str, str | None]:
    """Map each servers.tsv worker to its Node's name: same name, or else same InternalIP."""
    names = {name_of(n) for n in nodes}
    by_ip = {internal_ip(n): name_of(n) for n in nodes}
    out: dict[str, str | None] = {}
    for w in workers:
        if w.hostname in names:
            out[w.hostname] = w.hostname
        else:
            out[w.hostname] = by_ip.get(w.private_ip)
    return out


def is_worker_node(node: Obj) -> bool:
    """Whether a Node is a worker (no control-plane/master role label)."""
    return not is_control_plane(node) and "node-role.kubernetes.io/master" not in labels_of(node)


def _term_matches(term: Obj, node_labels: dict[str, str], node_name: str) -> bool:
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False  # an empty term matches nothing
    return all(_expression(e, node_labels) for e in expressions) and all(
        _expression(f, {"metadata.name": node_name}) for f in fields
    )


def _expression(expr: Obj, values: dict[str, str]) -> bool:
    key, op = str(expr.get("key", "")), str(expr.get("operator", ""))
    wanted: Iterable[Any] = expr.get("values") or []
    present = key in values
    value = values.get(key)
    if op == "In":
        return present and value in wanted
    if op == "NotIn":
        return not present or value not in wanted
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt"):
        try:
            have, limit = int(str(value)), int(str(list(wanted)[0]))
        except (ValueError, IndexError):
            return False
        return have > limit if op == "Gt" else have < limit
    return False


def _tolerates(toleration: Obj, taint: Obj) -> bool:
    effect = toleration.get("effect")
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key")
    if toleration.get("operator") == "Exists":
        return not key or key == taint.get("key")
    return bool(key == taint.get("key") and (toleration.get("value") or "") == (taint.get("value") or ""))
