"""Reading workload objects (plain dicts from the API): pods, their owners, nodes (pure code).

Shared by the ingress-nginx check, the scorecard, the rollout wait and diagnose, so that
"Running", "Ready" and "on that worker" mean the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from keybuzz_fix.cluster.objects import Obj, name_of
from keybuzz_fix.cluster.scheduling import is_control_plane
from keybuzz_fix.inventory import Host


def by_name(objs: Iterable[Obj]) -> dict[str, Obj]:
    """Index objects by name."""
    return {name_of(o): o for o in objs}


def phase(pod: Obj) -> str:
    """Return a pod's phase, ``Terminating`` while it is being deleted."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    return str(pod.get("status", {}).get("phase") or "Unknown")


def is_running(pod: Obj) -> bool:
    """Whether a pod is Running and not being deleted."""
    return phase(pod) == "Running"


def is_ready(pod: Obj) -> bool:
    """Whether a pod's Ready condition is True and it is not being deleted."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("status", {}).get("conditions") or []
    )


def owned_by(pod: Obj, kind: str, name: str) -> bool:
    """Whether ``kind``/``name`` is the pod's controller."""
    return any(
        r.get("kind") == kind and r.get("name") == name and r.get("controller", True)
        for r in pod.get("metadata", {}).get("ownerReferences") or []
    )


def pods_of(pods: Iterable[Obj], kind: str, name: str) -> list[Obj]:
    """Return the pods whose controller is ``kind``/``name``, by name."""
    return sorted((p for p in pods if owned_by(p, kind, name)), key=name_of)


def host_network(workload: Obj) -> bool:
    """Whether a DaemonSet's or Deployment's pod template has hostNetwork on."""
    return bool(workload.get("spec", {}).get("template", {}).get("spec", {}).get("hostNetwork"))


def node_of(pod: Obj) -> str | None:
    """Return the node a pod is scheduled on."""
    node = pod.get("spec", {}).get("nodeName")
    return str(node) if node else None


def internal_ip(node: Obj) -> str | None:
    """Return a Node's InternalIP."""
    for a in node.get("status", {}).get("addresses") or []:
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
    return not is_control_plane(node) and "node-role.kubernetes.io/master" not in (
        node.get("metadata", {}).get("labels") or {}
    )


def plural(n: int, word: str) -> str:
    """Return ``1 pod`` / ``2 pods``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
