"""Where pods run: which nodes a pod template can land on, the host ports it holds, which pods run (pure code).

The scheduler's and the DaemonSet controller's own rules, enough to tell which workers a
DaemonSet reaches and whether two hostNetwork workloads meet on a node: nodeSelector (every
label equal), required node affinity (its terms ORed, the expressions of a term ANDed; In, NotIn,
Exists, DoesNotExist, Gt, Lt; matchFields on metadata.name), and NoSchedule/NoExecute taints
against tolerations (an empty key with ``Exists`` tolerates every taint; an empty effect matches
every effect). A DaemonSet's pods also get the tolerations its controller adds
(:data:`DAEMONSET_TOLERATIONS`); for other workloads the taints the node lifecycle controller sets
(``node.kubernetes.io/…``) are ignored: for a collision check it is safer to assume a workload can
come back on a node.

The pod and node readers are shared by the ingress-nginx check, the scorecard, the rollout wait
and diagnose, so that "Running", "Ready" and "on that worker" mean the same thing everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from keybuzz_fix.cluster.objects import Obj, labels_of, meta_of, name_of, pod_spec, spec_of, status_of
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
    """Return the host ports a pod spec holds for its life: with hostNetwork every port, else its hostPorts.

    Its containers and its restartable init containers (sidecars, ``restartPolicy: Always``) hold
    them; a plain init container has exited before they start, an ephemeral one declares none.
    """
    found: set[HostPort] = set()
    host_network = bool(spec.get("hostNetwork"))
    for c in running_containers(spec):
        for p in c.get("ports") or []:
            port = p.get("hostPort") or (p.get("containerPort") if host_network else None)
            if isinstance(port, int) and port > 0:
                found.add(HostPort(port, str(p.get("protocol") or "TCP")))
    return found


def running_containers(spec: Obj) -> list[Obj]:
    """Return the containers that run for the pod's life: its containers, then its sidecars."""
    return list(spec.get("containers") or []) + [c for c in spec.get("initContainers") or [] if is_sidecar(c)]


def is_sidecar(container: Obj) -> bool:
    """Whether an init container is a restartable sidecar (``restartPolicy: Always``): it runs alongside the app."""
    return container.get("restartPolicy") == "Always"


def eligible_nodes(spec: Obj, nodes: Sequence[Obj], *, daemonset: bool = False) -> list[str]:
    """Return the names of the nodes the pod spec may be scheduled on."""
    return [name_of(n) for n in nodes if fits(spec, n, daemonset=daemonset)]


def fits(spec: Obj, node: Obj, *, daemonset: bool = False) -> bool:
    """Whether a pod with this spec may run on ``node`` (selector, required affinity, taints)."""
    return why_not(spec, node, daemonset=daemonset) is None


def why_not(spec: Obj, node: Obj, *, daemonset: bool = False) -> str | None:
    """Say why a pod with this spec may not run on ``node``, or return None when it may.

    With ``daemonset``, as the DaemonSet controller decides which nodes get a pod (its
    ``NodeShouldRunDaemonPod``): the template's tolerations plus the ones it adds.
    """
    node_labels = labels_of(node)
    for key, value in (spec.get("nodeSelector") or {}).items():
        if node_labels.get(key) != value:
            return f"nodeSelector {key}={value}: {_label(node_labels, key)}"
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if required is not None:
        terms = required.get("nodeSelectorTerms") or []
        failures = [_term_failure(t, node_labels, name_of(node)) for t in terms]
        if all(failures):
            listed = "; ".join(f"term {i}: {why}" for i, why in enumerate(failures))
            return f"required node affinity: no term matches ({listed or 'no terms'})"
    tolerations = list(spec.get("tolerations") or [])
    if daemonset:
        tolerations += DAEMONSET_TOLERATIONS + (DAEMONSET_HOST_NETWORK_TOLERATIONS if spec.get("hostNetwork") else [])
    for taint in spec_of(node).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not daemonset and str(taint.get("key", "")).startswith(_LIFECYCLE_TAINT_PREFIX):
            continue
        if not any(tolerates(t, taint) for t in tolerations):
            value = f"={taint['value']}" if taint.get("value") else ""
            return f"taint {taint.get('key')}{value}:{taint.get('effect')} is not tolerated"
    return None


# The tolerations the DaemonSet controller adds to every pod it makes (AddOrUpdateDaemonPodTolerations
# in kubernetes/pkg/controller/daemon/util): its pods survive node problems and cordons.
DAEMONSET_TOLERATIONS: list[Obj] = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]
DAEMONSET_HOST_NETWORK_TOLERATIONS: list[Obj] = [
    {"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"},
]


def selector_matches(selector: Obj | None, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects ``labels``; null selects nothing, {} all."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = str(e.get("key", "")), e.get("operator"), [str(v) for v in e.get("values") or []]
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }.get(str(op), False)
        if not ok:
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
    """Return a Node's InternalIP (None when its addresses are missing or malformed, as in a hand-edited file)."""
    addresses = status_of(node).get("addresses")
    for a in addresses if isinstance(addresses, list) else []:
        if isinstance(a, dict) and a.get("type") == "InternalIP":
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


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _term_failure(term: Obj, node_labels: dict[str, str], node_name: str) -> str | None:
    """Say why a node selector term does not match the node (its first failing requirement), or None."""
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return "an empty term matches no node"
    for e in expressions:
        if not _expression(e, node_labels):
            return _failure(e, node_labels)
    for f in fields:
        if f.get("key") != "metadata.name" or f.get("operator") not in ("In", "NotIn"):
            return f"matchFields {f.get('key')} {f.get('operator')}: only metadata.name In/NotIn is supported"
        if not _expression(f, {"metadata.name": node_name}):
            return f"metadata.name {f.get('operator')} {list(f.get('values') or [])}: Node {node_name}"
    return None


def _failure(expr: Obj, node_labels: dict[str, str]) -> str:
    key, op = str(expr.get("key", "")), str(expr.get("operator", ""))
    wanted = f" {list(expr.get('values') or [])}" if op not in ("Exists", "DoesNotExist") else ""
    return f"{key} {op}{wanted}: {_label(node_labels, key)}"


def _label(node_labels: dict[str, str], key: str) -> str:
    return f"labelled {key}={node_labels[key]}" if key in node_labels else f"no label {key}"


def _expression(expr: Obj, values: dict[str, str]) -> bool:
    """One node selector requirement, as k8s.io/apimachinery's labels.Requirement reads it."""
    key, op = str(expr.get("key", "")), str(expr.get("operator", ""))
    wanted = [str(v) for v in expr.get("values") or []]
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
        # Exactly one integer value; the node's label must be an integer too, else no match.
        if not present or len(wanted) != 1 or not _INTEGER.fullmatch(wanted[0]) or not _INTEGER.fullmatch(str(value)):
            return False
        have, limit = int(str(value)), int(wanted[0])
        return have > limit if op == "Gt" else have < limit
    return False


def tolerates(toleration: Obj, taint: Obj) -> bool:
    """Whether a toleration tolerates a taint (k8s.io/api core/v1 Toleration.ToleratesTaint).

    An empty effect matches every effect, an empty key every key; ``Exists`` ignores the value,
    ``Equal`` (or no operator) wants the same value; any other operator tolerates nothing.
    """
    effect = toleration.get("effect")
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key")
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    if operator == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return False
